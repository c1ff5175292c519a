#!/usr/bin/env python
"""Core benchmark: simulated SIMs → durable outbox → reference hub, on loopback.

    .venv/bin/python tests/bench/bench_core.py [--sims 2000] [--seconds 10] [--rate 200]

Three processes, as in production: the reference hub (``vsim-agent hub``), the agent
(``vsim-agent run`` with one simulated bank of ``--sims`` SIMs) and this script, which plays the
network: it writes SMS into the simulated network file (:class:`drivers.simulated.SimNetwork`)
and reads the hub's view through its ``/_control/`` endpoints.  The agent is a process of its
own so its peak RSS (``VmHWM``) is its alone.  Nothing is mocked; the agent's store keeps
``synchronous=FULL`` (one fsync per committed batch).

Figures (DESIGN.md "Scale targets"):

(a) sustained SMS/s: SMS sent as fast as this process can for ``--seconds``; hub-accepted per
    second inside that window, and until the backlog has drained (target >= 1,000/s).
(b) latency at ``--rate`` SMS/s for ``--latency-seconds``: from the moment ``SimNetwork.send``
    committed an SMS to the network (the earliest the agent can see it) to the hub's receive
    time of its id (target p99 < 50 ms); the agent's own share (stored → accepted, from its
    "forwarded" log lines) is shown beside it.
(c) peak RSS of the agent process with ``--sims`` SIMs (target < 150 MB).

The load generator's own connection to the network file uses ``synchronous=NORMAL``: the file
is the air between phone and SIM, and an fsync per sent SMS would cap the offered load at the
disk's fsync rate (~560/s here) instead of measuring the agent.  The agent's side of that file
(the driver) is left as it is.

``--profile latency|sustained|overload`` samples the agent with py-spy during that phase
(``pip install py-spy``) and prints the threads and functions where its time goes; (a') is an
overload run (the sender as fast as it can) that shows how the agent behaves past capacity.  Not collected by pytest (the file is ``bench_*.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from drivers.simulated import SimNetwork  # noqa: E402
from tests.bench.common import (  # noqa: E402
    cpu_seconds,
    forwarded_latencies,
    free_port,
    machine,
    percentile,
    proc_status,
    spawn,
    wait_for,
)

PYTHON = sys.executable
#: ``--gc-log``: the CLI (agent or hub), with every garbage-collector pass of 5 ms or more logged as a
#: JSON line (to tell GC pauses from other stalls in the latency tail).
GC_LOG_WRAPPER = """
import gc, json, sys, time
_t = {}
def _cb(phase, info):
    if phase == "start":
        _t["s"] = time.perf_counter()
    elif "s" in _t:
        ms = (time.perf_counter() - _t.pop("s")) * 1000
        if ms >= 5:
            print(json.dumps({"event": "gc", "generation": info["generation"],
                              "ms": round(ms, 1), "collected": info["collected"],
                              "at": time.time()}), file=sys.stderr, flush=True)
gc.callbacks.append(_cb)
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""
PHASES = {"lat": "latency", "sus": "sustained", "max": "overload"}


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


