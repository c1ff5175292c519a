"""The customer API subset of the reference hub (PROTOCOL.md §6), end to end over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent.hub.customer_api import extract_code
from tests.hub.conftest import RU_NUMBER, RU_SIM, Hub, message, register, result, sim

RU_SIM_2 = "89701012345678909999"
RU_NUMBER_2 = "+79001112233"
US_SIM = "89011012345678901234"


async def _farm(hub: Hub, agent: httpx.AsyncClient, **ru_fields: Any) -> None:
    await register(
        agent,
        1,
        sim(**ru_fields),
        sim(RU_SIM_2, number=RU_NUMBER_2, state="offline"),
        sim(US_SIM, number="+12025550123", country="US"),
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("VK: 93401 - ваш код для регистрации ВКонтакте.", "93401"),
        ("Code 123 then 4567", "4567"),
        ("G-123456 is your Google verification code", "123456"),
        ("call 1234567890 or use 87654321", "87654321"),  # a 10-digit run is not a code
        ("no code here 12", None),
        ("12345678", "12345678"),
    ],
)
def test_extract_code(text: str, code: str | None) -> None:
    assert extract_code(text) == code


async def test_getnumber_then_sms_then_getstatus(hub: Hub) -> None:
    async with hub.agent() as agent, hub.customer() as api:
        await _farm(hub, agent)
        early = message(text="old code 11111")
        await agent.post("/messages", json={"messages": [early]})

        got = await hub.call(api, "getnumber", id="vk", code="ru")
        assert got == {"id": got["id"], "number": RU_NUMBER, "send": 0}
        aid = got["id"]
        waiting = await hub.call(api, "getstatus", id=aid)
        assert waiting["code"] == 106

        sms = message(text="VK: 93401 - ваш код для регистрации ВКонтакте.")
        r = await agent.post("/messages", json={"messages": [sms]})
        assert r.json()["accepted"] == [sms["id"]]
        status = await hub.call(api, "getstatus", id=aid)
        assert status == {
            "number": RU_NUMBER,
            "from": "VKcom",
            "text": sms["text"],
            "small": "93401",
            "time": status["time"],
        }
        assert isinstance(status["time"], int)

        nocode = message(text="Welcome to VK")
        await agent.post("/messages", json={"messages": [nocode]})
        latest = await hub.call(api, "getstatus", id=aid)
        assert latest["text"] == "Welcome to VK"
        assert latest["small"] is None
        code = await hub.call(api, "getlatestcode", id=aid)
        assert code["code"] == "93401"
        assert code["text"] == sms["text"]
        every = await hub.call(api, "all-sms", id=aid)
        assert [m["text"] for m in every] == [sms["text"], "Welcome to VK"]

        on_number = await hub.call(api, "getallsmsofnumber", phone=RU_NUMBER)
        assert [m["text"] for m in on_number] == ["old code 11111", sms["text"], "Welcome to VK"]
        last_two = await hub.call(api, "getlastsmsofnumber", phone="79001234567", count=2)
        assert [m["text"] for m in last_two] == ["Welcome to VK", sms["text"]]
        last = await hub.call(api, "getlastsmsofnumber", phone=RU_NUMBER)
        assert [m["text"] for m in last] == ["Welcome to VK"]
        assert await hub.call(api, "getallsmsofnumber", phone="+70000000000") == []


async def test_getnumber_errors_and_per_service_exclusivity(hub: Hub) -> None:
    async with hub.agent() as agent, hub.customer() as api:
        await _farm(hub, agent)
        assert (await hub.call(api, "getnumber", code="RU"))["code"] == 101
        assert (await hub.call(api, "getnumber", id="vk"))["code"] == 102
        assert (await hub.call(api, "getnumber", id="vk", code="RUS"))["code"] == 102
        assert (await hub.call(api, "getnumber", id="vk", code="DE"))["code"] == 103

        first = await hub.call(api, "getnumber", id="vk", code="RU")
        assert first["number"] == RU_NUMBER
        busy = await hub.call(api, "getnumber", id="vk", code="RU")  # the other RU SIM is offline
        assert busy == {"name": "error", "message": "No free numbers", "code": 103, "status": 200}
        other_service = await hub.call(api, "getnumber", id="tg", code="RU")
        assert other_service["number"] == RU_NUMBER

        assert await hub.call(api, "setstatus", id=first["id"], status=1) == 1
        again = await hub.call(api, "getnumber", id="vk", code="RU")
        assert again["number"] == RU_NUMBER
        assert again["id"] not in (first["id"], other_service["id"])


async def test_key_and_method_errors(hub: Hub) -> None:
    async with hub.customer() as api:
        wrong = (await api.get("/getnumber/nope", params={"id": "vk", "code": "RU"})).json()
        missing = (await api.get("/getnumber/")).json()
        missing2 = (await api.get("/getnumber")).json()
        unknown = (await api.get("/fly/customer-key")).json()
        wrong_unknown = (await api.get("/fly/nope")).json()
    assert wrong == {"name": "error", "message": "Api key is not valid", "code": 202, "status": 200}
    assert missing["code"] == missing2["code"] == 201
    assert unknown["code"] == 100
    assert wrong_unknown["code"] == 202


async def test_activation_errors(hub: Hub) -> None:
    async with hub.agent() as agent, hub.customer() as api:
        await _farm(hub, agent)
        assert (await hub.call(api, "getstatus", id=999))["code"] == 105
        assert (await hub.call(api, "getstatus", id="x"))["code"] == 104
        aid = (await hub.call(api, "getnumber", id="vk", code="RU"))["id"]
        assert (await hub.call(api, "getlatestcode", id=aid))["code"] == 106
        assert await hub.call(api, "all-sms", id=aid) == []
        assert (await hub.call(api, "setstatus", id=aid, status=7))["code"] == 104
        assert (await hub.call(api, "setstatus", id=aid, status=2))["code"] == 104
        assert (await hub.call(api, "getlastsmsofnumber", phone=RU_NUMBER, count=0))["code"] == 104
        assert (await hub.call(api, "getallsmsofnumber"))["code"] == 104
        assert await hub.call(api, "setstatus", id=aid, status=1) == 1
        assert await hub.call(api, "setstatus", id=aid, status=1) == 1  # idempotent
        for method in ("getstatus", "getlatestcode", "all-sms"):
            assert (await hub.call(api, method, id=aid))["code"] == 107
        assert (await hub.call(api, "setstatus", id=aid, status=2, forward="+79007777777"))[
            "code"
        ] == 107


async def test_sms_before_activation_or_on_another_sim_is_not_shown(hub: Hub) -> None:
    async with hub.agent() as agent, hub.customer() as api:
        await _farm(hub, agent, state="online")
        await agent.post("/messages", json={"messages": [message(text="before 1234")]})
        aid = (await hub.call(api, "getnumber", id="vk", code="RU"))["id"]
        other = message(sim_id=US_SIM, number="+12025550123", text="elsewhere 5678")
        await agent.post("/messages", json={"messages": [other]})
        assert (await hub.call(api, "getstatus", id=aid))["code"] == 106


async def test_rental_disable_flow(hub: Hub) -> None:
    async with hub.agent() as agent, hub.customer() as api:
        await _farm(hub, agent)
        aid = (await hub.call(api, "getnumber", id="rent", code="RU"))["id"]
        listing = await hub.call(api, "getallfullnumbers")
        assert listing == [
            {"id": aid, "time": listing[0]["time"], "number": RU_NUMBER, "is_work": 1}
        ]

        assert await hub.call(api, "send-disable-sim", id=aid) == 1
        assert await hub.call(api, "send-disable-sim", id=RU_NUMBER) == 2  # in progress
        assert await hub.call(api, "send-disable-sim", id="+70000000000") == 0
        assert await hub.call(api, "send-disable-sim", id="") == 0

        commands = (await agent.get("/commands", params={"wait": 1})).json()["commands"]
        assert [(c["type"], c["sim_id"]) for c in commands] == [("disable", RU_SIM)]
        cid = commands[0]["id"]
        await agent.post(f"/commands/{cid}/result", json=result(state="disabled"))
        await register(
            agent,
            2,
            sim(state="disabled"),
            sim(RU_SIM_2, number=RU_NUMBER_2, state="offline"),
        )
        listing = await hub.call(api, "getallfullnumbers")
        assert [(x["id"], x["is_work"]) for x in listing] == [(aid, 0)]

        assert await hub.call(api, "send-enable-sim", id=RU_NUMBER) == 1
        commands = (await agent.get("/commands", params={"wait": 1})).json()["commands"]
        assert [c["type"] for c in commands] == ["enable"]


async def test_forwarding_and_release(hub: Hub) -> None:
    async with hub.agent() as agent, hub.customer() as api:
        await _farm(hub, agent)
        aid = (await hub.call(api, "getnumber", id="rent", code="RU"))["id"]
        # An unencoded "+" arrives as a space: the number still parses.
        r = await api.get(
            f"/setstatus/{hub.config.customer_key}?id={aid}&status=2&forward=+79007777777"
        )
        assert r.json() == 1
        commands = (await agent.get("/commands", params={"wait": 1})).json()["commands"]
        assert commands == [
            {"id": commands[0]["id"], "type": "forward", "sim_id": RU_SIM, "to": "+79007777777"}
        ]
        assert await hub.call(api, "setstatus", id=aid, status=1) == 1
        commands = (await agent.get("/commands", params={"wait": 1})).json()["commands"]
        assert [c["type"] for c in commands] == ["unforward"]
        assert await hub.call(api, "getallfullnumbers") == []
