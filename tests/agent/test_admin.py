"""The admin listener over real loopback sockets: routes and bodies, and each of its bounds
(503 beyond the request limit, refusal beyond the connection cap or near the fd limit, idle
connections closed); the cached outbox figures on their own SQLite thread."""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import admin
from agent.admin import AdminServer, json_response
from agent.outboxstats import OutboxStats
from agent.store import AsyncStore, Store
from tests.agent.test_store import T0, part

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def status() -> tuple[int, str, bytes]:
    return json_response({"ok": True})


async def metrics() -> tuple[int, str, bytes]:
    return 200, "text/plain; version=0.0.4; charset=utf-8", b"vsim_up 1\n"


@pytest.fixture
async def server() -> AsyncIterator[AdminServer]:
    srv = AdminServer("127.0.0.1", 0, {"/status": status, "/metrics": metrics})
    await srv.start()
    task = asyncio.create_task(srv.serve())
    try:
        yield srv
    finally:
        srv.close()
        await asyncio.wait_for(task, 5)


async def request(port: int, raw: str) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw.encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return lines[0], headers, body


def get(path: str, method: str = "GET") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def open_idle(server: AdminServer, n: int) -> list[Stream]:
    """``n`` connections that send nothing, once the listener has taken them all."""
    streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(n)]
    deadline = time.monotonic() + 5
    while server.connections < n:
        assert time.monotonic() < deadline, f"{server.connections} of {n} connections taken"
        await asyncio.sleep(0.01)
    return streams


async def refused(port: int) -> bool:
    """True if the listener drops a new connection without answering its request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("/status").encode())
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return True
    finally:
        writer.close()
    return data == b""


async def test_routes_and_bodies(server: AdminServer) -> None:
    line, headers, body = await request(server.port, get("/status?x=1"))
    assert line == "HTTP/1.1 200 OK" and headers["content-type"] == "application/json"
    assert body == b'{\n "ok": true\n}'
    line, headers, body = await request(server.port, get("/metrics", "HEAD"))
    assert line == "HTTP/1.1 200 OK" and body == b""
    assert headers["content-length"] == str(len(b"vsim_up 1\n"))
    line, _, body = await request(server.port, get("/nope"))
    assert line == "HTTP/1.1 404 Not Found" and body == b"not found\n"
    line, headers, body = await request(server.port, get("/status", "POST"))
    assert line == "HTTP/1.1 405 Method Not Allowed" and body == b"method not allowed\n"
    assert "GET" in headers["allow"].upper()


async def test_503_beyond_the_request_limit(server: AdminServer) -> None:
    idle = await open_idle(server, admin.LIMIT_CONCURRENCY)
    line, _, _ = await request(server.port, get("/status"))
    assert line == "HTTP/1.1 503 Service Unavailable"
    for _, writer in idle:
        writer.close()
    await until_answered(server.port)


async def until_answered(port: int) -> None:
    deadline = time.monotonic() + 5
    while (await request(port, get("/status")))[0] != "HTTP/1.1 200 OK":
        assert time.monotonic() < deadline, "the listener did not recover"
        await asyncio.sleep(0.05)


async def test_connections_beyond_the_cap_are_dropped(server: AdminServer) -> None:
    idle = await open_idle(server, admin.MAX_CONNECTIONS)
    assert await refused(server.port)
    assert server.connections == admin.MAX_CONNECTIONS
    for _, writer in idle:
        writer.close()
    await until_answered(server.port)


async def test_near_the_fd_limit_connections_are_dropped(
    server: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(admin, "FD_RESERVE", soft)  # every descriptor counts as reserved
    assert await refused(server.port)
    monkeypatch.setattr(admin, "FD_RESERVE", 0)
    await until_answered(server.port)


async def test_a_connection_without_a_request_is_closed(
    server: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "HEAD_TIMEOUT_S", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.15 < time.monotonic() - started < 3
    writer.close()


async def test_close_stops_serving(tmp_path: Path) -> None:
    srv = AdminServer("127.0.0.1", 0, {"/status": status})
    await srv.start()
    task = asyncio.create_task(srv.serve())
    await until_answered(srv.port)
    srv.close()
    await asyncio.wait_for(task, 3)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", srv.port)


@pytest.fixture
def astore(tmp_path: Path) -> AsyncStore:
    s = AsyncStore(Store(tmp_path / "agent.db"))
    yield s
    s.close()


async def test_outbox_figures_cost_one_query_for_a_crowd(astore: AsyncStore) -> None:
    astore.store.ingest([part("code 1234")], now=T0, reassembly_timeout_s=600)
    stats = OutboxStats(astore, max_age_s=60)
    figures = await asyncio.gather(*(stats.get() for _ in range(2000)))
    assert stats.queries == 1
    assert {(f.depth, f.oldest, f.dead, f.pending) for f in figures} == {(1, T0, 0, 0)}
    stats.max_age_s = 0.0
    astore.store.ingest([part("code 5678")], now=T0 + 1, reassembly_timeout_s=600)
    assert (await stats.get()).depth == 2 and stats.queries == 2


async def test_outbox_figures_do_not_wait_for_the_senders_reads(astore: AsyncStore) -> None:
    release = threading.Event()
    blocked = asyncio.ensure_future(astore.read(release.wait, 10))  # the sender's read thread
    try:
        figures = await asyncio.wait_for(OutboxStats(astore).get(), 5)
        assert figures.depth == 0 and not blocked.done()
    finally:
        release.set()
        await blocked
