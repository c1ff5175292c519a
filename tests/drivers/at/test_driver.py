"""The AT driver end to end against emulated modems on real ptys and real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from drivers.at.commands import swap_nibbles
from drivers.base import (
    CommandError,
    DeviceDown,
    DeviceStat,
    DeviceUp,
    DriverError,
    Encoding,
    SimGone,
    SimInfo,
    SimPresent,
    SmsPart,
    UssdRecipe,
)
from tests.drivers.at.emu import WHEN, Harness, sms, until
from tests.emulator import EmulatedModem, ModemServer, SimCard, ussd_pack_hex
from tests.emulator.sim import StoredSms
from tests.support.pdu_encoder import encode_status_report, split_message


def at_port(port: str) -> SimInfo:
    """The SimInfo an action addresses: the AT driver acts on the SIM's port."""
    return SimInfo(port=port, iccid="")


def loop_time() -> float:
    return asyncio.get_running_loop().time()


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


async def test_failed_cmgd_is_retried(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    await h.sim()
    index = modem.deliver_pdu(sms("delete me"))
    part = await h.part()
    modem.fail_cmgd(2)
    await h.driver.ack(part.ack_token)
    assert deleted(modem) == [index]
    assert [c for c in modem.commands() if c.startswith("AT+CMGD")] == [f"AT+CMGD={index}"] * 3


async def test_delete_never_hits_a_newer_sms_in_the_same_index(
    server: ModemServer, harness: Make
) -> None:
    # The ack of an already deleted part (a duplicate emission) must not delete the new SMS
    # that the modem stored in the freed index meanwhile.
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    await h.sim()
    index = modem.deliver_pdu(sms("first"))
    first = await h.part(lambda p: p.text == "first")
    await h.driver.ack(first.ack_token)
    again = modem.deliver_pdu(sms("second"))
    assert again == index  # the same slot
    await h.part(lambda p: p.text == "second")
    await h.driver.ack(first.ack_token)  # duplicate ack of the first one
    assert list(modem.stored()) == [index]


async def test_parked_ack_is_done_after_reconnect(
    server: ModemServer, harness: Make, tmp_path: Path
) -> None:
    modem = EmulatedModem("ec25")
    link = tmp_path / "modem0"
    server.start_pty(modem, link=link)
    h = await harness([str(link)])
    await h.sim()
    index = modem.deliver_pdu(sms("ack while unplugged"))
    part = await h.part()
    modem.unplug()
    await h.gone()
    await h.driver.ack(part.ack_token)  # the port is down: parked, not lost, not raised
    assert deleted(modem) == []
    modem.replug()
    await until(lambda: deleted(modem) == [index])


async def test_garbage_bytes_do_not_stop_anything(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)], poll_s=0.2)
    await h.sim()
    modem.garbage(b"\r\n\xff\xfe\x00\x80garbage\xff\r\n\xfe")
    modem.deliver_pdu(sms("after garbage"))
    await h.part(lambda p: p.text == "after garbage")
    modem.garbage(b"\xff" * 5000)
    modem.deliver_pdu(sms("after more garbage"))
    await h.part(lambda p: p.text == "after more garbage")
    protocol = h.driver._ports["pool/0"]._protocol
    assert protocol is not None and protocol.stats["garbage_bytes"] > 5000


