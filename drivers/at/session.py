"""Modem operations on one open port: init sequence, SIM and network reads, SMS storage, USSD.

Owns: the order of commands for each operation and the tolerance of each step (what may fail
and what must not), bounded retries for a busy SIM.  Each method is one operation on a modem
that is there; it raises framing errors (:class:`AtTimeout`, :class:`PortClosed`) for the port
supervisor to act on.

Must not: reconnect, keep SIM state across operations, emit events, or decide policy (when to
sweep, whether a SIM changed).  That is :mod:`drivers.at.port`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from drivers.at import commands as c
from drivers.at import quirks as q
from drivers.at.framing import AtCommandError, AtError

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: AT+CPIN? answering "SIM busy" (CME 14), "please wait" (CME 515, Huawei/Sierra during SIM
#: init) or "+CPIN: NOT READY" is retried after these pauses, then the SIM counts as absent
#: until the next poll.  python-gsmmodem retried CME 14 forever (research exp5).
SIM_BUSY_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
_BUSY_CODES = frozenset({14, 515, 13})  # 13 "SIM failure" is transient right after insertion


class SimState:
    READY = "READY"
    ABSENT = "ABSENT"  # CME 10 / NOT INSERTED, or busy past the retries
    LOCKED = "LOCKED"  # SIM PIN / PUK / PH-SIM ...: unusable without a secret we do not have


@dataclass(frozen=True, slots=True)
class Identity:
    maker: str | None = None
    model: str | None = None
    firmware: str | None = None
    imei: str | None = None


@dataclass(frozen=True, slots=True)
class Network:
    signal_dbm: int | None
    registered: bool
    stat: int | None  # best of CREG / CEREG
    mcc_mnc: str | None


class Modem:
    """One modem behind an :class:`~drivers.at.commands.AtChannel`."""

    def __init__(self, channel: c.AtChannel, quirks: q.Quirks = q.GENERIC) -> None:
        self.channel = channel
        self.quirks = quirks
        self.identity = Identity()
        self._cereg = quirks.has_cereg
        self._cops_format: int | None = None

    async def run(self, cmd: c.Command[T], **args: Any) -> T:
        return await self.channel.run(cmd, **args)

    # -- link and identity

    async def init_link(self) -> None:
        """Echo off and numeric errors.  ATE0 is answered with an echo before it takes effect."""
        await self.run(c.ECHO_OFF)
        try:
            await self.run(c.CMEE)
        except AtCommandError as exc:
            log.debug("at.cmee_refused", error=exc.result)

    async def identify(self, *, radio_off_cfun: int | None = None) -> Identity:
        """+CGMI/+CGMM/+CGMR/+CGSN, ATI for what they do not answer; picks the quirks."""
        maker = await self._optional(c.CGMI)
        model = await self._optional(c.CGMM)
        firmware = await self._optional(c.CGMR)
        imei = await self._optional(c.CGSN)
        values = {"maker": maker, "model": model, "firmware": firmware, "imei": imei}
        if not values["maker"] or not values["model"]:
            ati = await self._optional(c.ATI) or {}
            for key in ("maker", "model", "firmware", "imei"):
                values[key] = values.get(key) or ati.get(key)
        self.identity = Identity(**values)
        self.quirks = q.with_overrides(
            q.select(self.identity.maker, self.identity.model), radio_off_cfun=radio_off_cfun
        )
        self._cereg = self.quirks.has_cereg
        return self.identity

    async def _optional(self, cmd: c.Command[T]) -> T | None:
        try:
            return await self.run(cmd)
        except (AtCommandError, c.ParseError) as exc:
            log.debug("at.optional_failed", command=cmd.template, error=str(exc))
            return None

    # -- SIM

    async def sim_state(self) -> str:
        """TS 27.007 8.3 AT+CPIN?, with bounded retries while the SIM is busy."""
        for delay in (*SIM_BUSY_DELAYS_S, None):
            try:
                code = await self.run(c.CPIN)
            except AtCommandError as exc:
                if exc.code == 10 or exc.code == 310:
                    return SimState.ABSENT
                if exc.code not in _BUSY_CODES:
                    raise
                code = "BUSY"
            if code == "READY":
                return SimState.READY
            if code.startswith(("SIM PIN", "SIM PUK", "PH-", "SIM PIN2")):
                return SimState.LOCKED
            if code in {"NOT INSERTED", "NO SIM"}:
                return SimState.ABSENT
            if delay is None:
                break
            await asyncio.sleep(delay)  # NOT READY / BUSY: the SIM is still initialising
        return SimState.ABSENT

    async def read_iccid(self) -> str:
        """The quirk's ICCID commands in order, then any other; the first valid answer wins."""
        order = list(self.quirks.iccid_commands)
        order += [k for k in c.ICCID_COMMANDS if k not in order]
        errors: list[str] = []
        for key in order:
            try:
                return await self.run(c.ICCID_COMMANDS[key])
            except AtCommandError as exc:
                if exc.code == 10:  # SIM not inserted: no other command will do better
                    raise
                errors.append(f"{key}: {exc.result}")
            except c.ParseError as exc:
                errors.append(f"{key}: {exc}")
        raise c.ParseError("no ICCID command worked: " + "; ".join(errors))

    async def read_imsi(self) -> str | None:
        return await self._optional(c.CIMI)

    # -- network

    async def network(self) -> Network:
        """CSQ, CREG?, CEREG? and the numeric operator, tolerating refusals of each."""
        signal = await self._optional(c.CSQ)
        stats: list[int] = []
        creg = await self._optional(c.CREG)
        if creg is not None:
            stats.append(creg)
        if self._cereg:
            try:
                stats.append(await self.run(c.CEREG))
            except AtCommandError:
                self._cereg = False  # 2G/3G firmware: ERROR or COMMAND NOT SUPPORT
            except c.ParseError:
                pass
        registered = any(s in c.REGISTERED_STATS for s in stats)
        stat = next((s for s in stats if s in c.REGISTERED_STATS), stats[0] if stats else None)
        mcc_mnc = None
        if registered:
            op = await self.operator(numeric=True)
            if op is not None and op.value and op.value.isdigit():
                mcc_mnc = op.value
        return Network(signal, registered, stat, mcc_mnc)

    async def operator(self, *, numeric: bool) -> c.Operator | None:
        """+COPS? in the format asked; TS 27.007 7.3 +COPS=3,<format> sets only the format."""
        fmt = 2 if numeric else 0
        try:
            if self._cops_format != fmt:
                await self.run(c.COPS_FORMAT, fmt=fmt)
                self._cops_format = fmt
            return await self.run(c.COPS)
        except (AtCommandError, c.ParseError) as exc:
            log.debug("at.cops_failed", error=str(exc))
            return None

    async def operator_name(self) -> str | None:
        op = await self.operator(numeric=False)
        return op.value if op is not None else None

    async def cfun(self) -> int | None:
        return await self._optional(c.CFUN_READ)

    async def set_cfun(self, fun: int, *, timeout_s: float | None = None) -> None:
        await self.channel.run(c.CFUN_SET, timeout_s=timeout_s, fun=fun)

    # -- SMS

    async def setup_sms(self, storage: str) -> c.Storage:
        """PDU mode, one storage for read/write/receive, +CMTI on arrival, vendor extras."""
        await self.run(c.CMGF_PDU)
        used = await self.run(c.CPMS_SET, mem=storage)
        await self.run(c.CNMI)
        for command in self.quirks.extra_init:
            try:
                await self.channel.protocol.command(
                    command, timeout_s=self.channel.timeout_for("default")
                )
            except AtCommandError as exc:
                log.info("at.extra_init_refused", command=command, error=exc.result)
        return used

    async def storage(self, storage: str) -> c.Storage:
        return await self.run(c.CPMS_SET, mem=storage)

    async def read(self, index: int) -> c.StoredPdu | None:
        try:
            return await self.run(c.cmgr(index))
        except AtCommandError as exc:
            if exc.code == 321:  # TS 27.005 3.2.5 invalid memory index: nothing there
                return None
            raise

    async def list_all(self) -> list[c.StoredPdu]:
        return await self.run(c.CMGL_ALL)

    async def delete(self, index: int) -> None:
        await self.run(c.CMGD, index=index)

    # -- own number

    async def cnum(self) -> str | None:
        return await self._optional(c.CNUM)

    async def phonebook_number(self) -> str | None:
        """The "ON" (own numbers, TS 27.007 8.11) phonebook: first entry with a number."""
        try:
            await self.run(c.CPBS_ON)
            first, last = await self.run(c.CPBR_TEST)
            return await self.run(c.CPBR, first=first, last=min(last, first + 9))
        except (AtCommandError, c.ParseError) as exc:
            log.debug("at.phonebook_failed", error=str(exc))
            return None

    async def send_ussd(self, code: str) -> None:
        text = pack_gsm7_hex(code) if self.quirks.ussd_packed else code
        await self.run(c.CUSD, code=text)

    async def cancel_ussd(self) -> None:
        try:
            await self.run(c.CUSD_CANCEL)
        except AtError:
            pass


