"""200 SMS over four AT modems while the agent is SIGKILLed again and again (issue item 5).

Nothing may be lost and nothing may reach the hub twice except as a repeated id: the SIM
keeps every SMS until the store has committed it (audited at each ``AT+CMGD``, see
:class:`~tests.e2e_at.conftest.CommitAudit`), the start-up sweep re-reads what a killed agent
left on the SIMs, and re-reads are recognised by their content id.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import (
    CommitAudit,
    Farm,
    Line,
    message_id,
    records,
    wait_online,
    wait_texts,
)
from tests.support.pdu_encoder import encode_deliver, split_message

pytestmark = pytest.mark.timeout(120)

COUNT = 200
RATE = 40.0  # SMS per second, round-robin over the modems
KILLS = 5
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class Sender(threading.Thread):
    """The network: delivers ``COUNT`` messages (every 10th in two parts, in random order)."""

    def __init__(self, lines: list[Line], seed: int) -> None:
        super().__init__(name="e2e-at-traffic")
        self.lines = lines
        self.rng = random.Random(seed)
        self.sent: dict[str, tuple[Line, list[str]]] = {}  # text -> (line, PDUs in part order)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for i in range(COUNT):
                delay = start + i / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                line = self.lines[i % len(self.lines)]
                sent_at = T0 + timedelta(seconds=i)
                if i % 10 == 9:
                    text = f"storm {i:03d} two parts " + "z" * 160
                    pdus = split_message("Bank", text, sent_at=sent_at, ref=i % 256)
                    order = pdus[:]
                    self.rng.shuffle(order)
                else:
                    text = f"storm {i:03d} code {100000 + i}"
                    pdus = order = [encode_deliver("+79001234567", text, sent_at=sent_at)]
                for pdu in order:
                    line.modem.deliver_pdu(pdu)
                self.sent[text] = (line, pdus)
        except BaseException as exc:
            self.error = exc


def test_200_sms_through_sigkills_all_delivered_sims_empty(
    hub: HubThread, farm: Farm, audited: CommitAudit, make_agent: Any
) -> None:
    """Four modems (EC25 and E3372 over TCP, SIM800 and EC25 on ptys) receive 200 SMS (20
    of them in two parts, parts out of order) at 40/s while the agent is SIGKILLed five times
    at random moments (some during start-up, some while it forwards) and restarted at once.  After the
    last restart: all 200 are at the hub, each under exactly one id (the §4 id of its PDUs; a
    re-send is only a repeated id), no ``AT+CMGD`` ever preceded the commit, and every SIM is
    empty with nothing held by the network."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    lines = [
        farm.add("ec25", "tcp"),
        farm.add("sim800", "pty"),
        farm.add("e3372", "tcp"),
        farm.add("ec25", "pty"),
    ]
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid for line in lines])

    traffic = Sender(lines, seed)
    traffic.start()
    kills = []
    try:
        started = time.monotonic()
        for k in range(KILLS):
            # Odd kills hit a running agent mid-traffic; even ones may land in its start-up.
            if k % 2:
                agent.wait_ready()
                time.sleep(rng.uniform(0.05, 0.6))
            else:
                time.sleep(rng.uniform(0.2, 1.0))
            kills.append(round(time.monotonic() - started, 2))
            agent.kill()
            agent.start(wait=False)
    finally:
        traffic.join(60)
    assert traffic.error is None, repr(traffic.error)
    print(f"kills at {kills} s; traffic took {time.monotonic() - started:.1f} s")
    agent.wait_ready()
    assert len(traffic.sent) == COUNT

    wait_texts(hub, traffic.sent, 40, detail=farm.storage)
    wait_until(farm.all_empty, 20, "every SIM emptied", detail=farm.storage)

    got = records(hub)
    by_text = hub.by_text()
    for text, (line, pdus) in traffic.sent.items():
        assert len(by_text[text]) == 1, f"{text!r} arrived under {len(by_text[text])} ids"
        record = by_text[text][0]
        assert record["body"]["sim_id"] == line.iccid
        assert record["body"]["id"] == message_id(line.iccid, pdus)
        assert record["body"]["complete"] is True
    assert len(got) == COUNT, "the hub got messages nobody sent"
    repeats = sum(r["count"] - 1 for r in got.values())
    print(f"repeated ids at the hub: {repeats}; deletes audited: {audited.count()}")
    assert audited.errors == []
    assert audited.violations() == [], "AT+CMGD before the store committed the message"
    assert len(agent.procs) == KILLS + 1
