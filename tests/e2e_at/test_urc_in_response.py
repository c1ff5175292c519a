"""A ``+CMTI`` that arrives inside the reply to another command is still acted on.

research/at-modems.md cases A/A2: python-gsmmodem appended such a URC to the response of the
command in flight and never read the SMS.  Here the emulator stores an SMS while it executes
``AT+CSQ`` (the agent's signal poll) and puts the ``+CMTI`` between the ``+CSQ:`` line and
``OK`` (``before_ok``) or in the middle of the ``+CSQ:`` line itself (``mid_line``).  The
sweep is 60 s away, so only the ``+CMTI`` can bring these messages in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import Farm, message_id, records, wait_online
from tests.emulator import EmulatedModem
from tests.support.pdu_encoder import encode_deliver

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _stored_index(modem: EmulatedModem, pdu: str) -> int:
    event = next(e for e in modem.events("stored") if e.pdu == pdu)
    assert event.index is not None
    return event.index


def test_cmti_inside_the_csq_reply_is_delivered(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """For each profile and both placements (between ``+CSQ:`` and ``OK``; splitting the
    ``+CSQ:`` line), the SMS stored during ``AT+CSQ`` is read with ``AT+CMGR=<its index>``
    right after that reply and reaches the hub, with no sweep (``AT+CMGL``) in between; the
    signal the hub shows stays right."""
    slow_sweep = {"poll_s": 0.3, "sweep_s": 60.0}
    lines = [
        farm.add("ec25", "tcp", settings=slow_sweep),
        farm.add("sim800", "pty", settings=slow_sweep),
        farm.add("e3372", "tcp", settings=slow_sweep),
    ]
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid for line in lines])
    for line in lines:  # the start-up sweep is done; later sweeps would hide a lost +CMTI
        wait_until(lambda m=line.modem: "AT+CMGL=4" in m.commands(), 5, "start-up sweep")
    sweeps = {line.name: line.modem.commands().count("AT+CMGL=4") for line in lines}

    n = 0
    for where in ("before_ok", "mid_line"):
        for line in lines:
            n += 1
            text = f"inside CSQ {where} {line.name} code {4000 + n}"
            pdu = encode_deliver("+79001234567", text, sent_at=T0 + timedelta(seconds=n))
            modem = line.modem
            seq = modem.last_seq()
            assert modem.deliver_pdu(pdu, during="AT+CSQ", where=where) is None
            msg_id = message_id(line.iccid, [pdu])
            wait_until(lambda i=msg_id: i in records(hub), 10, f"{text!r} at the hub")
            assert records(hub)[msg_id]["body"]["text"] == text
            index = _stored_index(modem, pdu)
            # The URC really was inside the CSQ reply, and the SMS was read because of it.
            urc = next(
                e
                for e in modem.transcript()
                if e.seq > seq and e.kind == "urc" and e.text.startswith("+CMTI")
            )
            csq_final = next(e for e in modem.transcript() if e.seq > urc.seq and e.kind == "final")
            assert any(
                e.kind == "command" and e.text == "AT+CSQ"
                for e in modem.transcript()
                if seq < e.seq < urc.seq
            )
            assert csq_final.text == "OK"
            modem.wait_for_command(f"AT+CMGR={index}", after_seq=seq, timeout=1)

    for line in lines:
        assert line.modem.commands().count("AT+CMGL=4") == sweeps[line.name], line.name
    wait_until(farm.all_empty, 5, "every SIM emptied", detail=farm.storage)
    for line in lines:
        wait_until(
            lambda i=line.iccid, m=line.modem: hub.sims()[i]["signal_dbm"] == -113 + 2 * m.signal,
            5,
            f"{line.name}: the right signal at the hub",
            detail=lambda: str(hub.sims()),
        )
