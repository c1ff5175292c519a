"""Stored PDU -> SmsPart mapping and ack tokens."""

from __future__ import annotations

from drivers.at import sms
from drivers.at.commands import StoredPdu
from drivers.base import Encoding
from tests.drivers.at.emu import WHEN
from tests.support.pdu_encoder import encode_deliver, encode_status_report

PDU = encode_deliver("+79001234567", "hello", sent_at=WHEN, flash=True)


def test_deliver_maps_every_field() -> None:
    token = sms.token_for("pool/3", "8970100000000000001", "SM", StoredPdu(5, 0, PDU))
    decoded = sms.decode("pool/3", "8970100000000000001", PDU, token)
    part = decoded.part
    assert decoded.error is None and part is not None
    assert (part.port, part.iccid, part.sender, part.sent_at) == (
        "pool/3",
        "8970100000000000001",
        "+79001234567",
        WHEN,
    )
    assert part.text == "hello" and part.encoding is Encoding.GSM7 and part.flash
    raw = bytes.fromhex(PDU)
    assert part.raw == raw[1 + raw[0] :]  # the TPDU: the SMSC field is not part of the id
    assert part.ack_token == token
    assert (token.port, token.location, token.storage) == ("pool/3", 5, "SM")


def test_digest_identifies_content_not_case() -> None:
    assert sms.digest(PDU) == sms.digest(PDU.lower()) != sms.digest(PDU[:-2] + "00")


def test_status_report_gives_no_part() -> None:
    report = encode_status_report("+79001234567", message_ref=1, sent_at=WHEN)
    assert sms.decode("p/0", "89", report, None) == sms.Decoded(None, None)


def test_garbage_is_forwarded_undecodable_with_the_same_raw_as_a_tpdu() -> None:
    decoded = sms.decode("p/0", "89", "0791", None)
    assert decoded.part is not None and decoded.error
    assert decoded.part.encoding is Encoding.UNDECODABLE
    not_hex = sms.decode("p/0", "89", "NOT HEX AT ALL", None)
    assert not_hex.part is not None and not_hex.part.raw == b"NOT HEX AT ALL"
    assert not_hex.part.ack_token[0] == "unstored"  # type: ignore[index]
