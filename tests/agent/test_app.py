"""The whole agent in-process against the in-process reference hub over real loopback HTTP.

Faster siblings of the process-level tests in tests/e2e: they prove the wiring (inventory,
delivery, commands, desired state across restarts, metrics and status) in a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.app import App
from agent.config import load_config
from agent.hub import HubConfig, HubState, run_hub
from drivers.simulated import SimNetwork


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or cond}")


@asynccontextmanager
async def hub() -> AsyncIterator[HubState]:
    state = HubState()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_hub(
            HubConfig(agent_keys={"k"}, customer_key="ck"),
            "127.0.0.1",
            0,
            state=state,
            ready=ready,
            shutdown=stop,
        )
    )
    await ready.wait()
    try:
        yield state
    finally:
        stop.set()
        await task


@asynccontextmanager
async def agent(state_dir: Path, hub_state: HubState, **extra: Any) -> AsyncIterator[App]:
    data: dict[str, Any] = {
        "agent": {"id": "farm-t", "state_dir": str(state_dir), "reassembly_timeout_s": 2},
        "upstream": {
            "url": f"{hub_state.base_url}/agent/v1",
            "api_key": "k",
            "heartbeat_s": 30,
            "backoff_max_s": 1,
            "auth_retry_s": 1,
        },
        "admin": {"listen": "127.0.0.1:0"},
        "devices": [{"name": "bank", "driver": "simulated", "sims": 4}],
    }
    data.update(extra)
    app = App(load_config(None, data=data))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await until(lambda: app.ready.is_set() or task.done(), what="agent ready")
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def texts(h: HubState) -> dict[str, dict[str, Any]]:
    with h.lock:
        return {m["body"]["text"]: m["body"] for m in h.messages.values()}


async def test_inventory_delivery_and_commands(tmp_path: Path) -> None:
    async with hub() as h, agent(tmp_path, h) as app:
        await until(lambda: len(h.sims) == 4, what="inventory")
        net = SimNetwork(tmp_path / "simnet.db")
        numbers = list(net.numbers())
        sim0 = net.sim(numbers[0])["iccid"]
        rec = h.sims[sim0]
        assert rec["state"] == "online" and rec["country"] == "RU" and rec["number"] == numbers[0]
        net.send(numbers[0], "G-123456 is your Google verification code.", sender="Google")
        net.send(numbers[1], "Ваш код: 4321 " * 12, sender="OZON", order="reverse")
        await until(lambda: len(texts(h)) == 2, what="2 messages")
        long = texts(h)["Ваш код: 4321 " * 12]
        assert long["parts"] == 3 and long["complete"] is True and long["from"] == "OZON"

        # disable → the SIM is disabled at the hub and its SMS wait in the network
        cid = h.enqueue_command("disable", sim0)
        await until(lambda: cid in h.command_results, what="disable result")
        assert h.command_results[cid]["ok"] is True
        assert h.command_results[cid]["state"] == "disabled"
        await until(lambda: h.sims[sim0]["state"] == "disabled", what="disabled at hub")
        net.send(numbers[0], "held 5555", sender="VKcom")
        # A barrier, not a pause: an SMS to another SIM sent after the held one has arrived,
        # so the device has read the network past it.
        net.send(numbers[1], "barrier 0000", sender="Bank")
        await until(lambda: "barrier 0000" in texts(h), what="the barrier SMS")
        assert "held 5555" not in texts(h) and net.stored() == 1
        cid = h.enqueue_command("enable", sim0)
        await until(lambda: "held 5555" in texts(h), what="held SMS after enable")
        await until(lambda: h.sims[sim0]["state"] == "online", what="online again at hub")

        # bad commands answer ok:false and change nothing
        bad = h.enqueue_command("forward", sim0, "not-a-number")
        await until(lambda: bad in h.command_results, what="bad result")
        assert h.command_results[bad]["ok"] is False
        assert "E.164" in h.command_results[bad]["error"]

        async with httpx.AsyncClient() as http:
            assert app.admin is not None
            base = f"http://127.0.0.1:{app.admin.port}"
            metrics = (await http.get(f"{base}/metrics")).text
            assert 'vsim_sim_state{device="bank",port="bank/0"' in metrics
            assert "vsim_messages_delivered_total 4.0" in metrics  # with the barrier SMS
            status = (await http.get(f"{base}/status")).json()
            assert status["outbox"]["depth"] == 0 and len(status["sims"]) == 4
            assert (await http.get(f"{base}/healthz")).status_code == 200
        net.close()


async def test_desired_state_reapplied_after_restart(tmp_path: Path) -> None:
    async with hub() as h:
        async with agent(tmp_path, h):
            await until(lambda: len(h.sims) == 4)
            net = SimNetwork(tmp_path / "simnet.db")
            sim1 = net.sims("bank")[1]["iccid"]
            c1 = h.enqueue_command("disable", sim1)
            c2 = h.enqueue_command("forward", sim1, "+79007777777")
            await until(lambda: c1 in h.command_results and c2 in h.command_results)
            assert net.sim(sim1)["radio_on"] == 0
            assert net.sim(sim1)["forward_to"] == "+79007777777"
        # While the agent is down, the modem is reset: radio on, forwarding gone.
        net.set_sim(sim1, radio_on=True, forward_to=None, set_forward=True)
        async with agent(tmp_path, h):
            await until(lambda: net.sim(sim1)["radio_on"] == 0, what="radio re-applied")
            await until(lambda: net.sim(sim1)["forward_to"] == "+79007777777", what="forward")
            await until(lambda: h.sims[sim1]["state"] == "disabled")
            # A repeated command id is not executed again; its result is re-sent.
            before = dict(h.command_results)
            assert before[c1]["ok"] is True
        net.close()


async def test_partial_multipart_delivered_after_timeout(tmp_path: Path) -> None:
    async with hub() as h, agent(tmp_path, h):
        await until(lambda: len(h.sims) == 4)
        net = SimNetwork(tmp_path / "simnet.db")
        number = next(iter(net.numbers()))
        net.send(number, "A" * 153 + "B" * 153 + "C" * 10, drop=[2])
        await until(lambda: len(texts(h)) == 1, timeout=8, what="partial")
        [m] = texts(h).values()
        assert m["text"] == "A" * 153 + "C" * 10 and m["complete"] is False and m["parts"] == 2
        net.close()


async def test_hub_down_at_start_then_up(tmp_path: Path) -> None:
    # The hub is not there at all: the agent keeps everything and delivers once it appears.
    state = HubState()
    ready, stop = asyncio.Event(), asyncio.Event()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state.bound_port = port
    async with agent(tmp_path, state):
        net = SimNetwork(tmp_path / "simnet.db")
        numbers = list(net.provision("bank", 4, "RU"))
        for i in range(5):
            net.send(numbers[i % 4]["number"], f"code {1000 + i}")
        await asyncio.sleep(1.5)
        task = asyncio.create_task(
            run_hub(
                HubConfig(agent_keys={"k"}),
                "127.0.0.1",
                port,
                state=state,
                ready=ready,
                shutdown=stop,
            )
        )
        await ready.wait()
        await until(lambda: len(texts(state)) == 5, timeout=15, what="delivery after outage")
        assert state.duplicates == 0
        net.close()
    stop.set()
    await task


@pytest.mark.parametrize("fmt", ["json"])
def test_logs_module_redacts(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from agent import logs

    logs.configure("info", fmt, show_content=False)
    structlog.get_logger().info("x", text="secret words", number="+79001234567", sim_id="8970")
    err = capsys.readouterr().err
    assert "secret words" not in err and "+79001234567" not in err and "…67" in err
    logs.configure("info", fmt, show_content=True)
    structlog.get_logger().info("x", text="visible")
    assert "visible" in capsys.readouterr().err
    structlog.reset_defaults()
