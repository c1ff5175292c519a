"""The ``goip`` driver: a UDP "SMS server" for GoIP / Hybertone / DBLTek gateways.

Owns the UDP socket (an asyncio datagram endpoint bound in ``connect()``, closed in
``close()``), the per-line state (:mod:`drivers.goip.line`), the routing of datagrams, the
event queue the core reads, and the actions.  The GoIP is the client (research/gateways.md
section 2.1): each line sends from its own source port; we answer and command that address.

Behaviour, per line:

* Inventory from keepalives (A.2): each valid one is answered ``reg:$count;status:200;`` and
  reported as :class:`SimPresent` when the SIM, number, registration or radio changed (a
  signal-only change is a ``signal_dbm`` DeviceStat, as the AT driver does, so signal jitter
  does not churn the store).  A line silent for 3 of its observed keepalive periods (30 s
  until observed) is reported ``registered=False`` (offline) and is back with its next
  keepalive.  When every line heard is silent, the device is reported down (the gateway is off
  or cut off) and up again with the first line back.  A new ICCID on a line reports the old
  SIM gone first.
* Authentication on every datagram: an unknown id or a wrong password is refused (a keepalive
  gets no answer, as A.2 prescribes; a push gets ``KIND $recvid ERROR authentication failed``,
  the error form A.4 offers, so the GoIP stops retransmitting instead of retrying a password
  that will not change), logged once per streak with the peer address (never the password),
  and never stored: no event, and the line's command address is not moved by it.
* ``RECEIVE`` (A.4, section 2.3) becomes one :class:`SmsPart`: encoding TEXT, no SMSC
  timestamp (the protocol has none), ``raw`` = the canonical (line id, recvid, srcnum, msg)
  bytes, so a retransmission (same recvid) is the same message id and the core's dedup makes it
  one message.  ``RECEIVE $recvid OK`` is sent to the datagram's source only when the core
  calls ``ack()`` (after its fsync); until then the GoIP retransmits (3 s, 3 times) and each
  copy is reported again.  A retransmission of an already acked message (identical bytes, not
  merely the same recvid, which a GoIP may reuse after a reboot) is re-acked at once (our ack
  was lost).  Parts have no ``concat``: GoIP strips the UDH and sends each segment as
  its own RECEIVE (section 2.3); they are forwarded as separate messages rather than joined
  by a guess.
* The message carries no ICCID (section 2.3): it is attributed to the line's SIM from the last
  keepalive, or, right after an agent restart before the line's next keepalive, from the ICCID
  remembered in ``context.state``.  With neither, the RECEIVE is not acked (the GoIP retries;
  a keepalive may come first).
* Other pushes (DELIVER, STATE, RECORD, REMAIN, CELLS, ...) are acknowledged so the GoIP stops
  resending them, and otherwise ignored.
* ``set_radio``: ``module_ctl_i $sendid 1|2 $password`` (section 2.5), awaiting
  ``module_ctl_i $sendid ok`` (:mod:`drivers.goip.commands`: timeout, retries, CommandError
  with the reason).  ``ussd``: ``USSD $sendid $password $code`` -> ``USSD $sendid $reply``
  (A.5), then ``USSDEXIT`` to close the dialogue.
* No call forwarding capability: the issue (#7) asks this driver to answer ``forward`` with
  ``ok: false``, so ``set_forwarding`` is not overridden and the core refuses it.  Note that
  the vendor document does describe a ``CF`` command (A.5); see the project notes.
* Hostile input: datagrams over :data:`drivers.goip.wire.MAX_DATAGRAM` are dropped unread;
  garbage costs one bounded parse and a counter (logged at most once a minute, exported as
  ``datagrams_dropped``); SMS beyond :data:`MAX_QUEUED` waiting for the core are not acked
  (the GoIP's retransmission is the backpressure).

Limits of the protocol (not of this driver): the GoIP gives up on a RECEIVE after 3
retransmissions, about 12 s (A.4), so an SMS pushed while the agent is down longer than that
stays only in the GoIP's web inbox (section 2.6, not a reliable source); keep restarts short.
Whether ``disable_status`` mirrors ``module_ctl_i`` and whether the module state survives a
GoIP reboot are unverified (research section 11): the driver reports what keepalives show, and
the core re-applies the desired state when they disagree.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import re
import socket
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from typing import Any

import structlog

from drivers.base import (
    Capability,
    CommandError,
    DeviceDown,
    DeviceStat,
    DeviceUp,
    Driver,
    DriverContext,
    DriverError,
    Encoding,
    Event,
    EventStream,
    SimGone,
    SimInfo,
    SimPresent,
    SmsPart,
    split_host_port,
)
from drivers.goip import wire
from drivers.goip.commands import Commands
from drivers.goip.config import GoipConfig
from drivers.goip.line import Line, clean_iccid

log = structlog.get_logger(__name__)

#: SMS queued for the core beyond this many: further RECEIVEs are left unacked.
MAX_QUEUED = 10_000
#: Acked messages (SHA-256 of their raw bytes) remembered for re-acking a retransmission (the
#: GoIP retries 3 times within ~12 s, A.4, so a few thousand entries cover any realistic rate).
ACKED_MEMORY = 8192
#: Garbage and unknown-id datagrams are logged at most this often.
NOISE_LOG_S = 60.0
_USSD_CODE = r"^[0-9A-Za-z*#+]{1,64}$"


@dataclass(frozen=True, slots=True)
class AckToken:
    """What ``ack()`` needs to answer one RECEIVE."""

    line: str
    recvid: str
    addr: tuple[str, int]
    #: SHA-256 of the message's raw bytes: the already-acked memory is keyed by it, so a recvid
    #: the GoIP reuses (its counter restarts at boot) for a NEW SMS is not taken for a
    #: retransmission.
    digest: bytes = b""


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, driver: GoipDriver) -> None:
        self.driver = driver
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.driver._datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a line that went away: nothing to do, the line's next
        # keepalive tells where it is.
        self.driver._dropped += 1


class GoipDriver(Driver):
    """GoIP lines over the UDP SMS-server protocol.  See the module docstring."""

    config_model = GoipConfig
    capabilities = frozenset({Capability.RADIO, Capability.USSD})

    def __init__(self, config: GoipConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.config: GoipConfig = config
        self._lines: dict[str, Line] = {
            c.id: Line(c.id, c.password.get_secret_value(), f"{context.device}/{c.id}")
            for c in config.lines
        }
        self._by_port = {line.port: line for line in self._lines.values()}
        self._stream = EventStream()
        self._transport: asyncio.DatagramTransport | None = None
        self._endpoint: _Endpoint | None = None
        self._commands = Commands(self._sendto)
        self._watchdog: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._remembered: dict[str, str] = {}  # line id -> ICCID from context.state
        self._acked: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._queued = 0
        self._dropped = 0
        self._dropped_reported = 0
        self._noise_logged = -NOISE_LOG_S
        self._device_up = False

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        host, port = split_host_port(self.config.listen)
        for line in self._lines.values():
            iccid = clean_iccid(await self.context.state.get(_state_key(line.id)))
            if iccid is not None:
                self._remembered[line.id] = iccid
        loop = asyncio.get_running_loop()
        try:
            transport, endpoint = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self), local_addr=(host, port)
            )
        except OSError as exc:
            raise DriverError(f"cannot listen on UDP {self.config.listen}: {exc}") from exc
        self._transport, self._endpoint = transport, endpoint
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # best effort: the kernel caps it at rmem_max
            # Room for a burst (every line's keepalive at once, a garbage flood) so a real
            # datagram is not dropped in the kernel before we could read it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._stream.open()
        self._commands = Commands(self._sendto)
        self._device_up = True
        self._watchdog = asyncio.create_task(self._watch(), name=f"device:{self.name}:goip")
        bound = transport.get_extra_info("sockname")
        self._emit(DeviceUp(f"listening on UDP {bound[0]}:{bound[1]}, {len(self._lines)} lines"))

    async def close(self) -> None:
        self._commands.close()
        watchdog, self._watchdog = self._watchdog, None
        tasks, self._tasks = self._tasks, set()
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        if tasks:  # ICCID writes to the store: short, and worth finishing
            _done, late = await asyncio.wait(tasks, timeout=2.0)
            for task in late:
                task.cancel()
        transport, self._transport = self._transport, None
        endpoint, self._endpoint = self._endpoint, None
        if transport is not None and endpoint is not None:
            transport.close()
            # The socket is released a loop turn later; wait, so a reconnect can bind again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(endpoint.closed), 2.0)
        for line in self._lines.values():
            line.online, line.info, line.last_seen, line.last_count = False, None, None, None
            line.gaps.clear()
        self._queued = 0
        self._stream.end()

    @property
    def bound(self) -> tuple[str, int] | None:
        """The socket's address (tests listen on port 0)."""
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def events(self) -> AsyncIterator[Event]:
        async for item in self._stream.events():
            if isinstance(item, SmsPart):
                self._queued = max(0, self._queued - 1)
            yield item

    def _emit(self, event: Event) -> None:
        self._stream.put(event)

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"device:{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ datagrams

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = wire.parse(data)
        except wire.WireError as exc:
            self._noise(f"malformed datagram ({exc})", addr)
            return
        if isinstance(msg, wire.Reply):
            if not self._commands.reply(msg, addr):
                self._noise("reply to no command of ours", addr)
            return
        line = self._lines.get(msg.line)
        if line is None:
            self._noise("unknown line id", addr)
            return
        if not line.password_ok(msg.password):
            self._refuse(line, msg, addr)
            return
        if line.refusing:
            line.refusing = False
            log.info("goip line authenticated again", device=self.name, port=line.port)
        line.addr = addr
        if isinstance(msg, wire.Keepalive):
            self._keepalive(line, msg, addr)
        else:
            self._push(line, msg, addr)

    def _noise(self, what: str, addr: tuple[str, int]) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._noise_logged >= NOISE_LOG_S:
            self._noise_logged = now
            log.warning(
                "goip datagram dropped",
                device=self.name,
                reason=what,
                peer=f"{addr[0]}:{addr[1]}",
                dropped_total=self._dropped,
            )

    def _refuse(self, line: Line, msg: wire.Keepalive | wire.Push, addr: tuple[str, int]) -> None:
        line.refused_total += 1
        if isinstance(msg, wire.Push):
            self._sendto(wire.push_error(msg.kind, msg.recvid, "authentication failed"), addr)
        if line.refusing:
            return
        line.refusing = True
        log.warning(
            "goip line refused: wrong password",
            device=self.name,
            port=line.port,
            peer=f"{addr[0]}:{addr[1]}",
            message="keepalive" if isinstance(msg, wire.Keepalive) else msg.kind,
        )
        self._emit(DeviceStat("auth_refused", line.refused_total, port=line.port))

    def _keepalive(self, line: Line, msg: wire.Keepalive, addr: tuple[str, int]) -> None:
        self._sendto(wire.keepalive_ack(msg.count), addr)
        if line.heard(time.monotonic(), msg.count):
            log.info("goip line restarted", device=self.name, port=line.port, count=msg.count)
        info = line.sim_info(msg.fields)
        if info is None:
            if not line.no_iccid_noted:
                line.no_iccid_noted = True
                log.warning(
                    "goip line not listed: its keepalive carries no ICCID",
                    device=self.name,
                    port=line.port,
                )
                self._emit(DeviceStat("line_without_iccid", 1, port=line.port))
            if line.iccid is not None:
                self._emit(SimGone(line.port, line.iccid))
                line.iccid, line.info, line.online = None, None, False
            return
        line.no_iccid_noted = False
        if line.iccid is not None and line.iccid != info.iccid:
            self._emit(SimGone(line.port, line.iccid))
            line.info = None
        if self._remembered.get(line.id) != info.iccid:
            self._remembered[line.id] = info.iccid
            self._spawn(self._remember(line.id, info.iccid), "remember")
        line.iccid, line.online = info.iccid, True
        if not self._device_up:
            self._device_up = True
            self._emit(DeviceUp(f"line {line.id} is back"))
        self._report(line, info)

    async def _remember(self, line_id: str, iccid: str) -> None:
        try:
            await self.context.state.set(_state_key(line_id), iccid)
        except Exception as exc:  # the store is the core's; its trouble is not the line's
            log.warning("goip could not remember an ICCID", device=self.name, error=str(exc))

    def _report(self, line: Line, info: SimInfo) -> None:
        old, line.info = line.info, info
        if old == info:
            return
        if old is not None and dataclasses.replace(old, signal_dbm=info.signal_dbm) == info:
            self._emit(DeviceStat("signal_dbm", float(info.signal_dbm or 0), port=line.port))
            return
        self._emit(SimPresent(info))

    def _push(self, line: Line, msg: wire.Push, addr: tuple[str, int]) -> None:
        if msg.kind != "RECEIVE" or msg.msg is None:
            self._sendto(wire.push_ack(msg.kind, msg.recvid), addr)
            return
        srcnum = msg.fields.get("srcnum", "")[:64]
        raw = b"\x1f".join(
            [
                b"goip",
                line.id.encode(),
                msg.recvid.encode(),
                wire.exact_bytes(srcnum),
                wire.exact_bytes(msg.msg),
            ]
        )
        # A true retransmission has identical bytes; a reused recvid with other content is new.
        digest = hashlib.sha256(raw).digest()
        if digest in self._acked:  # committed before; our ack was lost on the way
            self._sendto(wire.push_ack("RECEIVE", msg.recvid), addr)
            return
        iccid = line.iccid or self._remembered.get(line.id)
        if iccid is None:
            self._noise(f"SMS on line {line.id} before any keepalive with an ICCID", addr)
            return
        if self._queued >= MAX_QUEUED:
            self._noise("SMS backlog full; left to the GoIP's retransmission", addr)
            return
        self._queued += 1
        self._emit(
            SmsPart(
                port=line.port,
                iccid=iccid,
                sender=wire.readable(srcnum).strip(),
                sent_at=None,
                encoding=Encoding.TEXT,
                raw=raw,
                ack_token=AckToken(line.id, msg.recvid, addr, digest),
                text=wire.readable(msg.msg),
            )
        )

    async def ack(self, token: Hashable) -> None:
        if not isinstance(token, AckToken):
            return
        self._sendto(wire.push_ack("RECEIVE", token.recvid), token.addr)
        key = token.digest
        self._acked[key] = None
        self._acked.move_to_end(key)
        while len(self._acked) > ACKED_MEMORY:
            self._acked.popitem(last=False)

    # ------------------------------------------------------------------ liveness

    async def _watch(self) -> None:
        """Mark silent lines offline; export the dropped-datagram counter."""
        while True:
            now = time.monotonic()
            wake = now + 1.0
            for line in self._lines.values():
                deadline = line.deadline()
                if not line.online or deadline is None:
                    continue
                if deadline <= now:
                    self._offline(line)
                else:
                    wake = min(wake, deadline)
            if self._dropped != self._dropped_reported:
                self._dropped_reported = self._dropped
                self._emit(DeviceStat("datagrams_dropped", self._dropped))
            await asyncio.sleep(max(0.01, wake - time.monotonic()))

    def _offline(self, line: Line) -> None:
        line.online = False
        log.warning(
            "goip line silent; offline",
            device=self.name,
            port=line.port,
            silent_s=round(time.monotonic() - (line.last_seen or 0), 1),
        )
        if line.info is not None:
            self._report(line, dataclasses.replace(line.info, registered=False, signal_dbm=None))
        if self._device_up and not any(x.online for x in self._lines.values()):
            # Every line that was heard is silent: the gateway itself is off or cut off.
            self._device_up = False
            self._emit(DeviceDown(f"no keepalive from any line of {self.name}"))

    # ------------------------------------------------------------------ actions

    def _line_of(self, sim: SimInfo) -> Line:
        line = self._by_port.get(sim.port)
        if line is None:
            raise CommandError(f"no GoIP line {sim.port}")
        if line.iccid is not None and line.iccid != sim.iccid:
            raise CommandError(f"SIM {sim.iccid} is no longer in {sim.port}")
        return line

    async def set_radio(self, sim: SimInfo, on: bool) -> None:
        line = self._line_of(sim)
        await self._commands.run(
            line,
            "module_ctl_i",
            ("1" if on else "2", line.password),
            timeout_s=self.config.command_timeout_s,
            tries=self.config.command_tries,
        )
        line.enabled = on
        if line.info is not None:
            registered = line.info.registered and on
            self._report(
                line,
                dataclasses.replace(
                    line.info,
                    radio_on=on,
                    registered=registered,
                    signal_dbm=line.info.signal_dbm if registered else None,
                ),
            )

    async def ussd(self, sim: SimInfo, code: str) -> str:
        if not re.fullmatch(_USSD_CODE, code):
            raise CommandError(f"not a USSD code: {code!r}")
        line = self._line_of(sim)
        reply = await self._commands.run(
            line,
            "USSD",
            (line.password, code),
            timeout_s=self.config.ussd_timeout_s,
            tries=2,  # A.5: re-sent once after 10 s of silence
            ok_verbs=frozenset({"USSD", "USSDEXIT"}),
            error_verbs=frozenset({"USSDERROR"}),
        )
        if reply.verb == "USSDEXIT":
            raise CommandError(f"line {line.id}: the USSD dialogue ended without a reply")
        # One-shot API: close the dialogue the network may have left open (a menu).
        self._commands.send_once(line, "USSDEXIT", (line.password,))
        return wire.readable(reply.rest).strip()


def _state_key(line_id: str) -> str:
    return f"iccid:{line_id}"
