"""Fault injection, the request log and the control endpoints of the reference hub."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from agent.hub.faults import parse_fault
from tests.hub.conftest import AGENT, RU_SIM, Hub, StartHub, message, register, sim


async def test_status_fault_takes_count_requests_of_its_endpoint(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        hub.state.add_fault(status=503, count=2, endpoint="messages")
        poll = await c.get("/commands")  # another endpoint: untouched
        first = await c.post("/messages", json={"messages": [message()]})
        second = await c.post("/messages", json={"messages": [message()]})
        third = await c.post("/messages", json={"messages": [message()]})
    assert poll.status_code == 200
    assert first.status_code == second.status_code == 503
    assert first.json()["name"] == "error"
    assert third.status_code == 200
    assert len(hub.state.messages) == 1  # faulted batches were not stored
    assert hub.state.faults.injected == 2


async def test_retry_after_fault(hub: Hub) -> None:
    hub.state.add_fault(mode="retry_after", retry_after=2)
    hub.state.add_fault(status=503, retry_after=1.5)
    async with hub.agent() as c:
        r = await c.get("/commands")
        r2 = await c.get("/commands")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert r2.status_code == 503
    assert r2.headers["retry-after"] == "2"  # RFC 9110: whole seconds, rounded up


async def test_timeout_fault_outlasts_the_client(hub: Hub) -> None:
    hub.state.add_fault(mode="timeout", delay_s=1.0)
    async with hub.agent(timeout=0.2) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/commands")
        assert time.monotonic() - started < 1
        assert (await c.get("/commands")).status_code == 200


async def test_reset_fault_drops_the_connection_without_response(hub: Hub) -> None:
    hub.state.add_fault(mode="reset", count=2)
    async with hub.agent() as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await c.get("/commands")
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await c.post("/messages", json={"messages": [message()]})
        assert (await c.get("/commands")).status_code == 200


async def test_body_faults(hub: Hub) -> None:
    for spec in ({"mode": "html"}, {"mode": "auth401"}, {"mode": "auth202"}):
        hub.state.add_fault(**spec)
    hub.state.add_fault(mode="garbage_json")
    async with hub.agent() as c:
        html = await c.get("/commands")
        auth401 = await c.get("/commands")
        auth202 = await c.get("/commands")
        garbage = await c.get("/commands")
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert auth401.status_code == 401
    assert auth401.json()["code"] == 202
    assert auth202.status_code == 200
    assert auth202.json() == {
        "name": "error",
        "message": "Api key is not valid",
        "code": 202,
        "status": 200,
    }
    assert garbage.status_code == 200
    assert garbage.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(garbage.content)


async def test_delay_fault_then_handles_normally(hub: Hub) -> None:
    hub.state.add_fault(mode="delay", delay_s=0.3, endpoint="sims")
    async with hub.agent() as c:
        started = time.monotonic()
        await register(c, 1, sim())
        assert time.monotonic() - started >= 0.3
    assert RU_SIM in hub.state.sims


async def test_until_cleared_fault_and_request_log(hub: Hub) -> None:
    hub.state.add_fault(status=502, count=-1)
    since = time.time()
    async with hub.agent() as c:
        codes = [(await c.get("/commands")).status_code for _ in range(5)]
        hub.state.clear_faults()
        codes.append((await c.get("/commands")).status_code)
    assert codes == [502] * 5 + [200]
    assert hub.state.request_count("commands", since=since) == 6
    times = hub.state.request_times("commands")
    assert len(times) == 6
    assert times == sorted(times)
    assert hub.state.request_count() == 6


def test_fault_spec_validation() -> None:
    assert parse_fault({"status": 503}).mode == "status"
    assert parse_fault({"mode": "retry_after"}).retry_after == 1
    assert parse_fault({"mode": "timeout"}).delay_s == 30.0
    for bad in (
        {},
        {"mode": "explode"},
        {"status": 99},
        {"status": 503, "count": 0},
        {"status": 503, "endpoint": "nowhere"},
        {"status": 503, "colour": "red"},
        {"mode": "status"},
    ):
        with pytest.raises(ValueError):
            parse_fault(bad)


async def test_control_endpoints(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=f"{hub.url}/_control") as ctl, hub.agent() as c:
        r = await ctl.post("/faults", json={"status": 503, "count": 1, "endpoint": "sims"})
        assert r.json()["faults"][0]["status"] == 503
        assert (await c.put("/sims", json={})).status_code == 503
        await register(c, 1, sim())
        bad = await ctl.post("/faults", json={"mode": "nope"})
        assert bad.status_code == 400
        await ctl.post("/faults", json=[{"mode": "html"}, {"mode": "reset"}])
        assert len((await ctl.post("/faults", json={"clear": True})).json()["faults"]) == 0

        sent = (await ctl.post("/send", json={"type": "disable", "sim_id": RU_SIM})).json()
        assert (
            await ctl.post("/send", json={"type": "explode", "sim_id": RU_SIM})
        ).status_code == 400
        commands = (await c.get("/commands")).json()["commands"]
        assert [x["id"] for x in commands] == [sent["id"]]

        accepted = message()
        await c.post("/messages", json={"messages": [accepted, accepted]})
        state = (await ctl.get("/state")).json()
        assert state["sims"][RU_SIM]["agent_id"] == AGENT
        assert state["messages"] == 1
        assert state["duplicates"] == 1
        assert state["requests"]["messages"] == 1
        assert sent["id"] in state["commands"]
        listed = (await ctl.get("/messages", params={"sim_id": RU_SIM})).json()
        assert [m["body"]["id"] for m in listed] == [accepted["id"]]
        log = (await ctl.get("/requests", params={"endpoint": "sims"})).json()
        assert log["count"] == 2

        assert (await ctl.post("/reset")).json() == {"ok": True}
        state = (await ctl.get("/state")).json()
    assert state["sims"] == {}
    assert state["messages"] == 0
    assert state["commands"] == {}


async def test_control_can_be_turned_off(start_hub: StartHub) -> None:
    hub = await start_hub(control=False)
    async with httpx.AsyncClient(base_url=hub.url) as c:
        assert (await c.get("/_control/state")).status_code == 404
