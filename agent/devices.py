"""Device supervision and SMS intake: from driver events to committed parts and acks.

* :class:`DeviceSupervisor`, one per ``[[devices]]`` entry (aioesphomeapi ``ReconnectLogic``
  style): connect with capped exponential backoff and jitter, consume the driver's events,
  reconnect when they end; WARNING on the first failure of a streak, DEBUG after.  One device
  failing never touches another (DESIGN.md invariant 5).
* :class:`Intake`: one writer that commits parts in batches (one transaction and one fsync per
  batch) and only then hands each ack token back to its device's acker, which calls
  ``driver.ack`` (the AT driver deletes the SMS from the SIM).  So a part leaves the SIM only
  after it is durable (invariant 1); a crash between commit and ack leaves a part that is
  re-read and recognised by its id (invariant 2).
* Desired state (invariant 6): whenever a SIM (re)appears, its persisted desired radio and
  forwarding state are compared with what the hardware reports and re-applied, through the same
  :class:`agent.actions.SimActions` that executes the hub's commands.
* :class:`StoreDriverState`: the driver's durable key-value (``DriverContext.state``), kept in
  the store per device.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Hashable
from contextlib import suppress

import structlog

from agent.actions import SimActions
from agent.backoff import Backoff
from agent.core import Core
from agent.store import iso
from drivers.base import (
    DeviceDown,
    DeviceStat,
    DeviceUp,
    Driver,
    DriverContext,
    DriverError,
    DriverState,
    Event,
    SimGone,
    SimPresent,
    SmsPart,
)

log = structlog.get_logger("agent.devices")

INTAKE_BATCH = 200  # parts per commit: big enough to amortise fsync, small enough not to
# hold the writer thread long (the sender's settles queue behind it)
#: A device is settled after its first quiet pause this long, or after SETTLE_MAX_S anyway.
SETTLE_QUIET_S = 0.3
SETTLE_MAX_S = 10.0
#: A quiet device's supervisor beats this often (its watchdog bound is 120 s); with 512
#: devices a shorter period costs measurable idle CPU.
DEVICE_BEAT_S = 10.0
ACK_RETRY_S = 2.0


class StoreDriverState(DriverState):
    """``DriverContext.state`` kept in the core's store (table ``driver_state``), per device.

    Reads are served from memory after the first; a write returns once committed (fsync)."""

    def __init__(self, core: Core, device: str) -> None:
        super().__init__()
        self._core = core
        self._device = device
        self._loaded: set[str] = set()

    async def get(self, key: str) -> str | None:
        if key not in self._loaded:
            store = self._core.store
            value = await store.read(store.reader.driver_state_get, self._device, key)
            if value is not None:
                await super().set(key, value)
            self._loaded.add(key)
        return await super().get(key)

    async def set(self, key: str, value: str) -> None:
        store = self._core.store
        await store.call(store.store.driver_state_set, self._device, key, value)
        self._loaded.add(key)
        await super().set(key, value)


class DeviceSupervisor:
    def __init__(self, core: Core, name: str, intake: Intake) -> None:
        self.core = core
        self.name = name
        self.spec = next(d for d in core.config.devices if d.name == name)
        self.intake = intake
        self.driver: Driver | None = None
        self.up = False
        self.down_reason: str | None = "not connected yet"
        self.first_attempt = asyncio.Event()
        self.stats: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], float] = {}
        self._acks: asyncio.Queue[Hashable] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self.backoff = Backoff(1.0, 60.0)
        self.actions = SimActions(self)
        self._state = StoreDriverState(core, name)

    def context(self) -> DriverContext:
        return DriverContext(
            device=self.name,
            state_dir=self.core.config.agent.state_dir,
            cached_number=self.core.inventory.cached_number,
            number_recipes=self.core.config.number_recipes,
            state=self._state,
        )

    async def run(self) -> None:
        while True:
            driver = self.spec.driver_cls(self.spec.config, self.context())
            try:
                await driver.connect()
            except Exception as exc:
                await self._failed(f"connect failed: {_reason(exc)}", unexpected=exc)
                continue
            self.driver = driver
            reason = "event stream ended"
            acker = asyncio.create_task(self._ack_loop(driver), name=f"device:{self.name}:acker")
            try:
                await self._consume(driver)
            except Exception as exc:
                reason = _reason(exc)
                if not _expected(exc):
                    log.exception("driver failed unexpectedly", device=self.name)
            finally:
                self.driver = None
                acker.cancel()
                for task in list(self._tasks):
                    task.cancel()
                with suppress(asyncio.CancelledError):
                    await acker
                await asyncio.shield(driver.close())
                # Pending acks belong to the lost connection; their parts are re-read and
                # recognised by id after the reconnect.
                self._acks = asyncio.Queue()
                self.core.inventory.device_down(self.name)
            self.core.metrics.device_reconnects.labels(self.name).inc()
            await self._failed(reason, unexpected=None)

    async def _consume(self, driver: Driver) -> None:
        """Handle events until the stream ends, beating while waiting for the next one.

        The beat proves the supervisor is not stuck *handling* an event (e.g. blocked on a
        hung store); a quiet device is fine.  The systemd watchdog reads it.
        """
        beat = f"device:{self.name}"
        events = aiter(driver.events())
        pending: asyncio.Future[Event] = asyncio.ensure_future(anext(events))
        connected = last_inventory = time.monotonic()
        try:
            while True:
                self.core.beat(beat)
                # Until the device is "settled", wait only briefly: the first pause in its
                # inventory events (SIMs, up/down) after connecting marks the end of its initial
                # inventory.  SMS and stats do not count: a restart under steady traffic would
                # otherwise wait out SETTLE_MAX_S before the first PUT /sims.
                settling = not self.first_attempt.is_set()
                done, _ = await asyncio.wait(
                    {pending}, timeout=SETTLE_QUIET_S if settling else DEVICE_BEAT_S
                )
                if not done:
                    if settling and self.up:
                        self._settled(connected)
                    continue
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                await self._handle(event)
                if settling:
                    now = time.monotonic()
                    if not isinstance(event, SmsPart | DeviceStat):
                        last_inventory = now
                    elif self.up and now - last_inventory > SETTLE_QUIET_S:
                        self._settled(connected)
                    if now - connected > SETTLE_MAX_S:
                        self._settled(connected)
                pending = asyncio.ensure_future(anext(events))
        finally:
            pending.cancel()
            with suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await pending
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with suppress(Exception):
                    await aclose()

    def _settled(self, connected: float) -> None:
        """The device has reported its SIMs: the first ``PUT /sims`` may now list them all
        (PROTOCOL.md section 3: the full list; a partial one makes the hub forget SIMs)."""
        self.first_attempt.set()
        log.debug(
            "device settled",
            device=self.name,
            sims=sum(1 for s in self.core.inventory.sims.values() if s.device == self.name),
            after_s=round(time.monotonic() - connected, 2),
        )

    async def _failed(self, reason: str, unexpected: BaseException | None) -> None:
        self.up = False
        self.down_reason = reason
        self.first_attempt.set()
        delay = self.backoff.next()
        if self.backoff.failures == 1:
            log.warning(
                "device down; reconnecting",
                device=self.name,
                reason=reason,
                retry_in_s=round(delay, 2),
            )
        else:
            log.debug(
                "device still down",
                device=self.name,
                reason=reason,
                failures=self.backoff.failures,
                retry_in_s=round(delay, 2),
            )
        await self.core.idle(f"device:{self.name}", delay)

    async def _handle(self, event: Event) -> None:
        inv = self.core.inventory
        if isinstance(event, SmsPart):
            await self.intake.put(self, event)
        elif isinstance(event, SimPresent):
            sim = inv.present(self.name, event.info)
            # Best effort: the row caches what the hardware said (the inventory in memory is
            # what counts while running); waiting for a full disk here would stall the device.
            with suppress(sqlite3.Error):
                await self.core.store.attempt(
                    self.core.store.store.upsert_sim,
                    iccid=sim.iccid,
                    imsi=event.info.imsi,
                    number=sim.number,
                    number_source=sim.number_source,
                    device=self.name,
                    port=event.info.port,
                    operator=event.info.operator,
                    mcc_mnc=event.info.mcc_mnc,
                    now=time.time(),
                )
            self._reapply(sim.iccid)
        elif isinstance(event, SimGone):
            inv.gone(event.port, event.iccid)
        elif isinstance(event, DeviceUp):
            self.up = True
            self.down_reason = None
            self.backoff.reset()
            log.info("device up", device=self.name, detail=event.detail)
        elif isinstance(event, DeviceDown):
            self.up = False
            self.down_reason = event.reason
            inv.device_down(self.name)
            log.warning("device reports down", device=self.name, reason=event.reason)
        elif isinstance(event, DeviceStat):
            self._stat(event)

    def _stat(self, ev: DeviceStat) -> None:
        m = self.core.metrics
        labels = dict(ev.labels)
        if ev.name == "hang_step":
            m.device_hang_steps.labels(self.name, labels.get("step", str(int(ev.value)))).inc()
        elif ev.name in ("cme_error", "cms_error"):
            m.device_errors.labels(
                self.name, ev.name[:3], labels.get("code", str(int(ev.value)))
            ).inc()
        elif ev.name == "signal_dbm" and ev.port is not None:
            # Small signal changes come as stats (no inventory churn); keep metrics current.
            self.core.inventory.signal(ev.port, int(ev.value))
        else:
            self.stats[(ev.name, ev.port, ev.labels)] = ev.value

    def _reapply(self, iccid: str) -> None:
        """Converge the hardware on the persisted desired state (invariant 6), in a task: the
        event loop of this device goes on meanwhile (the driver reports the outcome)."""
        sim = self.core.inventory.sims.get(iccid)
        if sim is None or self.driver is None or "converge" in sim.applying:
            return
        if not self.actions.diverges(sim):
            return
        sim.applying.add("converge")

        async def run() -> None:
            try:
                async with asyncio.timeout(60):
                    await self.actions.converge(iccid)
            except Exception as exc:
                log.warning(
                    "could not re-apply desired state",
                    device=self.name,
                    sim_id=iccid,
                    reason=_reason(exc),
                )
                self.core.inventory.set_error(iccid, f"re-apply: {_reason(exc)}")
            finally:
                sim.applying.discard("converge")

        task = asyncio.create_task(run(), name=f"device:{self.name}:converge:{iccid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def acked(self, token: Hashable) -> None:
        self._acks.put_nowait(token)

    async def _ack_loop(self, driver: Driver) -> None:
        queue = self._acks
        while True:
            token = await queue.get()
            for attempt in range(5):
                try:
                    await driver.ack(token)
                    break
                except Exception as exc:
                    # A part left on the SIM is re-read by the next sweep and dropped by id.
                    log.debug(
                        "ack failed; retrying",
                        device=self.name,
                        attempt=attempt + 1,
                        reason=_reason(exc),
                    )
                    await asyncio.sleep(ACK_RETRY_S * (attempt + 1))


class Intake:
    """The single writer of received parts: batch, commit with fsync, then ack."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._queue: asyncio.Queue[tuple[DeviceSupervisor, SmsPart]] = asyncio.Queue(20000)
        self._retry: deque[tuple[DeviceSupervisor, SmsPart]] = deque()
        # A failing commit is cheap (SQLITE_FULL comes back at once), and every second of
        # backoff is a second the SMS waits on its SIM after the disk is freed: cap it low
        # (below agent.store.WRITABLE_AFTER_S, so the store's health does not flap).
        self._backoff = Backoff(0.5, 2.0)

    async def put(self, sup: DeviceSupervisor, part: SmsPart) -> None:
        await self._queue.put((sup, part))

    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        core = self.core
        timeout = core.config.agent.reassembly_timeout_s
        while True:
            core.beat("intake")
            if self._retry:
                batch = [self._retry.popleft() for _ in range(min(INTAKE_BATCH, len(self._retry)))]
            else:
                try:
                    async with asyncio.timeout(1.0):
                        first = await self._queue.get()
                except TimeoutError:
                    continue
                batch = [first]
            while len(batch) < INTAKE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            now = time.time()
            try:
                # Tried once: the retry below beats the watchdog while it waits (a full
                # disk is no reason for systemd to restart the agent).
                result = await core.store.attempt(
                    core.store.store.ingest,
                    [p for _s, p in batch],
                    now=now,
                    reassembly_timeout_s=timeout,
                )
            except sqlite3.Error as exc:
                # Disk full, a lock held too long by another process...: nothing was
                # committed and nothing is acked, so every part is still on its SIM.  Back
                # off and try the same batch again rather than take the whole agent down.
                delay = self._backoff.next()
                (log.error if self._backoff.failures == 1 else log.debug)(
                    "could not commit received SMS; retrying",
                    reason=str(exc),
                    parts=len(batch),
                    retry_in_s=round(delay, 2),
                )
                for item in reversed(batch):
                    self._retry.appendleft(item)
                await core.idle("intake", delay)
                continue
            self._backoff.reset()
            core.metrics.parts_received.inc(result.stored_parts)
            core.metrics.partial.inc(result.partial)
            at = iso(now)
            counts: dict[str, int] = {}
            for _sup, part in batch:
                counts[part.iccid] = counts.get(part.iccid, 0) + 1
            for iccid, n in counts.items():
                core.inventory.sms_received(iccid, at, n)
            # Durable now: only now may the hardware forget the parts.
            for sup, part in batch:
                sup.acked(part.ack_token)
            if result.messages:
                core.outbox_wake.set()

    async def expire(self) -> None:
        """Deliver overdue multipart messages partial (invariant 4); prune old ids."""
        core = self.core
        timeout = core.config.agent.reassembly_timeout_s
        tick = max(0.2, min(10.0, timeout / 10))
        last_prune = 0.0
        while True:
            core.beat("reassembly")
            await asyncio.sleep(tick)
            try:
                # Tried once: the next tick tries again, and the loop keeps beating.
                n = await core.store.attempt(
                    core.store.store.expire_partials, now=time.time(), timeout=timeout
                )
            except sqlite3.Error:
                continue  # recorded in the store's health
            if n:
                core.metrics.partial.inc(n)
                log.warning("multipart messages delivered with parts missing", count=n)
                core.outbox_wake.set()
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                with suppress(sqlite3.Error):
                    await core.store.attempt(
                        core.store.store.prune, now=time.time(), reassembly_timeout_s=timeout
                    )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, DriverError | OSError | TimeoutError)
