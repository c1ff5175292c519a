"""SMS content end to end: PDU bytes on an emulated SIM → the agent process → the hub's record.

Each test starts one agent over three modems (EC25 on TCP, SIM800 on a pty, E3372 on TCP),
lets the network deliver PDUs to the SIMs, and checks what the hub stored under the message
id PROTOCOL.md §4 defines (computed here from the PDU bytes): ``from``, ``text``, ``sent_at``
with its UTC offset, ``parts``, ``complete`` and ``sim_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import Farm, Line, message_id, records, tpdu, wait_online
from tests.support.pdu_encoder import encode_deliver, split_message, with_udl

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Expect:
    """One message as the hub must show it, and the PDUs (in part order) that carry it."""

    label: str
    pdus: tuple[str, ...]
    sender: str
    text: str
    sent_at: str
    complete: bool = True
    extra: tuple[tuple[str, Any], ...] = ()  # further body fields, e.g. ("encoding", "8bit")


# research/at-modems.md §4, verbatim.  #4 carries a 1-of-1 concatenation header; #5 and #14
# are part 1 of 2 with no public part 2, so they must arrive with ``complete: false`` after
# the reassembly timeout.  #9+#10 (8-bit reference) and #11+#12 (16-bit reference) are pairs.
V = {
    1: "06917228195339040B917228214365F700003130805120618005D4F29C2E03",
    2: "07915892000000F0040B915892214365F700007040213252242331493A283D0795C3F33C88FE06C9CB6132885EC6D341EDF27C1E3E97E7207B3A0C0A5241E377BB1D7693E72E",
    3: "06917228195339040B917228214365F70000313062315352800A800D8A5E98D337A910",
    4: "0591721891F1400781721881F800003160526104848059050003C30101916536FB1DCABEEB2074D85E064941B19CAB060319A5C522289C96D3D3ED32286C0FA7D96131BBEC024941B19CAB0603DDD36C36A88C87A7E565D0DB0D82C55EB0DB4B068BCD5C20",
    5: "07919762020033F1400DD0CDF2396C7EBB010008415072411084618C0500035602010053004D005300200063006F00640065003A00200034003800350036002C00200063006F006E006600690072006D006100740069006F006E0020006F00660020006100730073006F00630069006100740069006F006E0020006200650074007700650065006E0020006100630063006F0075006E007400200061006E00640020004D00650067",
    6: "07919730071111F1000B919746121611F10000811170021222230DC8329BFD6681EE6F399B1C02",
    7: "07911326060032F0000DD0D432DBFC96D30100001121313121114012D7327BFC6E9741F437885A669BDF723A",
    8: "07919730071111F1000B919746121611F100088111800212222318041F04400438043204350442002C0020043C043804400021",
    9: "07919730071111F1400B919746121611F10000100161916223230D0500032E020190E175DD1D06",
    10: "07919730071111F1400B919746121611F10000100161916233230E0500032E020240ED303D4C0F03",
    11: "07919730071111F1400B919746121611F10000811170021222230E06080412340201C8329BFD6601",
    12: "07919730071111F1400B919746121611F10000811170021232230F06080412340202A0FB5BCE268700",
    13: "07919730071111F1400B919746121611F100008111701222322342140A030004100A030606200A030E09400A031C0D80C2379BCC0225E961767ACC0255DDE4B29C9D76974161371934A5CBD3EB321D2D7FD7CF6817",
    14: "07919712690020F6400ED0CDF2399C749BDF0008629020320163218B060804BE3602010412043004480020043A043E043400200434043B044F0020043004320442043E0440043804370430044604380438003A0020003800360035003100340034002E00200412043204350434043804420435002004350433043E0020043D043000200441044204400430043D0438044604350020043F043E0434044204320435044004360434",
}
RU = "+79642161111"
RESEARCH: tuple[Expect, ...] = (
    Expect("#1", (V[1],), "+27821234567", "Test2", "2013-03-08T15:02:16+02:00"),
    Expect(
        "#2",
        (V[2],),
        "+85291234567",
        "It is easy to read text messages via AT commands.",
        "2007-04-12T23:25:42+08:00",
    ),
    Expect("#3", (V[3],), "+27821234567", "@{tést}!", "2013-03-26T13:35:25+02:00"),
    Expect(
        "#4",
        (V[4],),
        "2781188",
        "Hello!You have R 19.50 FREE airtime available. R 19.50 will expire on 01/07/2013. ",
        "2013-06-25T16:40:48+02:00",
    ),
    Expect(
        "#5",
        (V[5],),
        "Megafon",
        "SMS code: 4856, confirmation of association between account and Meg",
        "2014-05-27T14:01:48+04:00",
        complete=False,
    ),
    Expect("#6", (V[6],), RU, "Hello, world!", "2018-11-07T20:21:22+08:00"),
    Expect("#7", (V[7],), "Telfort", "Welcome to Telfort", "2011-12-13T13:12:11+01:00"),
    Expect("#8", (V[8],), RU, "Привет, мир!", "2018-11-08T20:21:22+08:00"),
    Expect("#9+#10", (V[9], V[10]), RU, "Hakuna matata", "2001-10-16T19:26:32+08:00"),
    Expect("#11+#12", (V[11], V[12]), RU, "Hello, world!", "2018-11-07T20:21:22+08:00"),
    Expect(
        "#13",
        (V[13],),
        RU,
        "Bold, Italic, Underline and Strikethrough.",
        "2018-11-07T21:22:23+08:00",
    ),
    Expect(
        "#14",
        (V[14],),
        "MegaInfo",
        "Ваш код для авторизации: 865144. Введите его на странице подтвержд",
        "2026-09-02T23:10:36+03:00",
        complete=False,
    ),
)


def _encoder_made() -> tuple[Expect, ...]:
    """Senders, zones and codings the research vectors lack, made with the test encoder."""
    msk = timezone(timedelta(hours=3))
    nfld = timezone(-timedelta(hours=3, minutes=30))  # Newfoundland: a negative half hour
    pst = timezone(-timedelta(hours=8))
    t = datetime(2026, 11, 26, 15, 1, 9, tzinfo=msk)
    out = [
        Expect(
            "national sender",
            (encode_deliver("89161234567", "national 8-prefixed number", sent_at=t),),
            "89161234567",
            "national 8-prefixed number",
            "2026-11-26T15:01:09+03:00",
        ),
        Expect(
            "alphanumeric sender",
            (encode_deliver("VKcom", "VK: 93401 - your code", sent_at=t),),
            "VKcom",
            "VK: 93401 - your code",
            "2026-11-26T15:01:09+03:00",
        ),
        Expect(
            "alphanumeric sender, 7 septets + padding",
            (encode_deliver("Tinkoff", "Kod 5512", sent_at=t),),
            "Tinkoff",
            "Kod 5512",
            "2026-11-26T15:01:09+03:00",
        ),
        Expect(
            "negative half-hour zone",
            (
                encode_deliver(
                    "+17095550123",
                    "zone -03:30",
                    sent_at=datetime(2026, 3, 1, 8, 30, 0, tzinfo=nfld),
                ),
            ),
            "+17095550123",
            "zone -03:30",
            "2026-03-01T08:30:00-03:30",
        ),
        Expect(
            "negative zone -08:00",
            (
                encode_deliver(
                    "+14155550123",
                    "zone -08:00",
                    sent_at=datetime(2025, 12, 31, 23, 59, 59, tzinfo=pst),
                ),
            ),
            "+14155550123",
            "zone -08:00",
            "2025-12-31T23:59:59-08:00",
        ),
        Expect(
            "UCS2 emoji (surrogate pairs)",
            (encode_deliver("+79001112233", "Код 4821 👍🏽 ok 🎉", sent_at=t, encoding="ucs2"),),
            "+79001112233",
            "Код 4821 👍🏽 ok 🎉",
            "2026-11-26T15:01:09+03:00",
        ),
        Expect(
            "8-bit data",
            (
                encode_deliver(
                    "+79001112233", sent_at=t, encoding="8bit", data=bytes([0, 1, 0x7F, 0xFE, 0xFF])
                ),
            ),
            "+79001112233",
            "00017FFEFF",
            "2026-11-26T15:01:09+03:00",
            extra=(("encoding", "8bit"),),
        ),
        Expect(
            "GSM 7 bit extension table",
            (encode_deliver("+79001112233", "5€ [a] {b} ~c^ |d\\", sent_at=t),),
            "+79001112233",
            "5€ [a] {b} ~c^ |d\\",
            "2026-11-26T15:01:09+03:00",
        ),
        Expect(
            "flash SMS (class 0)",
            (encode_deliver("+79001112233", "flash 7781", sent_at=t, flash=True),),
            "+79001112233",
            "flash 7781",
            "2026-11-26T15:01:09+03:00",
            extra=(("flash", True),),
        ),
    ]
    # An emoji split across two UCS2 parts (16-bit reference): joined before decoding.
    emoji_text = "Ж" * 65 + "🙂" + " end"
    parts = split_message(
        "+79001112233",
        emoji_text,
        sent_at=t,
        ref=0xA1B2,
        ref_bits=16,
        encoding="ucs2",
        split_surrogates=True,
    )
    assert len(parts) == 2
    out.append(
        Expect(
            "UCS2 surrogate pair split across parts",
            tuple(parts),
            "+79001112233",
            emoji_text,
            "2026-11-26T15:01:09+03:00",
        )
    )
    return tuple(out)


ENCODER_MADE = _encoder_made()


def _three_modems(farm: Farm) -> list[Line]:
    return [farm.add("ec25", "tcp"), farm.add("sim800", "pty"), farm.add("e3372", "tcp")]


def _check(hub: HubThread, where: dict[str, tuple[Expect, Line]]) -> list[str]:
    """Mismatches between the hub's records and the expectations (empty: all good)."""
    got = records(hub)
    problems = []
    for msg_id, (exp, line) in where.items():
        rec = got.get(msg_id)
        if rec is None:
            problems.append(f"{exp.label}: no message {msg_id} at the hub")
            continue
        body = rec["body"]
        want = {
            "sim_id": line.iccid,
            "from": exp.sender,
            "text": exp.text,
            "sent_at": exp.sent_at,
            "parts": len(exp.pdus),
            "complete": exp.complete,
            **dict(exp.extra),
        }
        for key, value in want.items():
            if body.get(key) != value:
                problems.append(f"{exp.label}: {key} = {body.get(key)!r}, expected {value!r}")
        if rec["count"] != 1:
            problems.append(f"{exp.label}: received {rec['count']} times")
    return problems


