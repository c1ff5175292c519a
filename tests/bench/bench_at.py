#!/usr/bin/env python
"""AT benchmark: 512 emulated modems → one agent process → the reference hub, on loopback.

    .venv/bin/python tests/bench/bench_at.py [--modems 512] [--rate 100] [--seconds 30]
        [--idle 30] [--shape devices|pool] [--emulator-procs 0|2] [--py-spy idle|load]

Three kinds of process, as on a SIM farm with ser2net:

* the modems: :class:`tests.emulator.EmulatedModem` served over TCP (``socket://``) by
  :class:`tests.emulator.ModemServer` (one event-loop thread).  ``--emulator-procs 0`` runs them
  in this process; ``--emulator-procs K`` in K child processes of this script (``--serve``),
  driven over a pipe, for when one emulator thread would be the bottleneck;
* the agent: ``vsim-agent run`` with one ``[[devices]]`` per modem (``--shape devices``) or one
  ``[[devices]]`` with ``ports = [...]`` (``--shape pool``), production poll/sweep intervals;
* the reference hub: ``vsim-agent hub``, read through its ``/_control/`` endpoints.

Figures:

(a) connect: agent start (process spawned) → every SIM ``online`` at the hub;
(b) idle CPU of the agent over ``--idle`` s (utime + stime from /proc/PID/stat, % of one core;
    target < 5 %), with its periodic polls and sweeps of every modem;
(c) RSS of the agent (VmRSS now and VmHWM peak; target < 150 MB);
(d) ``--rate`` SMS/s spread round-robin over the modems for ``--seconds``: achieved SMS/s and
    the latency from the emulator's ``stored`` event (the instant the SMS is in the SIM and its
    ``+CMTI`` goes out) to the hub's acceptance (its ``received`` time), p50/p99/max (target
    p99 < 100 ms).  Emulator times are ``time.monotonic()``, converted to wall time with the
    offset measured in the emulator's own process.

Not collected by pytest (the file is ``bench_*.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.common import (  # noqa: E402
    TICK,
    cpu_seconds,
    free_port,
    percentile,
    proc_status,
    spawn,
    wait_for,
)
from tests.bench.common import machine_line as machine  # noqa: E402
from tests.emulator import EmulatedModem, ModemServer, SimCard, raise_fd_limit  # noqa: E402
from tests.emulator.sim import generate_imei  # noqa: E402
from tests.support.pdu_encoder import encode_deliver  # noqa: E402

T = TypeVar("T")
PYTHON = sys.executable
VSIM_AGENT = str(Path(PYTHON).with_name("vsim-agent"))
PROFILES = ("ec25", "sim800", "e3372")
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


# -- small helpers --------------------------------------------------------------------------


def message_id(iccid: str, pdu_hex: str) -> str:
    """PROTOCOL.md §4 for a single-part SMS: SHA-256(ICCID + TPDU), first 128 bits."""
    raw = bytes.fromhex(pdu_hex)
    return hashlib.sha256(iccid.encode() + raw[1 + raw[0] :]).hexdigest()[:32]


def sms_pdu(n: int) -> str:
    return encode_deliver(
        "+79001234567", f"bench {n:06d} code {100000 + n}", sent_at=T0 + timedelta(seconds=n)
    )


# -- the modems -----------------------------------------------------------------------------


class LocalModems:
    """Modems on a ModemServer thread of this process."""

    def __init__(self, count: int, first: int = 0) -> None:
        self.server = ModemServer(name="bench-modems")
        # Identities from the modem's position, so emulator processes never share an ICCID.
        self.modems = [
            EmulatedModem(
                PROFILES[(first + i) % 3],
                sim=SimCard.generate(first + i + 1),
                imei=generate_imei(first + i + 1),
            )
            for i in range(count)
        ]
        self.ports = [self.server.start_tcp(m) for m in self.modems]
        self.offset = time.time() - time.monotonic()

    def iccids(self) -> list[str]:
        return [m.sim.iccid for m in self.modems if m.sim is not None]

    def deliver(self, i: int, pdu: str) -> None:
        self.modems[i].deliver_pdu(pdu)

    def stored_times(self) -> dict[str, float]:
        """Wall time of each ``stored`` event by PDU."""
        return {
            e.pdu: e.t + self.offset
            for m in self.modems
            for e in m.events("stored")
            if e.pdu is not None
        }

    def left(self) -> int:
        return sum(len(m.stored()) + len(m.pending()) for m in self.modems)

    def thread_cpu(self) -> float:
        """CPU seconds of the emulator thread (it must not be the bottleneck)."""
        tid = self.server._thread.native_id
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def close(self) -> None:
        self.server.stop()


class ChildModems:
    """Modems in K child processes (this script with ``--serve``), driven over pipes: one
    JSON request per line on stdin, one JSON answer per line on stdout."""

    def __init__(self, count: int, procs: int, tmp: Path) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self.slices: list[tuple[int, int]] = []  # (first index, count) per child
        per = -(-count // procs)
        for k in range(procs):
            first, n = k * per, min(per, count - k * per)
            log = (tmp / f"emulator{k}.log").open("w")
            child = subprocess.Popen(
                [PYTHON, __file__, "--serve", str(n), "--first", str(first)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
            log.close()
            self.children.append(child)
            self.slices.append((first, n))
        self.locks = [threading.Lock() for _ in self.children]
        hello = [self._call(k, {"op": "hello"}) for k in range(procs)]
        self.ports = [p for h in hello for p in h["ports"]]
        self._iccids = [i for h in hello for i in h["iccids"]]

    def _call(self, k: int, request: dict[str, Any]) -> Any:
        child = self.children[k]
        assert child.stdin is not None and child.stdout is not None
        with self.locks[k]:
            child.stdin.write(json.dumps(request) + "\n")
            child.stdin.flush()
            line = child.stdout.readline()
        if not line:
            raise SystemExit(f"emulator process {k} died")
        return json.loads(line)

    def _where(self, i: int) -> tuple[int, int]:
        for k, (first, n) in enumerate(self.slices):
            if first <= i < first + n:
                return k, i - first
        raise IndexError(i)

    def iccids(self) -> list[str]:
        return self._iccids

    def deliver(self, i: int, pdu: str) -> None:
        k, j = self._where(i)
        self._call(k, {"op": "deliver", "i": j, "pdu": pdu})

    def stored_times(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k in range(len(self.children)):
            out.update(self._call(k, {"op": "stored"}))
        return out

    def left(self) -> int:
        return sum(self._call(k, {"op": "left"})["left"] for k in range(len(self.children)))

    def thread_cpu(self) -> float:
        return sum(cpu_seconds(c.pid) for c in self.children)

    def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(Exception):
                assert child.stdin is not None
                child.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
            if child.poll() is None:
                child.kill()
                child.wait()


def serve(count: int, first: int) -> int:
    """``--serve``: the child side of :class:`ChildModems`."""
    raise_fd_limit()
    modems = LocalModems(count, first)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            op = req["op"]
            if op == "hello":
                answer: Any = {"ports": modems.ports, "iccids": modems.iccids()}
            elif op == "deliver":
                modems.deliver(req["i"], req["pdu"])
                answer = {}
            elif op == "stored":
                answer = modems.stored_times()
            elif op == "left":
                answer = {"left": modems.left()}
            else:
                answer = {"error": op}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        modems.close()
    return 0


# -- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="vsim-bench-at-"))
        self.hub_port, self.admin_port = free_port(), free_port()
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.http = httpx.Client(timeout=30)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.modems: LocalModems | ChildModems | None = None
        self.lines: list[str] = []

    def out(self, label: str, value: str) -> None:
        line = f"{label:<44} {value}"
        self.lines.append(line)
        print(line, flush=True)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(argv, self.dir / f"{name}.log", self.dir)
        self.procs.append(proc)
        return proc

    def wait(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        return wait_for(what, check, timeout, self.procs, self.dir)

    def online(self) -> int:
        state = self.http.get(f"{self.hub_url}/_control/state").json()
        return sum(1 for s in state["sims"].values() if s["state"] == "online")

    def config(self, ports: list[int]) -> Path:
        urls = [f"socket://127.0.0.1:{p}" for p in ports]
        head = f"""[agent]