async def test_mute_is_survived_and_sms_stored_meanwhile_arrives(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("sim800")
    h = await harness([server.start_pty(modem)], poll_s=0.2, sweep_s=0.5)
    await h.sim()
    modem.mute(True)
    modem.deliver_pdu(sms("stored while hung"))  # stored, its +CMTI swallowed
    await h.wait_new(DeviceStat, lambda s: s.name == "hang_step")
    modem.mute(False)
    part = await h.part(lambda p: p.text == "stored while hung", timeout=8)
    assert part.port == "pool/0"


async def test_unplug_replug_pty_with_moving_path(
    server: ModemServer, harness: Make, tmp_path: Path
) -> None:
    modem = EmulatedModem("e3372")
    link = tmp_path / "usb-huawei-if00"
    server.start_pty(modem, link=link)
    h = await harness([str(link)], poll_s=0.3)
    info = (await h.sim()).info
    modem.unplug()
    gone = await h.gone()
    assert gone.iccid == info.iccid
    modem.replug()
    assert server.wait_pty_path(modem)  # a new pty (the kernel may reuse the number)
    # Back, and registered again after the boot (the first report may still say searching).
    back = await h.wait_new(SimPresent, lambda e: e.info.iccid == info.iccid and e.info.registered)
    assert back.info.port == "pool/0"
    modem.deliver_pdu(sms("after replug"))
    await h.part(lambda p: p.text == "after replug")


async def test_unplug_replug_tcp(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([f"socket://127.0.0.1:{server.start_tcp(modem)}"])
    info = (await h.sim()).info
    modem.unplug()
    await h.gone()
    modem.replug()
    await h.wait_new(SimPresent, lambda e: e.info.iccid == info.iccid, timeout=8)
    modem.deliver_pdu(sms("after replug"))
    await h.part(lambda p: p.text == "after replug")


async def test_sim_swap_is_reported_and_new_parts_carry_the_new_iccid(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    old = (await h.sim()).info
    new = SimCard.generate()
    modem.insert_sim(new)
    gone = await h.gone()
    assert gone.iccid == old.iccid
    present = await h.wait_new(SimPresent, lambda e: e.info.iccid == new.iccid)
    assert present.info.imsi == new.imsi
    modem.deliver_pdu(sms("for the new SIM"))
    part = await h.part(lambda p: p.text == "for the new SIM")
    assert part.iccid == new.iccid


async def test_swap_without_any_urc_is_caught_before_reading(
    server: ModemServer, harness: Make
) -> None:
    # A modem without SIM-detect URCs (SIM800 on boards with no detect pin): the ICCID is
    # re-read before parts are read, so no part is ever labelled with the old SIM.
    modem = EmulatedModem("sim800")
    h = await harness([server.start_pty(modem)])
    old = (await h.sim()).info
    new = SimCard.generate()
    with modem._lock:  # swap behind the modem's back: no URC at all
        modem._sim = new
        modem._sim_attach(announce=False)
    modem.deliver_pdu(sms("silent swap"))
    part = await h.part(lambda p: p.text == "silent swap")
    assert part.iccid == new.iccid != old.iccid
    assert [g.iccid for g in h.of(SimGone)] == [old.iccid]


@pytest.mark.parametrize(("profile", "off"), [("ec25", 4), ("e3372", 0)])
async def test_radio_off_and_on(server: ModemServer, harness: Make, profile: str, off: int) -> None:
    modem = EmulatedModem(profile)
    h = await harness([server.start_pty(modem)])
    await h.sim()
    await h.driver.set_radio(at_port("pool/0"), False)
    assert not modem.radio_on
    assert f"AT+CFUN={off}" in modem.commands()
    info = await h.wait(SimPresent, lambda e: not e.info.radio_on)
    assert not info.info.registered
    await h.driver.set_radio(at_port("pool/0"), True)
    assert modem.radio_on and modem.registered
    on = await h.wait_new(SimPresent, lambda e: e.info.radio_on and e.info.registered)
    assert on.info.port == "pool/0"


async def test_radio_state_is_reapplied_after_a_modem_reset(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    await h.sim()
    await h.driver.set_radio(at_port("pool/0"), False)
    modem.reset()  # boots with CFUN=1 and says RDY
    await until(lambda: modem.powered and modem.commands().count("AT+CFUN=4") == 2)
    assert not modem.radio_on


async def test_call_forwarding_set_and_cleared(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([f"socket://127.0.0.1:{server.start_tcp(modem)}"])
    await h.sim()
    await h.driver.set_forwarding(at_port("pool/0"), "+79001112233")
    sim = modem.sim
    assert sim is not None
    assert 'AT+CCFC=0,3,"+79001112233",145' in modem.commands()
    assert sim.forwarding[0].number == "+79001112233" and sim.forwarding[0].active
    info = await h.wait(SimPresent, lambda e: e.info.forward_to == "+79001112233")
    assert info.info.iccid == sim.iccid
    await h.driver.set_forwarding(at_port("pool/0"), None)
    assert "AT+CCFC=0,4" in modem.commands()
    assert 0 not in sim.forwarding or not sim.forwarding[0].active
    await h.wait(SimPresent, lambda e: e.info.forward_to is None and e.info.iccid == sim.iccid)


async def test_forwarding_refused_raises_command_error_with_the_modem_error(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    await h.sim()
    modem.cme_error("AT+CCFC", 30)
    with pytest.raises(CommandError, match=r"\+CME ERROR: 30 \(no network service\)"):
        await h.driver.set_forwarding(at_port("pool/0"), "+79001112233")
    with pytest.raises(CommandError, match="no such port"):
        await h.driver.set_forwarding(at_port("pool/9"), None)
    with pytest.raises(CommandError, match="not a phone number"):
        await h.driver.set_forwarding(at_port("pool/0"), "12; rm -rf")


async def test_forwarding_waits_for_registration_then_gives_up(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    await h.sim()
    modem.set_network(2)  # searching: no service
    with pytest.raises(CommandError, match="not registered"):
        await h.driver.set_forwarding(at_port("pool/0"), "+79001112233")
    assert not any(c.startswith("AT+CCFC") for c in modem.commands())


# ------------------------------------------------------------------ own number


async def test_number_from_cnum(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25", sim=SimCard.generate(number="+79161234567"))
    h = await harness([server.start_pty(modem)])
    found = await h.wait(SimPresent, lambda e: e.info.number is not None)
    assert (found.info.number, found.info.number_source) == ("+79161234567", "cnum")


async def test_number_from_the_on_phonebook_when_cnum_fails(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("sim800", sim=SimCard.generate(number="+79161234567"))
    modem.error("AT+CNUM", times=5)
    h = await harness([server.start_pty(modem)])
    found = await h.wait(SimPresent, lambda e: e.info.number is not None)
    assert (found.info.number, found.info.number_source) == ("+79161234567", "phonebook")
    assert 'AT+CPBS="ON"' in modem.commands()


async def test_number_from_the_core_cache_first(server: ModemServer, harness: Make) -> None:
    sim = SimCard.generate(number="+79161234567")
    modem = EmulatedModem("ec25", sim=sim)
    h = await harness([server.start_pty(modem)], numbers={sim.iccid: "+79990000000"})
    first = await h.sim()
    assert (first.info.number, first.info.number_source) == ("+79990000000", "cache")
    assert "AT+CNUM" not in modem.commands()


@pytest.mark.parametrize("profile", ["ec25", "e3372"])
async def test_number_by_ussd_recipe_with_a_ucs2_reply(
    server: ModemServer, harness: Make, profile: str
) -> None:
    sim = SimCard.generate(number=None, msisdn="+79265550011")
    modem = EmulatedModem(profile, sim=sim)
    modem.set_ussd_reply("*205#", "Ваш номер: +7 926 555-00-11.", dcs=72)
    recipe = UssdRecipe(mcc_mnc=sim.mcc_mnc, ussd="*205#", regex=r"(\+?7[\d \-]{10,14}\d)")
    h = await harness([server.start_pty(modem)], recipes=(recipe,))
    found = await h.wait(SimPresent, lambda e: e.info.number is not None)
    assert (found.info.number, found.info.number_source) == ("+79265550011", "ussd")


async def test_number_by_ussd_gsm7_reply_on_huawei_packed_hex(
    server: ModemServer, harness: Make
) -> None:
    sim = SimCard.generate(number=None)
    modem = EmulatedModem("e3372", sim=sim)
    modem.set_ussd_reply("*111*0887#", "Your number is 79265550012", dcs=15)
    recipe = UssdRecipe(mcc_mnc=sim.mcc_mnc, ussd="*111*0887#", regex=r"number is (\d+)")
    h = await harness([server.start_pty(modem)], recipes=(recipe,))
    found = await h.wait(SimPresent, lambda e: e.info.number is not None)
    assert found.info.number == "+79265550012"
    # Huawei takes the request packed too: "*111*0887#" as GSM 7 bit septets in hex.
    assert f'AT+CUSD=1,"{ussd_pack_hex("*111*0887#")}",15' in modem.commands()


async def test_no_number_when_nothing_knows_it(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25", sim=SimCard.generate(number=None))
    h = await harness([server.start_pty(modem)])
    info = (await h.sim()).info
    await until(lambda: any(c.startswith("AT+CPBR") for c in modem.commands()))
    assert info.number is None
    assert not any(c.startswith("AT+CUSD") for c in modem.commands())  # no recipe: no USSD


# ------------------------------------------------------------------ storage and odd PDUs


async def test_storage_full_is_reported_and_drained(server: ModemServer, harness: Make) -> None:
    sim = SimCard.generate(capacity=3)
    modem = EmulatedModem("ec25", sim=sim)
    for i in range(5):  # 3 stored, 2 held by the network (memory capacity exceeded)
        modem.deliver_pdu(sms(f"msg {i}"))
    assert len(modem.stored()) == 3 and len(modem.pending()) == 2
    h = await harness([server.start_pty(modem)], sweep_s=0.3)
    await h.wait(DeviceStat, lambda s: s.name == "storage_full")
    total = await h.wait(DeviceStat, lambda s: s.name == "storage_total")
    assert total.value == 3
    texts: set[str] = set()
    while len(texts) < 5:
        part = await h.wait(SmsPart, lambda p: p.text not in texts, timeout=8)
        texts.add(part.text)
        await h.driver.ack(part.ack_token)
    assert texts == {f"msg {i}" for i in range(5)}
    await until(lambda: not modem.stored() and not modem.pending())


async def test_status_report_is_deleted_without_an_event(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    report = encode_status_report("+79001234567", message_ref=7, sent_at=WHEN)
    index = modem.deliver_pdu(report)
    modem.deliver_pdu(sms("real one"))
    h = await harness([server.start_pty(modem)])
    await h.part(lambda p: p.text == "real one")
    await until(lambda: index in deleted(modem))
    assert len(h.of(SmsPart)) == 1


async def test_undecodable_pdu_is_forwarded_raw_never_lost(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    good = sms("x")
    broken = good[:-2]  # user data shorter than TP-UDL says: PduError
    index = modem.deliver_pdu(broken)
    h = await harness([server.start_pty(modem)])
    part = await h.part()
    assert part.encoding is Encoding.UNDECODABLE
    raw = bytes.fromhex(broken)
    assert part.raw == part.data == raw[1 + raw[0] :]
    assert part.sender == "" and part.sent_at is None
    await h.driver.ack(part.ack_token)
    assert deleted(modem) == [index]


async def test_unicode_and_multipart_fields(server: ModemServer, harness: Make) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)])
    await h.sim()
    modem.deliver_pdu(sms("", encoding="ucs2", data="Привет".encode("utf-16-be")))
    ucs2 = await h.part(lambda p: p.encoding is Encoding.UCS2)
    assert ucs2.data.decode("utf-16-be") == "Привет"
    for pdu in split_message("+79001234567", "A" * 200, sent_at=WHEN, ref=0x1234, ref_bits=16):
        modem.deliver_pdu(pdu)
    await until(lambda: len([p for p in h.of(SmsPart) if p.concat]) == 2)
    parts = sorted((p for p in h.of(SmsPart) if p.concat), key=lambda p: p.concat.part)  # type: ignore[union-attr]
    assert [(p.concat.ref, p.concat.part, p.concat.total, p.concat.ref_bits) for p in parts] == [  # type: ignore[union-attr]
        (0x1234, 1, 2, 16),
        (0x1234, 2, 2, 16),
    ]
    assert "".join(p.text for p in parts) == "A" * 200


# ------------------------------------------------------------------ devices and pools


async def test_connect_fails_cleanly_when_no_port_opens(fast: None, tmp_path: Path) -> None:
    h = Harness([str(tmp_path / "no-such-tty")], state_dir=tmp_path)
    with pytest.raises(DriverError, match="no-such-tty"):
        await h.driver.connect()
    current = asyncio.current_task()
    assert not [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    await h.driver.close()  # idempotent after a failed connect


async def test_pool_one_bad_port_and_one_hung_modem_do_not_stall_the_others(
    server: ModemServer, harness: Make, tmp_path: Path
) -> None:
    good = EmulatedModem("ec25")
    hung = EmulatedModem("sim800")
    ports = [server.start_pty(good), str(tmp_path / "missing"), server.start_pty(hung)]
    h = await harness(ports, poll_s=0.2)
    await h.sim("pool/0")
    await h.sim("pool/2")
    assert h.of(DeviceUp)[0].detail == "2 of 3 ports open"
    hung.mute(True)
    for i in range(3):
        good.deliver_pdu(sms(f"good {i}"))
        part = await h.part(lambda p, i=i: p.text == f"good {i}", timeout=3)
        assert part.port == "pool/0"
        await h.driver.ack(part.ack_token)
    await h.wait(DeviceStat, lambda s: s.name == "hang_step" and s.port == "pool/2")
    hung.mute(False)
    hung.deliver_pdu(sms("hung no more"))
    part = await h.part(lambda p: p.text == "hung no more", timeout=8)
    assert part.port == "pool/2"


async def test_device_down_only_when_every_port_is_down(server: ModemServer, harness: Make) -> None:
    a, b = EmulatedModem("ec25"), EmulatedModem("ec25")
    h = await harness([f"socket://127.0.0.1:{server.start_tcp(m)}" for m in (a, b)])
    await h.sim("pool/0")
    await h.sim("pool/1")
    a.unplug()
    await h.gone("pool/0")
    assert not h.of(DeviceDown)
    b.unplug()
    down = await h.wait(DeviceDown)
    assert "all 2 ports" in down.reason
    b.replug()
    await h.wait_new(DeviceUp, timeout=8)


async def test_reset_command_is_the_last_rung_of_the_hang_ladder(
    server: ModemServer, harness: Make, tmp_path: Path
) -> None:
    # A firmware hang that only a power cycle cures (the emulator unmutes on power-on).
    modem = EmulatedModem("ec25")
    flag = tmp_path / "power-cycled"
    stop = threading.Event()

    def usb_hub() -> None:  # stands for uhubctl: cuts and restores power when asked
        while not stop.wait(0.02):
            if flag.exists():
                flag.unlink()
                modem.reset(drop_line=True)

    hub = threading.Thread(target=usb_hub, name="fake-uhubctl")
    hub.start()
    try:
        h = await harness(
            [server.start_pty(modem, link=tmp_path / "tty")] and [str(tmp_path / "tty")],
            poll_s=0.2,
            reset_command=f"touch {flag}.{{index}} && mv {flag}.{{index}} {flag}",
        )
        await h.sim()
        modem.mute(True)
        steps: list[str] = []
        while "reset_command" not in steps:
            stat = await h.wait_new(DeviceStat, lambda s: s.name == "hang_step", timeout=10)
            steps.append(dict(stat.labels)["step"])
        assert steps[:3] == ["ping", "reopen", "cfun_reset"]
        modem.deliver_pdu(sms("after power cycle"))
        part = await h.part(lambda p: p.text == "after power cycle", timeout=10)
        assert part.port == "pool/0"
    finally:
        stop.set()
        hub.join()


async def test_lost_registration_is_reported_within_one_poll(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    h = await harness([server.start_pty(modem)], poll_s=0.2)
    await h.sim()
    modem.set_network(3)  # registration denied
    lost = await h.wait_new(SimPresent, lambda e: not e.info.registered, timeout=1.0)
    assert lost.info.iccid == (modem.sim.iccid if modem.sim else None)
    modem.set_signal(5)  # -103 dBm: a change worth reporting
    modem.set_network(1)
    back = await h.wait_new(SimPresent, lambda e: e.info.registered, timeout=1.0)
    assert back.info.signal_dbm == -103
    modem.set_signal(6)  # 2 dB: a metric, not a SimPresent
    await h.wait_new(DeviceStat, lambda s: s.name == "signal_dbm" and s.value == -101)
    assert h.of(SimPresent)[-1].info.signal_dbm == -103


async def test_many_ports_in_one_driver(server: ModemServer, harness: Make) -> None:
    modems = [EmulatedModem(("ec25", "sim800", "e3372")[i % 3]) for i in range(48)]
    h = await harness([server.start_pty(m) for m in modems])
    await until(lambda: len({e.info.port for e in h.of(SimPresent)}) == len(modems), timeout=10)
    for m in modems:
        m.deliver_pdu(sms("fan-in"))
    await until(lambda: len(h.of(SmsPart)) >= len(modems), timeout=10)
    assert {p.port for p in h.of(SmsPart)} == {f"pool/{i}" for i in range(len(modems))}


async def test_unreadable_iccid_waits_instead_of_spinning(
    server: ModemServer, harness: Make
) -> None:
    modem = EmulatedModem("ec25")
    for prefix in ("AT+QCCID", "AT+CCID", "AT+CICCID", "AT^ICCID", "AT+CRSM"):
        modem.error(prefix, times=1000)
    h = await harness([server.start_pty(modem)], poll_s=0.5)
    t0 = loop_time()
    # The driver has looked at the SIM again (a later poll) and still reports nothing.
    await until(lambda: modem.commands().count("AT+CPIN?") >= 3, timeout=5)
    assert not h.of(SimPresent)
    # Once per poll_s, not in a loop (two polls of slack for start-up and timing).
    assert modem.commands().count("AT+CPIN?") <= (loop_time() - t0) / 0.5 + 3
    modem.clear_faults()
    await h.sim(timeout=3)
    # Again from a working session: a SIM re-check that cannot read the ICCID must wait too.
    for prefix in ("AT+QCCID", "AT+CCID", "AT+CICCID", "AT^ICCID", "AT+CRSM"):
        modem.error(prefix, times=1000)
    before = modem.commands().count("AT+CPIN?")
    modem.inject_urc("+CPIN: READY")
    await h.gone()
    t0 = loop_time()
    await until(lambda: modem.commands().count("AT+CPIN?") - before >= 3, timeout=5)
    assert modem.commands().count("AT+CPIN?") - before <= (loop_time() - t0) / 0.5 + 3


async def test_stored_outgoing_drafts_are_left_alone(server: ModemServer, harness: Make) -> None:
    sim = SimCard.generate()
    sim.messages.slots[4] = StoredSms(2, sms("a draft, STO UNSENT"))  # TS 27.005 <stat> 2
    modem = EmulatedModem("ec25", sim=sim)
    modem.deliver_pdu(sms("incoming"))
    h = await harness([server.start_pty(modem)])
    part = await h.part()
    await h.driver.ack(part.ack_token)
    assert [p.text for p in h.of(SmsPart)] == ["incoming"]
    assert list(modem.stored()) == [4]  # the draft is still there
