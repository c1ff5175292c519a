#!/usr/bin/env python
"""Crash soak: N SMS through a real agent that is SIGKILLed K times at random moments.

    .venv/bin/python tests/bench/soak_kills.py [--kills 1000] [--sms 20000] [--seed 1] [--json]

The reference hub runs in this process (:class:`tests.e2e.conftest.HubThread`, loopback HTTP),
so its per-id receive counts are read directly; the agent is a real ``vsim-agent run`` process
with one simulated bank (:class:`tests.e2e.conftest.Agent`).  A feeder thread writes numbered
SMS into the simulated network (every 10th a 3-part message with its parts in a shuffled
order), in one burst a second paced so they span the kill phase, while the main thread kills
the agent with SIGKILL and starts it again, K times: a quarter of the kills land at a random
moment up to 1.2 s after the spawn (often during start-up: store migration, resumed commands,
the first sweep), the rest at a random moment up to 1.5 s after the agent reported ready.  The
hub delays every ``POST /messages`` by 0.1 s and the network's deletes by 0.01 s, as in
``tests/e2e/test_crash.py``, so kills land with a batch in flight or committed parts still on
the SIMs.  Every random choice comes from ``--seed``.

After the last kill the agent is started once more and must deliver everything; then it is
stopped with SIGTERM and checked.  The run fails (exit status 1) unless:

* every SMS sent reaches the hub, as exactly one message id (distinct ids == SMS sent), with
  its exact text, and multipart messages complete with 3 parts;
* repeats reached the hub only as repeated ids (the hub's per-id counts) and were absorbed;
* the SIMs, the outbox, the parts table and the dead letters are empty at the end;
* ``PRAGMA integrity_check`` of the agent's database answers ``ok``.

Figures: kills, SMS, duration, delivered, duplicates absorbed by the hub, the agents' peak RSS
(``VmHWM`` read just before each kill); ``--json`` prints them as one JSON object on the last
line.  Not collected by pytest: a kill cycle takes ~2 to 3 s (the agent needs ~1.1 s of
start-up before it is ready), so 200 kills take 7 to 10 minutes and the default run about
45 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from drivers.simulated import SimNetwork  # noqa: E402
from tests.bench.common import machine_line, proc_status  # noqa: E402
from tests.e2e.conftest import DEVICE, Agent, HubThread, long_text, wait_until  # noqa: E402

MULTIPART_EVERY = 10
#: First estimate of the seconds per kill cycle, for the feeder's first rate; the kill loop
#: then paces the rest of the SMS by the cycles it has seen.
CYCLE_S = 3.0
#: SMS arrive in bursts, with quiet pauses between them: a device settles (and the agent
#: registers its SIMs and starts delivering) at its first 0.3 s pause after connecting, so a
#: steady stream would hold every restart for the 10 s settle cap (agent/devices.py).
BURST_S = 1.0


class Feeder(threading.Thread):
    """Sends ``count`` numbered SMS into the network file, one burst every ``BURST_S`` at the
    current ``rate`` per second (the kill loop adjusts it so the SMS span the kill phase)."""

    def __init__(
        self, network: Path, numbers: list[str], count: int, rate: float, rng: random.Random
    ) -> None:
        super().__init__(name="soak-feeder", daemon=True)
        self.network, self.numbers, self.count, self.rate = network, numbers, count, rate
        self.rng = rng
        self.sent: list[str] = []
        self.multipart: set[str] = set()
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        net = SimNetwork(self.network)
        try:
            i, due = 0, time.monotonic()
            while i < self.count:
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    return
                due += BURST_S
                for _ in range(min(max(1, round(self.rate * BURST_S)), self.count - i)):
                    self._send(net, i)
                    i += 1
        except BaseException as exc:
            self.error = exc
        finally:
            net.close()

    def _send(self, net: SimNetwork, i: int) -> None:
        label = f"soak-{i:06d}"
        to = self.numbers[i % len(self.numbers)]
        if i % MULTIPART_EVERY == MULTIPART_EVERY - 1:
            text = long_text(label + " multipart")
            order = [1, 2, 3]
            self.rng.shuffle(order)
            net.send(to, text, sender="VKcom", order=order)
            self.multipart.add(text)
        else:
            text = f"{label} your code {100000 + i}"
            net.send(to, text, sender="VKcom")
        self.sent.append(text)


class QuietDisconnects(logging.Filter):
    """Drops the in-process hub's tracebacks for agents SIGKILLed mid-request (expected here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "ClientDisconnect"


def ready_now(agent: Agent) -> bool:
    """Whether this agent process has reported ready (False while it starts, or is dead)."""
    with contextlib.suppress(Exception):
        st = agent.status()
        return bool(st["agent"]["ready"] and st["agent"]["pid"] == agent.pid)
    return False


