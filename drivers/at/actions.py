"""What the core asks of a port (radio on/off, call forwarding) and own-number discovery.

Owns: the < 60 s budget of each command, waiting for registration before call forwarding
(TS 27.007 7.11 needs the network), turning modem refusals into :class:`CommandError` with the
modem's error, and the background number discovery of a SIM (cache, CNUM, phonebook, USSD).
Must not: run while the port has no usable SIM (a command then fails with a reason).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import structlog

from drivers.at import commands as c
from drivers.at import number
from drivers.at.framing import AtCommandError, AtError, AtTimeout, PortClosed
from drivers.at.port_base import PortBase, PortState
from drivers.at.session import Modem
from drivers.base import CommandError, SimInfo

log = structlog.get_logger(__name__)

REGISTRATION_WAIT_S = 45.0
REGISTRATION_POLL_S = 2.0
COMMAND_BUDGET_S = 55.0  # set_radio / set_forwarding finish within the core's 60 s
USSD_REPLY_TIMEOUT_S = 30.0
DISCOVERY_REGISTRATION_WAIT_S = 120.0


class Actions(PortBase):
    def _start_discovery(self, iccid: str) -> None:
        if self._discovery is None or self._discovery.done():
            self._discovery = asyncio.create_task(
                self._discover(iccid), name=f"device:{self.name}:number"
            )

    async def _discover(self, iccid: str) -> None:
        modem = self.modem
        info = self.info
        recipe = number.recipe_for(
            self.context.number_recipes, info.imsi if info else None, info.mcc_mnc if info else None
        )
        try:
            found = await number.discover(
                cached=None,  # already looked up when the SIM was initialised
                cnum=modem.cnum,
                phonebook=modem.phonebook_number,
                ussd=self._ussd,
                recipe=recipe,
                ussd_packed=modem.quirks.ussd_packed,
            )
        except AtError as exc:
            log.info("at.number_discovery_failed", port=self.name, error=str(exc))
            return
        except Exception:  # a background task: nobody else would see the traceback
            log.exception("at.number_discovery_error", port=self.name)
            return
        if found is None or self.info is None or self.info.iccid != iccid:
            log.info("at.number_unknown", port=self.name, iccid=iccid)
            return
        self._numbers[iccid] = found
        self._update(replace(self.info, number=found[0], number_source=found[1]))

    async def _ussd(self, code: str) -> c.UssdReply | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DISCOVERY_REGISTRATION_WAIT_S):
                await self._registered.wait()
        if not self._registered.is_set():
            return None
        self._ussd_waiter = asyncio.get_running_loop().create_future()
        try:
            await self.modem.send_ussd(code)
            async with asyncio.timeout(USSD_REPLY_TIMEOUT_S):
                return await self._ussd_waiter
        except (TimeoutError, AtCommandError) as exc:
            log.info("at.ussd_failed", port=self.name, error=str(exc) or "timeout")
            await self.modem.cancel_ussd()
            return None
        finally:
            self._ussd_waiter = None

    def _ready_modem(self) -> tuple[Modem, SimInfo]:
        if self.state != PortState.READY or self.info is None or self._modem is None:
            raise CommandError(f"{self.name}: no usable SIM ({self.state})")
        return self._modem, self.info

    async def set_radio(self, on: bool) -> None:
        modem, info = self._ready_modem()
        fun = 1 if on else modem.quirks.radio_off_cfun
        try:
            async with asyncio.timeout(COMMAND_BUDGET_S):
                await modem.set_cfun(fun)
                self._desired_radio[info.iccid] = on
                # Reported together with the registration that follows from it.
                self.info = replace(self.info or info, radio_on=on)
                if on:
                    await self._wait_registered()
                else:
                    await self._refresh_network()
        except AtCommandError as exc:
            raise CommandError(f"AT+CFUN={fun}: {c.describe(exc)}") from exc
        except (AtTimeout, TimeoutError) as exc:
            raise CommandError(f"AT+CFUN={fun}: modem did not answer in time") from exc
        except PortClosed as exc:
            raise CommandError(f"{self.name}: port lost") from exc

    async def set_forwarding(self, to: str | None) -> None:
        modem, info = self._ready_modem()
        if to is not None and not to.lstrip("+").isdigit():
            raise CommandError(f"not a phone number: {to!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMAND_BUDGET_S
        try:
            async with asyncio.timeout_at(deadline):
                if not await self._wait_registered():
                    raise CommandError(f"{self.name}: not registered to a network")
                remaining = max(1.0, deadline - loop.time() - 1.0)
                if to is None:
                    await modem.channel.run(c.CCFC_ERASE, timeout_s=remaining)
                else:
                    toa = 145 if to.startswith("+") else 129  # TS 24.008 10.5.4.7
                    await modem.channel.run(c.CCFC_SET, timeout_s=remaining, number=to, toa=toa)
        except AtCommandError as exc:
            raise CommandError(f"call forwarding refused: {c.describe(exc)}") from exc
        except (AtTimeout, TimeoutError) as exc:
            raise CommandError("call forwarding: no answer from the network in time") from exc
        except PortClosed as exc:
            raise CommandError(f"{self.name}: port lost") from exc
        self._forward_to[info.iccid] = to
        if self.info is not None and self.info.iccid == info.iccid:
            self._update(replace(self.info, forward_to=to))

    async def _wait_registered(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTRATION_WAIT_S
        while True:
            if await self._refresh_network():
                return True
            if loop.time() + REGISTRATION_POLL_S > deadline:
                return False
            await asyncio.sleep(REGISTRATION_POLL_S)

    async def _refresh_network(self) -> bool:
        net = await self.modem.network()
        if self.info is not None:
            self._update(
                replace(
                    self.info,
                    signal_dbm=net.signal_dbm,
                    registered=net.registered,
                    mcc_mnc=net.mcc_mnc or self.info.mcc_mnc,
                )
            )
        return net.registered
