"""AT framing: bytes on a port -> lines -> command responses and unsolicited result codes.

Owns: opening a port (``serial_for_url`` paths, ``socket://``, ``rfc2217://``), reading it
without ``select()``, splitting the byte stream into lines, and classifying every line against
the one command in flight (TS 27.007 clause 4.1 / V.250 5.7: "<CR><LF>response<CR><LF>" and
final result codes).  URCs are handed to a callback wherever they arrive, including between a
response line and its ``OK`` (python-gsmmodem swallowed ``+CMTI`` there; see
research/at-modems.md case A).

Must not: know what a command means (that is :mod:`drivers.at.commands`), retry, or decide that
a modem is hung (that is the port supervisor).  Nothing here ever raises out of the reader: a bad
byte is counted and dropped, an exception in a URC callback is logged and forgotten.

Ports are opened and read by :mod:`drivers.at.transport`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

#: After a timeout, wait until the line has been quiet this long before the resync ping, so a
#: late answer to the timed-out command is not taken as the next command's answer (case F).
RESYNC_QUIET_S = 0.2
#: ...but never wait longer than this for the quiet (a babbling modem is the ladder's problem).
RESYNC_MAX_S = 2.0
#: Ping rounds before a resync gives up (each round can absorb one late answer).
RESYNC_ROUNDS = 3
#: Timeout of the resync ``AT`` ping.
RESYNC_PING_TIMEOUT_S = 2.0
#: A "line" longer than this without CR/LF is noise from a confused device: dropped.
MAX_LINE = 16384
#: How long a +CUSD string may span lines (a USSD reply with embedded newlines, TS 27.007 7.15).
MAX_CONTINUATION_LINES = 20

# V.250 5.7.1 final result codes plus the TS 27.007 9.2 / TS 27.005 3.2.5 error reports.
OK_RESULTS = frozenset({"OK", "CONNECT"})
ERROR_RESULTS = frozenset(
    {"ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "COMMAND NOT SUPPORT", "ABORTED"}
)
ERROR_PREFIXES = ("+CME ERROR:", "+CMS ERROR:")

# Unsolicited result codes seen on the modems we support.  A line with one of these prefixes is
# a URC unless the command in flight declared it as its own response prefix (``AT+CREG?``
# answers ``+CREG: 0,1``; the same prefix unsolicited is a URC).
URC_PREFIXES: tuple[str, ...] = (
    "+CMTI:",  # TS 27.005 3.4.1: new SMS stored, "<mem>",<index>
    "+CMT:",  # TS 27.005 3.4.1: SMS routed to TE, PDU on the next line
    "+CDSI:",  # TS 27.005 3.4.1: status report stored
    "+CDS:",  # TS 27.005 3.4.1: status report routed to TE, PDU on the next line
    "+CBM:",  # TS 27.005 3.4.1: cell broadcast, PDU on the next line
    "+CUSD:",  # TS 27.007 7.15: USSD response / network-initiated USSD
    "+CREG:",  # TS 27.007 7.2
    "+CGREG:",  # TS 27.007 10.1.20
    "+CEREG:",  # TS 27.007 10.1.22
    "+C5GREG:",
    "+CPIN:",  # SIM state changes (SIM800, EC25 on hot-plug)
    "+CFUN:",  # SIM800 at boot: "+CFUN: 1"
    "+CRING:",
    "+CLIP:",
    "+CCWA:",
    "+CSSU:",
    "+CIEV:",
    "+CTZV:",
    "+CTZE:",
    "+CTZU:",
    "*PSUTTZ:",  # SIM800 network time
    "DST:",
    "+QIND:",  # Quectel EC25: "SMS DONE", "PB DONE", csq...
    "+QUSIM:",  # Quectel EC25: SIM inserted/ready
    "+QSTK",
    "+CPMS:",  # no modem sends it unsolicited, but it is harmless to route
    "+PACSP",
    "+STIN:",
    "+CMGS:",
)
URC_WORDS = frozenset(
    {
        "RDY",  # SIM800/EC25 boot
        "RING",
        "SMS Ready",  # SIM800: SMS subsystem ready after SIM init
        "Call Ready",  # SIM800
        "PB DONE",
        "NORMAL POWER DOWN",
        "POWERED DOWN",
        "UNDER-VOLTAGE POWER DOWN",
        "UNDER-VOLTAGE WARNNING",
        "OVER-VOLTAGE POWER DOWN",
        "OVER-VOLTAGE WARNNING",
    }
)
#: URCs whose next line is data (a hex PDU), TS 27.005 3.4.1.
URC_WITH_DATA = ("+CMT:", "+CDS:", "+CBM:")

_HEX = re.compile(r"^[0-9A-Fa-f]+$")


def is_final(line: str) -> bool:
    return line in OK_RESULTS or line in ERROR_RESULTS or line.startswith(ERROR_PREFIXES)


def is_urc(line: str) -> bool:
    """True for lines that are unsolicited wherever they appear (unless claimed by a command)."""
    # Huawei's "^" URCs (^RSSI, ^HCSQ, ^MODE, ^SRVST, ^SIMST, ^BOOT, ^DSFLOWRPT...) are
    # periodic noise on E3372/E173 until AT^CURC=0; every one of them is unsolicited.
    return line.startswith(URC_PREFIXES) or line.startswith("^") or line in URC_WORDS


# --------------------------------------------------------------------------- errors, results


class AtError(Exception):
    """Base of framing errors."""


class AtCommandError(AtError):
    """The modem answered with an error final result code."""

    def __init__(self, command: str, result: str) -> None:
        super().__init__(f"{command}: {result}")
        self.command = command
        self.result = result
        self.kind, self.code = _split_error(result)


def _split_error(result: str) -> tuple[str, int | None]:
    for kind, prefix in (("CME", "+CME ERROR:"), ("CMS", "+CMS ERROR:")):
        if result.startswith(prefix):
            value = result[len(prefix) :].strip()
            # AT+CMEE=1 gives numbers; a modem left in verbose mode (CMEE=2) gives text.
            return kind, int(value) if value.isdigit() else None
    return result, None


class AtTimeout(AtError):
    """No final result code in time."""


class PortClosed(AtError):
    """The port is gone (unplugged, EOF, I/O error) or was closed."""


@dataclass(frozen=True, slots=True)
class Response:
    """The intermediate lines of one command and its final result code."""

    command: str
    lines: tuple[str, ...]
    final: str = "OK"

    def prefixed(self, prefix: str) -> list[str]:
        """The lines starting with ``prefix``, prefix and following blanks removed."""
        return [ln[len(prefix) :].lstrip() for ln in self.lines if ln.startswith(prefix)]


@dataclass(frozen=True, slots=True)
class Urc:
    """One unsolicited result code; ``data`` is the PDU line after ``+CMT:``/``+CDS:``."""

    line: str
    data: str | None = None


# --------------------------------------------------------------------------- log scrubbing

_NUMBER = re.compile(r"\d{7,}")
# Hex with at least one letter (an all-digit run is masked as a number instead).
_LONG_HEX = re.compile(r"\b(?=[0-9A-Fa-f]*[A-Fa-f])[0-9A-Fa-f]{16,}\b")
_CUSD_TEXT = re.compile(r'(\+CUSD:\s*\d+\s*,\s*|AT\+CUSD=\d+\s*,\s*)"[^"]*"?')


def scrub(line: str) -> str:
    """A wire line fit for a debug log: numbers, PDUs and USSD texts redacted (python-kasa).

    Phone numbers (and IMSI/ICCID/IMEI, which look the same) keep their last two digits; hex
    PDUs keep only their length, since they carry the sender and the text.
    """
    line = _CUSD_TEXT.sub(lambda m: f'{m.group(1)}"<redacted>"', line)
    line = _LONG_HEX.sub(lambda m: f"<hex {len(m.group(0)) // 2} bytes>", line)
    return _NUMBER.sub(lambda m: "*" * (len(m.group(0)) - 2) + m.group(0)[-2:], line)


def _debug_enabled() -> bool:
    is_enabled_for = getattr(log, "is_enabled_for", None)
    return bool(is_enabled_for(10)) if callable(is_enabled_for) else True


# --------------------------------------------------------------------------- protocol


@dataclass(slots=True)
class _Pending:
    text: str
    prefixes: tuple[str, ...]
    data_after: tuple[str, ...]
    future: asyncio.Future[Response]
    prompt: asyncio.Future[None] | None = None
    lines: list[str] = field(default_factory=list)
    expect_data: bool = False


class AtProtocol(asyncio.Protocol):
    """Line classification and the one-command-in-flight discipline for one port."""

    def __init__(
        self,
        name: str,
        on_urc: Callable[[Urc], None],
        *,
        on_lost: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self.name = name
        self._on_urc = on_urc
        self._on_lost = on_lost
        self._transport: asyncio.BaseTransport | None = None
        self._buffer = bytearray()
        self._pending: _Pending | None = None
        self._urc_with_data: str | None = None
        self._continuation: list[str] | None = None
        self._lock = asyncio.Lock()
        self._needs_resync = False
        self._lost: Exception | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self.last_rx = time.monotonic()
        self.stats: collections.Counter[str] = collections.Counter()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self._buffer += data
        try:
            self._drain_buffer()
        except Exception:  # never let the reader die (python-gsmmodem case C)
            log.exception("at.reader_error", port=self.name)
            self._buffer.clear()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed.done():
            return
        self._lost = exc if exc is not None else PortClosed("port closed")
        self._closed.set_result(None)
        pending, self._pending = self._pending, None
        if pending is not None:
            for fut in (pending.future, pending.prompt):
                if fut is not None and not fut.done():
                    fut.set_exception(PortClosed(str(self._lost)))
        if self._on_lost is not None:
            try:
                self._on_lost(exc)
            except Exception:
                log.exception("at.on_lost_error", port=self.name)

    # -- state

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- commands

    async def command(
        self,
        text: str,
        *,
        timeout_s: float,
        prefixes: Iterable[str] = (),
        data_after: Iterable[str] = (),
        payload: bytes | None = None,
    ) -> Response:
        """Send ``text`` and return its response; raise on an error result, timeout or loss.

        ``prefixes`` are the response prefixes the command owns (so ``+CREG:`` is a response to
        ``AT+CREG?`` and a URC otherwise).  ``data_after`` names headers whose next line is data
        (``+CMGR:``, ``+CMGL:``).  ``payload`` is written after the ``"> "`` prompt, ended by
        Ctrl-Z (TS 27.005 3.5.1).
        """
        async with self._lock:
            if self._lost is not None:
                raise PortClosed(str(self._lost))
            if self._needs_resync:
                await self._resync()
            return await self._send(text, timeout_s, tuple(prefixes), tuple(data_after), payload)

    async def _send(
        self,
        text: str,
        timeout_s: float,
        prefixes: tuple[str, ...],
        data_after: tuple[str, ...],
        payload: bytes | None,
    ) -> Response:
        loop = asyncio.get_running_loop()
        pending = _Pending(
            text,
            prefixes,
            data_after,
            loop.create_future(),
            loop.create_future() if payload is not None else None,
        )
        # Register before writing: the answer may come back before write() returns.
        self._pending = pending
        try:
            self._trace("at.tx", text)
            self._write(text.encode("ascii") + b"\r")
            async with asyncio.timeout(timeout_s):
                if pending.prompt is not None and payload is not None:
                    await pending.prompt
                    self._write(payload + b"\x1a")
                response = await pending.future
        except TimeoutError:
            self.stats["timeouts"] += 1
            self._needs_resync = True
            raise AtTimeout(f"{text}: no answer in {timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._needs_resync = True
            raise
        finally:
            if self._pending is pending:
                self._pending = None
        if response.final not in OK_RESULTS:
            self.stats["error_results"] += 1
            raise AtCommandError(text, response.final)
        return response

    async def _resync(self) -> None:
        """After a timeout, prove the line is in step again before the next command.

        The timed-out command's answer may still come.  Wait for a quiet line, ping with
        ``AT``, then wait for quiet again: a ping answer that carries lines, or a stray final
        result after it, means a late answer was taken for the ping, so ping once more.
        """
        for _ in range(RESYNC_ROUNDS):
            await self._wait_quiet()
            strays = self.stats["stray_results"]
            try:
                response = await self._send("AT", RESYNC_PING_TIMEOUT_S, (), (), None)
            except AtCommandError:
                continue  # a late ERROR answered the ping
            await self._wait_quiet()
            if not response.lines and self.stats["stray_results"] == strays:
                self.stats["resyncs"] += 1
                self._needs_resync = False
                return
        raise AtTimeout("line does not settle after a timeout")

    async def _wait_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESYNC_MAX_S
        while loop.time() < deadline:
            quiet = time.monotonic() - self.last_rx
            if quiet >= RESYNC_QUIET_S:
                return
            await asyncio.sleep(RESYNC_QUIET_S - quiet)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self.is_closed or not isinstance(transport, asyncio.WriteTransport):
            raise PortClosed("port not open")
        transport.write(data)

    def _trace(self, event: str, line: str) -> None:
        if _debug_enabled():
            log.debug(event, port=self.name, line=scrub(line))

    # -- line assembly

    def _drain_buffer(self) -> None:
        buf = self._buffer
        while buf:
            # Skip the line terminators between lines (V.250 uses S3/S4 = CR/LF; some modems
            # send bare LF, some CR CR LF).
            start = 0
            while start < len(buf) and buf[start] in (0x0D, 0x0A):
                start += 1
            if start:
                del buf[:start]
                if not buf:
                    return
            pending = self._pending
            # TS 27.005 3.5.1: the prompt is "<CR><LF><greater_than><space>" with no line end.
            if (
                pending is not None
                and pending.prompt is not None
                and not pending.prompt.done()
                and (buf.startswith(b"> ") or buf == b">")
            ):
                del buf[: 2 if buf.startswith(b"> ") else 1]
                pending.prompt.set_result(None)
                continue
            ends = [i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0]
            if not ends:
                if len(buf) > MAX_LINE:
                    self._garbage(len(buf))
                    buf.clear()
                return
            end = min(ends)
            raw = bytes(buf[:end])
            del buf[: end + 1]
            line = self._clean(raw)
            if line:
                self._assemble(line)

    def _clean(self, raw: bytes) -> str:
        """Printable ASCII only: an 0xFF from a glitching USB link must not survive as text."""
        text = raw.decode("latin-1")
        kept = "".join(ch for ch in text if " " <= ch <= "~")
        if len(kept) != len(text):
            self._garbage(len(text) - len(kept))
        return kept.strip()

    def _garbage(self, count: int) -> None:
        self.stats["garbage_bytes"] += count
        log.debug("at.garbage", port=self.name, bytes=count, total=self.stats["garbage_bytes"])

    def _assemble(self, line: str) -> None:
        # A +CUSD string may contain line breaks (TS 27.007 7.15 <str> is free text in the TE
        # character set): join until its quotes balance.
        if self._continuation is not None:
            self._continuation.append(line)
            joined = "\n".join(self._continuation)
            if joined.count('"') % 2 == 0 or len(self._continuation) >= MAX_CONTINUATION_LINES:
                self._continuation = None
                self._classify(joined)
            return
        if line.startswith("+CUSD:") and line.count('"') % 2 == 1:
            self._continuation = [line]
            return
        self._classify(line)

    # -- classification

    def _classify(self, line: str) -> None:
        self.stats["lines"] += 1
        self._trace("at.rx", line)
        if self._urc_with_data is not None:
            header, self._urc_with_data = self._urc_with_data, None
            if _HEX.match(line):
                self._dispatch(Urc(header, line))
                return
            self._dispatch(Urc(header))  # the data never came; classify this line normally
        pending = self._pending
        if pending is None or pending.future.done():
            self._unsolicited(line)
            return
        if pending.expect_data:
            if not is_urc(line) or _HEX.match(line):
                pending.lines.append(line)
                pending.expect_data = False
                return
            self._unsolicited(line)  # a URC between a +CMGL header and its PDU
            return
        if line.upper() == pending.text.upper():
            return  # echo (before ATE0, or after a reset turned it back on)
        if is_final(line):
            pending.future.set_result(Response(pending.text, tuple(pending.lines), line))
            return
        if pending.prefixes and line.startswith(pending.prefixes):
            pending.lines.append(line)
            if pending.data_after and line.startswith(pending.data_after):
                pending.expect_data = True
            return
        if is_urc(line):
            self._unsolicited(line)
            return
        pending.lines.append(line)

    def _unsolicited(self, line: str) -> None:
        if is_final(line):
            # A result nobody waits for: the late answer of a timed-out command.
            self.stats["stray_results"] += 1
            log.debug("at.stray_result", port=self.name, line=line)
            if line.startswith("+CMS ERROR:"):
                # ...or SIM800's unsolicited "+CMS ERROR: 322" when an incoming SMS finds
                # the storage full: the supervisor wants to hear about that one.
                self._dispatch(Urc(line))
            return
        if line.startswith(URC_WITH_DATA):
            self._urc_with_data = line
            return
        self._dispatch(Urc(line))

    def _dispatch(self, urc: Urc) -> None:
        self.stats["urcs"] += 1
        try:
            self._on_urc(urc)
        except Exception:
            log.exception("at.urc_callback_error", port=self.name, urc=scrub(urc.line))
