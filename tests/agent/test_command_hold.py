"""The hold of commands for SIMs not seen yet (issue #12 item 10) while a device is down:
the hold lasts the whole bound, and a SIM that appears meanwhile gets its command at once.

In-process agent and hub (real loopback HTTP, real SQLite) so the bound can be shortened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent import commands
from drivers.simulated import SimNetwork
from tests.agent.test_app import agent, hub, until

HOLD_S = 6.0


def devices(bank_sims: int) -> list[dict[str, Any]]:
    return [
        {"name": "bank", "driver": "simulated", "sims": bank_sims},
        {"name": "bank2", "driver": "simulated", "sims": 2},
    ]


async def test_hold_lasts_the_bound_while_a_device_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bank2 is down when the agent restarts; the hub has a ``disable`` for one of its SIMs and
    an ``enable`` for a SIM that left bank.  bank2 comes back during the hold: its SIM gets the
    ``disable`` as soon as it appears (long before the bound).  The other command cannot be
    ruled out while a device was down, so it is answered ``unknown sim`` at the bound."""
    monkeypatch.setattr(commands, "UNKNOWN_SIM_HOLD_S", HOLD_S)
    async with hub() as state:
        async with agent(tmp_path, state, devices=devices(3)):
            await until(lambda: len(state.sims) == 5, what="the first inventory")
        net = SimNetwork(tmp_path / "simnet.db")
        try:
            target = net.sims("bank2")[0]["iccid"]
            gone = net.sims("bank")[2]["iccid"]
            net.set_fault("bank2", down=True)
            disable = state.enqueue_command("disable", target)
            enable_gone = state.enqueue_command("enable", gone)
            started = time.monotonic()
            async with agent(tmp_path, state, devices=devices(2)) as app:
                await until(lambda: app.core is not None and app.core.devices["bank2"].down_reason)
                net.set_fault("bank2", down=False)
                await until(lambda: disable in state.command_results, HOLD_S, "the disable")
                executed = time.monotonic() - started
                assert enable_gone not in state.command_results
                result = state.command_results[disable]
                assert result["ok"] is True and result["state"] == "disabled", result
                assert net.sim(target)["radio_on"] == 0
                await until(lambda: enable_gone in state.command_results, HOLD_S + 5, "unknown")
                answered = time.monotonic() - started
        finally:
            net.close()
    refused = state.command_results[enable_gone]
    assert refused["ok"] is False and "unknown sim" in refused["error"], refused
    assert executed < HOLD_S - 1 <= HOLD_S <= answered < HOLD_S + 5, (executed, answered)


async def test_unknown_sim_answered_at_once_when_every_device_has_settled(
    tmp_path: Path,
) -> None:
    """With every device up and settled, an ICCID no device reports is answered at once."""
    async with hub() as state:
        async with agent(tmp_path, state, devices=devices(3)):
            await until(lambda: len(state.sims) == 5, what="the first inventory")
        gone = SimNetwork(tmp_path / "simnet.db")
        try:
            iccid = gone.sims("bank")[2]["iccid"]
        finally:
            gone.close()
        async with agent(tmp_path, state, devices=devices(2)):
            # Settled and registered: the gone SIM has left the hub's inventory, so route a
            # command to it by hand as a hub that lags behind would.
            await until(lambda: iccid not in state.sims, what="the new inventory")
            with state.lock:
                state.sims[iccid] = {"sim_id": iccid, "agent_id": "farm-t"}
            asked = time.monotonic()
            cid = state.enqueue_command("disable", iccid)
            await until(lambda: cid in state.command_results, 5, "the answer")
            assert time.monotonic() - asked < 2.0
    assert state.command_results[cid]["ok"] is False
    assert "unknown sim" in state.command_results[cid]["error"]
