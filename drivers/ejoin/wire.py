"""Parsing the Ejoin wire: dev-status, SMS pages, eSIM lists and command replies (pure).

Owns the tolerant reading of every shape research/gateways.md documents and nothing else:

* ports as ``"1.01"`` (status and SMS rows) or ``"1A"`` (commands, some firmware's rows), and a
  bare ``"3"`` / ``3`` on one-slot firmware (section 1.2);
* ``max-slot`` (captured firmware) or ``max-slots`` (v2.4.0), section 1.3;
* ``st`` as an integer or ``"3 Registered"``: only the leading integer counts (section 1.2,
  texts vary by firmware);
* ``opr`` "0 " (or empty) as unknown, otherwise an MCC-MNC token and a name in either order;
* ``sig`` as a 0..31 CSQ-like value (0 and 99 unknown) converted to dBm (TS 27.007 8.5) [U:
  the research does not give the scale; 0..31 matches the captured example];
* ``sn`` only when it is E.164 with a ``+`` (a bare national number is not guessed, as the AT
  driver does not guess one);
* SMS rows ``[is_report, port, epoch, sender, recipient, base64]`` (section 1.4).

A malformed element is skipped (or kept as ``None`` where its position matters), never fatal:
a box's answer is hostile input.  Integers longer than 18 digits count as absent, and whatever
else a parser cannot read raises :class:`WireError`, never a raw exception.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from drivers.ejoin.client import box_reason

_NUMBER_RE = re.compile(r"^\+[1-9]\d{6,14}$")
_PORT_DOT_RE = re.compile(r"^\s*(\d{1,3})\.(\d{1,2})\s*$")
_PORT_LETTER_RE = re.compile(r"^\s*(\d{1,3})([A-Za-z])\s*$")
_PORT_BARE_RE = re.compile(r"^\s*(\d{1,3})\s*$")
_LEADING_INT_RE = re.compile(r"^\s*(-?\d+)")
_MAX_DIGITS = 18  # longer integers are garbage (and int() of >4300 digits raises)

#: st codes in which the active SIM is on the network (section 1.3: 3 registered, 4 in a call,
#: 5 registered with a balance alarm).
REGISTERED_ST = frozenset({3, 4, 5})
USER_LOCKED_ST = 12


class WireError(ValueError):
    """A document is unusable as a whole (not an object, no status list)."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _wire_errors(parse: Callable[_P, _R]) -> Callable[_P, _R]:
    """Anything a parser did not foresee in a hostile answer becomes a :class:`WireError`."""

    @functools.wraps(parse)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return parse(*args, **kwargs)
        except WireError:
            raise
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, RecursionError) as exc:
            raise WireError(f"malformed answer ({type(exc).__name__})") from None

    return wrapper


def parse_port(value: Any) -> tuple[int, int] | None:
    """``"1.01"`` / ``"1A"`` / ``"1"`` / ``1`` -> (port, slot), slot 1 for a bare port."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, 1) if value > 0 else None
    if not isinstance(value, str):
        return None
    if m := _PORT_DOT_RE.match(value):
        port, slot = int(m[1]), int(m[2])
    elif m := _PORT_LETTER_RE.match(value):
        port, slot = int(m[1]), ord(m[2].upper()) - 64
    elif m := _PORT_BARE_RE.match(value):
        port, slot = int(m[1]), 1
    else:
        return None
    return (port, slot) if port > 0 and slot > 0 else None


def letter_port(port: int, slot: int) -> str:
    """The command notation of section 1.2 (``"3B"``): A = slot 1.  Slots beyond Z do not
    exist on known boxes (32 slots max would need two letters), so the dotted form is used
    there."""
    return f"{port}{chr(64 + slot)}" if 1 <= slot <= 26 else dot_port(port, slot)


def dot_port(port: int, slot: int) -> str:
    return f"{port}.{slot:02d}"


def leading_int(value: Any) -> int | None:
    """``3``, ``"3"``, ``"3 Registered"``, ``"0 OK"`` -> the integer; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < 10**_MAX_DIGITS else None
    if isinstance(value, str) and (m := _LEADING_INT_RE.match(value)):
        digits = m[1].lstrip("-")
        return int(m[1]) if len(digits) <= _MAX_DIGITS else None
    return None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _flag(row: dict[str, Any], key: str, default: bool) -> bool:
    v = leading_int(row.get(key))
    return default if v is None else v != 0


