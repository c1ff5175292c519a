"""A flood of admin connections against a real agent that is delivering SMS (issue #12 item 6).

Before: 2,000 concurrent ``GET /metrics`` pushed delivery p99 from 17.5 ms to 37.7 s (every
request queued three queries on the sender's read thread) and, at the fd limit, asyncio wrote
thousands of plain-text tracebacks into the JSON log.  Here the agent runs with
``RLIMIT_NOFILE`` lowered to 1024 while a separate process (tests/support/flood.py) opens 2,000
connections at once, and SMS keep flowing at a steady rate into the reference hub:

* :func:`test_flood_leaves_delivery_alone`: every SMS sent during the flood reaches the hub
  within a bound (send time to the hub's own receipt time), the admin listener never holds more
  descriptors than its bound, some requests are answered (200 or 503) and the rest dropped,
  the log stays small and every line of it is JSON, ``/status`` answers afterwards.  Against
  the hand-written listener this replaces, it fails: the agent reached its 1,024 descriptors,
  delivery p50 was 2.3 s (p99 4.0 s) and asyncio's accept error was a plain-text line.
* :func:`test_fd_exhaustion_logs_one_json_line_per_streak`: with the limit lowered to just above
  what the agent already uses, accepts fail with EMFILE; the agent says so in one JSON line
  (errno, no traceback) plus one line with the count when the streak ends, keeps delivering
  within the bound, and answers ``/status`` once the limit is back.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from agent import admin
from tests.e2e.conftest import PYTHON, Agent, HubThread, Traffic, wait_until

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 2000
AGENT_NOFILE = 1024
RATE = 20  # SMS per second, steady, before, during and after the flood
DELIVERY_BOUND_S = 5.0  # every SMS sent during a flood, send to hub receipt
DELIVERY_P50_S = 0.5  # the old listener: p50 2.3 s, p99 4.0 s here


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_flood(port: int, n: int, timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "tests.support.flood",
            "127.0.0.1",
            str(port),
            "/metrics",
            str(n),
            str(timeout),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout + 60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class FdSampler:
    """Samples the agent's open descriptor count every few ms from a thread; ``peak``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fd-sampler")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self.peak = max(self.peak, open_fds(self.pid))
            except OSError:
                return

    def __enter__(self) -> FdSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def log_lines_after(agent: Agent, offset: int) -> list[str]:
    with agent.log_path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    return [line for line in data.decode("utf-8").splitlines() if not line.startswith("=== e2e:")]


def assert_all_json(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


def latencies(hub: HubThread, traffic: Traffic, since: float, until: float) -> list[float]:
    """Send-to-hub-receipt seconds of the SMS sent in ``[since, until)``."""
    received = {r["body"]["text"]: r["received"] for r in hub.messages()}
    sent = {t: at for t, at in dict(traffic.sent_at).items() if since <= at < until}
    assert sent, "no SMS was sent in the window"
    missing = sorted(t for t in sent if t not in received)
    assert not missing, f"{len(missing)} SMS never reached the hub, e.g. {missing[:3]}"
    return sorted(received[t] - at for t, at in sent.items())


def started_agent(make_agent: Callable[..., Agent], hub: HubThread) -> Agent:
    agent = make_agent(hub, sims=8)
    agent.start()
    # The systemd unit raises the limit to 8192; 1024 is the usual default elsewhere.
    resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (AGENT_NOFILE, AGENT_NOFILE))
    return agent


def steady_traffic(agent: Agent, hub: HubThread, prefix: str) -> Traffic:
    traffic = Traffic(agent.network_path, agent.numbers(), count=100_000, rate=RATE, prefix=prefix)
    traffic.start()
    wait_until(lambda: len(hub.messages()) >= RATE, 10, "steady delivery", detail=agent.tail)
    return traffic


def report(what: str, lat: list[float]) -> str:
    p99 = lat[max(0, round(len(lat) * 0.99) - 1)]
    return (
        f"{what}: {len(lat)} SMS, p50 {lat[len(lat) // 2] * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms"
    )


