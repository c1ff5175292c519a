"""The GoIP wire parser on the quirks of research/gateways.md section 2 and on hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.goip import wire
from drivers.goip.line import Line, clean_iccid, clean_number

# The newer firmware's keepalive as published in a client library's test samples (section 2.2).
KEEPALIVE = (
    b"req:27;id:gateway_name;pass:gateway_password;num:;signal:29;gsm_status:LOGIN;"
    b"voip_status:LOGOUT;voip_state:IDLE;remain_time:-1;imei:867495023958030;"
    b"imsi:260060172091324;iccid:89480611000720913242;pro:POL;idle:11;disable_status:0;"
    b"SMS_LOGIN:N;SMB_LOGIN:;CELLINFO:LAC:7E5,CELL ID:5E5B;CGATT:Y;"
)


def test_keepalive_fields_split_at_the_first_colon() -> None:
    msg = wire.parse(KEEPALIVE)
    assert isinstance(msg, wire.Keepalive)
    assert (msg.count, msg.line, msg.password) == ("27", "gateway_name", "gateway_password")
    assert msg.fields["CELLINFO"] == "LAC:7E5,CELL ID:5E5B" and msg.fields["num"] == ""
    assert wire.keepalive_ack(msg.count) == b"reg:27;status:200;"
    info = Line("gateway_name", "gateway_password", "g/gateway_name").sim_info(msg.fields)
    assert info is not None and info.iccid == "89480611000720913242"
    assert info.number is None and info.operator == "POL" and info.signal_dbm == -55
    assert info.registered and info.radio_on and info.imsi == "260060172091324"


def test_receive_takes_msg_verbatim_and_accepts_pass() -> None:
    msg = wire.parse(b"RECEIVE:1270197307;id:goip01;pass:pw;srcnum:+7900;msg:a;b:c; msg:d\n")
    assert isinstance(msg, wire.Push) and msg.kind == "RECEIVE"
    assert msg.recvid == "1270197307" and msg.password == "pw" and msg.msg == "a;b:c; msg:d"
    assert wire.push_ack("RECEIVE", msg.recvid) == b"RECEIVE 1270197307 OK"
    bad = wire.parse(b"RECEIVE:5;id:x;password:p;srcnum:1;msg:\xff\xfe ok")
    assert isinstance(bad, wire.Push) and bad.msg is not None
    assert wire.exact_bytes(bad.msg) == b"\xff\xfe ok"  # the raw bytes survive for the id
    assert wire.readable(bad.msg) == "\ufffd\ufffd ok"


def test_other_pushes_and_replies() -> None:
    state = wire.parse(b"STATE:446;id:c1;password:p;gsm_remain_state:IDEL")
    assert isinstance(state, wire.Push) and state.kind == "STATE" and state.msg is None
    reply = wire.parse(b"USSD 12 Balance: 10.00; bye")
    assert reply == wire.Reply("USSD", 12, "Balance: 10.00; bye")
    assert wire.parse(b"ERROR 13 password error") == wire.Reply("ERROR", 13, "password error")
    assert wire.command("module_ctl_i", 7, "2", "pw") == b"module_ctl_i 7 2 pw"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"req:;id:a;pass:b;",  # no count
        b"req:1;pass:b;",  # no id
        b"req:1;id:a;",  # no password
        b"RECEIVE:1;id:a;password:b;srcnum:1",  # no msg
        b"RECEIVE:99999999999999999999999;id:a;password:b;msg:x",  # absurd recvid
        b"HELLO:1;id:a;password:b;",
        b"ok 12x",
        b"x" * (wire.MAX_DATAGRAM + 1),
    ],
)
def test_malformed_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.parse(data)


@given(st.binary(max_size=600))
def test_parse_never_raises_anything_else(data: bytes) -> None:
    try:
        wire.parse(data)
    except wire.WireError:
        pass


def test_identity_cleaning() -> None:
    assert clean_iccid("00000000000000000000") is None  # a module without a SIM
    assert clean_iccid("8970101234567890123F") == "8970101234567890123"
    assert clean_iccid("89abc") is None and clean_iccid("") is None
    assert clean_number("+79001234567") == "+79001234567"
    assert clean_number("89001234567") == "89001234567"  # kept as given (no country known)
    assert clean_number("unknown") is None and clean_number("") is None