def peak_rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, KeyError, ValueError):
        return proc_status(pid, "VmHWM")
    return 0


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    logging.getLogger("uvicorn.error").addFilter(QuietDisconnects())
    hub = HubThread()
    hub.start()
    agent = Agent(root / "agent", hub, sims=args.sims, agent={"reassembly_timeout_s": 300})
    started = time.monotonic()
    figures: dict[str, Any] = {"seed": args.seed, "sims": args.sims}
    try:
        agent.provision()
        hub.state.add_fault(mode="delay", delay_s=0.1, count=-1, endpoint="messages")
        agent.net.set_fault(DEVICE, slow_ack_s=0.01)
        rate = args.rate or max(1.0, args.sms / (args.kills * CYCLE_S))
        feeder = Feeder(agent.network_path, agent.numbers(), args.sms, rate, rng)
        max_rss = early = crashed = 0
        cycles: list[float] = []
        feeder.start()
        for k in range(args.kills):
            cycle0 = time.monotonic()
            agent.start(wait=False)
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.05, 1.2))
                early += not ready_now(agent)
            else:
                agent.wait_ready(60)
                time.sleep(rng.uniform(0.0, 1.5))
            if not agent.alive:
                crashed += 1
                print(f"kill {k + 1}: the agent had exited by itself ({agent.proc.returncode})")
            max_rss = max(max_rss, peak_rss_kb(agent.pid))
            agent.kill(signal.SIGKILL)
            cycles.append(time.monotonic() - cycle0)
            # Pace the rest of the SMS over the rest of the kills at the cycle length seen.
            left_kills, left_sms = args.kills - k - 1, args.sms - len(feeder.sent)
            if left_kills and not args.rate:
                mean = sum(cycles) / len(cycles)
                feeder.rate = max(1.0, left_sms / (left_kills * mean))
            if not args.json and (k + 1) % max(1, args.kills // 10) == 0:
                print(
                    f"{k + 1}/{args.kills} kills, {len(feeder.sent)}/{args.sms} SMS sent, "
                    f"{len(hub.state.messages)} at the hub",
                    flush=True,
                )
        kill_phase = time.monotonic() - started
        sent_during_kills = len(feeder.sent)
        feeder.rate = max(feeder.rate, float(args.sms))  # whatever is left: at once
        # The feeder may still be running (its pace is an estimate): the agent runs to the end.
        hub.state.clear_faults()
        agent.net.set_fault(DEVICE, slow_ack_s=0)
        agent.start()
        feeder.join(600)
        if feeder.error is not None:
            raise SystemExit(f"the feeder failed: {feeder.error!r}")
        expected = set(feeder.sent)
        wait_until(
            lambda: expected <= hub.texts(),
            max(120.0, args.sms / 50),
            f"all {len(expected)} SMS at the hub",
            interval=0.5,
            detail=lambda: f"{len(expected - hub.texts())} missing",
        )
        wait_until(lambda: agent.net.stored() == 0, 60, "every part deleted from the SIMs")
        wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 60, "an empty outbox")
        max_rss = max(max_rss, peak_rss_kb(agent.pid))
        code, _ = agent.terminate(30)
        by_text = hub.by_text()
        problems = []
        if code != 0:
            problems.append(f"the final SIGTERM exited {code}")
        if crashed:
            problems.append(f"the agent exited by itself {crashed} times")
        if set(by_text) != expected:
            problems.append(f"{len(set(by_text) - expected)} unexpected texts")
        split = {t: len(r) for t, r in by_text.items() if len(r) != 1}
        if split:
            problems.append(f"{len(split)} texts under more than one id, e.g. {list(split)[:3]}")
        for text in feeder.multipart:
            body = by_text[text][0]["body"]
            if body["complete"] is not True or body["parts"] != 3 or body["text"] != text:
                problems.append(f"multipart {text[:12]} arrived as {body}")
                break
        repeats = sum(r["count"] - 1 for r in hub.messages())
        if repeats != hub.state.duplicates:
            problems.append(f"repeats {repeats} != hub duplicates {hub.state.duplicates}")
        db = sqlite3.connect(agent.state_dir / "agent.db")
        try:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            left = {
                table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("outbox", "parts", "dead_letters")
            }
        finally:
            db.close()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        if any(left.values()):
            problems.append(f"rows left in the agent's store: {left}")
        figures.update(
            {
                "kills": args.kills,
                "kills_before_ready": early,
                "sms": len(feeder.sent),
                "multipart": len(feeder.multipart),
                "sent_during_kills": sent_during_kills,
                "duration_s": round(time.monotonic() - started, 1),
                "kill_phase_s": round(kill_phase, 1),
                "cycle_mean_s": round(sum(cycles) / len(cycles), 2),
                "delivered": len(hub.state.messages),
                "distinct_ids_equal_sent": len(hub.state.messages) == len(feeder.sent),
                "duplicates_absorbed": hub.state.duplicates,
                "max_rss_mb": round(max_rss / 1024, 1),
                "integrity_check": integrity,
                "ok": not problems,
                "problems": problems,
            }
        )
        return figures
    finally:
        agent.cleanup()
        hub.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=1000)
    p.add_argument("--sms", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sims", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.0, help="SMS/s (default: spread over kills)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON, last line")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    if args.kills < 1 or args.sms < 1:
        p.error("--kills and --sms must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="vsim-soak-"))
    if not args.json:
        print(f"soak: {args.kills} kills, {args.sms} SMS, seed {args.seed}; {machine_line()}")
        print(f"files in {root}", flush=True)
    figures = soak(args, root)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>24}: {value}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