# --------------------------------------------------------------------------- USSD packing

_GSM7_BASIC = {ch: i for i, ch in enumerate("@£$¥èéùìòÇ\nØø\rÅå")} | {
    ch: 0x20 + i for i, ch in enumerate(" !\"#¤%&'()*+,-./0123456789:;<=>?")
}


def pack_gsm7_hex(text: str) -> str:
    """USSD string as packed 7-bit hex (TS 23.038 6.1.2.3.1), for Huawei's transparent mode.

    Letters are not needed for USSD codes but are packed too (the default alphabet has A-Z and
    a-z at their ASCII positions).  If the last octet would end with 7 spare bits, a CR fills
    them so the receiver does not read an extra "@" (6.1.2.3.1).
    """
    septets: list[int] = []
    for ch in text:
        if ch in _GSM7_BASIC:
            septets.append(_GSM7_BASIC[ch])
        elif ch.isascii() and ch.isalpha():
            septets.append(ord(ch))
        else:
            raise ValueError(f"{ch!r} is not in the GSM 7 bit default alphabet subset we pack")
    if len(septets) % 8 == 7:
        septets.append(0x0D)
    bits = sum(s << (7 * i) for i, s in enumerate(septets))
    n_octets = (7 * len(septets) + 7) // 8
    return bits.to_bytes(n_octets, "little").hex().upper()
