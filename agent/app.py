"""The daemon's lifecycle: build the core, run every loop in one TaskGroup, stop in stages.

:func:`run` takes a ``shutdown`` event instead of touching signals (hypercorn's
``shutdown_trigger``): only the CLI installs signal handlers, so tests and the demo drive the
same code without sending real signals.

Start-up: open the store (WAL, migrations, in-flight rows back to ready), load the inventory's
memory, bind the admin listener, start every device supervisor, and tell systemd READY=1 once
each device has connected or failed with a recorded reason.

Shutdown (DESIGN.md invariant 7, within 10 s): STOPPING=1; stop intake by stopping the device
supervisors (parts not yet committed were never acked, so they stay on the SIM); then cancel the
sender (its in-flight batch returns to ready: the hub sees it again with the same ids) and the
other loops; close the hub client and the store.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.admin import AdminServer, json_response
from agent.commands import Commands
from agent.config import Config
from agent.core import Core, HubHealth
from agent.devices import DeviceSupervisor, Intake
from agent.hubclient import HubClient
from agent.inventory import Inventory
from agent.metrics import Metric, Metrics, counter, gauge, store_metrics
from agent.outboxstats import OutboxStats
from agent.sdnotify import Notifier, Watchdog, watchdog_interval
from agent.store import AsyncStore, StoreError
from agent.storecheck import incident_message, open_store, write_marker
from agent.uplink import Registrar, Sender
from drivers.base import split_host_port

log = structlog.get_logger("agent.app")

STATES = ("online", "offline", "standby", "disabled", "error")
STATUS_EVERY_S = 5.0
SHUTDOWN_GRACE_S = 3.0


class App:
    """One agent process.  ``await App(config).run(shutdown)``."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier.from_env()
        self.metrics = Metrics()
        self.cached: dict[str, Any] = {
            "depth": 0,
            "oldest": None,
            "dead": 0,
            "pending": 0,
            "incidents": [],
        }
        self.core: Core | None = None
        self.admin: AdminServer | None = None
        self.stats: OutboxStats | None = None
        self.ready = asyncio.Event()

    # -- build ----------------------------------------------------------------------------

    def _build(self) -> Core:
        cfg = self.config
        store = open_store(self.db_path, version=__version__).store
        inventory = Inventory(cfg.agent.id, cfg.sim_numbers)
        inventory.load(store.sims())
        hub = HubClient(
            cfg.upstream.url,
            api_key=cfg.api_key,
            agent_id=cfg.agent.id,
            signing_secret=cfg.signing_secret,
            timeout_s=cfg.upstream.timeout_s,
            ca_file=cfg.upstream.ca_file,
            metrics=self.metrics,
            max_body=cfg.upstream.max_body_mb << 20,
        )
        core = Core(cfg, AsyncStore(store), inventory, hub, self.metrics, HubHealth(self.metrics))
        self.stats = OutboxStats(core.store)
        self.metrics.agent_info.labels(cfg.agent.id, __version__).set(1)
        self.metrics.start_time.set(core.started_at)
        self.metrics.register_state(self._collect)
        return core

    # -- run ------------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.config.agent.state_dir / "agent.db"

    async def run(self, shutdown: asyncio.Event) -> None:
        try:
            core = self.core = self._build()
        except StoreError as exc:
            # systemctl status shows why the unit will not start (cli.py exits 2).
            self.notifier.status(f"store error: {exc}")
            self.notifier.close()
            raise
        stopped = False
        try:
            await self._run(core, shutdown)
            stopped = True
        finally:
            await core.hub.aclose()
            await asyncio.to_thread(core.store.close)
            if stopped:
                # The marker remembers what a clean stop left queued, so a store emptied
                # behind the agent's back reports how many messages it held.
                write_marker(self.db_path, version=__version__, queued=self.cached["depth"])
            self.notifier.close()

    async def _run(self, core: Core, shutdown: asyncio.Event) -> None:
        cfg = self.config
        if cfg.settings.admin.enabled:
            host, port = split_host_port(cfg.settings.admin.listen)
            self.admin = AdminServer(
                host,
                port,
                {
                    "/metrics": self._metrics_route,
                    "/healthz": self._health_route,
                    "/status": self._status_route,
                },
            )
            await self.admin.start()
        intake = Intake(core)
        for spec in cfg.devices:
            core.devices[spec.name] = DeviceSupervisor(core, spec.name, intake)
        commands, sender, registrar = Commands(core), Sender(core), Registrar(core)
        interval = watchdog_interval()
        watchdog = Watchdog(self.notifier, interval)
        core_start = time.monotonic()

        def probe(loop: str) -> Callable[[], float]:
            return lambda: core.beats.get(loop, core_start)

        for loop in ("sender", "registrar", "intake", "reporter", "reassembly"):
            watchdog.add_probe(loop, probe(loop))
        for name in core.devices:
            # Connect attempts (e.g. the AT init sequence) may legitimately take a while.
            watchdog.add_probe(
                f"device:{name}", probe(f"device:{name}"), stale_after=max(120.0, interval or 0)
            )
        poll_bound = cfg.upstream.poll_wait_s + cfg.upstream.timeout_s + 15
        watchdog.add_probe("poller", probe("poller"), stale_after=max(poll_bound, interval or 0))
        self.watchdog = watchdog
        log.info(
            "agent starting",
            agent_id=cfg.agent.id,
            version=__version__,
            devices=len(cfg.devices),
            state_dir=str(cfg.agent.state_dir),
            admin=cfg.settings.admin.listen if self.admin else None,
        )
        stop_watchdog = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            admin_task = tg.create_task(self.admin.serve(), name="admin") if self.admin else None
            device_tasks = [
                tg.create_task(sup.run(), name=f"device:{name}:supervisor")
                for name, sup in core.devices.items()
            ]
            loops = [
                tg.create_task(intake.run(), name="intake"),
                tg.create_task(intake.expire(), name="reassembly"),
                tg.create_task(sender.run(), name="sender"),
                tg.create_task(registrar.run(self.ready), name="registrar"),
                tg.create_task(commands.poll(), name="poller"),
                tg.create_task(commands.report(), name="reporter"),
                tg.create_task(self._status_loop(), name="status"),
                tg.create_task(self._announce_ready(), name="ready"),
            ]
            await commands.resume()
            wd_task = tg.create_task(watchdog.run(stop_watchdog), name="watchdog")
            await shutdown.wait()
            log.info("shutting down")
            self.notifier.stopping()
            stop_watchdog.set()
            for t in device_tasks:
                t.cancel()
            with suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_GRACE_S):
                    await asyncio.gather(*device_tasks, return_exceptions=True)
            await commands.drain()
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, wd_task, return_exceptions=True)
            if self.admin is not None and admin_task is not None:
                self.admin.close()
                await asyncio.gather(admin_task, return_exceptions=True)
        depth, _ = await core.store.read(core.store.reader.outbox_stats)
        self.cached["depth"] = depth
        log.info("stopped", queued=depth)

    async def _announce_ready(self) -> None:
        core = self.core
        assert core is not None
        await asyncio.gather(*(s.first_attempt.wait() for s in core.devices.values()))
        self.ready.set()
        self.notifier.ready()
        down = {n: s.down_reason for n, s in core.devices.items() if not s.up}
        log.info("ready", devices_up=len(core.devices) - len(down), devices_down=down or None)
        await self._refresh()
        self.notifier.status(self.status_line())

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            try:
                await self._refresh()
            except (sqlite3.Error, ValueError) as exc:
                # A store that cannot be read right now: keep the last figures (the store's
                # own health says what is wrong); never end the agent's TaskGroup for it.
                log.warning("status figures not refreshed", reason=str(exc)[:200])
            if self.ready.is_set():
                self.notifier.status(self.status_line())

    def status_line(self) -> str:
        assert self.core is not None
        online, total = self.core.inventory.counts()
        line = f"{online}/{total} SIMs online, queue {self.cached['depth']}"
        if self.cached["dead"]:
            line += f", {self.cached['dead']} dead letters"
        if self.core.health.auth_failed:
            line += ", HUB AUTH FAILED"
        health = self.core.store.health
        if not health.writable:
            line += f", store: cannot write ({health.kind})"
        if self.cached["incidents"]:
            line += ", STORE DAMAGED AT START: moved aside (vsim-agent status)"
        return line

    async def _refresh(self) -> None:
        core = self.core
        assert core is not None and self.stats is not None
        f = await self.stats.get()
        self.cached = {
            "depth": f.depth,
            "oldest": f.oldest,
            "dead": f.dead,
            "pending": f.pending,
            "incidents": list(f.incidents),
        }
        core.store.health.refresh()

    # -- admin ----------------------------------------------------------------------------

    async def _metrics_route(self) -> tuple[int, str, bytes]:
        await self._refresh()
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

    async def _health_route(self) -> tuple[int, str, bytes]:
        stale = self.watchdog.stale() if self.core else {"starting": 0.0}
        if stale:
            return json_response({"ok": False, "stuck": sorted(stale)}, 503)
        return json_response({"ok": True})

    async def _status_route(self) -> tuple[int, str, bytes]:
        await self._refresh()
        return json_response(self.status())

    def status(self) -> dict[str, Any]:
        core = self.core
        assert core is not None
        oldest = self.cached["oldest"]
        sims = []
        for sim in sorted(core.inventory.sims.values(), key=lambda s: s.info.port):
            rec = sim.record()
            rec["sms_count"] = sim.sms_count
            rec["error"] = sim.error
            sims.append(rec)
        return {
            "agent": {
                "id": self.config.agent.id,
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - core.started_at, 1),
                "ready": self.ready.is_set(),
            },
            "hub": {
                "url": self.config.upstream.url,
                "auth_failed": core.health.auth_failed,
                "last_error": core.health.last_error,
                "errors": dict(core.health.errors),
                "last_ok": core.health.last_ok,
            },
            "devices": [
                {"name": n, "driver": s.spec.config.driver, "up": s.up, "reason": s.down_reason}
                for n, s in core.devices.items()
            ],
            "outbox": {
                "depth": self.cached["depth"],
                "oldest_age_s": round(time.time() - oldest, 1) if oldest else None,
                "dead_letters": self.cached["dead"],
                "reassembly_pending_parts": self.cached["pending"],
            },
            "store": {
                "path": str(self.db_path),
                **core.store.health.as_dict(),
                "incidents": [
                    {**i, "message": incident_message(i)} for i in self.cached["incidents"]
                ],
            },
            "sims": sims,
        }

    def _collect(self) -> Iterable[Metric]:
        core = self.core
        if core is None:
            return []
        state = gauge(
            "vsim_sim_state", "1 for the SIM's current state", ["device", "port", "sim_id", "state"]
        )
        signal = gauge("vsim_sim_signal_dbm", "Signal strength", ["device", "port", "sim_id"])
        received = counter(
            "vsim_sim_sms_received", "SMS parts received", ["device", "port", "sim_id"]
        )
        last = gauge(
            "vsim_sim_last_sms_timestamp_seconds",
            "Time of the last SMS",
            ["device", "port", "sim_id"],
        )
        for sim in core.inventory.sims.values():
            labels = [sim.device, sim.info.port, sim.iccid]
            current = sim.state
            for s in STATES:
                state.add_metric([*labels, s], 1.0 if s == current else 0.0)
            if sim.info.signal_dbm is not None:
                signal.add_metric(labels, float(sim.info.signal_dbm))
            received.add_metric(labels, float(sim.sms_count))
            if sim.last_sms_at:
                with suppress(ValueError):
                    last.add_metric(labels, datetime.fromisoformat(sim.last_sms_at).timestamp())
        up = gauge("vsim_device_up", "1 while the device works", ["device"])
        used = gauge("vsim_device_storage_used_messages", "SIM storage used", ["device", "port"])
        total = gauge("vsim_device_storage_total_messages", "SIM storage size", ["device", "port"])
        for name, sup in core.devices.items():
            up.add_metric([name], 1.0 if sup.up else 0.0)
            for (stat, port, _labels), value in sup.stats.items():
                if stat == "storage_used":
                    used.add_metric([name, port or ""], value)
                elif stat == "storage_total":
                    total.add_metric([name, port or ""], value)
        depth = gauge("vsim_outbox_depth_messages", "Messages waiting for the hub", [])
        depth.add_metric([], float(self.cached["depth"]))
        oldest = self.cached["oldest"]
        age = gauge("vsim_outbox_oldest_age_seconds", "Age of the oldest queued message", [])
        age.add_metric([], time.time() - oldest if oldest else 0.0)
        dead = gauge("vsim_dead_letters_messages", "Messages in the dead-letter table", [])
        dead.add_metric([], float(self.cached["dead"]))
        pending = gauge("vsim_reassembly_pending_parts", "Parts waiting for siblings", [])
        pending.add_metric([], float(self.cached["pending"]))
        health = core.store.health
        return [
            state,
            signal,
            received,
            last,
            up,
            used,
            total,
            depth,
            age,
            dead,
            pending,
            *store_metrics(health.writable, health.errors, len(self.cached["incidents"])),
        ]


async def run(config: Config, shutdown: asyncio.Event) -> None:
    await App(config).run(shutdown)
