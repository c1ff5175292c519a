"""Framing: lines, responses vs URCs, errors, timeouts, garbage, over a byte-by-byte fake line."""

from __future__ import annotations

import asyncio

import pytest

from drivers.at import framing
from drivers.at.framing import AtCommandError, AtTimeout, PortClosed, Urc, scrub
from tests.drivers.at.fake_line import FakeLine

pytestmark = pytest.mark.timeout(10)

CMGR_PDU = "07919730071111F1000B919746121611F10000811170021222230DC8329BFD6681EE6F399B1C02"


@pytest.fixture(autouse=True)
def _fast_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "RESYNC_QUIET_S", 0.02)
    monkeypatch.setattr(framing, "RESYNC_MAX_S", 0.3)
    monkeypatch.setattr(framing, "RESYNC_PING_TIMEOUT_S", 0.3)


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
async def test_plain_response_any_split(chunk: int) -> None:
    line = FakeLine({"AT+CSQ": b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n"}, chunk=chunk)
    resp = await line.protocol.command("AT+CSQ", timeout_s=1, prefixes=("+CSQ:",))
    assert resp.lines == ("+CSQ: 21,99",)
    assert resp.final == "OK"
    assert resp.prefixed("+CSQ:") == ["21,99"]
    assert line.written == [b"AT+CSQ\r"]


@pytest.mark.parametrize("chunk", [1, 3, 1000])
async def test_cmti_between_response_line_and_ok_is_a_urc(chunk: int) -> None:
    # research/at-modems.md case A: python-gsmmodem put this +CMTI into the CSQ response.
    reply = b'\r\n+CSQ: 21,99\r\n\r\n+CMTI: "SM",1\r\n\r\nOK\r\n'
    line = FakeLine({"AT+CSQ": reply}, chunk=chunk)
    resp = await line.protocol.command("AT+CSQ", timeout_s=1, prefixes=("+CSQ:",))
    assert resp.lines == ("+CSQ: 21,99",)
    assert line.urcs == [Urc('+CMTI: "SM",1')]


async def test_cmti_before_the_response_and_two_urcs_in_one_burst() -> None:
    # Cases A2 and B: a URC before the answer, and two URCs in one write.
    reply = b'\r\n+CMTI: "SM",1\r\n\r\n+CMTI: "SM",2\r\n\r\n+CSQ: 9,99\r\n\r\nOK\r\n'
    line = FakeLine({"AT+CSQ": reply})
    resp = await line.protocol.command("AT+CSQ", timeout_s=1, prefixes=("+CSQ:",))
    assert resp.lines == ("+CSQ: 9,99",)
    assert [u.line for u in line.urcs] == ['+CMTI: "SM",1', '+CMTI: "SM",2']


async def test_urcs_with_no_command_in_flight_and_huawei_noise() -> None:
    line = FakeLine()
    line.feed(b'\r\n^RSSI:14\r\n\r\n^HCSQ:"LTE",40,33,120,14\r\n\r\nRDY\r\n\r\nSMS Ready\r\n')
    await line.settle()
    assert [u.line for u in line.urcs] == [
        "^RSSI:14",
        '^HCSQ:"LTE",40,33,120,14',
        "RDY",
        "SMS Ready",
    ]


async def test_huawei_noise_inside_a_cmgr_response() -> None:
    # babca/python-gsmmodem#47: ^RSSI mixed into +CMGR on an E171.
    reply = f"\r\n+CMGR: 0,,23\r\n\r\n^RSSI:12\r\n{CMGR_PDU}\r\n\r\n^MODE:5,4\r\nOK\r\n".encode()
    line = FakeLine({"AT+CMGR=1": reply})
    resp = await line.protocol.command(
        "AT+CMGR=1", timeout_s=1, prefixes=("+CMGR:",), data_after=("+CMGR:",)
    )
    assert resp.lines == ("+CMGR: 0,,23", CMGR_PDU)
    assert [u.line for u in line.urcs] == ["^RSSI:12", "^MODE:5,4"]


async def test_pdu_after_cmgl_header_is_data_even_if_it_looks_like_nothing_known() -> None:
    reply = b"\r\n+CMGL: 1,0,,5\r\n0011\r\n+CMGL: 2,1,,5\r\nABCD\r\n\r\nOK\r\n"
    line = FakeLine({"AT+CMGL=4": reply})
    resp = await line.protocol.command(
        "AT+CMGL=4", timeout_s=1, prefixes=("+CMGL:",), data_after=("+CMGL:",)
    )
    assert resp.lines == ("+CMGL: 1,0,,5", "0011", "+CMGL: 2,1,,5", "ABCD")
    assert line.urcs == []


async def test_cmt_urc_takes_its_pdu_line_even_during_a_command() -> None:
    reply = f"\r\n+CMT: ,23\r\n{CMGR_PDU}\r\n\r\n+CREG: 0,1\r\n\r\nOK\r\n".encode()
    line = FakeLine({"AT+CREG?": reply})
    resp = await line.protocol.command("AT+CREG?", timeout_s=1, prefixes=("+CREG:",))
    assert resp.lines == ("+CREG: 0,1",)
    assert line.urcs == [Urc("+CMT: ,23", CMGR_PDU)]


async def test_creg_is_a_response_to_creg_and_a_urc_elsewhere() -> None:
    line = FakeLine(
        {
            "AT+CREG?": b"\r\n+CREG: 0,5\r\n\r\nOK\r\n",
            "AT+CSQ": b"\r\n+CREG: 2\r\n\r\n+CSQ: 5,0\r\n\r\nOK\r\n",
        }
    )
    r1 = await line.protocol.command("AT+CREG?", timeout_s=1, prefixes=("+CREG:",))
    r2 = await line.protocol.command("AT+CSQ", timeout_s=1, prefixes=("+CSQ:",))
    assert r1.lines == ("+CREG: 0,5",)
    assert r2.lines == ("+CSQ: 5,0",)
    assert line.urcs == [Urc("+CREG: 2")]


async def test_echo_is_dropped() -> None:
    line = FakeLine({"AT+CGMI": b"AT+CGMI\r\r\nQuectel\r\n\r\nOK\r\n"})
    resp = await line.protocol.command("AT+CGMI", timeout_s=1)
    assert resp.lines == ("Quectel",)


async def test_bare_lf_and_cr_only_line_ends() -> None:
    line = FakeLine({"ATI": b"\nQuectel\nEC25\rRevision: EC25EFAR06A06M4G\r\rOK\n"})
    resp = await line.protocol.command("ATI", timeout_s=1)
    assert resp.lines == ("Quectel", "EC25", "Revision: EC25EFAR06A06M4G")


@pytest.mark.parametrize(
    ("reply", "kind", "code"),
    [
        (b"\r\n+CME ERROR: 10\r\n", "CME", 10),
        (b"\r\n+CMS ERROR: 321\r\n", "CMS", 321),
        (b"\r\nERROR\r\n", "ERROR", None),
        (b"\r\n+CME ERROR: SIM not inserted\r\n", "CME", None),
    ],
)
async def test_error_results(reply: bytes, kind: str, code: int | None) -> None:
    line = FakeLine({"AT+CPIN?": reply})
    with pytest.raises(AtCommandError) as info:
        await line.protocol.command("AT+CPIN?", timeout_s=1, prefixes=("+CPIN:",))
    assert info.value.kind == kind
    assert info.value.code == code


async def test_garbage_bytes_never_kill_the_reader() -> None:
    # Case C: one 0xFF killed python-gsmmodem's reader thread for good.
    line = FakeLine({"AT": b"\r\nOK\r\n"})
    line.feed(b'\r\n\xff\xfe\r\n\x00\x00\xff+CMTI: "SM",3\r\n\xfe\xfe\xfe')
    await line.settle()
    assert line.urcs == [Urc('+CMTI: "SM",3')]
    assert line.protocol.stats["garbage_bytes"] >= 5
    line.feed(b"\r\n")
    await line.settle()
    resp = await line.protocol.command("AT", timeout_s=1)
    assert resp.final == "OK"


async def test_huge_line_without_terminator_is_dropped() -> None:
    line = FakeLine({"AT": b"\r\nOK\r\n"}, chunk=4096)
    line.feed(b"x" * (framing.MAX_LINE + 10))
    await line.settle()
    assert line.protocol.stats["garbage_bytes"] > framing.MAX_LINE
    assert (await line.protocol.command("AT", timeout_s=1)).final == "OK"


async def test_timeout_then_late_answer_does_not_shift_responses() -> None:
    # Case F: after a timeout python-gsmmodem gave the next command the previous answer.
    line = FakeLine({"AT+CSQ": None, "AT": b"\r\nOK\r\n", "AT+CGMI": b"\r\nQuectel\r\n\r\nOK\r\n"})
    with pytest.raises(AtTimeout):
        await line.protocol.command("AT+CSQ", timeout_s=0.05, prefixes=("+CSQ:",))
    line.feed(b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n")  # the late answer
    resp = await line.protocol.command("AT+CGMI", timeout_s=1)
    assert resp.lines == ("Quectel",)
    # The late "+CSQ ... OK" answered the first ping (which is detected), so a second ping.
    assert line.commands == ["AT+CSQ", "AT", "AT", "AT+CGMI"]
    assert line.protocol.stats["resyncs"] == 1


async def test_timeout_then_silence_resyncs_with_one_ping() -> None:
    line = FakeLine({"AT+CSQ": None, "AT": b"\r\nOK\r\n", "AT+CGMI": b"\r\nQuectel\r\n\r\nOK\r\n"})
    with pytest.raises(AtTimeout):
        await line.protocol.command("AT+CSQ", timeout_s=0.05, prefixes=("+CSQ:",))
    resp = await line.protocol.command("AT+CGMI", timeout_s=1)
    assert resp.lines == ("Quectel",)
    assert line.commands == ["AT+CSQ", "AT", "AT+CGMI"]


async def test_resync_fails_on_a_mute_modem() -> None:
    line = FakeLine({})
    with pytest.raises(AtTimeout):
        await line.protocol.command("AT+CSQ", timeout_s=0.05)
    with pytest.raises(AtTimeout):
        await line.protocol.command("AT+CGMI", timeout_s=1)
    assert line.commands == ["AT+CSQ", "AT"]  # the ping timed out: no blind retries


async def test_connection_lost_fails_the_command_in_flight_and_later_ones() -> None:
    line = FakeLine({})
    task = asyncio.create_task(line.protocol.command("AT+CSQ", timeout_s=5))
    await asyncio.sleep(0.01)
    line.close()
    with pytest.raises(PortClosed):
        await task
    with pytest.raises(PortClosed):
        await line.protocol.command("AT", timeout_s=1)
    assert line.protocol.is_closed


async def test_one_command_in_flight() -> None:
    def slow(cmd: str) -> bytes | None:
        asyncio.get_running_loop().call_later(0.05, line.feed, b"\r\nOK\r\n")
        return None

    line = FakeLine({"AT+A": slow, "AT+B": b"\r\n+B: 1\r\n\r\nOK\r\n"})
    a = asyncio.create_task(line.protocol.command("AT+A", timeout_s=1))
    b = asyncio.create_task(line.protocol.command("AT+B", timeout_s=1, prefixes=("+B:",)))
    await asyncio.sleep(0.02)
    assert line.commands == ["AT+A"]  # B waits for A's final result
    ra, rb = await asyncio.gather(a, b)
    assert ra.lines == ()
    assert rb.lines == ("+B: 1",)


async def test_stray_final_result_is_counted_not_dispatched() -> None:
    line = FakeLine()
    line.feed(b"\r\nOK\r\n")
    await line.settle()
    assert line.urcs == []
    assert line.protocol.stats["stray_results"] == 1


async def test_prompt_and_payload() -> None:
    line = FakeLine({"AT+CMGS=20": b"\r\n> "})
    task = asyncio.create_task(
        line.protocol.command("AT+CMGS=20", timeout_s=1, prefixes=("+CMGS:",), payload=b"0011")
    )
    await asyncio.sleep(0.02)
    assert line.written[-1] == b"0011\x1a"
    line.feed(b"\r\n+CMGS: 7\r\n\r\nOK\r\n")
    assert (await task).lines == ("+CMGS: 7",)


async def test_cusd_text_with_line_breaks_is_one_urc() -> None:
    line = FakeLine()
    line.feed(b'\r\n+CUSD: 0,"Balance: 10 rub\r\nTariff: X\r\nBye",15\r\n')
    await line.settle()
    assert line.urcs == [Urc('+CUSD: 0,"Balance: 10 rub\nTariff: X\nBye",15')]


async def test_urc_callback_errors_are_contained() -> None:
    line = FakeLine({"AT": b'\r\n+CMTI: "SM",1\r\nOK\r\n'})
    calls: list[Urc] = []

    def boom(urc: Urc) -> None:
        calls.append(urc)
        raise RuntimeError("handler bug")

    line.protocol._on_urc = boom
    assert (await line.protocol.command("AT", timeout_s=1)).final == "OK"
    assert len(calls) == 1


def test_scrub_redacts_numbers_pdus_and_ussd_text() -> None:
    assert scrub('+CNUM: "","+79161234567",145') == '+CNUM: "","+*********67",145'
    assert "<hex 39 bytes>" in scrub(CMGR_PDU)
    assert scrub('+CUSD: 0,"Your balance 100",15') == '+CUSD: 0,"<redacted>",15'
    assert scrub('AT+CCFC=0,3,"+79001112233",145') == 'AT+CCFC=0,3,"+*********33",145'
    assert scrub("+CSQ: 21,99") == "+CSQ: 21,99"
