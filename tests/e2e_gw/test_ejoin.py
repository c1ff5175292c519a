"""An Ejoin / Skyline box → real agent process → reference hub, over real HTTP on 127.0.0.1.

The emulated box has 4 ports of 4 SIM-bank slots, the last port an eUICC.  What a SIM-bank
operator relies on: every SIM registered with its ICCID, slot, kind and state; every SMS at
the hub exactly once by id across a box reboot (renumbered rows, new ``ssrc``), duplicate
pushes and agent SIGKILLs; ``disable`` / ``enable`` reach the box and come back in the
inventory; ``enable`` on a standby SIM switches the port's slot; an eSIM profile downloaded by
command appears as a new SIM and is deleted again; rotation delivers the SMS the network held
for standby SIMs; ``vsim-agent probe`` identifies the box.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import Agent, HubThread, cli, free_port, wait_until
from tests.e2e_gw.conftest import Emulator

DEVICE = "gw1"
PORTS, SLOTS = 4, 4
# 3 ports of 4 plastic SIMs, and the eUICC port with its one profile.
SIMS = (PORTS - 1) * SLOTS + 1


def setup(
    hub: HubThread,
    make_agent: Callable[..., Agent],
    emulators: Callable[[str, list[str]], Emulator],
    **device: Any,
) -> tuple[Agent, Emulator]:
    push = free_port()
    emu = emulators(
        "tests.gateways.ejoin",
        [
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--ports",
            str(PORTS),
            "--slots",
            str(SLOTS),
            "--esim-ports",
            "1",
            "--push-url",
            f"http://127.0.0.1:{push}/recv-sms",
            "--password",
            "box-pass-e2e",
        ],
    )
    agent = make_agent(
        hub,
        devices=[
            {
                "name": DEVICE,
                "driver": "ejoin",
                "url": emu.info["url"],
                "username": "root",
                "password": "box-pass-e2e",
                "poll_s": 0.5,
                "status_s": 0.5,
                "push_listen": f"127.0.0.1:{push}",
                **device,
            }
        ],
    )
    agent.start()
    wait_until(lambda: len(hub.sims()) == SIMS, 20, "the whole box at the hub")
    return agent, emu


def slots(emu: Emulator) -> dict[str, dict[str, Any]]:
    """The box's own view: ``"port.slot"`` → slot (with ``active``), SIM slots only."""
    out = {}
    for port in emu.get("/state")["ports"]:
        for slot in port["slots"]:
            if slot["iccid"]:
                key = f"{port['port']}.{slot['slot']:02d}"
                out[key] = {**slot, "active": port["active"] == slot["slot"], "eid": port["eid"]}
    return out


def command(hub: HubThread, kind: str, sim_id: str | None, **kw: Any) -> dict[str, Any]:
    cid = hub.state.enqueue_command(kind, sim_id, **kw)
    wait_until(lambda: cid in hub.state.command_results, 30, f"the result of {kind}")
    return dict(hub.state.command_results[cid])


def test_inventory_and_sms_once_through_reboot_duplicate_pushes_and_kills(
    hub: HubThread, make_agent: Any, emulators: Any
) -> None:
    agent, emu = setup(hub, make_agent, emulators)
    box = slots(emu)
    sims = hub.sims()
    assert {s["sim_id"] for s in sims.values()} == {b["iccid"] for b in box.values()}
    for key, b in box.items():
        sim = sims[b["iccid"]]
        port = key.split(".")[0]
        assert sim["port"] == f"{DEVICE}/{port}" and sim["slot"] == key
        assert sim["selected"] is b["active"]
        assert sim["state"] == ("online" if b["active"] else "standby"), (key, sim)
        assert sim["kind"] == ("esim" if b["eid"] else "sim")
        assert sim["eid"] == b["eid"]
        assert sim["number"] == b["number"] and sim["number_source"] == "gateway"

    active = [b for b in box.values() if b["active"]]
    emu.post("/fault", {"push_dup": True})
    texts = [f"ejoin code {i:04d}" for i in range(40)]
    for i, text in enumerate(texts):
        emu.post(
            "/sms", {"to": active[i % len(active)]["iccid"], "text": text, "at": 1764000000 + i}
        )
        if i == 12:
            assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
            agent.start()
        if i == 25:
            # The box reboots: connections refused, then a new ssrc and renumbered rows that
            # the agent reads again from 1; content identity keeps them single.
            emu.post("/reboot", {"down_s": 1.0})
    wait_until(lambda: set(texts) <= hub.texts(), 40, "all 40 SMS at the hub")
    by_text = hub.by_text()
    assert all(len(by_text[t]) == 1 for t in texts), "an SMS arrived under two ids"
    # Two identical texts at different times are two messages.
    emu.post("/sms", {"to": active[0]["iccid"], "text": "same text 1111", "at": 1764100000})
    emu.post("/sms", {"to": active[0]["iccid"], "text": "same text 1111", "at": 1764100060})
    wait_until(lambda: len(hub.by_text().get("same text 1111", [])) == 2, 20, "both copies")
    assert agent.alive