@dataclass(frozen=True, slots=True)
class SlotStatus:
    port: int
    slot: int
    iccid: str | None
    imsi: str | None
    number: str | None
    operator: str | None
    mcc_mnc: str | None
    signal_dbm: int | None
    st: int | None
    active: bool
    locked: bool
    balance: float | None

    @property
    def registered(self) -> bool:
        return self.active and self.st in REGISTERED_ST


@dataclass(frozen=True, slots=True)
class DevStatus:
    mac: str | None
    firmware: str | None
    model: str | None
    max_ports: int | None
    max_slots: int
    slots: list[SlotStatus] = field(default_factory=list)
    skipped: int = 0  # malformed rows


def _operator(opr: str) -> tuple[str | None, str | None]:
    tokens = opr.split()
    mcc_mnc = next((t for t in tokens if t.isdigit() and len(t) in (5, 6)), None)
    name = " ".join(t for t in tokens if t != mcc_mnc and t != "0") or None
    return name, mcc_mnc


def _signal(value: Any) -> int | None:
    sig = leading_int(value)
    if sig is None or not 1 <= sig <= 31:
        return None
    return -113 + 2 * sig


def _balance(value: Any) -> float | None:
    try:
        amount = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return amount if amount == amount and abs(amount) < 1e9 else None  # not NaN, sane


@_wire_errors
def parse_status(doc: Any) -> DevStatus:
    """A ``dev-status`` document (``goip_get_status.html?all_slots=1``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), list):
        raise WireError("status answer has no 'status' list")
    slots: list[SlotStatus] = []
    skipped = 0
    for row in doc["status"]:
        if not isinstance(row, dict) or (where := parse_port(row.get("port"))) is None:
            skipped += 1
            continue
        st = leading_int(row.get("st"))
        iccid = _text(row.get("iccid"))
        inserted = _flag(row, "inserted", bool(iccid) and st != 0)
        has_sim = inserted and bool(iccid) and iccid.isalnum() and len(iccid) <= 22
        name, mcc_mnc = _operator(_text(row.get("opr")))
        sn = _text(row.get("sn"))
        slots.append(
            SlotStatus(
                port=where[0],
                slot=where[1],
                iccid=iccid if has_sim else None,
                imsi=_text(row.get("imsi")) or None,
                number=sn if _NUMBER_RE.match(sn) else None,
                operator=name,
                mcc_mnc=mcc_mnc,
                signal_dbm=_signal(row.get("sig")),
                st=st,
                # One-slot firmware (no all_slots fields): the only row is the active one.
                active=_flag(row, "active", True),
                locked=st == USER_LOCKED_ST or not _flag(row, "slot_active", True),
                balance=_balance(row.get("bal")),
            )
        )
    max_slots = leading_int(doc.get("max-slots", doc.get("max-slot")))
    if max_slots is None or max_slots < 1:
        max_slots = max((s.slot for s in slots), default=1)
    ver = doc.get("ver")
    return DevStatus(
        mac=_text(doc.get("mac")).lower() or None,
        firmware=ver if isinstance(ver, str) else None,
        model=_text(doc.get("model")) or None,
        max_ports=leading_int(doc.get("max-ports")),
        max_slots=max_slots,
        slots=slots,
        skipped=skipped,
    )


@dataclass(frozen=True, slots=True)
class SmsRow:
    is_report: bool
    port: int
    slot: int
    epoch: int
    sender: str
    recipient: str
    text: str


@dataclass(frozen=True, slots=True)
class SmsPage:
    ssrc: str
    next_sms: int | None
    rows: list[SmsRow | None]  # None: a malformed row (its position still counts)


def _decode_content(content: str) -> str:
    """Base64 of UTF-8 (section 1.4).  Content that is not valid base64 is kept as the text
    it is (better a raw text at the hub than a lost SMS)."""
    try:
        return base64.b64decode(content, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return content


def parse_sms_row(row: Any) -> SmsRow | None:
    if not isinstance(row, list) or len(row) < 6:
        return None
    is_report = leading_int(row[0])
    where = parse_port(row[1])
    epoch = leading_int(row[2])
    if is_report is None or where is None or epoch is None:
        return None
    try:  # str() of a >4300-digit integer raises
        sender, recipient, content = (v if isinstance(v, str) else str(v) for v in row[3:6])
    except ValueError:
        return None
    text = content if is_report else _decode_content(content)
    return SmsRow(bool(is_report), where[0], where[1], epoch, sender, recipient, text)


@_wire_errors
def parse_sms_page(doc: Any, reason: Callable[[Any], str] = box_reason) -> SmsPage:
    """A ``goip_get_sms.html`` answer; ``reason`` makes the box's reason text safe (the
    client's :meth:`~drivers.ejoin.client.EjoinClient.reason`)."""
    if not isinstance(doc, dict):
        raise WireError("SMS answer is not an object")
    code = leading_int(doc.get("code"))
    if code not in (0, 200):
        raise WireError(f"SMS read refused: {reason(doc.get('reason')) or f'code {code}'}")
    ssrc = doc.get("ssrc")
    if not isinstance(ssrc, str | int) or isinstance(ssrc, bool) or not str(ssrc).strip():
        raise WireError("SMS answer has no 'ssrc'")
    data = doc.get("data")
    if data is None:
        data = []
    if not isinstance(data, list):
        raise WireError("SMS answer's 'data' is not a list")
    nxt = leading_int(doc.get("next_sms"))
    return SmsPage(str(ssrc).strip()[:64], nxt, [parse_sms_row(r) for r in data])