def test_flood_leaves_delivery_alone(hub: HubThread, make_agent: Callable[..., Agent]) -> None:
    agent = started_agent(make_agent, hub)
    traffic = steady_traffic(agent, hub, "flood")
    try:
        fds_before = open_fds(agent.pid)
        log_offset = agent.log_path.stat().st_size
        with FdSampler(agent.pid) as fds:
            result = run_flood(agent.admin_port, FLOOD, timeout=10)
        # Everything sent during the flood must have arrived before traffic stops.
        last = max(t for t, at in dict(traffic.sent_at).items() if at < result["ended"])
        wait_until(lambda: last in hub.texts(), DELIVERY_BOUND_S, "the flood's last SMS")
    finally:
        traffic.stop()
    lat = latencies(hub, traffic, result["started"], result["ended"])
    counts: dict[str, int] = result["counts"]
    print(f"\n{counts}; agent fds {fds_before} -> peak {fds.peak}\n{report('flood', lat)}")

    assert agent.alive
    assert lat[-1] < DELIVERY_BOUND_S, report("delivery during the flood", lat)
    assert lat[len(lat) // 2] < DELIVERY_P50_S, report("delivery during the flood", lat)
    # Bounded: the admin listener held at most its connections plus a few accept bursts in
    # flight (asyncio takes BACKLOG per wake-up; a refused one closes a few iterations
    # later), far from the limit, which keeps FD_RESERVE for delivery anyway.
    assert fds.peak <= fds_before + admin.MAX_CONNECTIONS + 4 * admin.BACKLOG + 16
    assert fds.peak < AGENT_NOFILE - admin.FD_RESERVE
    # Some were answered over HTTP (200, or 503 beyond the request limit), the rest dropped.
    assert counts.get("200", 0) + counts.get("503", 0) > 0, counts
    assert sum(counts.values()) - counts.get("200", 0) > 0, f"nothing was refused: {counts}"
    assert set(counts) <= {"200", "503", "closed", "reset", "timeout"}, counts

    lines = log_lines_after(agent, log_offset)
    records = assert_all_json(lines)
    size = sum(len(line) + 1 for line in lines)
    assert size < 100_000, f"{size} bytes of log during the flood"
    tracebacks = [r for r in records if "exception" in r]
    assert not tracebacks, f"tracebacks were logged: {tracebacks[:3]}"
    assert_all_json(log_lines_after(agent, 0))  # the whole run, start-up included
    st = agent.status()
    assert st["agent"]["ready"] and st["agent"]["pid"] == agent.pid


ACCEPT_FAILED = "socket.accept() out of system resource"


def test_fd_exhaustion_logs_one_json_line_per_streak(
    hub: HubThread, make_agent: Callable[..., Agent]
) -> None:
    agent = started_agent(make_agent, hub)
    traffic = steady_traffic(agent, hub, "emfile")
    try:
        log_offset = agent.log_path.stat().st_size
        # No descriptor left above what the agent holds now, as if its ports had taken the
        # rest: every accept fails, whatever the flood's pace (with a few to spare, a slow
        # flood would be refused by the listener's own fd reserve before any EMFILE).
        tight = open_fds(agent.pid)
        resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (tight, AGENT_NOFILE))
        try:
            result = run_flood(agent.admin_port, 500, timeout=4)
        finally:
            resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (AGENT_NOFILE, AGENT_NOFILE))

        def streak_reported() -> list[dict[str, Any]]:
            records = assert_all_json(log_lines_after(agent, log_offset))
            return [r for r in records if r["event"] == ACCEPT_FAILED and "repeated" in r]

        # The streak's count comes once it has been quiet for Streaks.quiet_s (5 s).
        summary = wait_until(streak_reported, 15, "the EMFILE streak's count", detail=agent.tail)
    finally:
        traffic.stop()
    lines = log_lines_after(agent, log_offset)
    records = assert_all_json(lines)
    lat = latencies(hub, traffic, result["started"], result["ended"])
    print(f"\n{result['counts']}\n{report('EMFILE flood', lat)}\n{summary}")

    assert agent.alive
    first = [r for r in records if r["event"] == ACCEPT_FAILED and "repeated" not in r]
    assert len(first) == 1, first
    assert first[0]["errno"] == "EMFILE" and first[0]["level"] == "error"
    assert len(summary) == 1 and summary[0]["repeated"] >= 1, summary
    tracebacks = [r for r in records if "exception" in r]
    assert not tracebacks, f"tracebacks were logged: {tracebacks[:3]}"
    size = sum(len(line) + 1 for line in lines)
    assert size < 100_000, f"{size} bytes of log"
    assert lat[-1] < DELIVERY_BOUND_S, report("delivery during the EMFILE flood", lat)
    # With the limit back, the listener accepts again (asyncio retries accept after 1 s).
    wait_until(lambda: status_ready(agent), 10, "/status after the flood", detail=agent.tail)
    assert_all_json(log_lines_after(agent, 0))  # the whole run, start-up included


def status_ready(agent: Agent) -> bool:
    try:
        return bool(agent.status()["agent"]["ready"])
    except httpx.HTTPError:
        return False