def test_commands_lock_unlock_switch_and_esim(
    hub: HubThread, make_agent: Any, emulators: Any
) -> None:
    _agent, emu = setup(hub, make_agent, emulators)
    box = slots(emu)

    # disable locks the slot, enable unlocks it; both come back in the inventory.
    first = box["1.01"]["iccid"]
    assert command(hub, "disable", first)["state"] == "disabled"
    assert slots(emu)["1.01"]["locked"] is True
    wait_until(lambda: hub.sims()[first]["state"] == "disabled", 10, "disabled at the hub")
    result = command(hub, "enable", first)
    assert result["ok"] is True, result
    assert slots(emu)["1.01"]["locked"] is False
    wait_until(lambda: hub.sims()[first]["state"] == "online", 10, "online again")

    # enable on a standby SIM switches the port to its slot; the SMS held for it arrives.
    standby = box["2.03"]["iccid"]
    assert hub.sims()[standby]["state"] == "standby"
    assert emu.post("/sms", {"to": standby, "text": "held for 2.03 5151"})["result"] == "held"
    result = command(hub, "enable", standby)
    assert result["ok"] is True and result["state"] == "online", result
    assert slots(emu)["2.03"]["active"] is True
    wait_until(lambda: hub.sims()[box["2.01"]["iccid"]]["state"] == "standby", 10, "2.01 standby")
    wait_until(lambda: "held for 2.03 5151" in hub.texts(), 20, "the held SMS")
    assert any("switch" in str(entry) for entry in emu.get("/log")), "no switch reached the box"

    # An eSIM profile downloaded by command is a new standby SIM of the eUICC...
    eid = box["4.01"]["eid"]
    result = command(
        hub,
        "esim_download",
        None,
        agent_id="t1",
        device=DEVICE,
        port=f"{DEVICE}/4",
        activation_code="LPA:1$smdp.example.com$E2E-0001",
    )
    assert result["ok"] is True, result
    new = result["sim_id"]
    wait_until(lambda: new in hub.sims(), 20, "the new profile at the hub")
    assert hub.sims()[new]["kind"] == "esim" and hub.sims()[new]["eid"] == eid
    # ...deleted once it is disabled (a rented profile is refused).
    result = command(hub, "esim_delete", new)
    assert result["ok"] is False and "disable it first" in result["error"], result
    assert command(hub, "disable", new)["ok"] is True
    assert command(hub, "esim_delete", new)["ok"] is True
    wait_until(lambda: new not in hub.sims(), 20, "the profile gone from the hub")
    assert new not in {b["iccid"] for b in slots(emu).values()}


def test_rotation_delivers_sms_held_for_standby_sims(
    hub: HubThread, make_agent: Any, emulators: Any
) -> None:
    _agent, emu = setup(hub, make_agent, emulators, rotate_s=1)
    box = slots(emu)
    waiting = [b for k, b in box.items() if not b["active"] and not b["eid"]][:6]
    for i, b in enumerate(waiting):
        emu.post("/sms", {"to": b["iccid"], "text": f"waiting for rotation {i}"})
    want = {f"waiting for rotation {i}" for i in range(len(waiting))}
    wait_until(lambda: want <= hub.texts(), 40, "every held SMS delivered by rotation")
    by_text = hub.by_text()
    assert all(len(by_text[t]) == 1 for t in want)


def test_probe_identifies_the_box(emulators: Any) -> None:
    emu = emulators(
        "tests.gateways.ejoin",
        [
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--ports",
            "8",
            "--slots",
            "4",
            "--esim-ports",
            "1",
            "--password",
            "probe-pass",
        ],
    )
    done = cli("probe", emu.info["url"], "--password", "probe-pass")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "SK-32-4" in out and emu.info["mac"] in out
    assert re.search(r"^ports\s+8$", out, re.M) and re.search(r"^slots per port\s+4$", out, re.M)
    assert re.search(r"^eSIM ports\s+8$", out, re.M), out
    wrong = cli("probe", emu.info["url"], "--password", "nope")
    assert wrong.returncode == 1 and "credentials" in wrong.stderr
    assert "nope" not in wrong.stderr
