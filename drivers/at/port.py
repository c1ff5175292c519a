"""The supervisor of one modem port: connect, init, read SMS, poll, sweep, recover.

Owns, for one port: its state machine, its SIM as last seen (and swap detection), the
at-least-once SMS path (``+CMTI`` -> ``AT+CMGR`` -> event; ``AT+CMGD`` only from :meth:`ack`,
only after re-reading the index and finding the same PDU), the periodic ``AT+CMGL=4`` sweep for
lost URCs, the poll that keeps :class:`SimInfo` current, and reconnection with capped
exponential backoff and jitter.  The hang ladder is in :mod:`drivers.at.recovery`, commands
and number discovery in :mod:`drivers.at.actions`, shared state in
:mod:`drivers.at.port_base`.  Like aioesphomeapi's ``ReconnectLogic``: WARNING for the first
failure of a streak, DEBUG after, tracebacks only for the unexpected.

Must not: touch other ports (a hung port never stalls another), or any store or network.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from drivers.at import commands as c
from drivers.at import sms
from drivers.at.actions import Actions
from drivers.at.framing import AtCommandError, AtError, AtTimeout, PortClosed, Urc
from drivers.at.port_base import LOST, PortSettings, PortState
from drivers.at.recovery import Recovery
from drivers.at.session import SimState
from drivers.base import DeviceStat, DriverContext, Event, SimInfo

__all__ = ["PortSettings", "PortState", "PortSupervisor"]

log = structlog.get_logger(__name__)

ACK_RETRY_DELAYS_S: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0)
MAX_REMEMBERED_TOKENS = 1024
#: TS 27.005 3.1 <stat> in PDU mode: 0 "REC UNREAD", 1 "REC READ" (2/3 are stored MO SMS).
RECEIVED_STATS = frozenset({0, 1})


class _SimCheck(Exception):
    """Leave the SIM session: the SIM must be checked again (URC, swap, CME 10)."""


class _Restart(Exception):
    """The modem rebooted on its own (RDY): run the whole init again."""


class _NotReady(Exception):
    pass


class PortSupervisor(Actions, Recovery):
    """One port, supervised: see the module docstring."""

    def __init__(
        self, settings: PortSettings, context: DriverContext, emit: Callable[[Event], None]
    ) -> None:
        super().__init__(settings, context, emit)

    async def run(self) -> None:
        """Until cancelled: keep this port connected, initialised and drained."""
        while True:
            if self._protocol is None or self._protocol.is_closed:
                try:
                    await self.close_port()
                    await self.open()
                except PortClosed as exc:
                    self._failure("open failed", exc)
                    await asyncio.sleep(self._backoff.next())
                    continue
            try:
                await self._lifecycle()
            except PortClosed as exc:
                self._failure("port lost", exc)
                await self._drop("port lost")
                await asyncio.sleep(self._backoff.next())
            except AtTimeout as exc:
                if not await self._hang_ladder(exc):
                    await self._drop("modem hung")
                    await asyncio.sleep(self._backoff.next())
            except _Restart as exc:
                log.info("at.modem_restarted", port=self.name, urc=str(exc))
            except (AtCommandError, c.ParseError) as exc:
                # A step of init that must work was refused or answered nonsense: start over
                # from a fresh port after a pause, like any other failure.
                self._failure("init refused", exc)
                if isinstance(exc, AtCommandError) and exc.kind == "CMS" and exc.code == 322:
                    self._note_storage_full(exc.result)
                await self._drop("init failed")
                await asyncio.sleep(self._backoff.next())
            except Exception:
                log.exception("at.port_unexpected_error", port=self.name)
                await self._drop("internal error")
                await asyncio.sleep(self._backoff.next())

    async def _lifecycle(self) -> None:
        modem = self.modem
        self.state = PortState.INIT
        await modem.init_link()
        identity = await modem.identify(radio_off_cfun=self.settings.radio_off_cfun)
        log.info(
            "at.modem",
            port=self.name,
            maker=identity.maker,
            model=identity.model,
            firmware=identity.firmware,
            quirks=modem.quirks.family,
        )
        self._healthy()
        while True:
            state = await modem.sim_state()
            if state != SimState.READY:
                await self._no_sim(state)
                continue
            try:
                await self._sim_session()
            except _SimCheck as exc:
                log.info("at.sim_check", port=self.name, reason=str(exc))
                await self._stop_discovery()
                if self.state != PortState.READY:
                    # Failed while setting the SIM up (ICCID unreadable...): wait, do not spin.
                    await self._no_sim(str(exc))

    async def _no_sim(self, state: str) -> None:
        await self._stop_discovery()
        if self.info is not None or self.state != PortState.NO_SIM:
            level = log.error if state == SimState.LOCKED else log.info
            level("at.no_usable_sim", port=self.name, state=state)
        self._sim_gone(f"SIM {state.lower()}")
        self.state = PortState.NO_SIM
        deadline = asyncio.get_running_loop().time() + self.settings.poll_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    urc = await self._urcs.get()
                    if urc is LOST:
                        raise PortClosed("port lost")
                    if self._is_boot(urc.line):
                        raise _Restart(urc.line)
                    if self._is_sim_urc(urc.line):
                        return

    async def _sim_session(self) -> None:
        modem = self.modem
        self.state = PortState.INIT  # READY only once set up (a failure here then waits)
        iccid = await self._read_iccid()
        if self.info is not None and self.info.iccid != iccid:
            log.warning("at.sim_swapped", port=self.name, old=self.info.iccid, new=iccid)
            self._sim_gone("SIM swapped")
        storage = await modem.setup_sms(self.settings.storage)
        imsi = await modem.read_imsi()
        fun = await modem.cfun()
        desired = self._desired_radio.get(iccid)
        if desired is not None and fun is not None and (fun == 1) != desired:
            # Re-apply the radio state the core asked for: a reset turned the radio back on.
            fun = 1 if desired else modem.quirks.radio_off_cfun
            await modem.set_cfun(fun)
        net = await modem.network()
        known = self._numbers.get(iccid)
        cached = self._cached_number(iccid)
        num, source = known if known else (cached, "cache" if cached else None)
        info = SimInfo(
            port=self.name,
            iccid=iccid,
            imsi=imsi,
            number=num,
            number_source=source,
            operator=await modem.operator_name() if net.registered else None,
            mcc_mnc=net.mcc_mnc,
            signal_dbm=net.signal_dbm,
            registered=net.registered,
            radio_on=fun is None or fun == 1,  # TS 27.007 8.2: 1 is full functionality
            forward_to=self._forward_to.get(iccid),  # network state: as we last set it
        )
        self._update(info)
        self.state = PortState.READY
        self._healthy()
        self._storage_stat(storage)
        if num is None:
            self._start_discovery(iccid)
        await self._serve()

    def _cached_number(self, iccid: str) -> str | None:
        try:
            return self.context.cached_number(iccid)
        except Exception:  # the core's lookup failing must not stop this port
            log.exception("at.cached_number_failed", port=self.name)
            return None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        # Jitter spreads the polls of hundreds of ports started together over the interval.
        next_poll = loop.time() + self.settings.poll_s * random.uniform(0.5, 1.0)
        next_sweep = loop.time()  # sweep first: the backlog stored while we were away
        while True:
            now = loop.time()
            if now >= next_sweep:
                await self._sweep()
                next_sweep = loop.time() + self.settings.sweep_s * random.uniform(0.9, 1.0)
                self._hang_episodes = 0
            if now >= next_poll:
                await self._poll()
                next_poll = loop.time() + self.settings.poll_s * random.uniform(0.9, 1.0)
                self._hang_episodes = 0
            urc: Urc | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(next_poll, next_sweep)):
                    urc = await self._urcs.get()
            if urc is None:
                continue
            action = await self._handle(urc)
            if action == "poll":
                next_poll = loop.time()
            elif action == "sweep":
                next_sweep = loop.time()

    async def _handle(self, urc: Urc) -> str | None:
        if urc is LOST:
            raise PortClosed("port lost")
        line = urc.line
        quirks = self.modem.quirks
        if line.startswith("+CMTI:"):
            fields = c.split_fields(line[len("+CMTI:") :])
            if len(fields) >= 2 and fields[-1].isdigit():
                if fields[0].upper() != self.settings.storage.upper():
                    log.warning("at.cmti_other_storage", port=self.name, storage=fields[0])
                    return "sweep"
                await self._read_one(int(fields[-1]))
            return None
        if line.startswith("+CMT:") and urc.data:
            # Routed, not stored (a modem ignoring CNMI mt=1): nothing to delete later.
            self._deliver(urc.data, None)
            return None
        if self._is_boot(line):
            raise _Restart(line)
        if self._is_sim_urc(line):
            raise _SimCheck(line)
        if line.startswith(quirks.memory_full_urcs) or line == "+CMS ERROR: 322":
            self._note_storage_full(line)
            return "sweep"
        if line.startswith(("+CREG:", "+CEREG:", "+CGREG:")):
            return "poll"
        log.debug("at.urc_ignored", port=self.name, urc=line[:40])
        return None

    def _is_boot(self, line: str) -> bool:
        quirks = self._modem.quirks if self._modem else None
        return quirks is not None and line.startswith(quirks.boot_urcs)

    def _is_sim_urc(self, line: str) -> bool:
        quirks = self._modem.quirks if self._modem else None
        return quirks is not None and (
            line in quirks.sim_ready_urcs
            or line in quirks.sim_removed_urcs
            or line.startswith("+CPIN:")
        )

    async def _read_iccid(self) -> str:
        try:
            iccid = await self.modem.read_iccid()
        except AtCommandError as exc:
            raise _SimCheck(f"ICCID unreadable: {exc.result}") from exc
        except c.ParseError as exc:
            raise _SimCheck(str(exc)) from exc
        return iccid

    async def _check_sim(self) -> str:
        """Re-read the ICCID; a different one ends the SIM session.

        Called *after* reading storage and before emitting: if the ICCID is still the session's,
        what was read came from that SIM, so no part is ever labelled with a SIM that was
        swapped out (or in) around the read.  One short command per read batch.
        """
        assert self.info is not None
        iccid = await self._read_iccid()
        if iccid != self.info.iccid:
            raise _SimCheck(f"ICCID changed to {iccid}")
        return iccid

    async def _read_one(self, index: int) -> None:
        async with self._storage_lock:
            stored = await self.modem.read(index)
        iccid = await self._check_sim()
        if stored is not None:
            await self._process(iccid, stored)

    async def _sweep(self) -> None:
        """AT+CMGL=4: everything in storage, read or not (catches lost +CMTI)."""
        listed = await self.modem.list_all()
        iccid = await self._check_sim()
        now = time.monotonic()
        for stored in listed:
            key = (stored.index, sms.digest(stored.pdu))
            if now - self._emitted.get(key, -1e9) < self.settings.sweep_s:
                continue  # emitted moments ago and not acked yet: the core has it
            await self._process(iccid, stored)
        try:
            self._storage_stat(await self.modem.run(c.CPMS_QUERY))
        except (AtCommandError, c.ParseError) as exc:
            log.debug("at.cpms_failed", port=self.name, error=str(exc))
        await self._retry_parked()

    async def _process(self, iccid: str, stored: c.StoredPdu) -> None:
        if stored.stat not in RECEIVED_STATS:
            # "STO UNSENT"/"STO SENT": a draft someone left on a used SIM, not an incoming
            # SMS.  Neither forwarded nor deleted.
            log.debug("at.skip_stored_outgoing", port=self.name, index=stored.index)
            return
        token = sms.token_for(self.name, iccid, self.settings.storage, stored)
        if token in self._deleted:
            # Listed just before its delete, or the network delivered the identical TPDU
            # again (a lost RP-ACK): that content is committed, so delete, verified as ever.
            del self._deleted[token]
            await self.ack(token, retries=())
            return
        if self._deliver(stored.pdu, token) is None:
            # A status report (TS 23.040 9.2.2.3): nobody forwards it; free the slot.
            await self.ack(token, retries=())

    def _deliver(self, pdu: str, token: sms.AckToken | None) -> sms.Decoded | None:
        assert self.info is not None
        decoded = sms.decode(self.name, self.info.iccid, pdu, token)
        if decoded.part is None:
            return None
        if decoded.error is not None:
            log.warning("at.pdu_undecodable", port=self.name, error=decoded.error)
        elif decoded.part.malformed is not None:
            log.warning("at.pdu_malformed", port=self.name, error=decoded.part.malformed)
        if token is not None:
            self._emitted[(token.location, token.digest)] = time.monotonic()
        self._emit(decoded.part)
        return decoded

    def _storage_stat(self, storage: c.Storage) -> None:
        self._emit(DeviceStat("storage_used", storage.used, port=self.name))
        self._emit(DeviceStat("storage_total", storage.total, port=self.name))
        full = storage.total > 0 and storage.used >= storage.total
        if full and not self._storage_full:
            self._note_storage_full(f"{storage.used}/{storage.total}")
        self._storage_full = full

    def _note_storage_full(self, detail: str) -> None:
        # The network holds further SMS until space is freed (TS 23.040 10.3 "memory
        # available"); acks free slots, so keep draining.
        log.warning("at.storage_full", port=self.name, detail=detail)
        self._emit(DeviceStat("storage_full", 1.0, port=self.name))

    async def ack(self, token: sms.AckToken, *, retries: tuple[float, ...] | None = None) -> None:
        """Delete the part behind ``token`` if it is still there; retry, then park."""
        delays = ACK_RETRY_DELAYS_S if retries is None else retries
        for delay in (*delays, None):
            try:
                await self._delete_verified(token)
                self._parked.pop(token, None)
                return
            except (_NotReady, AtError, c.ParseError) as exc:
                if delay is None:
                    self._parked[token] = None
                    while len(self._parked) > MAX_REMEMBERED_TOKENS:
                        self._parked.popitem(last=False)
                    log.info("at.ack_parked", port=self.name, index=token.location, error=str(exc))
                    return
                log.debug("at.ack_retry", port=self.name, index=token.location, error=str(exc))
                await asyncio.sleep(delay)

    async def _delete_verified(self, token: sms.AckToken) -> None:
        if token in self._deleted:
            return
        if self.state != PortState.READY or self.info is None or self.info.iccid != token.iccid:
            raise _NotReady(f"{self.name} not ready for {token.iccid}")
        async with self._storage_lock:
            stored = await self.modem.read(token.location)
            if await self.modem.read_iccid() != token.iccid:
                raise _NotReady("the SIM changed")  # the poll will notice and re-init
            if stored is not None and sms.digest(stored.pdu) == token.digest:
                await self.modem.delete(token.location)
            else:
                log.debug("at.ack_already_gone", port=self.name, index=token.location)
            self._deleted[token] = None
            while len(self._deleted) > MAX_REMEMBERED_TOKENS:
                self._deleted.popitem(last=False)
            self._emitted.pop((token.location, token.digest), None)

    async def _retry_parked(self) -> None:
        for token in list(self._parked):
            if self.info is not None and token.iccid == self.info.iccid:
                await self.ack(token, retries=())

    async def _poll(self) -> None:
        await self._check_sim()
        info = self.info
        assert info is not None
        net = await self.modem.network()
        operator = info.operator
        if net.registered and (operator is None or net.mcc_mnc != info.mcc_mnc):
            operator = await self.modem.operator_name()
        self._update(
            replace(
                info,
                signal_dbm=net.signal_dbm,
                registered=net.registered,
                mcc_mnc=net.mcc_mnc if net.registered else info.mcc_mnc,
                operator=operator if net.registered else info.operator,
            )
        )
        if net.signal_dbm is not None:
            self._emit(DeviceStat("signal_dbm", net.signal_dbm, port=self.name))
