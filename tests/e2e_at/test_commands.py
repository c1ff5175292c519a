"""Hub commands over AT modems (issue item 7), seen on both ends: the hub's command results and
inventory, and the emulator's transcript and radio/forwarding state.

PROTOCOL.md §5: ``disable``/``enable`` switch the radio (``AT+CFUN=4`` / ``AT+CFUN=1`` on
these modems), ``forward``/``unforward`` set and erase unconditional call forwarding
(``AT+CCFC=0,3,"<to>",145`` / ``AT+CCFC=0,4``), and the desired state is re-applied after an
agent restart and after a modem reset (DESIGN.md invariant 6).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import Farm, Line, message_id, records, wait_online
from tests.support.pdu_encoder import encode_deliver

pytestmark = pytest.mark.timeout(90)

FORWARD_TO = "+79007777777"


def command(hub: HubThread, kind: str, sim_id: str, to: str | None = None) -> dict[str, Any]:
    """Queue a command at the hub and wait for the agent's result."""
    cid = hub.state.enqueue_command(kind, sim_id, to)
    wait_until(lambda: cid in hub.state.command_results, 30, f"the result of {kind}")
    result = hub.state.command_results[cid]
    assert result["ok"] is True, result
    assert result["count"] == 1  # executed and reported once
    return result


def sim_state(hub: HubThread, iccid: str) -> str | None:
    sim = hub.sims().get(iccid)
    return sim["state"] if sim else None


def sent_after(line: Line, seq: int, text: str) -> bool:
    """Whether the agent sent the command line ``text`` to the modem after log ``seq``."""
    return any(
        e.seq > seq and e.kind == "command" and e.text == text for e in line.modem.transcript()
    )


def forwarding(line: Line) -> tuple[str, bool] | None:
    sim = line.modem.sim
    assert sim is not None
    entry = sim.forwarding.get(0)  # <reason> 0: unconditional
    return (entry.number, entry.active) if entry is not None else None


def test_disable_enable_forward_unforward(hub: HubThread, farm: Farm, make_agent: Any) -> None:
    """On an EC25 (TCP) and a SIM800 (pty): ``disable`` sends ``AT+CFUN=4``, the radio goes
    off and the hub shows the SIM ``disabled``; an SMS sent meanwhile is held by the network
    and reaches the hub after ``enable`` (``AT+CFUN=1``, radio on, ``online`` again).
    ``forward`` registers unconditional forwarding to the number in the network
    (``AT+CCFC=0,3,"+79007777777",145``; the hub's ``forward_to`` shows it); ``unforward``
    erases it (``AT+CCFC=0,4``; ``forward_to`` null).  Every result is ok, reported once."""
    lines = [farm.add("ec25", "tcp"), farm.add("sim800", "pty")]
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid for line in lines])

    for line in lines:
        seq = line.modem.last_seq()
        result = command(hub, "disable", line.iccid)
        assert result["state"] == "disabled"
        assert sent_after(line, seq, "AT+CFUN=4")
        assert not line.modem.radio_on
        wait_until(lambda i=line.iccid: sim_state(hub, i) == "disabled", 5, "disabled at hub")

        pdu = encode_deliver(
            "+79001234567", f"while {line.name} was off", sent_at=datetime.now(UTC)
        )
        # Radio off: the emulated network holds it (nothing reaches the modem's storage, so
        # there is nothing the agent could read; no pause needed to prove a negative).
        assert line.modem.deliver_pdu(pdu) is None
        assert line.modem.pending() == [pdu.strip().upper()]
        assert message_id(line.iccid, [pdu]) not in records(hub)

        seq = line.modem.last_seq()
        command(hub, "enable", line.iccid)
        assert sent_after(line, seq, "AT+CFUN=1")
        assert line.modem.radio_on
        wait_until(lambda i=line.iccid: sim_state(hub, i) == "online", 10, "online at hub")
        msg_id = message_id(line.iccid, [pdu])
        wait_until(lambda i=msg_id: i in records(hub), 10, "the held SMS after enable")

        seq = line.modem.last_seq()
        command(hub, "forward", line.iccid, FORWARD_TO)
        assert sent_after(line, seq, f'AT+CCFC=0,3,"{FORWARD_TO}",145')
        assert forwarding(line) == (FORWARD_TO, True)
        wait_until(lambda i=line.iccid: hub.sims()[i]["forward_to"] == FORWARD_TO, 5, "forward_to")

        seq = line.modem.last_seq()
        command(hub, "unforward", line.iccid)
        assert sent_after(line, seq, "AT+CCFC=0,4")
        assert forwarding(line) is None
        wait_until(lambda i=line.iccid: hub.sims()[i]["forward_to"] is None, 5, "no forward_to")


