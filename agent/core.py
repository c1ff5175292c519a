"""The shared state every loop of the daemon works on, and the hub-health flag they share.

``Core`` is built once by :mod:`agent.app` and handed to the loops (device supervisors,
intake, sender, registrar, command poller); it holds no logic beyond small helpers, so each
loop's module can be read alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from agent.config import Config
from agent.hubclient import HubClient
from agent.inventory import Inventory
from agent.metrics import Metrics
from agent.store import AsyncStore

if TYPE_CHECKING:
    from agent.devices import DeviceSupervisor

log = structlog.get_logger("agent")

BEAT_S = 1.0  # idle loops beat at least this often (well inside any WatchdogSec)


@dataclass(slots=True)
class HubHealth:
    """Whether the hub accepts us, per endpoint.  Auth failure is logged once per streak
    (PROTOCOL.md 2).

    Errors are kept per endpoint (``"POST /messages"``, ``"GET /commands"``, …) and only a
    success of the same endpoint clears one: a long-poll that works says nothing about a
    ``POST /messages`` that keeps failing (issue #12).
    """

    metrics: Metrics
    last_ok: float | None = None
    #: endpoint → its standing error, oldest first (re-set errors move to the end)
    errors: dict[str, str] = field(default_factory=dict)
    #: endpoints whose standing error is an auth failure
    _auth: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def auth_failed(self) -> bool:
        return bool(self._auth)

    @property
    def last_error(self) -> str | None:
        """The most recent error that still stands, on any endpoint."""
        return next(reversed(self.errors.values()), None)

    def ok(self, endpoint: str) -> None:
        self._clear_auth(endpoint)
        self.errors.pop(endpoint, None)
        self.last_ok = time.time()

    def _clear_auth(self, endpoint: str) -> None:
        if endpoint in self._auth:
            self._auth.discard(endpoint)
            if not self._auth:
                log.info("hub accepts the API key again; resuming")
                self.metrics.auth_failure.set(0)

    def auth(self, endpoint: str, reason: str, retry_s: float) -> None:
        if not self._auth:
            log.error(
                "hub rejected the API key: sending stopped, everything stays queued",
                reason=reason,
                retry_in_s=retry_s,
            )
        self.error(endpoint, f"auth: {reason}")
        self._auth.add(endpoint)
        self.metrics.auth_failure.set(1)

    def error(self, endpoint: str, reason: str) -> None:
        """A standing error that is not an auth failure (it replaces one: the hub got past
        the key to answer this)."""
        self._clear_auth(endpoint)
        self.errors.pop(endpoint, None)
        self.errors[endpoint] = f"{endpoint}: {reason}"


@dataclass(slots=True)
class Core:
    config: Config
    store: AsyncStore
    inventory: Inventory
    hub: HubClient
    metrics: Metrics
    health: HubHealth
    devices: dict[str, DeviceSupervisor] = field(default_factory=dict)
    #: Set when the outbox may have new messages (intake commits, CLI resend).
    outbox_wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when command results wait to be reported.
    results_wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: ICCIDs the hub has received in a successful ``PUT /sims`` since start.  The sender
    #: holds back messages of other SIMs: the hub rejects messages of SIMs it does not know.
    registered: set[str] = field(default_factory=set)
    registered_wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Monotonic heartbeats of the core loops, read by the systemd watchdog.
    beats: dict[str, float] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def beat(self, loop: str) -> None:
        self.beats[loop] = time.monotonic()

    async def idle(self, loop: str, seconds: float, event: asyncio.Event | None = None) -> bool:
        """Wait up to ``seconds`` (or until ``event``), beating so the watchdog sees a live
        loop during long backoffs.  Returns True when the event fired."""
        deadline = time.monotonic() + seconds
        while True:
            self.beat(loop)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(min(left, BEAT_S)):
                    if event is None:
                        await asyncio.Future()  # never completes: just the timeout
                    else:
                        await event.wait()
                        return True
            except TimeoutError:
                continue
