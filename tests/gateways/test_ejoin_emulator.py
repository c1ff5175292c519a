"""The Ejoin emulator on its own: identities, wire shapes, the network's holding, the SMS store
and reboots, eSIM operations, faults, pushes, the control API and the standalone process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.emulator.sim import luhn_digit
from tests.gateways.ejoin.model import Box, split_long
from tests.gateways.ejoin.server import EjoinEmulator, _Listener

CREDS: dict[str, str | int] = {"username": "root", "password": "admin"}


async def until(pred: Any, timeout: float = 5.0) -> None:
    """Wait for a condition (the emulator's state or an answer), never a fixed time."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_identities_deterministic_distinct_and_valid() -> None:
    a, b = Box(seed=7, ports=32, slots=4), Box(seed=7, ports=32, slots=4)
    assert a.sims() == b.sims() and len(a.sims()) == 128
    assert a.mac == b.mac and a.ssrc == b.ssrc
    assert Box(seed=8).sims() != Box(seed=7).sims()
    for iccid in a.sims():
        assert iccid[-1] == luhn_digit(iccid[:-1]) and 19 <= len(iccid) <= 20
    numbers = {a.port_table[p].slots[s].sim.number for p, s in a.sims().values()}  # type: ignore[union-attr]
    assert len(numbers) == 128
    assert all(n.startswith(("+79", "+77")) and len(n) == 12 for n in numbers)
    assert a.port_table[1].slots[1].sim.imsi.startswith("25001")  # type: ignore[union-attr]
    assert a.port_table[2].slots[1].sim.imsi.startswith("40102")  # type: ignore[union-attr]


def test_split_long_like_a_phone() -> None:
    assert split_long("a" * 160) == ["a" * 160]
    parts = split_long("a" * 400)
    assert [len(p) for p in parts] == [153, 153, 94]
    assert [len(p) for p in split_long("ж" * 150)] == [67, 67, 16]
    assert "".join(split_long("€" * 100)) == "€" * 100  # extension chars count two
    assert [len(p) for p in split_long("€" * 100)] == [76, 24]


def test_status_shapes_and_cheap_at_32x4() -> None:
    box = Box(
        ports=32,
        slots=4,
        esim_ports=1,
        max_slot_key="max-slots",
        st_style="text",
        port_style="letter",
        register_s=0,
    )
    box.tick()
    started = time.perf_counter()
    doc = box.status()
    assert time.perf_counter() - started < 0.05
    assert doc["max-slots"] == 4 and "max-slot" not in doc and doc["max-ports"] == 32
    rows = doc["status"]
    assert len(rows) == 128
    assert rows[0]["port"] == "1A" and rows[1]["port"] == "1B"
    assert rows[0]["st"] == "3 Registered" and rows[1]["st"] == "1 Idle SIM"
    assert rows[0]["active"] == 1 and rows[1]["active"] == 0
    esim_rows = [r for r in rows if r["port"].startswith("32")]
    assert [r["inserted"] for r in esim_rows] == [1, 0, 0, 0]


async def test_gateway_api_status_cursor_reboot_and_faults() -> None:
    box = Box(ports=2, slots=2, register_s=0.05)
    async with EjoinEmulator(box) as emu, httpx.AsyncClient(base_url=emu.url) as http:
        await until(lambda: box.receiving(1, 1))
        doc = (await http.get("/goip_get_status.html", params=CREDS | {"all_slots": 1})).json()
        assert doc["max-slot"] == 2 and doc["status"][0]["port"] == "1.01"
        iccid_a = box.port_table[1].slots[1].sim.iccid  # type: ignore[union-attr]
        iccid_b = box.port_table[2].slots[1].sim.iccid  # type: ignore[union-attr]
        assert box.send_sms(iccid_b, "+7900", "to port 2", at=1000)[0] == "stored"
        assert box.send_sms(iccid_a, "+7901", "to port 1", at=1001)[0] == "stored"
        box.store_report(1, 1, "+7999")
        page = (await http.get("/goip_get_sms.html", params=CREDS | {"sms_id": 2})).json()
        assert page["code"] == 0 and page["next_sms"] == 4 and page["sms_num"] == 2
        assert page["data"][0][:5] == [
            0,
            "1.01",
            1001,
            "+7901",
            box.port_table[1].slots[1].sim.number,  # type: ignore[union-attr]
        ]
        assert base64.b64decode(page["data"][0][5]).decode() == "to port 1"
        assert page["data"][1][0] == 1  # the delivery report
        ssrc = page["ssrc"]

        # A reboot refuses connections, then answers with a new ssrc and renumbered rows.
        task = asyncio.create_task(emu.reboot(0.3))
        await until(lambda: box.boots == 1)
        with pytest.raises(httpx.ConnectError):
            await http.get("/goip_get_status.html", params=CREDS)
        await task
        page = (await http.get("/goip_get_sms.html", params=CREDS)).json()
        assert page["ssrc"] != ssrc
        assert [r[3] for r in page["data"]] == ["+7901", "+7900"]  # by port, reports dropped

        box.faults.html = True
        r = await http.get("/goip_get_status.html", params=CREDS)
        assert r.text.startswith("<html>")
        box.faults.html = False
        box.faults.auth = "401"
        assert (await http.get("/goip_get_status.html", params=CREDS)).status_code == 401
        box.faults.auth = None
        bad = await http.get("/goip_get_status.html", params={"username": "root", "password": "x"})
        assert bad.json() == {"code": 1, "reason": "1 Invalid User"}
        box.faults.delay_s = 0.3
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/goip_get_status.html", params=CREDS, timeout=0.1)


async def test_network_holds_for_standby_and_locked_sims() -> None:
    box = Box(ports=1, slots=3, register_s=0.05)
    async with EjoinEmulator(box) as emu, httpx.AsyncClient(base_url=emu.url) as http:
        standby = box.port_table[1].slots[2].sim.iccid  # type: ignore[union-attr]
        assert box.send_sms(standby, "+7900", "held one") == ("held", standby)
        assert box.rows == []
        cmd = {"type": "command", "op": "switch", "ports": "1.02"}
        r = await http.post("/goip_send_cmd.html", params=CREDS, json=cmd)
        assert r.json() == {"code": 200, "reason": "OK"}
        # Registering first (st 2), then the held SMS lands in the store.
        await until(lambda: len(box.rows) == 1)
        assert box.held == {}
        # Locked: held again until unlocked.
        lock = {"type": "command", "op": "lock", "ports": "1B"}
        await http.post("/goip_send_cmd.html", params=CREDS, json=lock)
        st = (await http.get("/goip_get_status.html", params=CREDS)).json()["status"][1]
        assert st["st"] == 12 and st["slot_active"] == 0
        assert box.send_sms(standby, "+7900", "while locked")[0] == "held"
        unlock = {"type": "command", "op": "multiple", "ops": [{"op": "unlock", "ports": "1B"}]}
        await http.post("/goip_send_cmd.html", params=CREDS, json=unlock)
        await until(lambda: len(box.rows) == 2)
        bad = {"type": "command", "op": "switch", "ports": "9.01"}
        r = await http.post("/goip_send_cmd.html", params=CREDS, json=bad)
        assert r.json() == {"code": 500, "reason": "2 Invalid Port"}
        assert [e["op"] for e in box.log] == ["switch", "lock", "unlock", "switch"]


async def test_at_passthrough_forwarding_ussd_and_locked_port() -> None:
    box = Box(ports=1, slots=2, register_s=0)
    async with EjoinEmulator(box) as emu, httpx.AsyncClient(base_url=emu.url) as http:
        await until(lambda: box.receiving(1, 1))
        at = CREDS | {"port": 1, "at": 'AT+CCFC=0,3,"+79001112233",145'}
        assert "OK" in (await http.get("/goip_send_at.html", params=at)).json()["resp"]
        assert box.port_table[1].slots[1].sim.forward_to == "+79001112233"  # type: ignore[union-attr]
        ussd = CREDS | {"port": 1, "at": 'AT+CUSD=1,"*100#",15'}
        assert (
            '+CUSD: 0,"Balance:'
            in (await http.get("/goip_send_at.html", params=ussd)).json()["resp"]
        )
        box.faults.at_error = "+CME ERROR: 30"
        r = (await http.get("/goip_send_at.html", params=at)).json()
        assert "+CME ERROR: 30" in r["resp"] and box.faults.as_dict()["at_error"] is None
        box.command("lock", "1A")
        locked = (await http.get("/goip_send_at.html", params=at)).json()
        assert locked["code"] == 12


async def test_esim_write_and_delete_are_asynchronous() -> None:
    box = Box(ports=2, slots=3, esim_ports=1, esim_profiles=1, esim_step_s=0.1)
    async with EjoinEmulator(box) as emu, httpx.AsyncClient(base_url=emu.url) as http:

        async def profile(slot: int) -> dict[str, Any] | None:
            doc = (await http.get("/goip_get_esims.html", params=CREDS)).json()
            port = next(p for p in doc["ports"] if p["port"] == 2)
            assert port["eid"].startswith("8904")
            return next((p for p in port["profiles"] if p["slot"] == slot), None)

        write = [{"port": 2, "slot": 2, "ac": "LPA:1$smdp.example$ABC", "cc": ""}]
        assert (await http.post("/goip_write_esims.html", params=CREDS, json=write)).json()[
            "code"
        ] == 200
        seen = [(await profile(2))]
        assert seen[0] is not None and seen[0]["op"] == 1 and seen[0]["status"] == 1
        busy = await http.post(
            "/goip_write_esims.html", params=CREDS, json=[{"port": 2, "slot": 3, "ac": "LPA:1$x$y"}]
        )
        assert "busy" in busy.json()["reason"]
        statuses: set[int] = set()
        done: dict[str, Any] = {}

        async def finished() -> bool:
            p = await profile(2)
            assert p is not None
            statuses.add(p["status"])
            if p["op"] == 0:
                done.update(p)
                return True
            return False

        deadline = time.monotonic() + 5
        while not await finished():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert statuses >= {2} and done["iccid"] and done["enabled"] == 0

        box.faults.esim_fail = "8.2.6 ICCID already in use"
        write = [{"port": 2, "slot": 3, "ac": "LPA:1$smdp.example$DEF"}]
        await http.post("/goip_write_esims.html", params=CREDS, json=write)
        deadline = time.monotonic() + 5
        while (p := await profile(3)) is None or p["status"] != 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert p["reason"] == "8.2.6 ICCID already in use"

        refused = await http.post(
            "/goip_delete_esims.html", params=CREDS, json=[{"port": 2, "slot": 1}]
        )
        assert "enabled" in refused.json()["reason"]
        await http.post("/goip_delete_esims.html", params=CREDS, json=[{"port": 2, "slot": 2}])
        deadline = time.monotonic() + 5
        while await profile(2) is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


async def test_pushes_and_duplicate_pushes() -> None:
    bodies: list[dict[str, Any]] = []

    async def receive(request: Request) -> PlainTextResponse:
        bodies.append(json.loads(await request.body()))
        return PlainTextResponse("OK")

    sink = _Listener(
        Starlette(routes=[Route("/{p:path}", receive, methods=["POST"])]), "127.0.0.1", 0
    )
    await sink.started()
    box = Box(ports=1, slots=1, register_s=0)
    try:
        async with EjoinEmulator(box, push_url=f"http://127.0.0.1:{sink.port}/sms/x") as emu:
            await until(lambda: box.receiving(1, 1))
            iccid = next(iter(box.sims()))
            box.send_sms(iccid, "+7900", "pushed")
            await until(lambda: len(bodies) == 1)
            assert bodies[0]["type"] == "recv-sms" and bodies[0]["sms_num"] == 1
            assert base64.b64decode(bodies[0]["sms"][0][5]).decode() == "pushed"
            box.faults.push_dup = True
            box.send_sms(iccid, "+7900", "twice")
            # The counter moves once the box has its answer, after the sink saw the body.
            await until(lambda: len(bodies) == 3 and emu.pushes_sent == 3)
            assert bodies[1] == bodies[2]
    finally:
        await sink.stop()


async def test_standalone_process_and_control_api() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.gateways.ejoin",
        "--listen",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--ports",
        "2",
        "--slots",
        "2",
        "--esim-ports",
        "1",
        "--register-s",
        "0",
        stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        assert proc.stdout is not None
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        async with httpx.AsyncClient() as http:
            state = (await http.get(f"{line['control']}/state")).json()
            assert state["mac"] == line["mac"] and len(state["ports"]) == 2
            assert state["ports"][1]["eid"]
            number = state["ports"][0]["slots"][0]["number"]
            r = await http.post(f"{line['control']}/sms", json={"to": number, "text": "hi"})
            assert r.json()["result"] == "stored"
            page = (await http.get(f"{line['url']}/goip_get_sms.html", params=CREDS)).json()
            assert page["sms_num"] == 1
            r = await http.post(f"{line['control']}/fault", json={"html": True})
            assert r.json()["html"] is True
            bad = await http.post(f"{line['control']}/fault", json={"nonsense": 1})
            assert bad.status_code == 400
            assert (
                await http.get(f"{line['url']}/goip_get_status.html", params=CREDS)
            ).text.startswith("<")
            await http.post(f"{line['control']}/fault", json={"html": False})
            await http.post(f"{line['control']}/reboot", json={"down_s": 0.2})
            deadline = time.monotonic() + 5
            while True:
                try:
                    page = (await http.get(f"{line['url']}/goip_get_sms.html", params=CREDS)).json()
                    if page["ssrc"] != line["ssrc"]:
                        break
                except httpx.ConnectError:
                    pass
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            log = (await http.get(f"{line['control']}/log")).json()
            assert log[-1]["op"] == "reboot"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
