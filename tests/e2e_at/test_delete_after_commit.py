"""DESIGN.md invariant 1 over real AT modems: an SMS leaves the SIM only after it is committed.

The modems are :class:`~tests.e2e_at.conftest.AuditedModem`: at the instant one executes
``AT+CMGD``, on the emulator thread and before anything is removed, the audit opens the
agent's store read-only and looks the message's part id up.  SQLite in WAL mode shows a reader
exactly the committed transactions, so each recorded ``committed`` is the truth at that
instant: no polling interval, no clock comparison.  (The hub's ``received`` time cannot prove
this: the agent may rightly delete before the hub has the message.)
"""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import CommitAudit, Farm, records, wait_online, wait_texts
from tests.support.pdu_encoder import encode_deliver, split_message

pytestmark = pytest.mark.timeout(90)

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_no_delete_before_commit(
    hub: HubThread, farm: Farm, audited: CommitAudit, make_agent: Any
) -> None:
    """Every ``AT+CMGD`` the agent sends, on every path, targets a message already in the
    store: SMS found by the start-up sweep, SMS announced by ``+CMTI`` one by one and in
    bursts, multipart parts (committed to ``parts`` before their siblings arrive), deletes
    retried after ``+CMS ERROR``, and the backlog re-read after a SIGKILL in mid-traffic.
    All messages reach the hub and every SIM ends empty."""
    lines = [farm.add("ec25", "tcp"), farm.add("sim800", "pty"), farm.add("e3372", "pty")]
    rng = random.Random(4)
    sent: list[str] = []

    def deliver(k: int) -> None:
        line = lines[k % len(lines)]
        if k % 7 == 3:
            text = f"audit {k:03d} multipart " + "x" * 170
            pdus = split_message("Sber", text, sent_at=T0 + timedelta(seconds=k), ref=k)
            rng.shuffle(pdus)
        else:
            text = f"audit {k:03d} code {1000 + k}"
            pdus = [encode_deliver("+79001234567", text, sent_at=T0 + timedelta(seconds=k))]
        for pdu in pdus:
            line.modem.deliver_pdu(pdu)
        sent.append(text)

    for k in range(9):  # stored before the agent runs: found by the start-up sweep
        deliver(k)
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid for line in lines])
    lines[0].modem.fail_cmgd(2)  # the first two deletes on m0 fail: retried
    for k in range(9, 40):
        deliver(k)
        time.sleep(0.02)
    for k in range(40, 55):  # a burst, then a SIGKILL while it is being worked through
        deliver(k)
    agent.kill(signal.SIGKILL)
    for k in range(55, 60):
        deliver(k)
    agent.start()
    wait_texts(hub, sent, 30, detail=farm.storage)
    wait_until(farm.all_empty, 15, "every SIM emptied", detail=farm.storage)

    assert audited.errors == []
    assert audited.violations() == [], "AT+CMGD before the store committed the message"
    deleted = sum(len(line.modem.events("deleted")) for line in lines)
    assert deleted >= 60  # every part of every message went through an audited delete
    assert audited.count() >= deleted
    assert lines[0].modem.events("delete_failed"), "the CMGD failures were exercised"
    # Distinct SMS arrive under distinct ids; a repeat is only a repeated id.
    by_text = hub.by_text()
    assert all(len(by_text[t]) == 1 for t in sent)
    assert len(records(hub)) == len(sent)


def test_the_audit_flags_a_delete_before_commit(farm: Farm, audited: CommitAudit) -> None:
    """The instrument itself: a host that deletes an SMS the store never saw (here the test,
    typing ``AT+CMGD`` into the modem with no agent at all) is recorded as a violation, and
    the message really left the SIM, so a passing audit above means something."""
    line = farm.add("ec25", "tcp")
    index = line.modem.deliver_pdu(encode_deliver("+79001234567", "deleted unread", sent_at=T0))
    assert index is not None
    line.modem.feed(f"AT+CMGD={index}\r".encode())
    wait_until(lambda: line.modem.events("deleted"), 5, "the delete executed")
    [deletion] = audited.violations()
    assert deletion.index == index and not deletion.committed
    assert line.modem.stored() == {}