def _deliver_all(
    farm: Farm, lines: list[Line], expects: tuple[Expect, ...]
) -> dict[str, tuple[Expect, Line]]:
    where: dict[str, tuple[Expect, Line]] = {}
    for k, exp in enumerate(expects):
        line = lines[k % len(lines)]
        for pdu in exp.pdus:
            assert line.modem.deliver_pdu(pdu) is not None, f"{exp.label}: not stored"
        where[message_id(line.iccid, exp.pdus)] = (exp, line)
    return where


def test_research_vectors_reach_the_hub_with_sender_text_and_time(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """Every PDU vector of research/at-modems.md §4 (GSM 7 bit with the extension table,
    UCS2, alphanumeric and TON-unknown senders, 8- and 16-bit concatenation, an EMS header,
    zones +01:00 to +08:00) arrives under the §4 id with the sender, text and SMSC time (and
    offset) the vector's source asserts.  The two lone first parts (#5, #14) arrive partial
    (``complete: false``) after the reassembly timeout instead of being dropped."""
    lines = _three_modems(farm)
    agent = make_agent(agent={"reassembly_timeout_s": 2})
    agent.start()
    wait_online(hub, [line.iccid for line in lines])

    where = _deliver_all(farm, lines, RESEARCH)
    wait_until(
        lambda: set(where) <= set(records(hub)),
        15,
        f"{len(where)} research vectors at the hub",
        detail=lambda: "\n".join(_check(hub, where)),
    )
    assert _check(hub, where) == []
    assert len(records(hub)) == len(where)
    wait_until(farm.all_empty, 10, "every SIM emptied", detail=farm.storage)


def test_encoder_made_senders_zones_and_codings(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """Messages the vectors do not cover: a national (TON unknown) sender, alphanumeric
    senders of 5 and 7 characters (no trailing "@" from the padding), negative zones -03:30
    and -08:00, UCS2 text with emoji (surrogate pairs), 8-bit data (forwarded as hex with
    ``encoding: 8bit``), the GSM 7 bit extension table, a flash SMS, and an emoji whose
    surrogate pair is split across two UCS2 parts (joined before decoding)."""
    lines = _three_modems(farm)
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid for line in lines])

    where = _deliver_all(farm, lines, ENCODER_MADE)
    wait_until(
        lambda: set(where) <= set(records(hub)),
        15,
        f"{len(where)} encoder-made messages at the hub",
        detail=lambda: "\n".join(_check(hub, where)),
    )
    assert _check(hub, where) == []
    wait_until(farm.all_empty, 10, "every SIM emptied", detail=farm.storage)


