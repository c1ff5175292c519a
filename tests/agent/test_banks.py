"""SIM banks and eSIM profiles through the whole agent (in-process, real loopback HTTP).

A simulated device with 4 slots per port and an eUICC port: standby SIMs are listed as such
with their slot, kind and EID; the network holds their SMS until a command selects them;
``enable`` on a standby SIM switches the port's slot; a downloaded profile appears as a new
SIM and is deleted again; what a driver cannot do is refused without calling it.
"""

from __future__ import annotations

from typing import Any

from agent.hub import HubState
from drivers.simulated import SimNetwork, sim_identity
from tests.agent.test_app import agent, hub, texts, until

BANK = {"name": "gw", "driver": "simulated", "sims": 12, "slots": 4, "esim_ports": 1}


def by_slot(h: HubState) -> dict[str, dict[str, Any]]:
    with h.lock:
        return {s["slot"]: dict(s) for s in h.sims.values()}


async def run(h: HubState, kind: str, sim_id: str | None, **params: Any) -> dict[str, Any]:
    cid = h.enqueue_command(kind, sim_id, **params)
    await until(lambda: cid in h.command_results, timeout=15, what=f"result of {kind}")
    return dict(h.command_results[cid])


async def test_bank_slots_standby_select_and_esim(tmp_path: Any) -> None:
    async with hub() as h, agent(tmp_path, h, devices=[BANK]):
        await until(lambda: len(h.sims) == 12, what="the whole bank at the hub")
        slots = by_slot(h)
        assert sorted(slots) == [f"{p}.{s:02d}" for p in (1, 2, 3) for s in (1, 2, 3, 4)]
        for slot, sim in slots.items():
            port, _, n = slot.partition(".")
            assert sim["port"] == f"gw/{port}"
            assert sim["selected"] is (n == "01")
            assert sim["state"] == ("online" if n == "01" else "standby"), sim
            assert sim["kind"] == ("esim" if port == "3" else "sim")
            assert (sim["eid"] is not None) is (port == "3")
        assert len({s["eid"] for s in slots.values() if s["eid"]}) == 1, "one eUICC per port"

        # A standby SIM cannot receive: the network holds its SMS.
        net = SimNetwork(tmp_path / "simnet.db")
        standby, active = slots["1.03"], slots["1.01"]
        net.send(standby["number"], "held for the standby slot 4321", sender="Bank")
        net.send(slots["2.01"]["number"], "barrier 0000", sender="Bank")
        await until(lambda: "barrier 0000" in texts(h), what="the barrier SMS")
        assert "held for the standby slot 4321" not in texts(h)

        # enable on a standby SIM selects it: the slot switches, the held SMS arrives.
        result = await run(h, "enable", standby["sim_id"])
        assert result["ok"] is True and result["state"] == "online", result
        await until(lambda: by_slot(h)["1.03"]["state"] == "online", what="1.03 online")
        await until(lambda: by_slot(h)["1.01"]["state"] == "standby", what="1.01 standby")
        assert by_slot(h)["1.01"]["sim_id"] == active["sim_id"]
        await until(lambda: "held for the standby slot 4321" in texts(h), what="held SMS")

        # What the simulated driver cannot do is refused without a call.
        result = await run(h, "ussd", active["sim_id"], code="*100#")
        assert result["ok"] is False
        assert result["error"] == "USSD is not supported by simulated", result

        # An eSIM profile downloaded by command appears as a new standby SIM of the eUICC.
        result = await run(
            h, "esim_download", None, agent_id="farm-t", device="gw", activation_code="LPA:1$x$y"
        )
        assert result["ok"] is True, result
        new = result["sim_id"]
        await until(lambda: new in h.sims, what="the new profile at the hub")
        assert h.sims[new]["kind"] == "esim" and h.sims[new]["state"] == "standby"
        assert h.sims[new]["eid"] == slots["3.01"]["eid"] and h.sims[new]["slot"] == "3.05"

        # Deleting it: refused while enabled (rented) or for a plastic SIM; after disable, gone.
        result = await run(h, "esim_delete", new)
        assert result["ok"] is False and "disable it first" in result["error"], result
        result = await run(h, "esim_delete", slots["2.02"]["sim_id"])
        assert result["ok"] is False and "not an eSIM profile" in result["error"], result
        assert (await run(h, "disable", new))["ok"] is True
        result = await run(h, "esim_delete", new)
        assert result["ok"] is True, result
        await until(lambda: new not in h.sims, what="the deleted profile gone from the hub")
        assert len(h.sims) == 12


async def test_a_bad_esim_download_is_refused_with_the_reason(tmp_path: Any) -> None:
    async with hub() as h, agent(tmp_path, h, devices=[BANK]):
        await until(lambda: len(h.sims) == 12, what="the bank")
        plastic_port = by_slot(h)["1.01"]["port"]
        for params, reason in [
            ({"device": "nope", "activation_code": "LPA:1$a$b"}, "unknown device"),
            ({"device": "gw", "activation_code": "not-an-lpa"}, "activation_code"),
            ({"device": "gw", "activation_code": "LPA:1$a$b", "port": plastic_port}, "no eUICC"),
        ]:
            result = await run(h, "esim_download", None, agent_id="farm-t", **params)
            assert result["ok"] is False and reason in result["error"], (params, result)
        assert len(h.sims) == 12


async def test_interrupted_ussd_and_esim_download_are_not_repeated(tmp_path: Any) -> None:
    """A USSD code (it may transfer money) or an eSIM download (single-use activation code)
    found ``running`` after a crash is answered as interrupted, not run again; an absolute
    command (disable) is run again."""
    from agent.store import Store

    state = tmp_path / "state"
    store = Store(state / "agent.db")
    iccid, _imsi, _number = sim_identity("gw", 0, "RU")  # slot 1.01 of the bank below
    for body in (
        {"id": "u-1", "type": "ussd", "sim_id": iccid, "code": "*100#"},
        {"id": "e-1", "type": "esim_download", "device": "gw", "activation_code": "LPA:1$a$b"},
        {"id": "d-1", "type": "disable", "sim_id": iccid},
    ):
        store.command_start(body, now=0.0)
    store.close()
    async with hub() as h, agent(state, h, devices=[BANK]) as app:
        assert app.core is not None
        reader = app.core.store.reader
        await until(
            lambda: all(
                (c := reader.command(i)) and c.state == "done" for i in ("u-1", "e-1", "d-1")
            ),
            what="every interrupted command finished",
        )
        for cid in ("u-1", "e-1"):
            result = reader.command(cid).result  # type: ignore[union-attr]
            assert result["ok"] is False
            assert result["error"] == "interrupted by a restart; outcome unknown"
        assert reader.command("d-1").result["ok"] is True  # type: ignore[union-attr]
        await until(lambda: h.sims.get(iccid, {}).get("state") == "disabled", what="disabled")