@dataclass
class Run:
    """One load phase: what was sent when, and what the hub and the agent did meanwhile."""

    prefix: str
    rate: float | None
    wall0: float
    sent: dict[str, tuple[float, float]] = field(default_factory=dict)  # text → before, after
    window: float = 0.0
    drain: float = 0.0
    accepted_in_window: int = 0
    committed_in_window: float = 0.0
    stored_at_end: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    waits: dict[str, float] = field(default_factory=dict)  # run-queue wait, s per s


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="vsim-bench-"))
        self.hub_port, self.admin_port = free_port(), free_port()
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.http = httpx.Client(timeout=30)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.results: list[tuple[str, str, str, str]] = []
        self.notes: list[str] = []
        self.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    # -- processes

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = spawn([PYTHON, "-m", "agent", *argv], self.dir / f"{name}.log", self.dir)
        self.procs.append(proc)
        return proc

    def spawn_python(self, name: str, code: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = spawn([PYTHON, "-c", code, *argv], self.dir / f"{name}.log", ROOT)
        self.procs.append(proc)
        return proc

    def wait(self, what: str, check: Any, timeout: float, interval: float = 0.1) -> Any:
        return wait_for(what, check, timeout, self.procs, self.dir, interval)

    def hub_seq(self) -> int:
        """Messages the hub has accepted so far (its arrival sequence number)."""
        records = self.http.get(f"{self.hub_url}/_control/messages", params={"limit": 1}).json()
        return int(records[0]["seq"]) if records else 0

    def start(self) -> None:
        args = self.args
        hub_argv = (
            "hub",
            "--listen",
            f"127.0.0.1:{self.hub_port}",
            "--agent-key",
            "demo-key",
            "--customer-key",
            "customer-key",
        )
        if args.gc_log:
            self.hub = self.spawn_python("hub", GC_LOG_WRAPPER, *hub_argv)
        else:
            self.hub = self.spawn("hub", *hub_argv)
        self.wait("the hub", lambda: self.http.get(f"{self.hub_url}/_control/state"), 20)
        self.net = SimNetwork(self.dir / "simnet.db")
        self.net._db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self.numbers = [r["number"] for r in self.net.provision("bank1", args.sims, "RU")]
        cfg = self.dir / "agent.toml"
        cfg.write_text(
            f"""
[agent]
id = "bench"
state_dir = "{self.dir / "state"}"

[upstream]
url = "{self.hub_url}/agent/v1"
api_key = "demo-key"
batch_max = {args.batch_max}

[admin]
listen = "127.0.0.1:{self.admin_port}"

[log]
format = "json"

[[devices]]
name = "bank1"
driver = "simulated"
sims = {args.sims}
network = "{self.dir / "simnet.db"}"
""",
            encoding="utf-8",
        )
        cfg.chmod(0o600)
        t0 = time.monotonic()
        if args.gc_log:
            self.agent = self.spawn_python("agent", GC_LOG_WRAPPER, "run", "-c", str(cfg))
        else:
            self.agent = self.spawn("agent", "run", "-c", str(cfg))
        print(
            f"hub pid {self.hub.pid}, agent pid {self.agent.pid}, files in {self.dir}", flush=True
        )

        def registered() -> bool:
            state = self.http.get(f"{self.hub_url}/_control/state").json()
            return bool(len(state["sims"]) == args.sims)

        self.wait(f"{args.sims} SIMs registered at the hub", registered, 120, 0.5)
        self.results.append(
            ("start-up", f"{args.sims} SIMs registered", f"{time.monotonic() - t0:.1f} s", "")
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.http.close()
        with contextlib.suppress(Exception):
            self.net.close()

    # -- phases

    def agent_parts(self) -> float:
        """SMS parts the agent has committed to its store (``vsim_sms_parts_received_total``)."""
        text = self.http.get(f"http://127.0.0.1:{self.admin_port}/metrics").text
        for line in text.splitlines():
            if line.startswith("vsim_sms_parts_received_total "):
                return float(line.split()[1])
        return 0.0

    def load(self, prefix: str, rate: float | None, seconds: float) -> Run:
        """Send SMS for ``seconds`` at ``rate``/s (None: as fast as possible), wait until the
        hub has them all, and return what was measured."""
        pids = {"agent": self.agent.pid, "hub": self.hub.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        wait0 = {k: runqueue_wait(p) for k, p in pids.items()}
        self_cpu0 = time.process_time()
        first, parts0 = self.hub_seq(), self.agent_parts()
        profiler = self.start_profiler() if self.args.profile == PHASES[prefix] else None
        run = Run(prefix, rate, wall0=time.time())
        n = len(self.numbers)
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            if rate is not None:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            text = f"{prefix} {i} code {100000 + i}"
            before = time.time()
            self.net.send(self.numbers[(i * 7) % n], text, sender="VKcom")
            run.sent[text] = (before, time.time())
            i += 1
        t1 = time.monotonic()
        run.window = t1 - t0
        run.accepted_in_window = self.hub_seq() - first
        run.committed_in_window = self.agent_parts() - parts0
        run.stored_at_end = self.net.stored()
        if profiler is not None:
            self.stop_profiler(profiler)
        total = len(run.sent)
        self.wait(f"{prefix}: all {total} at the hub", lambda: self.hub_seq() >= first + total, 300)
        t2 = time.monotonic()
        run.drain = t2 - t1
        run.cpu = {k: (cpu_seconds(p) - cpu0[k]) / (t2 - t0) for k, p in pids.items()}
        run.cpu["load generator"] = (time.process_time() - self_cpu0) / (t2 - t0)
        run.waits = {k: (runqueue_wait(p) - wait0[k]) / (t2 - t0) for k, p in pids.items()}
        return run

    def latencies(self, run: Run) -> tuple[list[float], list[float]]:
        """Per SMS, ms from the network commit (and from before the send) to hub receipt."""
        records = self.http.get(
            f"{self.hub_url}/_control/messages", params={"limit": len(run.sent) + 100}
        ).json()
        after, total = [], []
        rows = []
        for rec in records:
            t = run.sent.get(rec["body"]["text"])
            if t is not None:
                after.append((rec["received"] - t[1]) * 1000)
                total.append((rec["received"] - t[0]) * 1000)
                rows.append(f"{t[1] - run.wall0:.4f},{after[-1]:.2f}")
        if self.args.keep:  # send time (s from the phase start), latency (ms) per SMS
            header = f"# phase start {run.wall0:.4f} (Unix time)\n"
            (self.dir / f"latency-{run.prefix}.csv").write_text(
                header + "\n".join(sorted(rows)) + "\n"
            )
        if len(after) != len(run.sent):
            raise SystemExit(f"{len(after)} of {len(run.sent)} SMS of {run.prefix} at the hub")
        return after, total

    def add(self, *row: str) -> None:
        self.results.append((row[0], row[1], row[2], row[3] if len(row) > 3 else ""))

    def add_latency(self, run: Run, label: str = "", target_ms: float | None = None) -> None:
        after, total = self.latencies(run)
        p99 = percentile(after, 99)
        verdict = ""
        if target_ms is not None:
            verdict = "PASS" if p99 < target_ms else f"MISS (target p99 < {target_ms:g} ms)"
        self.add(
            label,
            f"network commit → hub, {len(after):,} SMS",
            f"p50 {percentile(after, 50):.1f} ms, p99 {p99:.1f} ms, max {max(after):.1f} ms",
            verdict,
        )
        self.add(
            "",
            "from before SimNetwork.send",
            f"p50 {percentile(total, 50):.1f} ms, p99 {percentile(total, 99):.1f} ms",
        )
        own = forwarded_latencies(
            self.dir / "agent.log", run.wall0, run.wall0 + run.window + run.drain + 1
        )
        if own:
            self.add(
                "",
                "agent only: stored → accepted",
                f"p50 {percentile(own, 50):.1f} ms, p99 {percentile(own, 99):.1f} ms",
            )

    def add_cpu(self, run: Run) -> None:
        self.add("", "CPU (1.0 = one core)", ", ".join(f"{k} {v:.2f}" for k, v in run.cpu.items()))
        self.add(
            "",
            "waiting for a CPU (run queue)",
            ", ".join(f"{k} {v * 1000:.0f} ms/s" for k, v in run.waits.items()),
        )

    def latency(self) -> None:
        rate = self.args.rate
        run = self.load("lat", rate, self.args.latency_seconds)
        self.add_latency(run, f"(b) latency @ {rate:g}/s", target_ms=50)
        self.add_cpu(run)

    def sustained(self) -> None:
        rate = self.args.offered
        run = self.load("sus", rate, self.args.seconds)
        accepted = run.accepted_in_window / run.window
        self.add(
            f"(a) sustained @ {rate:,.0f}/s",
            f"hub-accepted inside the {run.window:.0f} s window",
            f"{accepted:,.0f} SMS/s ({len(run.sent):,} sent, {run.drain:.2f} s to drain)",
            "PASS" if accepted >= 0.97 * rate and run.drain < 2 else "MISS (does not keep up)",
        )
        self.add_latency(run)
        self.add_cpu(run)

    def overload(self) -> None:
        run = self.load("max", None, self.args.seconds)
        sent = len(run.sent)
        self.add(
            "(a') as fast as possible",
            f"offered for {run.window:.0f} s (the sender's maximum)",
            f"{sent / run.window:,.0f} SMS/s ({sent:,} SMS)",
        )
        self.add(
            "",
            "committed by the agent inside the window",
            f"{run.committed_in_window / run.window:,.0f} SMS/s",
        )
        self.add(
            "",
            "hub-accepted inside the window",
            f"{run.accepted_in_window / run.window:,.0f} SMS/s",
        )
        self.add(
            "",
            "hub-accepted until drained",
            f"{sent / (run.window + run.drain):,.0f} SMS/s (drained {run.drain:.1f} s after)",
        )
        self.add(
            "",
            "after the window",
            f"{(sent - run.accepted_in_window) / run.drain:,.0f} SMS/s accepted; "
            f"{run.stored_at_end:,} parts not yet deleted from SIMs at window end",
        )
        self.add_cpu(run)

    # -- profiling

    def start_profiler(self) -> subprocess.Popen[bytes] | None:
        spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        if not Path(spy).exists():
            self.notes.append("--profile: py-spy not found (pip install py-spy)")
            return None
        out = self.dir / "agent.pyspy.txt"
        return subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(self.agent.pid),
                "--format",
                "raw",
                "--output",
                str(out),
                "--rate",
                "200",
                "--threads",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_profiler(self, spy: subprocess.Popen[bytes]) -> None:
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
        raw = self.dir / "agent.pyspy.txt"
        if not raw.exists():
            self.notes.append("--profile: py-spy wrote nothing (ptrace permission?)")
            return
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        threads: Counter[str] = Counter()
        total = 0
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count_s = line.rpartition(" ")
            if not count_s.isdigit():
                continue
            count = int(count_s)
            frames = stack.split(";")
            total += count
            threads[frames[0]] += count
            own[frames[-1]] += count
            for frame in set(frames[1:]):
                inclusive[frame] += count
        print(f"\npy-spy: {total} samples of the agent during {self.args.profile}; by thread:")
        for name, c in threads.most_common(6):
            print(f"  {100 * c / total:5.1f}%  {name}")
        print("self time (leaf frames):")
        for name, c in own.most_common(15):
            print(f"  {100 * c / total:5.1f}%  {name}")
        print("inclusive time:")
        for name, c in inclusive.most_common(25):
            print(f"  {100 * c / total:5.1f}%  {name}")

    # -- report

    def report(self) -> None:
        rss_peak = proc_status(self.agent.pid, "VmHWM") / 1024
        rss_now = proc_status(self.agent.pid, "VmRSS") / 1024
        self.results.append(
            (
                "(c) agent memory",
                f"peak RSS (VmHWM), {self.args.sims} SIMs",
                f"{rss_peak:.1f} MB (now {rss_now:.1f} MB)",
                "PASS" if rss_peak < 150 else "MISS (target < 150 MB)",
            )
        )
        m = machine()
        print()
        print(f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, Linux {m['kernel']}")
        print(f"load average before the run: {self.load_before} (other work on the machine)")
        widths = [max(len(r[i]) for r in self.results) for i in range(4)]
        line = "+".join("-" * (w + 2) for w in widths)
        print(line)
        for row in self.results:
            print("|".join(f" {c.ljust(w)} " for c, w in zip(row, widths, strict=True)))
        print(line)
        for note in self.notes:
            print(f"note: {note}")
        print(f"logs and databases: {self.dir}" if self.args.keep else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sims", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the throughput run")
    p.add_argument("--rate", type=float, default=200.0, help="SMS/s of the latency run")
    p.add_argument("--offered", type=float, default=1000.0, help="SMS/s of the sustained run")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--batch-max", type=int, default=100, help="upstream.batch_max of the agent")
    p.add_argument(
        "--profile",
        choices=sorted(PHASES.values()),
        help="sample the agent with py-spy during that phase",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--gc-log", action="store_true", help="log GC passes >= 5 ms (agent, hub)")
    args = p.parse_args()
    bench = Bench(args)
    try:
        bench.start()
        bench.latency()
        bench.sustained()
        bench.overload()
        bench.report()
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(bench.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
