"""Fixtures for the reference hub's tests: a real hub on 127.0.0.1 and PROTOCOL.md bodies."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from agent.hub import HubConfig, HubState, run_hub

AGENT = "farm-1"
KEY = "demo-key"
RU_SIM = "89701012345678901234"
RU_NUMBER = "+79001234567"

_ids = itertools.count(1)


@dataclass
class Hub:
    state: HubState
    config: HubConfig

    @property
    def url(self) -> str:
        return self.state.base_url

    def agent(self, agent_id: str = AGENT, key: str = KEY, **kw: Any) -> httpx.AsyncClient:
        """An httpx client speaking to the agent API as ``agent_id``."""
        headers = {"Authorization": f"Bearer {key}", "X-Agent-Id": agent_id}
        return httpx.AsyncClient(base_url=f"{self.url}/agent/v1", headers=headers, **kw)

    def customer(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"{self.url}/api")

    async def call(self, client: httpx.AsyncClient, method: str, **params: Any) -> Any:
        """A customer API call with the right key; the decoded JSON answer."""
        r = await client.get(f"/{method}/{self.config.customer_key}", params=params)
        assert r.status_code == 200
        return r.json()


StartHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def start_hub() -> AsyncIterator[StartHub]:
    """Start hubs on free ports (``start_hub(**HubConfig fields)``); all stop at teardown."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(**config: Any) -> Hub:
        cfg = HubConfig(**config)
        state = HubState()
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_hub(cfg, "127.0.0.1", 0, state=state, ready=ready, shutdown=stop), name="test-hub"
        )
        running.append((stop, task))
        await asyncio.wait_for(ready.wait(), 5)
        return Hub(state, cfg)

    yield start
    for stop, _ in running:
        stop.set()
    for _, task in running:
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def hub(start_hub: StartHub) -> Hub:
    return await start_hub()


def sim(sim_id: str = RU_SIM, **fields: Any) -> dict[str, Any]:
    """A §3 SIM entry; ``fields`` override the defaults."""
    base: dict[str, Any] = {
        "sim_id": sim_id,
        "imsi": "250011234567890",
        "number": RU_NUMBER,
        "number_source": "config",
        "country": "RU",
        "mcc_mnc": "25001",
        "operator": "MTS",
        "device": "pool1",
        "port": "pool1/3",
        "state": "online",
        "signal_dbm": -71,
        "forward_to": None,
        "last_sms_at": None,
    }
    base.update(fields)
    return base


def snapshot(seq: int, *sims: dict[str, Any], agent_id: str = AGENT) -> dict[str, Any]:
    return {
        "agent": {"id": agent_id, "version": "1.0.0", "hostname": agent_id},
        "seq": seq,
        "sims": list(sims),
    }


def message(sim_id: str = RU_SIM, text: str = "VK: 93401 - code", **fields: Any) -> dict[str, Any]:
    """A §4 message with a fresh id; ``fields`` override the defaults."""
    base: dict[str, Any] = {
        "id": f"{next(_ids):032x}",
        "sim_id": sim_id,
        "number": RU_NUMBER,
        "from": "VKcom",
        "text": text,
        "sent_at": "2026-11-26T15:01:09+03:00",
        "received_at": "2026-11-26T12:01:10.412+00:00",
        "parts": 1,
        "complete": True,
    }
    base.update(fields)
    return base


def result(
    ok: bool = True, state: str | None = "disabled", error: str | None = None
) -> dict[str, Any]:
    return {"ok": ok, "state": state, "error": error, "finished_at": "2026-11-26T15:04:01+00:00"}


async def register(
    client: httpx.AsyncClient, seq: int, *sims: dict[str, Any], agent_id: str = AGENT
) -> None:
    r = await client.put("/sims", json=snapshot(seq, *sims, agent_id=agent_id))
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True}