@pytest.mark.parametrize("ref_bits", [8, 16])
def test_two_parts_in_reverse_order_delivered_once_complete(
    hub: HubThread, farm: Farm, make_agent: Any, ref_bits: int
) -> None:
    """A two-part message whose part 2 reaches the SIM (and the agent) before part 1 is
    delivered exactly once, complete, with both parts' text in order, under the id of its
    parts in part order; the part read alone is never forwarded on its own."""
    line = farm.add("ec25", "pty")
    agent = make_agent(agent={"reassembly_timeout_s": 30})
    agent.start()
    wait_online(hub, [line.iccid])

    sent_at = datetime(2026, 11, 26, 15, 1, 9, tzinfo=timezone(timedelta(hours=3)))
    text = "Your verification code is 551203. " * 6  # 204 characters: two GSM 7 bit parts
    part1, part2 = split_message("VKcom", text, sent_at=sent_at, ref=0x5A, ref_bits=ref_bits)
    line.modem.deliver_pdu(part2)
    # Part 2 alone is committed and deleted from the SIM, but nothing reaches the hub.
    wait_until(lambda: len(line.modem.events("deleted")) == 1, 10, "part 2 read and deleted")
    assert records(hub) == {}
    line.modem.deliver_pdu(part1)

    msg_id = message_id(line.iccid, [part1, part2])
    wait_until(lambda: msg_id in records(hub), 10, "the reassembled message at the hub")
    wait_until(line.empty, 5, "the SIM emptied", detail=farm.storage)
    got = records(hub)
    assert list(got) == [msg_id]
    body = got[msg_id]["body"]
    assert body["text"] == text
    assert body["from"] == "VKcom"
    assert body["parts"] == 2 and body["complete"] is True
    assert body["sent_at"] == "2026-11-26T15:01:09+03:00"
    assert got[msg_id]["count"] == 1


