"""Test-side SMS-DELIVER / SMS-STATUS-REPORT encoder (TS 23.040 9.2.2.1, 9.2.2.3).

Written independently of ``drivers.at.pdu`` (own tables, own bit packing: a list of bits
rather than integer shifts) so that encode -> ``parse_pdu`` round-trips test something.  The
modem emulator and other tests use it to produce what ``+CMGR`` prints.

    encode_deliver("+79001234567", "Hi", sent_at=datetime(..., tzinfo=...))  -> hex PDU
    split_message(sender, long_text, sent_at=..., ref=7)                      -> [hex PDU, ...]

Senders: "+digits" is international (TOA 0x91), plain digits are TON unknown / ISDN (0x81),
anything else is alphanumeric (TOA 0xD0, GSM 7 bit packed).  ``sender_toa`` overrides this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

# TS 23.038 6.2.1, written out by Unicode name so it can be checked against the standard
# independently of drivers/at/gsm7.py.  Index = septet value; None = ESC (0x1B).
_BASIC: tuple[str | None, ...] = (
    *("@", "\N{POUND SIGN}", "$", "\N{YEN SIGN}"),
    *("\N{LATIN SMALL LETTER E WITH GRAVE}", "\N{LATIN SMALL LETTER E WITH ACUTE}"),
    *("\N{LATIN SMALL LETTER U WITH GRAVE}", "\N{LATIN SMALL LETTER I WITH GRAVE}"),
    *("\N{LATIN SMALL LETTER O WITH GRAVE}", "\N{LATIN CAPITAL LETTER C WITH CEDILLA}"),
    *("\n", "\N{LATIN CAPITAL LETTER O WITH STROKE}", "\N{LATIN SMALL LETTER O WITH STROKE}"),
    *(
        "\r",
        "\N{LATIN CAPITAL LETTER A WITH RING ABOVE}",
        "\N{LATIN SMALL LETTER A WITH RING ABOVE}",
    ),
    *("\N{GREEK CAPITAL LETTER DELTA}", "_", "\N{GREEK CAPITAL LETTER PHI}"),
    *("\N{GREEK CAPITAL LETTER GAMMA}", "\N{GREEK CAPITAL LETTER LAMDA}"),
    *("\N{GREEK CAPITAL LETTER OMEGA}", "\N{GREEK CAPITAL LETTER PI}"),
    *("\N{GREEK CAPITAL LETTER PSI}", "\N{GREEK CAPITAL LETTER SIGMA}"),
    *("\N{GREEK CAPITAL LETTER THETA}", "\N{GREEK CAPITAL LETTER XI}", None),
    *("\N{LATIN CAPITAL LETTER AE}", "\N{LATIN SMALL LETTER AE}", "\N{LATIN SMALL LETTER SHARP S}"),
    "\N{LATIN CAPITAL LETTER E WITH ACUTE}",
    *(" ", "!", '"', "#", "\N{CURRENCY SIGN}", "%", "&", "'", "(", ")", "*", "+", ",", "-"),
    *(".", "/", *"0123456789", ":", ";", "<", "=", ">", "?"),
    "\N{INVERTED EXCLAMATION MARK}",
    *"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    *("\N{LATIN CAPITAL LETTER A WITH DIAERESIS}", "\N{LATIN CAPITAL LETTER O WITH DIAERESIS}"),
    *("\N{LATIN CAPITAL LETTER N WITH TILDE}", "\N{LATIN CAPITAL LETTER U WITH DIAERESIS}"),
    *("\N{SECTION SIGN}", "\N{INVERTED QUESTION MARK}"),
    *"abcdefghijklmnopqrstuvwxyz",
    *("\N{LATIN SMALL LETTER A WITH DIAERESIS}", "\N{LATIN SMALL LETTER O WITH DIAERESIS}"),
    *("\N{LATIN SMALL LETTER N WITH TILDE}", "\N{LATIN SMALL LETTER U WITH DIAERESIS}"),
    "\N{LATIN SMALL LETTER A WITH GRAVE}",
)
assert len(_BASIC) == 128, len(_BASIC)

# TS 23.038 6.2.1.1: characters reached by ESC + code.
_EXTENSION: dict[str, int] = {
    "\f": 10,  # page break, shown as FORM FEED
    "^": 20,
    "{": 40,
    "}": 41,
    "\\": 47,
    "[": 60,
    "~": 61,
    "]": 62,
    "|": 64,
    "\N{EURO SIGN}": 101,
}
_ESC = 27
_CODE: dict[str, int] = {ch: code for code, ch in enumerate(_BASIC) if ch is not None}

#: Every character the GSM 7 bit default alphabet (with its extension table) can carry.
GSM7_BASIC_CHARS: str = "".join(_CODE)
GSM7_EXTENSION_CHARS: str = "".join(_EXTENSION)


def is_gsm7(text: str) -> bool:
    return all(ch in _CODE or ch in _EXTENSION for ch in text)


def gsm7_septets(text: str) -> list[int]:
    """Text to septet values (extension characters become ESC + code)."""
    out: list[int] = []
    for ch in text:
        if ch in _CODE:
            out.append(_CODE[ch])
        elif ch in _EXTENSION:
            out += [_ESC, _EXTENSION[ch]]
        else:
            raise ValueError(f"{ch!r} is not in the GSM 7 bit default alphabet")
    return out


def _bits(value: int, width: int) -> list[int]:
    return [(value >> k) & 1 for k in range(width)]


def _octets_from_bits(bits: list[int]) -> bytes:
    bits = bits + [0] * (-len(bits) % 8)
    return bytes(
        sum(bit << k for k, bit in enumerate(bits[i : i + 8])) for i in range(0, len(bits), 8)
    )


def pack_septets(septets: Sequence[int], header: bytes = b"") -> tuple[bytes, int]:
    """(user data, TP-UDL in septets) for ``header`` (UDHL + IEs) followed by the septets.

    The text starts on the first septet boundary after the header (TS 23.040 9.2.3.24).
    """
    bits: list[int] = []
    for octet in header:
        bits += _bits(octet, 8)
    header_septets = -(-len(bits) // 7)
    bits += [0] * (header_septets * 7 - len(bits))  # fill bits
    for septet in septets:
        bits += _bits(septet, 7)
    return _octets_from_bits(bits), header_septets + len(septets)


def _semi_octets(digits: str) -> bytes:
    table = "0123456789*#abc"
    nibbles = [table.index(d) for d in digits]
    if len(nibbles) % 2:
        nibbles.append(15)
    return bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))


def _address(number: str, toa: int | None) -> bytes:
    """TP-OA / TP-RA: length (useful semi-octets), type of address, value (9.1.2.5)."""
    if toa is None:
        if number.startswith("+") and number[1:].isdigit():
            toa = 0x91
        elif number.isdigit() or not number:
            toa = 0x81
        else:
            toa = 0xD0
    if (toa >> 4) & 7 == 5:
        septets = gsm7_septets(number)
        packed, _ = pack_septets(septets)
        return bytes([-(-len(septets) * 7 // 4), toa]) + packed
    digits = number.removeprefix("+")
    return bytes([len(digits), toa]) + _semi_octets(digits)


def _smsc(smsc: str | None) -> bytes:
    if not smsc:
        return b"\x00"
    digits = smsc.removeprefix("+")
    value = bytes([0x91 if smsc.startswith("+") else 0x81]) + _semi_octets(digits)
    return bytes([len(value)]) + value


def _bcd(value: int) -> int:
    return (value % 10) << 4 | (value // 10)


def encode_scts(when: datetime) -> bytes:
    """TP-SCTS (9.2.3.11); the UTC offset must be whole quarter hours, at most 79 of them."""
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("sent_at must be timezone-aware")
    if not 2000 <= when.year <= 2099:
        raise ValueError("SCTS years are 2000..2099")
    quarters, rest = divmod(offset, timedelta(minutes=15))
    if rest or abs(quarters) > 79:
        raise ValueError(f"UTC offset {offset} is not a whole number of quarter hours <= 79")
    tz = _bcd(abs(quarters)) | (0x08 if quarters < 0 else 0)
    fields = (when.year - 2000, when.month, when.day, when.hour, when.minute, when.second)
    return bytes([*(_bcd(f) for f in fields), tz])


def _udh(concat: tuple[int, int, int, int] | None, extra_ies: Iterable[tuple[int, bytes]]) -> bytes:
    ies = b""
    if concat is not None:
        ref, part, total, ref_bits = concat
        if ref_bits == 8:
            ies += bytes([0x00, 3, ref, total, part])
        elif ref_bits == 16:
            ies += bytes([0x08, 4, ref >> 8, ref & 0xFF, total, part])
        else:
            raise ValueError("ref_bits is 8 or 16")
    for iei, value in extra_ies:
        ies += bytes([iei, len(value)]) + value
    return bytes([len(ies)]) + ies if ies else b""


def encode_deliver(
    sender: str,
    text: str = "",
    *,
    sent_at: datetime,
    encoding: str = "gsm7",
    data: bytes = b"",
    concat: tuple[int, int, int, int] | None = None,
    smsc: str | None = "+79168999100",
    flash: bool = False,
    pid: int = 0,
    dcs: int | None = None,
    extra_ies: Sequence[tuple[int, bytes]] = (),
    septets: Sequence[int] | None = None,
    sender_toa: int | None = None,
) -> str:
    """One SMS-DELIVER as +CMGR prints it: uppercase hex, SMSC field included.

    ``encoding``: "gsm7" encodes ``text`` (or raw ``septets`` if given), "ucs2" encodes
    ``text`` as UTF-16BE unless raw ``data`` is given, "8bit" sends ``data``.
    ``concat`` = (ref, part, total, ref_bits).  ``extra_ies`` = further UDH elements
    (IEI, value), placed after the concatenation element.  ``dcs`` overrides the coding
    scheme octet (the user data is still encoded per ``encoding``).
    """
    header = _udh(concat, extra_ies)
    if encoding == "gsm7":
        values = list(septets) if septets is not None else gsm7_septets(text)
        ud, udl = pack_septets(values, header)
        if udl > 160:
            raise ValueError(f"{udl} septets do not fit in one SMS")
        default_dcs = 0x10 if flash else 0x00
    elif encoding in ("ucs2", "8bit"):
        payload = data if (data or encoding == "8bit") else text.encode("utf-16-be")
        ud = header + payload
        udl = len(ud)
        if udl > 140:
            raise ValueError(f"{udl} octets do not fit in one SMS")
        default_dcs = (0x08 if encoding == "ucs2" else 0x04) | (0x10 if flash else 0)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    first = 0x04 | (0x40 if header else 0)  # SMS-DELIVER, TP-MMS (no more messages), TP-UDHI
    tpdu = (
        bytes([first])
        + _address(sender, sender_toa)
        + bytes([pid, default_dcs if dcs is None else dcs])
        + encode_scts(sent_at)
        + bytes([udl])
        + ud
    )
    return (_smsc(smsc) + tpdu).hex().upper()


def split_message(
    sender: str,
    text: str,
    *,
    sent_at: datetime,
    ref: int,
    ref_bits: int = 8,
    encoding: str | None = None,
    split_surrogates: bool = False,
    smsc: str | None = "+79168999100",
) -> list[str]:
    """``text`` as a phone sends it: one PDU if it fits, else concatenated parts in order.

    GSM 7 bit (when every character is in the default alphabet + extension, or when asked):
    160 septets alone, 153 / 152 per part (8 / 16-bit reference); an ESC pair is never split.
    UCS2: 70 UTF-16 units alone, 67 / 66 per part; a surrogate pair is kept whole unless
    ``split_surrogates``.
    """
    if encoding is None:
        encoding = "gsm7" if is_gsm7(text) else "ucs2"
    chunks: list[list[int]] = []
    if encoding == "gsm7":
        single, per_part = 160, (153 if ref_bits == 8 else 152)
        units = [gsm7_septets(ch) for ch in text]
    elif encoding == "ucs2":
        single, per_part = 70, (67 if ref_bits == 8 else 66)
        raw = text.encode("utf-16-be")
        words = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
        units = []
        for word in words:
            if units and 0xD800 <= units[-1][-1] < 0xDC00 and not split_surrogates:
                units[-1].append(word)  # low surrogate stays with its high surrogate
            else:
                units.append([word])
    else:
        raise ValueError(f"split_message encodes gsm7 or ucs2, not {encoding!r}")
    if sum(len(u) for u in units) <= single:
        chunks = [[v for u in units for v in u]]
    else:
        current: list[int] = []
        for unit in units:
            if len(current) + len(unit) > per_part:
                chunks.append(current)
                current = []
            current += unit
        chunks.append(current)
    if len(chunks) > 255:
        raise ValueError("more than 255 parts")
    out = []
    for index, chunk in enumerate(chunks, 1):
        concat = (ref, index, len(chunks), ref_bits) if len(chunks) > 1 else None
        if encoding == "gsm7":
            pdu = encode_deliver(sender, sent_at=sent_at, septets=chunk, concat=concat, smsc=smsc)
        else:
            payload = b"".join(w.to_bytes(2, "big") for w in chunk)
            pdu = encode_deliver(
                sender, sent_at=sent_at, encoding="ucs2", data=payload, concat=concat, smsc=smsc
            )
        out.append(pdu)
    return out


def encode_status_report(
    recipient: str,
    *,
    message_ref: int,
    status: int = 0,
    sent_at: datetime,
    discharged_at: datetime | None = None,
    smsc: str | None = "+79168999100",
) -> str:
    """One SMS-STATUS-REPORT (9.2.2.3) as hex, SMSC field included."""
    tpdu = (
        bytes([0x06, message_ref])  # TP-MTI 10, TP-MMS
        + _address(recipient, None)
        + encode_scts(sent_at)
        + encode_scts(discharged_at or sent_at)
        + bytes([status])
    )
    return (_smsc(smsc) + tpdu).hex().upper()


def user_data_offset(pdu: bytes) -> int:
    """Offset of TP-UD in an SMS-DELIVER with its SMSC field (TP-UDL is the octet before)."""
    oa = 1 + pdu[0] + 1  # SMSC length octet and field, TP-MTI etc.
    return oa + 2 + (pdu[oa] + 1) // 2 + 2 + 7 + 1  # TP-OA, PID, DCS, SCTS, UDL


def with_udl(pdu: str, udl: int) -> str:
    """``pdu`` (hex, SMSC field included) with TP-UDL replaced by ``udl`` and the user data
    left as it is: what a network that miscounts its user data sends (e.g. 53 septets
    declared, 88 carried)."""
    raw = bytearray.fromhex(pdu)
    raw[user_data_offset(bytes(raw)) - 1] = udl
    return raw.hex().upper()
