"""systemd readiness, status and watchdog notifications (``sd_notify(3)``), spoken directly.

This module owns the datagrams the agent sends to ``$NOTIFY_SOCKET`` and the decision to keep
feeding systemd's watchdog.  It does not own the loops it watches: the core registers one
liveness probe per loop (sender, command poller, each device supervisor) and each loop beats
its own heartbeat.  The protocol is a few ``KEY=value`` lines in one unix datagram, so speaking
it here avoids a libsystemd binding (a C extension to build on every modem host) for forty
lines of socket code.

Nothing here raises on a failed send: a daemon that dies because systemd's socket went away
would turn a cosmetic problem (status text not updated) into an outage.  Without
``$NOTIFY_SOCKET`` (a terminal, a test, another supervisor) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

__all__ = ["Heartbeat", "Notifier", "Probe", "Watchdog", "watchdog_interval"]

log = structlog.get_logger(__name__)

Probe = Callable[[], float]
"""A liveness probe: returns the ``time.monotonic()`` of its loop's last heartbeat."""


class Notifier:
    """Sends ``sd_notify`` messages to the socket systemd named in ``$NOTIFY_SOCKET``.

    Build it with :meth:`from_env`; an instance made with ``address=None`` is disabled and
    every method returns ``False`` without doing anything.
    """

    def __init__(self, address: str | None) -> None:
        # "@name" is a Linux abstract socket: the kernel name starts with a NUL byte instead.
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self._sock: socket.socket | None = None
        self._failed = False  # log the first failure at WARNING, the rest at DEBUG

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (``os.environ`` unless *env* is given).

        Only filesystem paths and ``@abstract`` names are understood; anything else (e.g. the
        ``vsock:`` addresses of systemd 254+ in VMs) disables notifications with a warning
        rather than failing start-up.
        """
        address = (os.environ if env is None else env).get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("sd_notify.unsupported_address", address=address)
            address = None
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; ``True`` if the kernel took it."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Non-blocking: a full receive queue in PID 1 must not stall the event loop.
                # The datagram is dropped instead, and the next ping or status replaces it.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            level = log.debug if self._failed else log.warning
            level("sd_notify.send_failed", error=str(exc), message=assignments[0])
            self._failed = True
            return False
        return True

    def ready(self) -> bool:
        """Start-up is complete: systemd marks the unit active (``Type=notify``)."""
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        # A newline would start a new assignment in the datagram: keep the status one line.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping: resets systemd's ``WatchdogSec=`` timer."""
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun (sent on SIGTERM, before in-flight work is finished)."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun; send :meth:`ready` again when it is done.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd 253+) and ignored by
        older managers.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """systemd's watchdog timeout in seconds (``WatchdogSec=``), or ``None`` if not enabled.

    The value is the full timeout: ping at half of it, as ``sd_watchdog_enabled(3)`` advises.
    ``$WATCHDOG_PID`` names the process the timeout is meant for; a child that inherited the
    environment must not believe it is watched.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Heartbeat:
    """The last-beat time of one loop; ``beat()`` in the loop, register ``last`` as the probe.

    It starts fresh at creation, so a loop gets one staleness bound to reach its first beat.
    """

    __slots__ = ("_clock", "_last")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def last(self) -> float:
        return self._last


class Watchdog:
    """Feeds systemd's watchdog only while every registered loop is alive.

    ``interval`` is the full watchdog timeout (:func:`watchdog_interval`); pings go out every
    ``interval / 2``.  A probe is stale when its last heartbeat is older than its bound
    (``stale_after``, default ``interval``).  While any probe is stale no ping is sent, so
    systemd kills and restarts the service after the timeout (``Restart=on-failure``): a loop
    stuck in a driver or a lock is a fault the process cannot repair from the inside, and
    being alive otherwise (admin HTTP still answering) must not hide it.  A blocked event loop
    stops the pings too, since they are sent from it.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float | None,
        *,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval}")
        self.notifier = notifier
        self.interval = interval
        self.stale_after = stale_after if stale_after is not None else interval
        self._clock = clock
        self._probes: dict[str, tuple[Probe, float | None]] = {}
        self._reported: set[str] = set()  # stale names already logged, so each is logged once

    def add_probe(self, name: str, probe: Probe, *, stale_after: float | None = None) -> None:
        """Watch a loop.  *stale_after* overrides the default bound for loops that beat slowly
        (e.g. a long-poll): it must exceed the longest gap between two beats of that loop."""
        self._probes[name] = (probe, stale_after)

    def remove_probe(self, name: str) -> None:
        self._probes.pop(name, None)
        self._reported.discard(name)

    def stale(self) -> dict[str, float]:
        """Stale probes by name, each with its heartbeat age in seconds (``inf``: probe failed).

        Also the answer to "is the agent healthy" for ``/healthz``.
        """
        now = self._clock()
        found: dict[str, float] = {}
        for name, (probe, own_bound) in self._probes.items():
            bound = own_bound if own_bound is not None else self.stale_after
            try:
                age = now - probe()
            except Exception:
                log.exception("watchdog.probe_failed", probe=name)
                age = float("inf")
            if bound is not None and age > bound:
                found[name] = age
        return found

    def check(self) -> bool:
        """Ping if every probe is fresh; log newly stale and recovered loops.

        Returns ``True`` if a ping was sent.
        """
        stale = self.stale()
        for name in sorted(stale.keys() - self._reported):
            log.error("watchdog.loop_stuck", probe=name, age_s=round(stale[name], 1))
        for name in sorted(self._reported - stale.keys()):
            log.warning("watchdog.loop_recovered", probe=name)
        self._reported = set(stale)
        if stale:
            return False
        return self.notifier.watchdog()

    async def run(self, stop: asyncio.Event) -> None:
        """Check and ping every ``interval / 2`` until *stop* is set.

        Returns at once when the watchdog is off (no ``WatchdogSec=``, or not under systemd).
        """
        if self.interval is None or not self.notifier.enabled:
            log.debug("watchdog.disabled")
            return
        period = self.interval / 2
        while not stop.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stop.wait()
