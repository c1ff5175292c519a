"""The agent process speaks sd_notify on a real ``$NOTIFY_SOCKET`` as systemd would read it.

A unix datagram socket bound by the test stands in for systemd: the agent must send READY=1
once its devices have started, STATUS= lines with SIMs online and queue depth, WATCHDOG=1 at
half of ``$WATCHDOG_USEC``, and STOPPING=1 on SIGTERM; and it must stop pinging when a core
loop is wedged (here the sender, through the ``VSIM_DEBUG_WEDGE`` test seam), so systemd kills
and restarts it.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Agent, HubThread, wait_until


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def drain_until(self, done: Callable[[], bool], seconds: float, what: str) -> None:
        """Read until ``done()`` holds (a condition, not a fixed pause); fail after ``seconds``."""
        end = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < end, f"timed out waiting for {what}: {self.messages[-5:]}"
            self.drain(0.1)

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    def close(self) -> None:
        self.sock.close()


def env_for(sock: NotifySocket) -> dict[str, str]:
    # WATCHDOG_PID would have to be the agent's own pid, unknown before it starts; systemd
    # sets it, but it is optional: without it the agent takes WATCHDOG_USEC as meant for it.
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "2000000"}


def test_ready_status_watchdog_and_stopping(
    tmp_path: Path, hub: HubThread, make_agent: Any
) -> None:
    sock = NotifySocket(tmp_path / "notify")
    try:
        agent: Agent = make_agent(hub)
        started = time.monotonic()
        agent.start(wait=False, env=env_for(sock))
        sock.drain(6.0)
        ready = sock.lines("READY=1")
        assert ready, sock.messages
        status = [m for _t, m in sock.lines("STATUS=")]
        assert any("8/8 SIMs online, queue 0" in s for s in status), status
        # READY only after the devices reported their SIMs: the status sent with it says 8/8.
        pings = [t for t, _m in sock.lines("WATCHDOG=1") if t > ready[0][0]]
        assert len(pings) >= 4, f"watchdog pings in ~5 s at a 1 s period: {len(pings)}"
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.6, f"pings must come every ~1 s (half of 2 s): {gaps}"
        assert ready[0][0] - started < 6

        os.kill(agent.pid, signal.SIGTERM)
        code = agent.proc.wait(10)
        sock.drain(0.3)
        assert code == 0
        assert sock.lines("STOPPING=1"), sock.messages[-5:]
    finally:
        sock.close()


def test_watchdog_pings_stop_when_the_sender_is_wedged(
    tmp_path: Path, hub: HubThread, make_agent: Any
) -> None:
    sock = NotifySocket(tmp_path / "notify")
    try:
        agent: Agent = make_agent(hub)
        agent.start(wait=False, env={**env_for(sock), "VSIM_DEBUG_WEDGE": "sender"})
        sock.drain_until(lambda: bool(sock.lines("READY=1")), 15, "READY=1")
        # The sender never beats: once its heartbeat is older than the watchdog interval
        # (2 s) the pings stop for good, and the agent says which loop is stuck.  (That pings
        # flow while every loop beats is the test above.)
        wait_until(lambda: agent.events("watchdog.loop_stuck"), 10, "the stuck loop logged")
        assert agent.events("watchdog.loop_stuck")[0]["probe"] == "sender"
        sock.drain(0.2)  # what was already in flight when the agent logged it
        cutoff = time.monotonic()
        # A barrier instead of a pause: two STATUS= lines after the cutoff (sent every 5 s by
        # the same notifier) prove the agent kept talking to systemd meanwhile.
        sock.drain_until(
            lambda: len([t for t, _m in sock.lines("STATUS=") if t > cutoff]) >= 2,
            15,
            "two STATUS= lines after the stuck loop",
        )
        late = [t for t, _m in sock.lines("WATCHDOG=1") if t > cutoff]
        assert late == [], f"pings went on while the sender was wedged: {len(late)}"
        assert agent.alive, "the agent itself stays up: systemd decides to restart it"
    finally:
        sock.close()
