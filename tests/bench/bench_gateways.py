#!/usr/bin/env python
"""Gateway benchmark: 8 Ejoin boxes (32 ports x 4 slots) + one 64-line GoIP → one agent → hub.

    .venv/bin/python tests/bench/bench_gateways.py [--rate 100] [--duration 20] [--idle 10]
        [--gateways 8] [--ports 32] [--slots 4] [--goip-lines 64] [--no-push] [--json] [--keep]
        [--py-spy idle|load]

Every piece is a process of its own, talking over 127.0.0.1 as on a SIM farm's LAN:

* the reference hub (``vsim-agent hub``), read through its ``/_control/`` endpoints;
* ``--gateways`` Ejoin / Skyline emulators (``python -m tests.gateways.ejoin``, distinct seeds
  so no ICCID repeats), each pushing ``recv-sms`` to its own push listener of the agent (the
  production setup: ``push_listen`` set; ``--no-push`` measures the poll alone);
* one GoIP emulator (``python -m tests.gateways.goip``) with ``--goip-lines`` lines speaking the
  UDP SMS-server protocol, vendor timers (keepalive 30 s, retransmit 3 s);
* one agent (``vsim-agent run``) with one ``[[devices]]`` per box: ``driver = "ejoin"`` with the
  production defaults ``poll_s = 2``, ``status_s = 10``, ``rotate_s = 0`` and a
  ``push_listen``, and ``driver = "goip"`` with every line.

Figures:

(a) connect: agent spawned → every SIM registered at the hub (1,024 Ejoin SIMs: the active slot
    of each port ``online``, the three others ``standby``; 64 GoIP lines ``online``).  The GoIP
    emulator is started the moment the agent's UDP socket is bound, because a GoIP line only
    registers with its next keepalive (every 30 s on a real box): its figure is emulator start
    → lines online;
(b) idle CPU of the agent over ``--idle`` s (utime + stime, % of one core), RSS (VmRSS, VmHWM);
(c) load: ``--rate`` SMS/s for ``--duration`` s, spread round-robin over the selected SIMs of
    every box and the GoIP lines (one SMS in five via GoIP), injected through the emulators'
    control APIs (one ``httpx.AsyncClient``, at most ``--concurrency`` requests in flight, its
    connections opened before the clock starts).  Per SMS
    the latency runs from just before the control call to the hub's ``received`` time; its
    split at the agent's intake (the message's ``received_at``) and the agent's own share
    (stored → accepted, from its ``forwarded`` log lines) show where the time goes.  Every SMS
    must arrive exactly once: ``lost`` counts texts not at the hub, ``duplicates`` texts under
    more than one id; repeated ids the hub absorbed are shown beside them.

Before (b), one SMS goes through every box unmeasured: an emulator's first push pays its HTTP
client's first-request costs, which a box in service paid long ago.  ``--py-spy idle|load``
samples the agent during that phase (py-spy on PATH or beside the interpreter; it takes CPU
from the agent, so its latencies are not figures).

``--json`` sends the readable lines to stderr and prints one JSON object of the figures
(``sims, selected, goip_lines, connect_s, idle_cpu_pct, rss_mb, rate, accepted_per_s, p50_ms,
p99_ms, lost, duplicates`` and more) as the last line of stdout.  Not collected by pytest
(the file is ``bench_*.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.common import (  # noqa: E402
    cpu_seconds,
    forwarded_latencies,
    free_port,
    machine_line,
    percentile,
    proc_status,
    spawn,
    wait_for,
)

T = TypeVar("T")
PYTHON = sys.executable
VSIM_AGENT = str(Path(PYTHON).with_name("vsim-agent"))
BOX_PASSWORD = "bench-box-pass"
GOIP_PASSWORD = "secret"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_bound(port: int) -> bool:
    """Is some socket bound to UDP ``port`` (read from /proc, never by binding it ourselves,
    which could take the port from the agent)?"""
    want = f":{port:04X}"
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                if line.split()[1].endswith(want):
                    return True
    return False


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def stats(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {percentile(values, 50):.1f} ms, p99 {percentile(values, 99):.1f} ms, "
        f"max {max(values):.1f} ms"
    )


class Emulator:
    """One gateway emulator process; its first stdout line is a JSON description."""

    def __init__(self, name: str, module: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log_path = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", module, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                start_new_session=True,
            )
        self.info: dict[str, Any] = {}

    def ready(self, timeout: float) -> dict[str, Any]:
        """Wait (bounded) for the description line."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise SystemExit(f"{self.name} did not start in {timeout} s; see {self.log_path}")
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} exited at start; see {self.log_path}")
        self.info = json.loads(line)
        return self.info


