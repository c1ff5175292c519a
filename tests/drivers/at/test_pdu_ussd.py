"""decode_ussd: +CUSD payloads (TS 27.007 7.15) by their cell broadcast DCS (TS 23.038 clause 5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.at.pdu import PduError, decode_ussd
from tests.drivers.at.test_pdu_properties import GSM7_CHARS
from tests.support.pdu_encoder import gsm7_septets, pack_septets


def packed(text: str, pad: list[int] | None = None) -> str:
    septets = gsm7_septets(text) + (pad or [])
    return pack_septets(septets)[0].hex().upper()


@pytest.mark.parametrize(
    ("payload", "dcs", "text"),
    [
        ("C8329BFD06", 15, "Hello"),  # packed GSM 7 bit as hex
        ("c8329bfd06", 0x0F, "Hello"),  # any case
        ("AA180C3602", 15, "*100#"),
        ("Balance: 100.50 RUB", 15, "Balance: 100.50 RUB"),  # the modem already decoded it
        ("Hello", 15, "Hello"),  # odd length: not hex, so text
        ("C8329BFD06", 0x00, "Hello"),  # 0000 xxxx languages, GSM 7 bit
        ("C8329BFD06", 0x01, "Hello"),
        ("C8329BFD06", 0x20, "Hello"),  # 0010 xxxx languages
        ("C8329BFD06", 0x31, "Hello"),  # 0011 xxxx other languages, GSM 7 bit
        ("C8329BFD06", 0x40, "Hello"),  # 01xx general data coding, GSM 7 bit
        ("C8329BFD06", 0xF0, "Hello"),  # 1111 data coding / message handling
        ("04110430043B0430043D0441002000310030003000200440002E", 72, "Баланс 100 р."),
        ("04110430043B0430043D0441002000310030003000200440002E", 0x48, "Баланс 100 р."),
        ("Баланс 100 р.", 72, "Баланс 100 р."),  # already text
        ("D83DDE00", 72, "\N{GRINNING FACE}"),
        ("48656C6C6F", 68, "Hello"),  # 8-bit data, octets 1:1
        ("E9FF", 0x44, "\u00e9\u00ff"),
        ("48656C6C6F", 0xF4, "Hello"),
        ("", 15, ""),
        ("", 72, ""),
    ],
)
def test_decode_ussd(payload, dcs, text):
    assert decode_ussd(payload, dcs) == text


def test_gsm7_padding_at_the_end():
    # TS 23.038 6.1.2.3.1: 7 chars leave 7 spare bits, filled with CR; some networks send zeros.
    assert packed("ABCDEFG", [0x0D]) == "41E19058341E1B"
    assert decode_ussd("41E19058341E1B", 15) == "ABCDEFG"
    assert decode_ussd(packed("ABCDEFG"), 15) == "ABCDEFG"  # zero bits, not "@"
    # An intended final CR on an octet boundary is sent doubled; one is removed.
    assert decode_ussd(packed("ABCDEF\r", [0x0D]), 15) == "ABCDEF\r"
    # Trade-off: a real "@" as the 8th character reads as zero padding and is dropped.
    assert decode_ussd(packed("ABCDEFG@"), 15) == "ABCDEFG"
    # 6 chars (42 bits in 6 octets) have 6 spare bits: nothing to strip.
    assert decode_ussd(packed("ABCDE@"), 15) == "ABCDE@"
    assert decode_ussd(packed("ABCDEFGHIJKLMNO", [0x0D]), 15) == "ABCDEFGHIJKLMNO"  # 15 + CR


def test_language_prefixed_dcs():
    # 0001 0000: GSM 7 bit, "ll" + CR first; 0001 0001: 2 packed letters (2 octets), then UCS2.
    assert decode_ussd(packed("en\rHello"), 0x10) == "Hello"
    assert decode_ussd("en\rHello", 0x10) == "Hello"
    assert decode_ussd("6537" + "00480069", 0x11) == "Hi"


def test_as_hex_overrides_the_guess():
    # Auto mode must guess: an all-hex reply such as "1000" is read as packed septets.
    assert decode_ussd("1000", 15) != "1000"
    assert decode_ussd("1000", 15, as_hex=False) == "1000"
    assert decode_ussd("C8329BFD06", 15, as_hex=True) == "Hello"
    with pytest.raises(PduError, match="not hex"):
        decode_ussd("Hello", 15, as_hex=True)
    with pytest.raises(PduError, match="not hex"):
        decode_ussd("041", 72, as_hex=True)


@pytest.mark.parametrize(
    ("payload", "dcs", "match"),
    [
        ("00", 0x12, "reserved"),
        ("00", 0x1F, "reserved"),
        ("00", 0x4C, "reserved alphabet"),
        ("00", 0x60, "compressed"),
        ("00", 0x80, "reserved"),
        ("00", 0x90, "reserved"),  # message with UDH: not a USSD coding
        ("00", 0xA5, "reserved"),
        ("00", 0xE0, "reserved"),  # WAP
        ("00", 256, "bad USSD"),
        ("00", -1, "bad USSD"),
        ("D800", 72, "does not decode"),  # lone high surrogate
    ],
)
def test_undecodable_ussd(payload, dcs, match):
    with pytest.raises(PduError, match=match):
        decode_ussd(payload, dcs)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=GSM7_CHARS, max_size=182))
def test_packed_gsm7_round_trip(text):
    hexed = packed(text)
    got = decode_ussd(hexed, 15, as_hex=True)
    # Only the documented ambiguity: a final "@" or CR in the 8n-th position.
    if len(gsm7_septets(text)) % 8 == 0 and text[-1:] in ("@", "\r"):
        assert got == text[:-1]
    else:
        assert got == text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.binary(max_size=40).map(bytes.hex)), st.integers())
def test_fuzz_only_pdu_error(payload, dcs):
    for as_hex in (None, True, False):
        try:
            decode_ussd(payload, dcs, as_hex=as_hex)
        except PduError:
            pass
