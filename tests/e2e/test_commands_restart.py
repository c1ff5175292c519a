"""Commands that reach a restarted agent before its devices have found their SIMs (issue #12
item 10): they are held until the devices settle, then executed, or answered ``unknown sim``.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from agent.commands import UNKNOWN_SIM_HOLD_S
from tests.e2e.conftest import DEVICE, Agent, HubThread, wait_until

CONNECT_S = 3.0  # how long the restarted device takes to find its SIMs


def test_commands_pending_at_restart_wait_for_the_sims(hub: HubThread, make_agent: Any) -> None:
    """The hub holds a ``disable`` for a SIM of the agent and an ``enable`` for a SIM that left
    the bank while the agent was down.  The agent restarts with a device that needs 3 s to
    report its SIMs; its first long-poll brings both commands at once.  The ``disable`` waits
    for the SIM and is executed (radio off in the network, ``ok: true``, ``disabled``), not
    answered ``unknown sim``; the other is answered ``ok: false, unknown sim`` once the device
    has settled, well within the hold bound."""
    agent: Agent = make_agent(hub, sims=3)
    agent.start()
    s0, _s1, gone = (r["iccid"] for r in agent.net.sims(DEVICE)[:3])
    wait_until(lambda: len(hub.sims()) == 3, 10, "the first inventory")
    assert agent.kill(signal.SIGKILL) == -signal.SIGKILL

    # While the agent is down: the third SIM leaves the bank, the device becomes slow to
    # connect, and the hub queues a command for each (it still routes both to this agent).
    agent.config["devices"][0]["sims"] = 2
    agent.write_config()
    agent.net.set_fault(DEVICE, slow_connect_s=CONNECT_S)
    disable = hub.state.enqueue_command("disable", s0)
    enable_gone = hub.state.enqueue_command("enable", gone)
    started = time.time()
    agent.start(wait=False)

    results = hub.state.command_results
    wait_until(
        lambda: disable in results and enable_gone in results,
        UNKNOWN_SIM_HOLD_S + 20,
        "both command results",
        detail=agent.tail,
    )
    assert hub.state.commands[disable].deliveries == 1
    ok = results[disable]
    assert ok["ok"] is True and ok["error"] is None, ok
    assert ok["state"] == "disabled"
    assert agent.net.sim(s0)["radio_on"] == 0

    refused = results[enable_gone]
    assert refused["ok"] is False
    assert "unknown sim" in refused["error"]
    answered = refused["received"]  # the hub's clock (finished_at has whole seconds)
    # Held until the device had settled (not answered at once), and not to the bound.
    assert started + CONNECT_S <= answered < started + UNKNOWN_SIM_HOLD_S, (started, answered)
    assert agent.net.sim(gone)["radio_on"] == 1
    # Both arrived before the SIMs were known (else this test proves nothing).
    held = agent.events("command waits for the devices to report their SIMs")
    assert {e["sim_id"] for e in held} == {s0, gone}
    wait_until(lambda: set(hub.sims()) == {s0, _s1}, 10, "the inventory without the gone SIM")
