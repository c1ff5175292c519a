"""Property tests: encoder -> parse_pdu round-trips, concatenation, fuzzing (PduError only)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.at.pdu import Deliver, PduError, StatusReport, parse_pdu, raw_tpdu
from drivers.base import Concat, Encoding
from tests.drivers.at.test_pdu import VECTORS
from tests.support.pdu_encoder import (
    GSM7_BASIC_CHARS,
    GSM7_EXTENSION_CHARS,
    encode_deliver,
    encode_status_report,
    gsm7_septets,
    split_message,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIGITS = "0123456789"
GSM7_CHARS = GSM7_BASIC_CHARS + GSM7_EXTENSION_CHARS

gsm7_text = st.text(alphabet=GSM7_CHARS, max_size=70)  # <= 140 septets: fits with any concat
ucs2_char = st.one_of(
    st.characters(min_codepoint=0x400, max_codepoint=0x4FF),  # Cyrillic
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji (surrogate pairs)
    st.characters(codec="utf-8", exclude_categories=["Cs"]),
)
ucs2_text = st.text(alphabet=ucs2_char, max_size=30)  # <= 60 UTF-16 units

international = st.text(DIGITS, min_size=1, max_size=20).map(lambda d: "+" + d)
national = st.text(DIGITS, min_size=1, max_size=20)
alphanumeric = (
    st.text(alphabet=GSM7_CHARS, min_size=1, max_size=11)
    .filter(lambda s: len(gsm7_septets(s)) <= 11)
    .filter(lambda s: any(c not in "+" + DIGITS for c in s))
)
sender = st.one_of(international, national, alphanumeric)
smsc = st.one_of(st.none(), st.text(DIGITS, min_size=1, max_size=20).map(lambda d: "+" + d))
quarters = st.integers(min_value=-48, max_value=56)
naive_time = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(microsecond=0))


@st.composite
def sent_at(draw: st.DrawFn, last_year: int = 2099) -> datetime:
    zone = timezone(timedelta(minutes=15 * draw(quarters)))
    naive = draw(naive_time.filter(lambda d: d.year <= last_year))
    return naive.replace(tzinfo=zone)


@st.composite
def concat(draw: st.DrawFn) -> tuple[int, int, int, int] | None:
    if draw(st.booleans()):
        return None
    bits = draw(st.sampled_from([8, 16]))
    ref = draw(st.integers(0, (1 << bits) - 1))
    total = draw(st.integers(1, 255))
    part = draw(st.integers(1, total))
    return (ref, part, total, bits)


def check(msg, *, sender, when, smsc, pid, concat, flash, encoding, text="", data=b""):
    assert isinstance(msg, Deliver)
    assert msg.sender == sender
    assert msg.sent_at == when
    assert msg.sent_at.utcoffset() == when.utcoffset()
    assert msg.smsc == smsc
    assert msg.pid == pid
    assert msg.encoding is encoding
    assert msg.text == text
    assert msg.data == data
    assert msg.flash is flash
    assert msg.concat == (None if concat is None else Concat(*concat))


@FAST
@given(gsm7_text, sender, sent_at(), smsc, concat(), st.booleans(), st.integers(0, 255))
def test_gsm7_round_trip(text, who, when, sc, cc, flash, pid):
    pdu = encode_deliver(who, text, sent_at=when, smsc=sc, concat=cc, flash=flash, pid=pid)
    msg = parse_pdu(pdu)
    check(
        msg,
        sender=who,
        when=when,
        smsc=sc,
        pid=pid,
        concat=cc,
        flash=flash,
        encoding=Encoding.GSM7,
        text=text,
    )
    raw = bytes.fromhex(pdu)
    assert msg.tpdu == raw[1 + raw[0] :]
    assert parse_pdu(msg.tpdu, has_smsc=False) == replace(msg, smsc=None)


@FAST
@given(ucs2_text, sender, sent_at(), smsc, concat(), st.booleans())
def test_ucs2_round_trip(text, who, when, sc, cc, flash):
    pdu = encode_deliver(who, text, sent_at=when, smsc=sc, concat=cc, flash=flash, encoding="ucs2")
    check(
        parse_pdu(pdu),
        sender=who,
        when=when,
        smsc=sc,
        pid=0,
        concat=cc,
        flash=flash,
        encoding=Encoding.UCS2,
        data=text.encode("utf-16-be"),
    )


@FAST
@given(st.binary(max_size=133), sender, sent_at(), concat(), st.booleans())
def test_8bit_round_trip(data, who, when, cc, flash):
    pdu = encode_deliver(who, sent_at=when, concat=cc, flash=flash, encoding="8bit", data=data)
    check(
        parse_pdu(pdu),
        sender=who,
        when=when,
        smsc="+79168999100",
        pid=0,
        concat=cc,
        flash=flash,
        encoding=Encoding.BINARY,
        data=data,
    )


@FAST
@given(
    st.text(alphabet=GSM7_CHARS, max_size=500),
    st.integers(0, 65535),
    st.sampled_from([8, 16]),
    sent_at(),
)
def test_split_gsm7_text_reassembles(text, ref, bits, when):
    ref &= (1 << bits) - 1
    parts = [
        parse_pdu(p) for p in split_message("+7900", text, sent_at=when, ref=ref, ref_bits=bits)
    ]
    assert "".join(p.text for p in parts) == text
    if len(parts) == 1:
        assert parts[0].concat is None
        assert len(gsm7_septets(text)) <= 160
    else:
        assert [p.concat for p in parts] == [
            Concat(ref, i, len(parts), bits) for i in range(1, len(parts) + 1)
        ]
        # Every part but the last is full (a split ESC pair may leave one septet free).
        per_part = 153 if bits == 8 else 152
        for p in parts[:-1]:
            assert per_part - 1 <= len(gsm7_septets(p.text)) <= per_part


@FAST
@given(
    st.text(alphabet=ucs2_char, max_size=150),
    st.sampled_from([8, 16]),
    st.booleans(),
    sent_at(),
)
def test_split_ucs2_text_reassembles(text, bits, split_surrogates, when):
    pdus = split_message(
        "Bank",
        text,
        sent_at=when,
        ref=200,
        ref_bits=bits,
        encoding="ucs2",
        split_surrogates=split_surrogates,
    )
    parts = [parse_pdu(p) for p in pdus]
    joined = b"".join(p.data for p in parts)
    assert joined.decode("utf-16-be") == text
    per_part = 67 if bits == 8 else 66
    for p in parts[:-1]:
        assert len(p.data) // 2 in (per_part, per_part - 1)
        if not split_surrogates:
            p.data.decode("utf-16-be")  # no lone surrogate in any part


def test_emoji_split_across_two_parts():
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    text = "a" * 66 + "\N{GRINNING FACE}" + "b" * 10  # 66 units, then D83D DE00 at 66..67
    one, two = (
        parse_pdu(p)
        for p in split_message(
            "+79001234567", text, sent_at=when, ref=0x42, encoding="ucs2", split_surrogates=True
        )
    )
    assert one.concat == Concat(0x42, 1, 2, 8)
    assert two.concat == Concat(0x42, 2, 2, 8)
    assert one.data == "a".encode("utf-16-be") * 66 + b"\xd8\x3d"
    assert two.data == b"\xde\x00" + "b".encode("utf-16-be") * 10
    with pytest.raises(UnicodeDecodeError):
        one.data.decode("utf-16-be")  # a part alone is not text: the core must join first
    assert (one.data + two.data).decode("utf-16-be") == text
    # Without the flag the encoder keeps the pair whole, like a careful phone.
    one, two = (
        parse_pdu(p)
        for p in split_message("+79001234567", text, sent_at=when, ref=0x42, encoding="ucs2")
    )
    assert one.data == "a".encode("utf-16-be") * 66
    assert two.data.decode("utf-16-be") == text[66:]


# ---------------------------------------------------------------------------------------------
# Fuzzing: any input gives a result or a PduError, never another exception.


def parse_or_error(data: str | bytes, has_smsc: bool = True) -> Deliver | StatusReport | None:
    try:
        msg = parse_pdu(data, has_smsc=has_smsc)
    except PduError as exc:
        assert not str(exc).startswith("internal decoder error"), str(exc)
        assert isinstance(raw_tpdu(data, has_smsc=has_smsc), bytes)
        return None
    assert raw_tpdu(data, has_smsc=has_smsc) == msg.tpdu
    return msg


FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_random_bytes(data, has_smsc):
    parse_or_error(data, has_smsc)
    parse_or_error(data.hex(), has_smsc)


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_random_text(text):
    parse_or_error(text)


@st.composite
def near_valid_tpdu(draw: st.DrawFn) -> bytes:
    """A TPDU with a valid address and SCTS, random first octet / DCS / UDL / UD: reaches the
    user data header and the decoders far more often than random bytes."""
    first = draw(st.integers(0, 255)) & ~0x03 | draw(st.sampled_from([0, 0, 0, 2]))
    oa = bytes.fromhex(draw(st.sampled_from(["0B919746121611F1", "0DD0CDF2396C7EBB01", "0081"])))
    dcs = draw(st.integers(0, 255))
    scts = bytes.fromhex("81117002122223")
    udl = draw(st.integers(0, 255))
    size = (udl * 7 + 7) // 8 if draw(st.booleans()) else udl
    size = max(0, size + draw(st.sampled_from([0, 0, 0, -1, 1])))
    ud = draw(st.binary(min_size=size, max_size=size))
    if ud and draw(st.booleans()):
        ud = bytes([draw(st.integers(0, min(len(ud), 20)))]) + ud[1:]  # plausible UDHL
    return bytes([first]) + oa + bytes([0, dcs]) + scts + bytes([udl]) + ud


@FUZZ
@given(near_valid_tpdu())
def test_fuzz_near_valid_tpdus(tpdu):
    msg = parse_or_error(tpdu, has_smsc=False)
    if isinstance(msg, Deliver):
        assert msg.tpdu == tpdu
        assert msg.encoding in (Encoding.GSM7, Encoding.UCS2, Encoding.BINARY)


@FUZZ
@given(st.sampled_from([v[1] for v in VECTORS]), st.data())
def test_fuzz_mutated_vectors(vector, data):
    raw = bytearray.fromhex(vector)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "set" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw.insert(at, data.draw(st.integers(0, 255)))
        elif op == "delete" and raw:
            del raw[at]
        else:
            del raw[at:]
    parse_or_error(bytes(raw))


@FAST
@given(international, st.integers(0, 255), st.integers(0, 255), sent_at(), sent_at())
def test_status_report_round_trip(who, ref, status, when, done):
    msg = parse_pdu(
        encode_status_report(who, message_ref=ref, status=status, sent_at=when, discharged_at=done)
    )
    assert isinstance(msg, StatusReport)
    assert (msg.recipient, msg.message_ref, msg.status) == (who, ref, status)


@FAST
@given(st.integers(-79, 79), naive_time)
def test_every_encodable_time_zone_decodes(q, naive):
    when = naive.replace(tzinfo=timezone(timedelta(minutes=15 * q)))
    msg = parse_pdu(encode_deliver("+1", "t", sent_at=when))
    assert msg.sent_at == when
    assert msg.sent_at.utcoffset() == timedelta(minutes=15 * q)
