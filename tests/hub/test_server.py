"""run_hub's lifecycle: free port, busy port, prompt shutdown with long-polls open."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from agent.hub import HubConfig, HubState, run_hub
from tests.hub.conftest import Hub


async def test_shutdown_ends_open_long_polls_at_once() -> None:
    state = HubState()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_hub(HubConfig(), "127.0.0.1", 0, state=state, ready=ready, shutdown=stop)
    )
    await ready.wait()
    assert state.bound_port
    headers = {"Authorization": "Bearer demo-key", "X-Agent-Id": "farm-1"}
    async with httpx.AsyncClient(base_url=f"{state.base_url}/agent/v1", headers=headers) as c:
        poll = asyncio.create_task(c.get("/commands", params={"wait": 20}, timeout=30))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        r = await poll
    assert r.json() == {"commands": []}
    assert time.monotonic() - started < 1.5


async def test_cancelling_run_hub_stops_it_cleanly() -> None:
    state = HubState()
    ready = asyncio.Event()
    task = asyncio.create_task(run_hub(HubConfig(), "127.0.0.1", 0, state=state, ready=ready))
    await ready.wait()
    port = state.bound_port
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port or 0))  # the port is free again


async def test_busy_port_raises(hub: Hub) -> None:
    with pytest.raises(OSError):
        await run_hub(HubConfig(), "127.0.0.1", hub.state.bound_port or 0)