def test_user_data_longer_than_udl_reaches_the_hub_decoded_and_flagged(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """A network that sends more user data than TP-UDL announces (Gammu's Spanish operator
    vector: 53 septets declared, 88 carried), and the UCS2 and 8-bit analogues: each reaches
    the hub once as the text TP-UDL announces (not as hex, no ``undecodable`` marker), flagged
    ``malformed`` with every TPDU byte in ``raw``, under the §4 id of the whole TPDU."""
    line = farm.add("ec25", "pty")
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid])

    t = datetime(2011, 3, 4, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    spanish = (
        "Movistar: Su recarga de 10 EUR se ha realizado. Saldo actual: 15,20 EUR. Gracias, adios."
    )
    assert len(spanish) == 88
    ucs2 = "Ваш код подтверждения: 4711. Никому его не сообщайте."
    cases = {
        "gsm7": (with_udl(encode_deliver("Movistar", spanish, sent_at=t), 53), spanish[:53]),
        "ucs2": (with_udl(encode_deliver("Bank", ucs2, sent_at=t, encoding="ucs2"), 40), ucs2[:20]),
        "8bit": (
            with_udl(
                encode_deliver("+34600000000", sent_at=t, encoding="8bit", data=bytes(range(30))),
                12,
            ),
            bytes(range(12)).hex().upper(),
        ),
    }
    ids = {}
    for kind, (pdu, _text) in cases.items():
        assert line.modem.deliver_pdu(pdu) is not None
        ids[kind] = message_id(line.iccid, [pdu])
    wait_until(lambda: set(ids.values()) <= set(records(hub)), 15, "the three messages")
    got = records(hub)
    for kind, (pdu, text) in cases.items():
        rec = got[ids[kind]]
        body = rec["body"]
        assert rec["count"] == 1, kind
        assert body["text"] == text, kind
        assert body["complete"] is True, kind
        assert body.get("encoding") == ("8bit" if kind == "8bit" else None), kind
        assert "more than TP-UDL" in body["malformed"], kind
        assert body["raw"] == [tpdu(pdu).hex().upper()], kind
        assert body["sent_at"] == "2011-03-04T12:00:00+01:00", kind
    assert len(got) == 3
    wait_until(line.empty, 10, "the SIM emptied", detail=farm.storage)
    assert any(e.get("event") == "at.pdu_malformed" for e in agent.events())