@dataclass
class Sent:
    kind: str  # "ejoin" | "goip"
    before: float
    after: float


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="vsim-bench-gw-"))
        self.hub_port, self.admin_port = free_port(), free_port()
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.http = httpx.Client(timeout=30)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.emulators: list[Emulator] = []
        self.figures: dict[str, Any] = {}

    # -- output and processes

    def out(self, label: str, value: str) -> None:
        line = f"{label:<46} {value}"
        print(line, file=sys.stderr if self.args.json else sys.stdout, flush=True)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(argv, self.dir / f"{name}.log", self.dir)
        self.procs.append(proc)
        return proc

    def emulator(self, name: str, module: str, argv: list[str]) -> Emulator:
        emu = Emulator(name, module, argv, self.dir / f"{name}.log")
        self.emulators.append(emu)
        self.procs.append(emu.proc)
        return emu

    def wait(self, what: str, check: Callable[[], T | None], timeout: float, iv: float = 0.1) -> T:
        return wait_for(what, check, timeout, self.procs, self.dir, iv)

    def close(self) -> None:
        agent = getattr(self, "agent", None)
        if agent is not None and agent.poll() is None:  # first, so it does not miss the hub
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(15)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for emu in self.emulators:
            if emu.proc.stdout is not None:
                emu.proc.stdout.close()
        self.http.close()
        if self.args.keep:
            print(f"logs kept in {self.dir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the hub's view

    def sim_states(self) -> Counter[str]:
        state = self.http.get(f"{self.hub_url}/_control/state").json()
        return Counter(s["state"] for s in state["sims"].values())

    def hub_messages(self, limit: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.http.get(
            f"{self.hub_url}/_control/messages", params={"limit": limit}
        ).json()
        return got

    def hub_count(self) -> int:
        return int(self.http.get(f"{self.hub_url}/_control/state").json()["messages"])

    # -- set-up

    def config(self, boxes: list[tuple[Emulator, int]], goip_port: int) -> Path:
        a = self.args
        text = f"""[agent]
id = "bench-gw"
state_dir = "{self.dir / "state"}"

[upstream]
url = "{self.hub_url}/agent/v1"
api_key = "demo-key"

[admin]
listen = "127.0.0.1:{self.admin_port}"

[log]
format = "json"
"""
        for g, (emu, push_port) in enumerate(boxes):
            text += f"""
[[devices]]
name = "gw{g + 1}"
driver = "ejoin"
url = "{emu.info["url"]}"
username = "root"
password = "{BOX_PASSWORD}"
poll_s = {a.poll_s}
status_s = {a.status_s}
"""
            if not a.no_push:
                text += f'push_listen = "127.0.0.1:{push_port}"\n'
        lines = ", ".join(
            f'{{ id = "goip{i + 1:02d}", password = "{GOIP_PASSWORD}" }}'
            for i in range(a.goip_lines)
        )
        text += f"""
[[devices]]
name = "goip1"
driver = "goip"
listen = "127.0.0.1:{goip_port}"
lines = [{lines}]
"""
        cfg = self.dir / "agent.toml"
        cfg.write_text(text, encoding="utf-8")
        cfg.chmod(0o600)
        return cfg

    def start(self) -> None:
        a = self.args
        self.out("machine", machine_line())
        self.out("load average before the run", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        self.figures.update(machine=machine_line(), loadavg_before=round(os.getloadavg()[0], 2))
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
        t = time.monotonic()
        boxes: list[tuple[Emulator, int]] = []
        for g in range(a.gateways):
            push_port = free_port()
            argv = ["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"]
            argv += ["--ports", str(a.ports), "--slots", str(a.slots), "--esim-ports", "0"]
            argv += ["--seed", str(1000 + g), "--password", BOX_PASSWORD]
            argv += ["--push-url", f"http://127.0.0.1:{push_port}/recv-sms"]
            boxes.append((self.emulator(f"ejoin{g + 1}", "tests.gateways.ejoin", argv), push_port))
        for emu, _ in boxes:
            emu.ready(60)
        self.boxes = [emu for emu, _ in boxes]
        self.wait("the hub", lambda: self.http.get(f"{self.hub_url}/_control/state"), 30)
        self.out("emulators and hub up", f"{time.monotonic() - t:.1f} s ({a.gateways} boxes)")

        goip_port = free_udp_port()
        cfg = self.config(boxes, goip_port)
        want_ejoin = a.gateways * a.ports * a.slots
        want_selected = a.gateways * a.ports
        want_online = want_selected + a.goip_lines
        self.figures.update(sims=want_ejoin, selected=want_selected, goip_lines=a.goip_lines)

        # (a) connect
        t0 = time.monotonic()
        self.agent = self.spawn("agent", [VSIM_AGENT, "run", "-c", str(cfg)])
        self.wait("the agent's GoIP UDP socket", lambda: udp_bound(goip_port), 60, 0.02)
        t_goip = time.monotonic()
        argv = ["--server", f"127.0.0.1:{goip_port}", "--lines", str(a.goip_lines)]
        argv += ["--control", "127.0.0.1:0", "--seed", "7", "--password", GOIP_PASSWORD]
        argv += ["--keepalive", "30", "--retransmit", "3", "--max-retransmits", "-1"]
        self.goip = self.emulator("goip", "tests.gateways.goip", argv)
        self.goip.ready(60)
        goip_iccids = {line["iccid"] for line in self.goip.info["lines"]}
        marks: dict[str, float] = {}

        def connected() -> bool:
            state = self.http.get(f"{self.hub_url}/_control/state").json()
            sims = state["sims"]
            now = time.monotonic()
            if "goip" not in marks and all(
                sims.get(i, {}).get("state") == "online" for i in goip_iccids
            ):
                marks["goip"] = now
            states = Counter(s["state"] for k, s in sims.items() if k not in goip_iccids)
            if "ejoin" not in marks and (
                states["online"] == want_selected
                and states["standby"] == want_ejoin - want_selected
            ):
                marks["ejoin"] = now
            return len(marks) == 2

        self.wait("every SIM registered at the hub", connected, a.connect_timeout, 0.05)
        connect = max(marks.values()) - t0
        states = self.sim_states()
        self.figures["connect_s"] = round(connect, 2)
        self.out(
            "(a) connect: agent start → all registered",
            f"{connect:.2f} s ({sum(states.values())} SIMs: {states['online']} online, "
            f"{states['standby']} standby; want {want_online} online, "
            f"{want_ejoin - want_selected} standby)",
        )
        self.out(
            "      Ejoin: agent start → 1,024 at the hub" if want_ejoin == 1024 else "      Ejoin",
            f"{marks['ejoin'] - t0:.2f} s",
        )
        self.out(
            "      GoIP: agent socket bound / lines online",
            f"{t_goip - t0:.2f} s / {marks['goip'] - t_goip:.2f} s after the emulator started",
        )
        self.out("      agent CPU to get there", f"{cpu_seconds(self.agent.pid):.2f} s")

    def warm_up(self) -> None:
        """One SMS through every box before anything is measured: an emulator's first push
        pays its HTTP client's first-request costs (imports, a new connection), which a box
        in service has long paid.  They are not counted in (c)."""
        base = self.hub_count()
        for g, emu in enumerate(self.boxes):
            port = self.http.get(f"{emu.info['control']}/state").json()["ports"][0]
            iccid = next(s["iccid"] for s in port["slots"] if s["slot"] == port["active"])
            body = {"to": iccid, "text": f"gwbench warm-up {g}", "sender": "+79001234567"}
            self.http.post(f"{emu.info['control']}/sms", json=body).raise_for_status()
        body = {"line": 0, "from": "+79001234567", "text": "gwbench warm-up goip"}
        self.http.post(f"{self.goip.info['control']}/sms", json=body).raise_for_status()
        want = base + len(self.boxes) + 1
        self.wait("the warm-up SMS at the hub", lambda: self.hub_count() >= want, 30)

    # -- (b) idle

    def idle(self) -> None:
        a = self.args
        time.sleep(a.settle)
        if a.py_spy == "idle":
            self.py_spy(a.idle, "idle")
        pid = self.agent.pid
        others = [e.proc.pid for e in self.emulators] + [self.hub.pid]
        c0, o0, w0 = cpu_seconds(pid), sum(cpu_seconds(p) for p in others), time.monotonic()
        time.sleep(a.idle)
        c1, o1, w1 = cpu_seconds(pid), sum(cpu_seconds(p) for p in others), time.monotonic()
        idle = (c1 - c0) / (w1 - w0) * 100
        rss, hwm = proc_status(pid, "VmRSS") / 1024, proc_status(pid, "VmHWM") / 1024
        self.figures.update(idle_cpu_pct=round(idle, 2), rss_mb=round(rss, 1), hwm_mb=round(hwm, 1))
        self.out(f"(b) idle CPU of the agent over {a.idle:g} s", f"{idle:.2f} % of one core")
        self.out(
            "      meanwhile hub + emulators", f"{(o1 - o0) / (w1 - w0) * 100:.1f} % of one core"
        )
        self.out("(b) RSS after idle: VmRSS / VmHWM", f"{rss:.1f} MB / {hwm:.1f} MB")

    def py_spy(self, seconds: float, label: str) -> None:
        """Sample the agent with py-spy (threads holding the GIL: where its CPU goes) and print
        the functions with the most samples, self and inclusive."""
        exe = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        if not Path(exe).exists():
            self.out("py-spy", "not installed (pip install py-spy)")
            return
        out = self.dir / f"py-spy-{label}.txt"
        argv = [exe, "record", "--pid", str(self.agent.pid), "--duration", str(int(seconds))]
        argv += ["--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
        subprocess.run(argv, capture_output=True, check=False, timeout=seconds + 30)
        if not out.exists():
            self.out("py-spy", f"({label}) recorded nothing")
            return
        total, own, incl = 0, Counter[str](), Counter[str]()
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            total += int(n)
            own[frames[-1]] += int(n)
            for frame in set(frames):
                incl[frame] += int(n)
        self.out(f"py-spy ({label}, GIL held)", f"{total} samples, raw stacks in {out}")
        for title, counter in (("self", own), ("inclusive", incl)):
            for frame, k in counter.most_common(20):
                self.out(f"    {title} {k / max(1, total) * 100:5.1f} %", frame)

    # -- (c) load

    def targets(self) -> list[tuple[str, httpx.URL, dict[str, Any]]]:
        """(kind, control URL, base body) per selected SIM / GoIP line, boxes interleaved."""
        per_box: list[list[tuple[str, httpx.URL, dict[str, Any]]]] = []
        for emu in self.boxes:
            state = self.http.get(f"{emu.info['control']}/state").json()
            rows = []
            for port in state["ports"]:
                slot = next(s for s in port["slots"] if s["slot"] == port["active"])
                assert slot["iccid"] and slot["receiving"], (emu.name, port)
                rows.append(
                    ("ejoin", httpx.URL(f"{emu.info['control']}/sms"), {"to": slot["iccid"]})
                )
            per_box.append(rows)
        goip = [
            ("goip", httpx.URL(f"{self.goip.info['control']}/sms"), {"line": line["index"]})
            for line in self.goip.info["lines"]
        ]
        out = [row for group in zip(*per_box, strict=True) for row in group]
        # GoIP lines spread evenly among the Ejoin SIMs (64 of 320 targets).
        step = max(1, len(out) // max(1, len(goip)))
        merged: list[tuple[str, httpx.URL, dict[str, Any]]] = []
        for i, row in enumerate(out):
            merged.append(row)
            if i % step == step - 1 and goip:
                merged.append(goip.pop(0))
        return merged + goip

    async def inject(self, count: int) -> tuple[dict[str, Sent], list[str], float]:
        """Offer ``count`` SMS at ``--rate``/s; returns what was sent, errors, and how late the
        generator was at worst (s)."""
        a = self.args
        targets = self.targets()
        sent: dict[str, Sent] = {}
        errors: list[str] = []
        late = 0.0
        limits = httpx.Limits(
            max_connections=a.concurrency, max_keepalive_connections=a.concurrency
        )
        gate = asyncio.Semaphore(a.concurrency)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:

            async def one(k: int) -> None:
                kind, url, base = targets[k % len(targets)]
                text = f"gwbench {k:06d} code {100000 + k}"
                body = dict(base, text=text)
                body["sender" if kind == "ejoin" else "from"] = "+79001234567"
                async with gate:
                    before = time.time()
                    try:
                        r = await client.post(url, json=body)
                        answer = r.json()
                    except (httpx.HTTPError, ValueError) as exc:
                        errors.append(f"{kind} {k}: {exc!r}")
                        return
                    after = time.time()
                ok = r.status_code == 200 and (
                    answer.get("result") == "stored" if kind == "ejoin" else not answer.get("held")
                )
                if not ok:
                    errors.append(f"{kind} {k}: {r.status_code} {answer}")
                sent[text] = Sent(kind, before, after)

            # Open the generator's connections (and its first-request imports) off the clock.
            for emu in self.boxes:
                await client.get(f"{emu.info['control']}/state")
            await client.get(f"{self.goip.info['control']}/lines")
            tasks = []
            start = time.monotonic()
            for k in range(count):
                delay = start + k / a.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late = max(late, -delay)
                tasks.append(asyncio.create_task(one(k)))
            await asyncio.gather(*tasks)
        return sent, errors, late

    def load(self) -> None:
        a = self.args
        count = int(a.rate * a.duration)
        pid = self.agent.pid
        others = {"hub": [self.hub.pid], "emulators": [e.proc.pid for e in self.emulators]}
        base = self.hub_count()
        c0, w0, wall0 = cpu_seconds(pid), time.monotonic(), time.time()
        q0 = runqueue_wait(pid)
        o0 = {k: sum(cpu_seconds(p) for p in v) for k, v in others.items()}
        me0 = time.process_time()
        if a.py_spy == "load":
            threading.Thread(target=self.py_spy, args=(a.duration, "load"), daemon=True).start()
        sent, errors, late = asyncio.run(self.inject(count))
        offered = time.monotonic() - w0
        self.out(
            f"(c) load: {count} SMS offered at {a.rate:g}/s",
            f"in {offered:.1f} s ({sum(s.kind == 'goip' for s in sent.values())} via GoIP; "
            f"generator at most {late * 1000:.0f} ms late; {len(errors)} injection errors)",
        )
        for e in errors[:5]:
            self.out("      injection error", e)
        # Bounded wait for everything at the hub; what does not arrive counts as lost.
        deadline = time.monotonic() + a.drain_timeout
        while time.monotonic() < deadline and self.hub_count() < base + len(sent):
            for p in self.procs:
                if p.poll() is not None:
                    raise SystemExit(f"a process died during the load; see {self.dir}")
            time.sleep(0.1)
        w1 = time.monotonic()
        load_cpu = (cpu_seconds(pid) - c0) / (w1 - w0) * 100
        queued = (runqueue_wait(pid) - q0) / (w1 - w0) * 1000
        other_cpu = {
            k: (sum(cpu_seconds(p) for p in v) - o0[k]) / (w1 - w0) * 100 for k, v in others.items()
        }
        me_cpu = (time.process_time() - me0) / (w1 - w0) * 100

        records = self.hub_messages(self.hub_count() + 10)
        by_text: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            text = rec["body"].get("text")
            if text in sent:
                by_text.setdefault(text, []).append(rec)
        lost = [t for t in sent if t not in by_text]
        duplicates = sum(1 for recs in by_text.values() if len(recs) > 1)
        repeats = sum(r["count"] - 1 for recs in by_text.values() for r in recs)
        firsts = {t: min(recs, key=lambda r: r["received"]) for t, recs in by_text.items()}
        lat: dict[str, list[float]] = {"all": [], "ejoin": [], "goip": []}
        to_intake: dict[str, list[float]] = {"ejoin": [], "goip": []}
        to_hub: list[float] = []
        for text, rec in firsts.items():
            s = sent[text]
            ms = (rec["received"] - s.before) * 1000
            lat["all"].append(ms)
            lat[s.kind].append(ms)
            intake = datetime.fromisoformat(rec["body"]["received_at"]).timestamp()
            to_intake[s.kind].append((intake - s.before) * 1000)
            to_hub.append((rec["received"] - intake) * 1000)
        if self.args.keep:  # per SMS: injected (s from the phase start), kind, ms to intake, total
            rows = sorted(
                f"{sent[t].before - wall0:.4f},{sent[t].kind},"
                f"{(sent[t].after - sent[t].before) * 1000:.1f},"
                f"{(datetime.fromisoformat(r['body']['received_at']).timestamp() - sent[t].before) * 1000:.1f},"
                f"{(r['received'] - sent[t].before) * 1000:.1f}"
                for t, r in firsts.items()
            )
            (self.dir / "latency.csv").write_text(
                f"# phase start {wall0:.4f} (Unix time)\n" + "\n".join(rows) + "\n"
            )
        if firsts:
            first = min(s.before for s in sent.values())
            last = max(r["received"] for r in firsts.values())
            accepted_per_s = len(firsts) / (last - first)
        else:
            accepted_per_s = 0.0
        own = forwarded_latencies(self.dir / "agent.log", wall0, time.time() + 1)
        self.out(
            "    accepted (first injected → last accepted)",
            f"{accepted_per_s:.1f} SMS/s ({len(firsts)} of {len(sent)}; "
            f"drained {w1 - w0 - offered:.2f} s after the last injection)",
        )
        self.out("    latency before injection → hub accepted", stats(lat["all"]))
        self.out("      Ejoin SMS (push + goip_get_sms)", stats(lat["ejoin"]))
        self.out("      GoIP SMS (UDP RECEIVE)", stats(lat["goip"]))
        self.out("      Ejoin: injection → agent intake", stats(to_intake["ejoin"]))
        self.out("      GoIP: injection → agent intake", stats(to_intake["goip"]))
        self.out("      agent intake → hub accepted", stats(to_hub))
        self.out("      agent only: stored → accepted (log)", stats(own))
        self.out(
            "    lost; texts under two ids; repeated ids", f"{len(lost)}; {duplicates}; {repeats}"
        )
        self.out(
            "    agent CPU during load",
            f"{load_cpu:.1f} % of one core; runnable but waiting for a CPU {queued:.0f} ms/s",
        )
        self.out(
            "    meanwhile: hub / emulators / this script",
            f"{other_cpu['hub']:.0f} % / {other_cpu['emulators']:.0f} % / {me_cpu:.0f} % of one "
            f"core (on {os.cpu_count()} CPUs)",
        )
        # Nothing left at the boxes: every GoIP SMS acknowledged, nothing held for an Ejoin SIM.
        goip_pending = sum(
            len(line.get("pending") or [])
            for line in self.http.get(f"{self.goip.info['control']}/lines").json()
        )
        held = sum(
            sum(self.http.get(f"{e.info['control']}/state").json()["held"].values())
            for e in self.boxes
        )
        self.out("    GoIP SMS unacknowledged; Ejoin SMS held", f"{goip_pending}; {held}")
        rss, hwm = proc_status(pid, "VmRSS") / 1024, proc_status(pid, "VmHWM") / 1024
        self.out("(b) RSS after load: VmRSS / VmHWM", f"{rss:.1f} MB / {hwm:.1f} MB")
        self.figures.update(
            rate=a.rate,
            accepted_per_s=round(accepted_per_s, 1),
            p50_ms=round(percentile(lat["all"], 50), 1),
            p99_ms=round(percentile(lat["all"], 99), 1),
            max_ms=round(max(lat["all"], default=float("nan")), 1),
            ejoin_p99_ms=round(percentile(lat["ejoin"], 99), 1),
            goip_p99_ms=round(percentile(lat["goip"], 99), 1),
            lost=len(lost),
            duplicates=duplicates,
            repeated_ids=repeats,
            load_cpu_pct=round(load_cpu, 1),
            runqueue_ms_per_s=round(queued, 1),
            hwm_after_load_mb=round(hwm, 1),
            push=not a.no_push,
            poll_s=a.poll_s,
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0, help="SMS per second offered in (c)")
    p.add_argument("--duration", type=float, default=20.0, help="length of (c), s")
    p.add_argument("--idle", type=float, default=10.0, help="length of (b), s")
    p.add_argument("--settle", type=float, default=3.0, help="pause between (a) and (b), s")
    p.add_argument("--gateways", type=int, default=8)
    p.add_argument("--ports", type=int, default=32)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--goip-lines", type=int, default=64)
    p.add_argument("--poll-s", type=float, default=2.0, help="ejoin poll_s (production: 2)")
    p.add_argument("--status-s", type=float, default=10.0, help="ejoin status_s (production: 10)")
    p.add_argument("--no-push", action="store_true", help="no push_listen: the poll alone")
    p.add_argument("--concurrency", type=int, default=16, help="injections in flight at most")
    p.add_argument("--connect-timeout", type=float, default=90.0)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--py-spy", choices=("idle", "load"), help="profile the agent (py-spy)")
    p.add_argument("--json", action="store_true", help="figures as one JSON object, last line")
    p.add_argument("--keep", action="store_true", help="keep the logs and state")
    args = p.parse_args()

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    bench = Bench(args)
    try:
        bench.start()
        bench.warm_up()
        bench.idle()
        bench.load()
    except KeyboardInterrupt:
        print("interrupted; stopping every process", file=sys.stderr, flush=True)
        return 130
    finally:
        bench.close()
    if args.json:
        print(json.dumps(bench.figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
