"""sd_notify against a real unix datagram socket, bound where systemd would have bound it."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.sdnotify import Heartbeat, Notifier, Watchdog, watchdog_interval


class NotifySocket:
    """Plays PID 1's side: a bound SOCK_DGRAM socket that records what arrives, and when."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def drain(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return got

    async def collect(self, into: list[tuple[float, str]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            into.append((time.monotonic(), data.decode()))


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[tuple[NotifySocket, str]]:
    path = str(tmp_path / "notify")  # short: sun_path holds 108 bytes
    server = NotifySocket(path)
    yield server, path
    server.sock.close()


@pytest.fixture
def notifier(notify_path: tuple[NotifySocket, str]) -> Iterator[Notifier]:
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_path[1]})
    yield n
    n.close()


def test_messages_arrive_as_systemd_reads_them(notify_path, notifier) -> None:
    server, _ = notify_path
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("12/16 SIMs online, queue 0")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.reloading()
    got = server.drain()
    assert got[:5] == [
        "READY=1",
        "STATUS=12/16 SIMs online, queue 0",
        "WATCHDOG=1",
        "STOPPING=1",
        got[4],
    ]
    reloading, monotonic = got[4].split("\n")
    assert reloading == "RELOADING=1"
    usec = int(monotonic.removeprefix("MONOTONIC_USEC="))
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5


def test_status_stays_one_assignment(notify_path, notifier) -> None:
    server, _ = notify_path
    notifier.status("line one\nREADY=1")
    assert server.drain() == ["STATUS=line one READY=1"]


def test_abstract_socket_name() -> None:
    name = f"vsim-test-{uuid.uuid4().hex}"
    server = NotifySocket("\0" + name)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert server.drain() == ["READY=1"]
        n.close()
    finally:
        server.sock.close()


def test_no_socket_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_unsupported_address_disables_with_warning() -> None:
    with capture_logs() as logs:
        n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert [e["event"] for e in logs] == ["sd_notify.unsupported_address"]


def test_send_failure_never_raises_and_warns_once(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        assert not n.ready()
        assert not n.watchdog()
        assert not n.watchdog()
    n.close()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "sd_notify.send_failed"


def test_full_receive_queue_does_not_block(notify_path, notifier) -> None:
    # PID 1 busy: its queue fills up; sends must fail fast instead of stalling the event loop.
    started = time.monotonic()
    results = [notifier.watchdog() for _ in range(5000)]
    assert time.monotonic() - started < 2
    assert results[0]
    assert not results[-1]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


async def _run_for(wd: Watchdog, server: NotifySocket, seconds: float) -> list[tuple[float, str]]:
    got: list[tuple[float, str]] = []
    stop = asyncio.Event()
    reader = asyncio.create_task(server.collect(got), name="test:notify-reader")
    runner = asyncio.create_task(wd.run(stop), name="test:watchdog")
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(runner, 1)
    await asyncio.sleep(0.01)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    return got


async def test_pings_at_half_the_interval(notify_path, notifier) -> None:
    server, _ = notify_path
    wd = Watchdog(notifier, interval=0.2)
    beat = Heartbeat()
    wd.add_probe("sender", beat.last)

    async def sender() -> None:
        while True:
            beat.beat()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(sender(), name="test:sender")
    got = await _run_for(wd, server, 0.55)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert {msg for _, msg in got} == {"WATCHDOG=1"}
    assert 4 <= len(got) <= 7  # 0.0, 0.1, ..., 0.5 with slack for a busy CI machine
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(got)]
    assert min(gaps) > 0.07


async def test_pings_stop_while_a_probe_is_stale_and_resume(notify_path, notifier) -> None:
    server, _ = notify_path
    wd = Watchdog(notifier, interval=0.2, stale_after=0.25)
    sender, poller = Heartbeat(), Heartbeat()
    wd.add_probe("sender", sender.last)
    wd.add_probe("poller", poller.last)
    poller_alive = True

    async def loops() -> None:
        while True:
            sender.beat()
            if poller_alive:
                poller.beat()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(loops(), name="test:loops")
    got: list[tuple[float, str]] = []
    stop = asyncio.Event()
    reader = asyncio.create_task(server.collect(got), name="test:notify-reader")
    with capture_logs() as logs:
        runner = asyncio.create_task(wd.run(stop), name="test:watchdog")
        await asyncio.sleep(0.35)
        poller_alive = False
        hung_at = time.monotonic()
        await asyncio.sleep(0.8)
        pings_while_hung = [t for t, _ in got if t > hung_at + 0.25 + 0.12]
        poller_alive = True
        resumed_at = time.monotonic()
        await asyncio.sleep(0.35)
        stop.set()
        await asyncio.wait_for(runner, 1)
    await asyncio.sleep(0.01)
    for t in (reader, task):
        t.cancel()
    await asyncio.gather(reader, task, return_exceptions=True)

    assert len([t for t, _ in got if t < hung_at]) >= 3
    assert pings_while_hung == []
    assert len([t for t, _ in got if t > resumed_at]) >= 2
    stuck = [e for e in logs if e["event"] == "watchdog.loop_stuck"]
    assert [e["probe"] for e in stuck] == ["poller"]  # logged once, naming the loop
    assert stuck[0]["log_level"] == "error"
    assert [e["probe"] for e in logs if e["event"] == "watchdog.loop_recovered"] == ["poller"]


def test_stale_per_probe_bound_and_failing_probe(notifier) -> None:
    now = 1000.0
    wd = Watchdog(notifier, interval=30, clock=lambda: now)
    wd.add_probe("sender", lambda: now - 10)
    wd.add_probe("poller", lambda: now - 50, stale_after=90)  # long-poll: slower beats

    def broken() -> float:
        raise RuntimeError("probe bug")

    assert wd.stale() == {}
    wd.add_probe("device:pool1", lambda: now - 31)
    assert wd.stale() == {"device:pool1": 31}
    wd.remove_probe("device:pool1")
    wd.add_probe("broken", broken)
    with capture_logs():
        assert wd.stale() == {"broken": float("inf")}
        assert not wd.check()


async def test_run_returns_at_once_without_watchdog(notify_path, notifier) -> None:
    server, _ = notify_path
    await asyncio.wait_for(Watchdog(notifier, interval=None).run(asyncio.Event()), 0.5)
    await asyncio.wait_for(Watchdog(Notifier(None), interval=1).run(asyncio.Event()), 0.5)
    assert server.drain() == []


async def test_stop_ends_run_promptly(notify_path, notifier) -> None:
    wd = Watchdog(notifier, interval=60)
    stop = asyncio.Event()
    runner = asyncio.create_task(wd.run(stop), name="test:watchdog")
    await asyncio.sleep(0.05)
    assert notify_path[0].drain() == ["WATCHDOG=1"]  # first ping at once, not after 30 s
    stop.set()
    await asyncio.wait_for(runner, 0.5)


def test_rejects_nonpositive_interval(notifier) -> None:
    with pytest.raises(ValueError, match="positive"):
        Watchdog(notifier, interval=0)