def test_desired_state_reapplied_after_restart_and_after_modem_reset(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """A disabled SIM (EC25) and a forwarded one (SIM800).  The agent is SIGKILLed and, while
    it is down, the EC25 resets (it boots with the radio on).  The restarted agent switches it
    off again (``AT+CFUN=4`` after the restart) and re-registers the forwarding; the hub shows
    ``disabled`` and ``forward_to``.  Then the EC25 resets under the running agent (``RDY``,
    radio on), and so does a disabled SIM800 whose reset drops its USB line (it comes back
    under a new pty path behind the same symlink): the agent switches both radios off again by
    itself, no hub command involved."""
    radio = farm.add("ec25", "tcp", name="radio")
    fwd = farm.add("sim800", "pty", name="fwd")
    usb = farm.add("sim800", "pty", name="usb")
    agent = make_agent()
    agent.start()
    wait_online(hub, [radio.iccid, fwd.iccid, usb.iccid])
    command(hub, "disable", usb.iccid)
    command(hub, "disable", radio.iccid)
    command(hub, "forward", fwd.iccid, FORWARD_TO)
    assert not radio.modem.radio_on
    assert forwarding(fwd) == (FORWARD_TO, True)
    commands_before = len(hub.state.commands)

    agent.kill()
    radio.modem.reset()
    wait_until(lambda: radio.modem.powered and radio.modem.radio_on, 5, "the modem rebooted")
    seq_radio, seq_fwd = radio.modem.last_seq(), fwd.modem.last_seq()
    agent.start()
    wait_until(lambda: not radio.modem.radio_on, 15, "radio switched off after the restart")
    assert sent_after(radio, seq_radio, "AT+CFUN=4")
    wait_until(
        lambda: sent_after(fwd, seq_fwd, f'AT+CCFC=0,3,"{FORWARD_TO}",145'),
        15,
        "forwarding re-registered after the restart",
    )
    assert forwarding(fwd) == (FORWARD_TO, True)
    wait_until(lambda: sim_state(hub, radio.iccid) == "disabled", 10, "disabled at the hub")
    wait_until(lambda: hub.sims().get(fwd.iccid, {}).get("forward_to") == FORWARD_TO, 10, "fwd")

    seqs = {line.name: line.modem.last_seq() for line in (radio, usb)}
    radio.modem.reset()
    usb.modem.reset(drop_line=True)
    for line in (radio, usb):
        wait_until(
            lambda m=line.modem, s=seqs[line.name]: any(e.seq > s for e in m.events("power_on")),
            5,
            f"{line.name} rebooted under the agent",
        )
        wait_until(
            lambda m=line, s=seqs[line.name]: (
                sent_after(m, s, "AT+CFUN=4") and not m.modem.radio_on
            ),
            20,
            f"{line.name}: radio switched off again after the reset",
        )
        wait_until(
            lambda i=line.iccid: sim_state(hub, i) == "disabled", 10, f"{line.name} disabled"
        )
    assert usb.modem.events("line_down")  # the reset did drop the line (USB re-enumeration)
    assert len(hub.state.commands) == commands_before  # no command was needed for it
