"""State and primitives shared by the parts of a port supervisor (see :mod:`drivers.at.port`).

Owns: the port's connection (open/close, up/down), its SIM as last reported and the rule for
when a change is worth a SimPresent, failure-streak logging, and the URC intake.  The
behaviour is split by concern: :mod:`drivers.at.port` (session, SMS, poll),
:mod:`drivers.at.recovery` (hang ladder, backoff) and :mod:`drivers.at.actions` (radio,
forwarding, number discovery).  Must not: send commands on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from drivers.at import commands as c
from drivers.at import sms
from drivers.at.framing import AtProtocol, PortClosed, Urc
from drivers.at.session import Modem
from drivers.at.transport import close_transport, open_port
from drivers.base import DeviceStat, DriverContext, Event, SimGone, SimInfo, SimPresent

log = structlog.get_logger(__name__)

# Module constants so tests can shrink them.
RECONNECT_INITIAL_S = 0.5
RECONNECT_CAP_S = 30.0
SIGNAL_REPORT_DELTA_DBM = 6  # smaller signal changes go to DeviceStat only


class PortState(enum.StrEnum):
    OPENING = "opening"
    INIT = "init"
    NO_SIM = "no_sim"
    READY = "ready"
    RECOVERING = "recovering"


@dataclass(frozen=True, slots=True)
class PortSettings:
    device: str
    index: int
    url: str
    baudrate: int = 115200
    storage: str = "SM"
    poll_s: float = 30.0
    sweep_s: float = 60.0
    command_timeout_s: float = 5.0
    radio_off_cfun: int | None = None
    reset_command: str | None = None
    reset_timeout_s: float = 60.0
    max_resets_per_hour: int = 4


class Backoff:
    """Capped exponential backoff with "equal jitter": uniform in [d/2, d]."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


#: Queued by the protocol's connection_lost so a port idling in its serve loop notices an
#: unplug at once instead of at the next poll.
LOST = Urc("<port lost>")


class PortBase:
    def __init__(
        self, settings: PortSettings, context: DriverContext, emit: Callable[[Event], None]
    ) -> None:
        self.settings = settings
        self.name = f"{settings.device}/{settings.index}"
        self.context = context
        self._emit = emit
        self.state = PortState.OPENING
        self._transport: asyncio.BaseTransport | None = None
        self._protocol: AtProtocol | None = None
        self._modem: Modem | None = None
        self._urcs: asyncio.Queue[Urc] = asyncio.Queue()
        self._ussd_waiter: asyncio.Future[c.UssdReply] | None = None
        self._storage_lock = asyncio.Lock()
        self._backoff = Backoff(RECONNECT_INITIAL_S, RECONNECT_CAP_S)
        self.info: SimInfo | None = None
        self._reported: SimInfo | None = None
        self._registered = asyncio.Event()
        self._deleted: OrderedDict[sms.AckToken, None] = OrderedDict()
        self._parked: OrderedDict[sms.AckToken, None] = OrderedDict()
        self._emitted: dict[tuple[int, str], float] = {}
        self._desired_radio: dict[str, bool] = {}  # by ICCID, as the core last asked
        self._forward_to: dict[str, str | None] = {}  # by ICCID, as last set successfully
        self._numbers: dict[str, tuple[str, str]] = {}
        self._discovery: asyncio.Task[None] | None = None
        self._resets: deque[float] = deque()
        self._hang_episodes = 0
        self._streak = 0
        self._storage_full = False
        self.up = False
        self.on_up_change: Callable[[PortBase], None] | None = None

    @property
    def modem(self) -> Modem:
        if self._modem is None:
            raise PortClosed("port not open")
        return self._modem

    async def open(self) -> None:
        """Open the port (a by-id symlink is resolved anew).  Raises PortClosed."""
        self.state = PortState.OPENING

        def factory() -> AtProtocol:
            protocol = AtProtocol(
                self.name, self._on_urc, on_lost=lambda _exc: self._on_lost(protocol)
            )
            return protocol

        transport, protocol = await open_port(self.settings.url, self.settings.baudrate, factory)
        self._transport, self._protocol = transport, protocol
        channel = c.AtChannel(protocol, default_timeout_s=self.settings.command_timeout_s)
        self._modem = Modem(channel)
        self._urcs = asyncio.Queue()  # URCs of a previous connection mean nothing now
        self._set_up(True)

    async def close_port(self) -> None:
        transport, self._transport = self._transport, None
        self._protocol = self._modem = None
        if transport is not None:
            await close_transport(transport)
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self._emit(DeviceStat("port_up", 1.0 if up else 0.0, port=self.name))
            if self.on_up_change is not None:
                self.on_up_change(self)

    async def shutdown(self) -> None:
        await self._stop_discovery()
        await self.close_port()

    def _failure(self, what: str, exc: BaseException) -> None:
        self._streak += 1
        level = log.warning if self._streak == 1 else log.debug
        level("at.port_failure", port=self.name, what=what, error=str(exc), streak=self._streak)

    def _healthy(self) -> None:
        if self._streak:
            log.info("at.port_recovered", port=self.name, after_failures=self._streak)
        self._streak = 0
        self._backoff.reset()

    async def _drop(self, reason: str) -> None:
        """The port is unusable: close it and report its SIM gone."""
        await self._stop_discovery()
        await self.close_port()
        self._sim_gone(reason)

    def _sim_gone(self, reason: str) -> None:
        if self.info is not None:
            log.info("at.sim_gone", port=self.name, iccid=self.info.iccid, reason=reason)
            self._emit(SimGone(self.name, self.info.iccid))
        self.info = self._reported = None
        self._registered.clear()
        self._emitted.clear()

    def _on_lost(self, protocol: AtProtocol) -> None:
        if protocol is self._protocol:
            self._urcs.put_nowait(LOST)

    def _on_urc(self, urc: Urc) -> None:
        if urc.line.startswith("+CUSD:"):
            waiter = self._ussd_waiter
            if waiter is not None and not waiter.done():
                try:
                    waiter.set_result(c.parse_cusd(urc.line))
                except (ValueError, IndexError):
                    log.debug("at.cusd_unparsable", port=self.name)
            else:
                log.info("at.ussd_unsolicited", port=self.name)  # network-initiated: ignored
            return
        self._urcs.put_nowait(urc)

    def _update(self, info: SimInfo) -> None:
        """Keep ``info``; emit SimPresent if it changed enough to tell the core."""
        self.info = info
        if info.registered:
            self._registered.set()
        else:
            self._registered.clear()
        old = self._reported
        if old is not None:
            a, b = old.signal_dbm, info.signal_dbm
            small = a is not None and b is not None and abs(a - b) < SIGNAL_REPORT_DELTA_DBM
            if replace(old, signal_dbm=b) == info and (a == b or small):
                return
        self._reported = info
        self._emit(SimPresent(info))

    async def _stop_discovery(self) -> None:
        task, self._discovery = self._discovery, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
