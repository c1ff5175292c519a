"""A restarted agent keeps forwarding: the SIM's number, learnt before, comes from the store.

Regression test for a bug this suite found: after a restart the AT driver
(drivers/at/port.py, ``_sim_session``) finds the SIM's number in the core's cache and reports
it with ``number_source = "cache"``.  The core passed that through to ``PUT /sims``; PROTOCOL.md
§3 allows only config, cnum, phonebook, ussd, gateway or null, so the hub answered 400 to every
inventory, the SIMs were never registered by the new process, and the sender held all their
SMS forever.  Fixed in the core (agent/inventory.py keeps the source the number was first
learnt by, and never sends a source outside the protocol's list).
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import Farm, message_id, records, wait_online
from tests.support.pdu_encoder import encode_deliver

pytestmark = pytest.mark.timeout(60)


def test_sms_after_a_restart_reach_the_hub(hub: HubThread, farm: Farm, make_agent: Any) -> None:
    """The SIM's number is learnt by ``AT+CNUM`` (source ``cnum``); after a SIGKILL and a
    restart the inventory is accepted again, still with source ``cnum``, and an SMS that
    arrives then reaches the hub."""
    line = farm.add("ec25", "tcp")
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid])
    assert hub.sims()[line.iccid]["number_source"] == "cnum"
    agent.kill(signal.SIGKILL)

    restarted = time.time()
    agent.start()
    pdu = encode_deliver("+79001234567", "after the restart", sent_at=datetime.now(UTC))
    line.modem.deliver_pdu(pdu)
    msg_id = message_id(line.iccid, [pdu])

    def registered_again() -> bool:
        sim = hub.sims().get(line.iccid)
        return sim is not None and sim["updated"] > restarted

    wait_until(
        registered_again,
        8,
        "the SIM registered by the restarted agent",
        detail=lambda: str(agent.events("hub refused the SIM inventory")[-1:]),
    )
    assert hub.sims()[line.iccid]["number"] == line.modem.sim.number
    assert hub.sims()[line.iccid]["number_source"] == "cnum"
    assert not agent.events("hub refused the SIM inventory")
    wait_until(lambda: msg_id in records(hub), 8, "the SMS at the hub")