id = "bench-at"
state_dir = "{self.dir / "state"}"

[upstream]
url = "{self.hub_url}/agent/v1"
api_key = "demo-key"

[admin]
listen = "127.0.0.1:{self.admin_port}"

[log]
format = "json"
"""
        if self.args.shape == "pool":
            devices = f'\n[[devices]]\nname = "pool"\ndriver = "at"\nports = {json.dumps(urls)}\n'
        else:
            devices = "".join(
                f'\n[[devices]]\nname = "m{i:03d}"\ndriver = "at"\nport = "{url}"\n'
                for i, url in enumerate(urls)
            )
        cfg = self.dir / "agent.toml"
        cfg.write_text(head + devices)
        cfg.chmod(0o600)
        return cfg

    def run(self) -> None:
        args = self.args
        n = args.modems
        raise_fd_limit()
        self.out("machine", machine())
        self.out("modems / shape", f"{n} over TCP (ser2net style), {args.shape}")
        self.hub = self.spawn(
            "hub",
            [
                VSIM_AGENT,
                "hub",
                "--listen",
                f"127.0.0.1:{self.hub_port}",
                "--agent-key",
                "demo-key",
            ],
        )
        self.wait("the hub", lambda: self.http.get(f"{self.hub_url}/_control/state"), 20)

        t = time.monotonic()
        if args.emulator_procs:
            self.modems = ChildModems(n, args.emulator_procs, self.dir)
            where = f"{args.emulator_procs} emulator processes"
        else:
            self.modems = LocalModems(n)
            where = "this process (one ModemServer thread)"
        modems = self.modems
        self.out("emulators", f"{where}, up in {time.monotonic() - t:.1f} s")
        cfg = self.config(modems.ports)

        # (a) connect
        emu_cpu0 = modems.thread_cpu()
        t0 = time.monotonic()
        agent = self.spawn("agent", [VSIM_AGENT, "run", "-c", str(cfg)])
        self.agent = agent
        self.wait(f"{n} SIMs online at the hub", lambda: self.online() >= n, args.connect_timeout)
        connect = time.monotonic() - t0
        connect_cpu = cpu_seconds(agent.pid)
        self.out(
            "(a) connect: start → all SIMs online",
            f"{connect:.2f} s (agent CPU {connect_cpu:.2f} s; "
            f"emulator CPU {modems.thread_cpu() - emu_cpu0:.2f} s)",
        )

        # (b) idle CPU, (c) RSS
        time.sleep(args.settle)
        if args.py_spy == "idle":
            self.py_spy(agent.pid, args.idle, "idle")
        c0, w0 = cpu_seconds(agent.pid), time.monotonic()
        slices, c, w = [], c0, w0
        while w - w0 < args.idle - 1e-6:  # 10-s slices show the poll/sweep cycles
            time.sleep(min(10.0, args.idle - (w - w0)))
            c1, w1 = cpu_seconds(agent.pid), time.monotonic()
            slices.append((c1 - c) / (w1 - w) * 100)
            c, w = c1, w1
        idle = (c - c0) / (w - w0) * 100
        self.out(
            f"(b) idle CPU over {args.idle:g} s",
            f"{idle:.2f} % of one core (target < 5 %); 10-s slices "
            + " ".join(f"{x:.1f}" for x in slices),
        )
        rss, hwm = proc_status(agent.pid, "VmRSS") / 1024, proc_status(agent.pid, "VmHWM") / 1024
        self.out("(c) RSS after idle: VmRSS / VmHWM", f"{rss:.1f} MB / {hwm:.1f} MB (target < 150)")

        # (d) load
        iccids = modems.iccids()
        count = int(args.rate * args.seconds)
        sent: dict[str, str] = {}  # message id -> PDU
        if args.py_spy == "load":
            threading.Thread(
                target=self.py_spy, args=(agent.pid, args.seconds, "load"), daemon=True
            ).start()
        c0, start = cpu_seconds(agent.pid), time.monotonic()
        hub0, emu0, me0 = cpu_seconds(self.hub.pid), modems.thread_cpu(), time.process_time()
        late = 0.0
        for k in range(count):
            due = start + k / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late = max(late, -delay)
            i = k % n
            pdu = sms_pdu(k)
            modems.deliver(i, pdu)
            sent[message_id(iccids[i], pdu)] = pdu
        offered = time.monotonic() - start

        def all_in() -> list[dict[str, Any]] | None:
            got = self.http.get(
                f"{self.hub_url}/_control/messages", params={"limit": count * 2}
            ).json()
            return got if len({r["body"]["id"] for r in got} & set(sent)) == count else None

        records = self.wait(f"{count} SMS at the hub", all_in, 120)
        load_cpu, load_wall = cpu_seconds(agent.pid) - c0, time.monotonic() - start
        hub_cpu, emu_cpu = cpu_seconds(self.hub.pid) - hub0, modems.thread_cpu() - emu0
        me_cpu = time.process_time() - me0
        stored = modems.stored_times()
        received = {r["body"]["id"]: r["received"] for r in records}
        committed = {
            r["body"]["id"]: datetime.fromisoformat(r["body"]["received_at"]).timestamp()
            for r in records
        }
        latencies = [received[i] - stored[p] for i, p in sent.items()]
        # The body's received_at is when the agent's intake took the part (just before its
        # commit; ms precision, truncated): the split below.
        to_store = [committed[i] - stored[p] for i, p in sent.items()]
        to_hub = [received[i] - committed[i] for i in sent]
        first = min(stored[p] for p in sent.values())
        last = max(received[i] for i in sent)
        self.out(
            f"(d) load: {count} SMS offered at {args.rate:g}/s",
            f"in {offered:.1f} s (sender at most {late * 1000:.0f} ms late)",
        )
        self.out(
            "    achieved (first stored → last accepted)", f"{count / (last - first):.1f} SMS/s"
        )
        self.out(
            "    latency stored (+CMTI) → hub accepted",
            f"p50 {percentile(latencies, 50) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
            f"(target p99 < 100 ms)",
        )
        for label, values in (("stored → agent intake", to_store), ("agent intake → hub", to_hub)):
            self.out(
                f"      {label}",
                f"p50 {percentile(values, 50) * 1000:.1f} ms, "
                f"p99 {percentile(values, 99) * 1000:.1f} ms",
            )
        self.out(
            "    agent CPU during load",
            f"{load_cpu:.2f} s in {load_wall:.1f} s = {load_cpu / load_wall * 100:.1f} % of one core",
        )
        self.out(
            "    meanwhile: hub / emulators / this script",
            f"{hub_cpu / load_wall * 100:.0f} % / {emu_cpu / load_wall * 100:.0f} % / "
            f"{me_cpu / load_wall * 100:.0f} % of one core (on {os.cpu_count()} CPUs)",
        )
        dupes = sum(r["count"] - 1 for r in records)
        self.wait("every SIM emptied", lambda: modems.left() == 0, 30)
        rss, hwm = proc_status(agent.pid, "VmRSS") / 1024, proc_status(agent.pid, "VmHWM") / 1024
        self.out("(c) RSS after load: VmRSS / VmHWM", f"{rss:.1f} MB / {hwm:.1f} MB")
        self.out("    repeated ids at the hub; SIMs left", f"{dupes}; 0 SMS on any SIM")

    def py_spy(self, pid: int, seconds: float, label: str) -> None:
        """Sample the agent with py-spy (only threads holding the GIL: where its CPU goes) and
        print the functions with the most samples, self and inclusive."""
        exe = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        if not Path(exe).exists():
            print("py-spy not installed (.venv/bin/pip install py-spy)", flush=True)
            return
        out = self.dir / f"py-spy-{label}.txt"
        argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds))]
        argv += ["--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
        subprocess.run(argv, capture_output=True, check=False)
        if not out.exists():
            print(f"py-spy ({label}) recorded nothing", flush=True)
            return
        total, own, incl = 0, Counter[str](), Counter[str]()
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            total += int(n)
            own[frames[-1]] += int(n)
            for frame in set(frames):
                incl[frame] += int(n)
        print(f"py-spy ({label}, GIL held): {total} samples, raw stacks in {out}", flush=True)
        for title, counter in (("self", own), ("inclusive", incl)):
            for frame, k in counter.most_common(18):
                print(f"    {title:<9} {k / total * 100:5.1f} %  {frame}", flush=True)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self.modems is not None:
            self.modems.close()
        self.http.close()
        if self.args.keep:
            print(f"logs kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modems", type=int, default=512)
    p.add_argument("--rate", type=float, default=100.0, help="SMS per second in (d)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of (d)")
    p.add_argument("--idle", type=float, default=30.0, help="length of (b)")
    p.add_argument("--settle", type=float, default=5.0, help="pause between (a) and (b)")
    p.add_argument("--shape", choices=("devices", "pool"), default="devices")
    p.add_argument("--emulator-procs", type=int, default=0, metavar="K")
    p.add_argument("--connect-timeout", type=float, default=180.0)
    p.add_argument("--py-spy", choices=("idle", "load"), help="record the agent (raw stacks)")
    p.add_argument("--keep", action="store_true", help="keep the logs and state")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve is not None:
        return serve(args.serve, args.first)
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
