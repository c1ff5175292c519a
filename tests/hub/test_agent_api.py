"""The agent API of the reference hub (PROTOCOL.md §1 to §5), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time

import httpx
import pytest

from tests.hub.conftest import (
    AGENT,
    RU_SIM,
    Hub,
    StartHub,
    message,
    register,
    result,
    sim,
    snapshot,
)

US_SIM = "89011012345678901234"

# ---- §1/§2 authentication -------------------------------------------------------------


async def test_missing_key_is_401_code_201(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=f"{hub.url}/agent/v1") as c:
        r = await c.put("/sims", json=snapshot(1), headers={"X-Agent-Id": AGENT})
    assert r.status_code == 401
    assert r.json() == {
        "name": "error",
        "message": "Api key is missing",
        "code": 201,
        "status": 401,
    }


async def test_invalid_key_is_401_code_202(hub: Hub) -> None:
    async with hub.agent(key="wrong") as c:
        r = await c.get("/commands")
    assert r.status_code == 401
    assert r.json()["code"] == 202


async def test_missing_agent_id_is_400(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=f"{hub.url}/agent/v1") as c:
        r = await c.get("/commands", headers={"Authorization": "Bearer demo-key"})
    assert r.status_code == 400
    assert "X-Agent-Id" in r.json()["message"]


async def test_key_bound_to_another_agent_is_refused(start_hub: StartHub) -> None:
    hub = await start_hub(agent_keys={"k1": "farm-1", "k2": "farm-2"})
    async with hub.agent("farm-1", key="k1") as ok, hub.agent("farm-2", key="k1") as thief:
        assert (await ok.get("/commands")).status_code == 200
        r = await thief.get("/commands")
    assert r.status_code == 401
    assert r.json()["code"] == 202


async def test_unknown_path_and_method_answer_platform_error(hub: Hub) -> None:
    async with hub.agent() as c:
        missing = await c.get("/nothing")
        wrong_method = await c.get("/sims")
    assert missing.status_code == 404
    assert missing.json()["name"] == "error"
    assert wrong_method.status_code == 405


# ---- §1 signing ------------------------------------------------------------------------

SECRET = "s3cret"


def _signed(body: bytes, ts: float | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time() if ts is None else ts))
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Timestamp": stamp, "X-Signature": f"v1={mac}", "Content-Type": "application/json"}


async def test_signed_requests_are_verified(start_hub: StartHub) -> None:
    hub = await start_hub(signing_secret=SECRET)
    body = json.dumps(snapshot(1, sim())).encode()
    async with hub.agent() as c:
        good = await c.put("/sims", content=body, headers=_signed(body))
        poll = await c.get("/commands", headers=_signed(b""))
        bad = await c.put("/sims", content=body, headers=_signed(body, secret="other"))
        skewed = await c.put("/sims", content=body, headers=_signed(body, ts=time.time() - 301))
        future = await c.put("/sims", content=body, headers=_signed(body, ts=time.time() + 301))
        unsigned = await c.put("/sims", content=body, headers={"Content-Type": "application/json"})
        tampered = await c.put("/sims", content=body + b" ", headers=_signed(body))
    assert good.status_code == 200
    assert poll.status_code == 200
    for r in (bad, skewed, future, unsigned, tampered):
        assert r.status_code == 401
        assert r.json()["code"] == 204
    assert hub.state.agents[AGENT]["snapshots"] == 1


# ---- §3 PUT /sims ---------------------------------------------------------------------


async def test_snapshot_seq_ordering(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 5, sim(state="online"))
        await register(c, 3, sim(state="offline"))  # older: ignored, still 200
        assert hub.state.sims[RU_SIM]["state"] == "online"
        assert hub.state.agents[AGENT]["stale"] == 1
        await register(c, 5, sim(state="disabled"))  # same seq: a re-send, replaces
        assert hub.state.sims[RU_SIM]["state"] == "disabled"
        await register(c, 6, sim(US_SIM, country="US", number=None))
    assert set(hub.state.sims) == {US_SIM}  # RU left the inventory
    assert hub.state.known_sims == {RU_SIM, US_SIM}
    assert hub.state.sims[US_SIM]["agent_id"] == AGENT


async def test_snapshot_shape_errors_are_400_with_reason(hub: Hub) -> None:
    cases = {
        "agent.id does not match": snapshot(1, agent_id="other"),
        "seq must be": {**snapshot(1), "seq": "1"},
        "state must be": snapshot(1, sim(state="sleeping")),
        "number must be E.164": snapshot(1, sim(number="79001234567")),
        "listed twice": snapshot(1, sim(), sim()),
        "country is required": snapshot(1, {"sim_id": "1", "state": "online", "number": None}),
    }
    async with hub.agent() as c:
        for reason, body in cases.items():
            r = await c.put("/sims", json=body)
            assert r.status_code == 400, reason
            assert reason in r.json()["message"]
        not_json = await c.put("/sims", content=b"{", headers={"Content-Type": "application/json"})
        not_typed = await c.put("/sims", content=b"{}", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 400
    assert not_typed.status_code == 415
    assert hub.state.sims == {}


# ---- §4 POST /messages ----------------------------------------------------------------


async def test_messages_accept_duplicate_unknown_malformed(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        first, unknown = message(), message(sim_id="0000")
        bad_time, bad_id = message(received_at="yesterday"), message(id="ABC")
        r = await c.post("/messages", json={"messages": [first, unknown, bad_time, bad_id, "x"]})
        assert r.status_code == 200
        body = r.json()
        assert body["accepted"] == [first["id"]]
        assert body["rejected"] == [
            {"id": unknown["id"], "reason": "unknown sim"},
            {
                "id": bad_time["id"],
                "reason": "received_at must be an RFC 3339 timestamp with offset",
            },
            {"id": "ABC", "reason": "id must be 32 lowercase hex digits"},
            {"id": None, "reason": "a message is not an object"},
        ]
        again = await c.post("/messages", json={"messages": [first]})
    assert again.json() == {"accepted": [first["id"]], "rejected": []}
    record = hub.state.messages[first["id"]]
    assert record["body"] == first
    assert record["count"] == 2
    assert hub.state.duplicates == 1
    assert len(hub.state.messages) == 1


async def test_message_of_a_sim_that_left_the_inventory_is_still_accepted(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        await register(c, 2)
        r = await c.post("/messages", json={"messages": [message(number=None, sent_at=None)]})
    assert r.json()["rejected"] == []


async def test_messages_body_errors_are_400(hub: Hub) -> None:
    async with hub.agent() as c:
        r = await c.post("/messages", json=[message()])
        r2 = await c.post("/messages", json={"messages": {}})
    assert r.status_code == r2.status_code == 400


async def test_a_batch_of_100_is_fast(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        batches = [{"messages": [message() for _ in range(100)]} for _ in range(20)]
        await c.post("/messages", json=batches.pop())  # warm the connection
        started = time.perf_counter()
        for batch in batches:
            r = await c.post("/messages", json=batch)
            assert len(r.json()["accepted"]) == 100
        per_batch = (time.perf_counter() - started) / len(batches)
    assert len(hub.state.messages) == 2000
    assert per_batch < 0.025  # round trip, client included; the server's share is ~1 ms


# ---- §5 commands ----------------------------------------------------------------------


async def test_long_poll_answers_at_once_when_a_command_is_queued(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        cid = hub.state.enqueue_command("disable", RU_SIM)
        started = time.monotonic()
        r = await c.get("/commands", params={"wait": 10})
    assert time.monotonic() - started < 1
    assert r.json() == {"commands": [{"id": cid, "type": "disable", "sim_id": RU_SIM}]}


async def test_long_poll_waits_then_answers_empty(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        started = time.monotonic()
        r = await c.get("/commands", params={"wait": 0.3})
        elapsed = time.monotonic() - started
        immediate = await c.get("/commands")
    assert r.json() == {"commands": []}
    assert 0.3 <= elapsed < 1.5
    assert immediate.json() == {"commands": []}


async def test_long_poll_wait_is_capped(start_hub: StartHub) -> None:
    hub = await start_hub(long_poll_max_s=0.2)
    async with hub.agent() as c:
        started = time.monotonic()
        await c.get("/commands", params={"wait": 30})
    assert time.monotonic() - started < 1.5


async def test_long_poll_wakes_on_enqueue_and_routes_by_sim_owner(hub: Hub) -> None:
    async with hub.agent() as one, hub.agent("farm-2") as two:
        await register(one, 1, sim())
        await register(two, 1, sim(US_SIM, country="US"), agent_id="farm-2")
        poll_one = asyncio.create_task(one.get("/commands", params={"wait": 10}))
        poll_two = asyncio.create_task(two.get("/commands", params={"wait": 0.5}))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        cid = hub.state.enqueue_command("forward", RU_SIM, "+79007777777")
        r1 = await poll_one
        assert time.monotonic() - started < 1
        r2 = await poll_two
    assert r1.json()["commands"] == [
        {"id": cid, "type": "forward", "sim_id": RU_SIM, "to": "+79007777777"}
    ]
    assert r2.json()["commands"] == []


async def test_enqueue_from_another_thread_wakes_the_poll(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        poll = asyncio.create_task(c.get("/commands", params={"wait": 10}))
        await asyncio.sleep(0.1)
        ids: list[str] = []
        thread = threading.Thread(
            target=lambda: ids.append(hub.state.enqueue_command("enable", RU_SIM))
        )
        thread.start()
        r = await asyncio.wait_for(poll, 2)
        thread.join()
    assert [cmd["id"] for cmd in r.json()["commands"]] == ids


async def test_command_waits_for_its_sim_to_be_registered(hub: Hub) -> None:
    cid = hub.state.enqueue_command("enable", RU_SIM)
    async with hub.agent() as c:
        before = await c.get("/commands")
        poll = asyncio.create_task(c.get("/commands", params={"wait": 10}))
        await asyncio.sleep(0.1)
        async with hub.agent() as other:
            await register(other, 1, sim())
        r = await asyncio.wait_for(poll, 2)
    assert before.json()["commands"] == []
    assert [cmd["id"] for cmd in r.json()["commands"]] == [cid]


async def test_unacknowledged_command_is_redelivered(start_hub: StartHub) -> None:
    hub = await start_hub(redeliver_after_s=0.3)
    async with hub.agent() as c:
        await register(c, 1, sim())
        cid = hub.state.enqueue_command("disable", RU_SIM)
        first = (await c.get("/commands")).json()["commands"]
        soon = (await c.get("/commands")).json()["commands"]
        started = time.monotonic()
        later = (await c.get("/commands", params={"wait": 5})).json()["commands"]
        waited = time.monotonic() - started
        assert (await c.post(f"/commands/{cid}/result", json=result())).status_code == 200
        after = (await c.get("/commands", params={"wait": 0.5})).json()["commands"]
    assert [x["id"] for x in first] == [cid]
    assert soon == []
    assert [x["id"] for x in later] == [cid]
    assert 0.1 < waited < 1.5  # the poll ended when the command fell due, not at wait=5
    assert after == []
    assert hub.state.commands[cid].deliveries == 2


async def test_results_are_stored_and_idempotent(hub: Hub) -> None:
    async with hub.agent() as c:
        await register(c, 1, sim())
        cid = hub.state.enqueue_command("disable", RU_SIM)
        r1 = await c.post(f"/commands/{cid}/result", json=result())
        r2 = await c.post(f"/commands/{cid}/result", json=result(ok=False, error="late"))
        unknown = await c.post("/commands/c-nope/result", json=result())
        malformed = await c.post(f"/commands/{cid}/result", json={"ok": "yes"})
    assert r1.json() == r2.json() == {"ok": True}
    assert unknown.status_code == 404
    assert malformed.status_code == 400
    stored = hub.state.command_results[cid]
    assert stored["ok"] is True
    assert stored["state"] == "disabled"
    assert stored["count"] == 2
    assert stored["agent_id"] == AGENT


async def test_command_ids_are_unique_across_hubs(start_hub: StartHub) -> None:
    a, b = await start_hub(), await start_hub()
    ids_a = {a.state.enqueue_command("enable", RU_SIM) for _ in range(3)}
    a.state.reset()
    ids_a.add(a.state.enqueue_command("enable", RU_SIM))
    ids_b = {b.state.enqueue_command("enable", RU_SIM) for _ in range(3)}
    assert len(ids_a) == 4
    assert not ids_a & ids_b


async def test_bad_wait_is_400(hub: Hub) -> None:
    async with hub.agent() as c:
        r = await c.get("/commands", params={"wait": "-1"})
        r2 = await c.get("/commands", params={"wait": "soon"})
    assert r.status_code == r2.status_code == 400


async def test_a_poll_whose_client_left_takes_no_command(hub: Hub) -> None:
    async with hub.agent(timeout=0.2) as c:
        await register(c, 1, sim())
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/commands", params={"wait": 5})
        await asyncio.sleep(0.1)
        cid = hub.state.enqueue_command("disable", RU_SIM)
        await asyncio.sleep(0.1)
        assert hub.state.commands[cid].deliveries == 0
        r = await c.get("/commands")
    assert [x["id"] for x in r.json()["commands"]] == [cid]
