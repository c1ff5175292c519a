"""The AT driver end to end against emulated modems on real ptys and real TCP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.at.commands import swap_nibbles
from drivers.at.driver import AtConfig
from drivers.base import Encoding, SmsPart
from tests.drivers.at.emu import WHEN, Harness, sms, until
from tests.emulator import EmulatedModem, ModemServer, SimCard

pytestmark = pytest.mark.timeout(30)

Make = Callable[..., Awaitable[Harness]]


def deleted(modem: EmulatedModem) -> list[int | None]:
    return [e.index for e in modem.events("deleted")]


@pytest.mark.parametrize(
    ("profile", "family"), [("ec25", "quectel"), ("sim800", "simcom-2g"), ("e3372", "huawei")]
)
async def test_init_and_identity_per_profile(
    server: ModemServer, harness: Make, profile: str, family: str
) -> None:
    modem = EmulatedModem(profile)
    h = await harness([server.start_pty(modem)])
    info = (await h.sim()).info
    sim = modem.sim
    assert sim is not None
    assert info.iccid == sim.iccid  # E3372 prints ^ICCID nibble-swapped: normalised
    assert info.imsi == sim.imsi
    assert info.port == "pool/0"
    assert info.registered and info.radio_on
    assert info.signal_dbm == -113 + 2 * modem.signal
    assert info.mcc_mnc == sim.mcc_mnc
    assert info.operator == sim.operator
    commands = modem.commands()
    for expected in ("ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=0", 'AT+CPMS="SM","SM","SM"'):
        assert expected in commands
    assert "AT+CNMI=2,1,0,0,0" in commands
    assert ("AT^CURC=0" in commands) == (profile == "e3372")
    assert ("AT+CEREG?" in commands) == (profile != "sim800")
    await until(lambda: "AT+CMGL=4" in modem.commands())  # the start-up sweep
    port = h.driver._ports["pool/0"]
    assert port.modem.quirks.family == family
    if profile == "e3372":
        assert swap_nibbles(sim.iccid)[:2] == "98"


async def test_sms_via_cmti_over_tcp_and_delete_only_after_ack(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([f"socket://127.0.0.1:{server.start_tcp(modem)}"])
    info = (await h.sim()).info
    pdu = sms("Your code is 93401")
    index = modem.deliver_pdu(pdu)
    part = await h.part()
    assert part.text == "Your code is 93401"
    assert part.sender == "+79001234567"
    assert part.sent_at == WHEN
    assert part.encoding is Encoding.GSM7
    assert part.iccid == info.iccid
    assert part.raw == bytes.fromhex(pdu)[1 + bytes.fromhex(pdu)[0] :]  # the TPDU
    assert modem.stored() == {index: (1, pdu)}  # read (stat 1), not deleted
    assert deleted(modem) == []
    await h.driver.ack(part.ack_token)
    assert deleted(modem) == [index]
    assert modem.stored() == {}


async def test_cmti_inside_the_csq_response_is_delivered(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("sim800")
    h = await harness([server.start_pty(modem)], poll_s=0.2)
    await h.sim()
    modem.deliver_pdu(sms("inside CSQ"), during="AT+CSQ", where="before_ok")
    part = await h.part(lambda p: p.text == "inside CSQ")
    await h.driver.ack(part.ack_token)
    modem.deliver_pdu(sms("after echo"), during="AT+CSQ", where="after_echo")
    await h.part(lambda p: p.text == "after echo")
    modem.deliver_pdu(sms("mid line"), during="AT+CSQ", where="mid_line")
    await h.part(lambda p: p.text == "mid line")
    # The sweep interval (30 s) is far away: every part came through +CMTI.
    assert modem.commands().count("AT+CMGL=4") == 1


async def test_sweep_catches_sms_stored_while_nobody_listened(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    first = modem.deliver_pdu(sms("stored before the agent started"))
    h = await harness([server.start_pty(modem)], sweep_s=0.3)
    part = await h.part()
    assert part.text == "stored before the agent started"
    # A +CMTI that never reaches us (lost URC) is caught by the periodic sweep.
    await h.driver.ack(part.ack_token)
    assert deleted(modem) == [first]
    modem.mute(True)  # swallow the +CMTI
    modem.deliver_pdu(sms("URC lost"))
    modem.mute(False)
    part2 = await h.part(lambda p: p.text == "URC lost")
    assert part2.iccid == part.iccid