@dataclass(frozen=True, slots=True)
class Profile:
    slot: int
    iccid: str | None
    enabled: bool
    op: int  # 0 none, 1 writing, 2 deleting
    status: int  # 0 none, 1 submitted, 2 in progress, 3 error
    reason: str


@dataclass(frozen=True, slots=True)
class EsimPort:
    port: int
    eid: str | None
    profiles: dict[int, Profile]


@_wire_errors
def parse_esims(doc: Any, reason: Callable[[Any], str] = box_reason) -> dict[int, EsimPort]:
    """A ``goip_get_esims.html`` answer (section 1.8); ports without an eUICC are absent."""
    if not isinstance(doc, dict):
        raise WireError("eSIM answer is not an object")
    code = leading_int(doc.get("code"))
    if code not in (0, 200):
        raise WireError(f"eSIM query refused: {reason(doc.get('reason')) or f'code {code}'}")
    out: dict[int, EsimPort] = {}
    ports = doc.get("ports")
    for p in ports if isinstance(ports, list) else []:
        if not isinstance(p, dict) or (port := leading_int(p.get("port"))) is None:
            continue
        profiles: dict[int, Profile] = {}
        raw_profiles = p.get("profiles")
        for pr in raw_profiles if isinstance(raw_profiles, list) else []:
            if not isinstance(pr, dict) or (slot := leading_int(pr.get("slot"))) is None:
                continue
            iccid = _text(pr.get("iccid"))
            profiles[slot] = Profile(
                slot=slot,
                iccid=iccid if iccid.isalnum() else None,
                enabled=_flag(pr, "enabled", False),
                op=leading_int(pr.get("op")) or 0,
                status=leading_int(pr.get("status")) or 0,
                reason=reason(pr.get("reason")),
            )
        out[port] = EsimPort(port, _text(p.get("eid")) or None, profiles)
    return out


@_wire_errors
def check_reply(doc: Any, what: str, reason: Callable[[Any], str] = box_reason) -> None:
    """A command reply: ``code`` 200, or 0 (``op=set``, AT) means done (section 1.2); anything
    else raises :class:`WireError` with the box's reason."""
    if not isinstance(doc, dict):
        raise WireError(f"{what}: reply is not an object")
    code = leading_int(doc.get("code"))
    if code in (0, 200):
        return
    why = reason(doc.get("reason")) or reason(doc.get("desc")) or f"code {code}"
    raise WireError(f"{what} refused by the gateway: {why}")
