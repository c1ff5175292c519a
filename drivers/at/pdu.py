"""Pure decoder for the SMS PDUs an AT modem prints, and for ``+CUSD`` payloads.

This module owns the byte-level formats only: no I/O, no state.  It turns the hex line after
``+CMGR`` / ``+CMGL`` (TS 27.005 3.1 ``<pdu>``: an SMSC address followed by a TPDU) into a
:class:`Deliver` (TS 23.040 9.2.2.1) or a :class:`StatusReport` (9.2.2.3), and a ``+CUSD``
payload (TS 27.007 7.15) into text.  Character tables live in :mod:`drivers.at.gsm7`.

Contract: :func:`parse_pdu` and :func:`decode_ussd` raise :class:`PduError` and nothing else,
whatever they are given.  A malformed PDU is reported, never guessed at: the AT driver then
forwards the raw TPDU as ``Encoding.UNDECODABLE``, which loses nothing.

Decisions where the standards leave room (each also noted where it is implemented):

* Reserved coding groups and the reserved alphabet (TS 23.038 clause 4) raise PduError rather
  than being read as GSM 7 bit, so unknown payloads reach the platform as exact bytes.
* Compressed user data (TS 23.038 clause 4 bit 5; TS 23.042) is returned as ``BINARY``: the
  TP-UDL then counts octets (TS 23.040 9.2.3.16), so the part is still well delimited and its
  concatenation header is still honoured; the platform gets the compressed bytes and the DCS.
* TP-UDL governs (TS 23.040 9.2.3.16): when the TP-UD carries more than TP-UDL announces (a
  real network sent 53 septets declared, 88 carried), the announced length is decoded and the
  extra octets are kept undecoded in ``Deliver.trailing`` (they are in ``tpdu`` too), with
  ``Deliver.malformed`` saying what was wrong, so the message is flagged rather than lost to
  hex.  Fewer octets than announced, or a TP-UD over 140 octets, stay errors.
* Semi-octet 0xF inside an address is a filler and skipped wherever it appears.
* The two-digit SCTS year is 2000 + YY.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final, NamedTuple

from drivers.at.gsm7 import (
    DEFAULT_ALPHABET,
    DEFAULT_EXTENSION,
    ESC,
    LOCKING_SHIFT,
    SINGLE_SHIFT,
)
from drivers.base import Concat, Encoding

__all__ = [
    "Deliver",
    "PduError",
    "StatusReport",
    "decode_scts",
    "decode_semi_octets",
    "decode_ussd",
    "gsm7_decode",
    "gsm7_unpack",
    "parse_pdu",
    "raw_tpdu",
]


class PduError(ValueError):
    """A malformed or undecodable PDU; the message says what, and at which octet.

    Octet positions are 0-based offsets into the PDU as given (SMSC field included).
    """


@dataclass(frozen=True, slots=True)
class Deliver:
    """An SMS-DELIVER (TS 23.040 9.2.2.1)."""

    smsc: str | None  # "+79168999100"; None when the SMSC field is empty or absent
    sender: str  # "+7..." (TON 1), digits as-is (other TONs), decoded text (TON 5)
    sent_at: datetime  # TP-SCTS, timezone-aware
    pid: int  # TP-PID
    dcs: int  # TP-DCS
    encoding: Encoding  # GSM7, UCS2 or BINARY
    text: str  # GSM7 only
    data: bytes  # UCS2 (raw UTF-16BE, not decoded) and BINARY
    concat: Concat | None
    flash: bool  # message class 0
    tpdu: bytes  # everything after the SMSC field
    #: Octets of TP-UD after the user data TP-UDL announces: kept, not decoded.
    trailing: bytes = b""
    #: What was wrong with a PDU decoded anyway (None for a well-formed one).
    malformed: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An SMS-STATUS-REPORT (TS 23.040 9.2.2.3), recognised so that it can be ignored cleanly."""

    smsc: str | None
    tpdu: bytes
    message_ref: int  # TP-MR of the submitted message
    recipient: str  # TP-RA
    status: int  # TP-ST (9.2.3.15)


# ---------------------------------------------------------------------------------------------
# GSM 7 bit (TS 23.038 clause 6)


def gsm7_unpack(data: bytes, septets: int, fill_bits: int = 0) -> list[int]:
    """Unpack ``septets`` 7-bit values from ``data``, skipping ``fill_bits`` leading bits.

    TS 23.038 6.1.2.1.1: septets are packed least significant bit first, the first septet in
    the low bits of the first octet.  With a UDH the text starts after fill bits that align it
    to a septet boundary (TS 23.040 9.2.3.24); pass the octets after the UDH and that count.
    """
    if septets < 0 or fill_bits < 0:
        raise PduError(f"negative septet count {septets} or fill bits {fill_bits}")
    if fill_bits + 7 * septets > 8 * len(data):
        raise PduError(
            f"{septets} septets after {fill_bits} fill bits need "
            f"{(fill_bits + 7 * septets + 7) // 8} octets, have {len(data)}"
        )
    bits = int.from_bytes(data, "little") >> fill_bits
    return [(bits >> (7 * i)) & 0x7F for i in range(septets)]


def gsm7_decode(septets: Sequence[int], locking: int = 0, single: int = 0) -> str:
    """Septet values to text, with ESC handling and national language tables.

    ``locking`` / ``single`` are national language identifiers (TS 23.038 6.2.1.2.4) from UDH
    IEI 0x25 / 0x24; 0 or an identifier without a table means the default table.
    """
    main = LOCKING_SHIFT.get(locking, DEFAULT_ALPHABET)
    shift: Mapping[int, str] = SINGLE_SHIFT.get(single, DEFAULT_EXTENSION)
    out: list[str] = []
    i, n = 0, len(septets)
    while i < n:
        code = septets[i]
        if not 0 <= code <= 0x7F:
            raise PduError(f"septet value {code} out of range at index {i}")
        if code != ESC:
            out.append(main[code])
            i += 1
            continue
        if i + 1 == n:
            # 6.2.1 note 1: an ESC that is not understood is displayed as a space.
            out.append(" ")
            break
        nxt = septets[i + 1]
        if not 0 <= nxt <= 0x7F:
            raise PduError(f"septet value {nxt} out of range at index {i + 1}")
        if nxt == ESC:
            # 6.2.1.1: ESC ESC is reserved for a further extension table: display a space.
            out.append(" ")
        else:
            # 6.2.1.1: a code missing from the (single shift) extension table is displayed as
            # the character of the main (locking shift) table.
            out.append(shift.get(nxt, main[nxt]))
        i += 2
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Semi-octets, addresses, time stamps (TS 23.040 9.1.2.3, 9.1.2.5, 9.2.3.11)

# 9.1.2.3: BCD digits, then * # a b c; 0xF is the end mark / filler.
_SEMI_OCTET_DIGITS: Final = "0123456789*#abc"


def decode_semi_octets(data: bytes, count: int | None = None) -> str:
    """Swapped semi-octets (low nibble first) to digits; fillers (0xF) are skipped.

    ``count`` is the number of semi-octets to read (an address length field); None reads all.
    """
    if count is None:
        count = 2 * len(data)
    if count < 0 or count > 2 * len(data):
        raise PduError(f"{count} semi-octets do not fit in {len(data)} octets")
    out: list[str] = []
    for i in range(count):
        octet = data[i // 2]
        nibble = octet >> 4 if i % 2 else octet & 0x0F
        if nibble != 0x0F:
            out.append(_SEMI_OCTET_DIGITS[nibble])
    return "".join(out)


def _number(toa: int, digits: str) -> str:
    """Digits with "+" when the type of number (TOA bits 6..4, 9.1.2.5) is international."""
    if digits and (toa >> 4) & 0x07 == 1:
        return "+" + digits
    return digits


def _address_value(length: int, toa: int, value: bytes) -> str:
    """TP-OA / TP-RA value (9.1.2.5); ``length`` counts useful semi-octets."""
    if (toa >> 4) & 0x07 == 5:
        # TON 101 alphanumeric: GSM 7 bit default alphabet, packed (23.038 6.1.2.1.1); the
        # useful semi-octets hold length*4 bits, i.e. length*4 // 7 whole septets (a trailing
        # partial septet is padding, not an "@").
        return gsm7_decode(gsm7_unpack(value, length * 4 // 7))
    return _number(toa, decode_semi_octets(value, length))


def decode_scts(octets: bytes, at: int = 0) -> datetime:
    """TP-SCTS (9.2.3.11): 7 octets of swapped BCD, YY MM DD hh mm ss TZ.

    TZ counts quarter hours; bit 3 of the TZ octet (the high bit of its first semi-octet, the
    tens digit) is the sign, 1 = negative.  ``at`` is the octet offset used in errors.
    """
    if len(octets) != 7:
        raise PduError(f"TP-SCTS at octet {at} is {len(octets)} octets, not 7")
    fields: list[int] = []
    for i, octet in enumerate(octets[:6]):
        tens, units = octet & 0x0F, octet >> 4
        if tens > 9 or units > 9:
            raise PduError(f"TP-SCTS octet {at + i} ({octet:02X}) is not BCD")
        fields.append(tens * 10 + units)
    tz = octets[6]
    tens, units = tz & 0x07, tz >> 4
    if units > 9:
        raise PduError(f"TP-SCTS time zone octet {at + 6} ({tz:02X}) is not BCD")
    quarters = tens * 10 + units  # at most 79, i.e. 19h45: always a valid UTC offset
    if tz & 0x08:
        quarters = -quarters
    year, month, day, hour, minute, second = fields
    try:
        return datetime(
            2000 + year,
            month,
            day,
            hour,
            minute,
            second,
            tzinfo=timezone(timedelta(minutes=15 * quarters)),
        )
    except ValueError as exc:
        raise PduError(f"TP-SCTS at octet {at} ({octets.hex().upper()}): {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Data coding scheme (TS 23.038 clause 4) and user data header (TS 23.040 9.2.3.24)


class _Coding(NamedTuple):
    encoding: Encoding
    flash: bool


_ALPHABETS: Final = (Encoding.GSM7, Encoding.BINARY, Encoding.UCS2)


def _sms_coding(dcs: int, at: int) -> _Coding:
    group = dcs >> 4
    if group <= 0x7:
        # 00xx general data coding; 01xx automatic deletion group, bits 5..0 coded the same.
        # Bit 5 compressed, bit 4 "bits 1..0 are a message class", bits 3..2 the alphabet.
        alphabet = (dcs >> 2) & 0x03
        if alphabet == 3:
            raise PduError(f"TP-DCS {dcs:02X} at octet {at}: reserved alphabet")
        flash = bool(dcs & 0x10) and dcs & 0x03 == 0
        if dcs & 0x20:
            # Compressed (TS 23.042): not decompressed; TP-UDL counts octets (23.040 9.2.3.16).
            return _Coding(Encoding.BINARY, flash)
        return _Coding(_ALPHABETS[alphabet], flash)
    if group <= 0xB:
        raise PduError(f"TP-DCS {dcs:02X} at octet {at}: reserved coding group")
    if group in (0xC, 0xD):
        # Message waiting indication, discard / store message: GSM 7 bit default alphabet.
        return _Coding(Encoding.GSM7, False)
    if group == 0xE:
        # Message waiting indication, store message, UCS2.
        return _Coding(Encoding.UCS2, False)
    # 1111: data coding / message class; bit 2 = 8 bit data, bits 1..0 = class.
    return _Coding(Encoding.BINARY if dcs & 0x04 else Encoding.GSM7, dcs & 0x03 == 0)


class _Udh(NamedTuple):
    concat: Concat | None
    locking: int
    single: int


def _parse_udh(header: bytes, at: int) -> _Udh:
    """The information elements of a UDH (without its UDHL octet); ``at`` = offset of IE 1."""
    concat: Concat | None = None
    locking = single = 0
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            raise PduError(f"UDH information element at octet {at + i} is truncated")
        iei, length = header[i], header[i + 1]
        value = header[i + 2 : i + 2 + length]
        if len(value) != length:
            raise PduError(
                f"UDH information element {iei:02X} at octet {at + i} (length {length}) "
                "overruns the UDH"
            )
        # 9.2.3.24: repeated IEs: the last one counts; IEs that are not understood (or here,
        # that have the wrong length for their IEI) are skipped by their length.
        if iei == 0x00 and length == 3:  # 9.2.3.24.1 concatenation, 8-bit reference
            ref, total, part, bits = value[0], value[1], value[2], 8
        elif iei == 0x08 and length == 4:  # 9.2.3.24.8 concatenation, 16-bit reference
            ref, total, part, bits = value[0] << 8 | value[1], value[2], value[3], 16
        else:
            if iei == 0x24 and length == 1:  # 9.2.3.24.15 national language single shift
                single = value[0]
            elif iei == 0x25 and length == 1:  # 9.2.3.24.16 national language locking shift
                locking = value[0]
            i += 2 + length
            continue
        # 9.2.3.24.1: a zero total, or a sequence number of 0 or above the total, means the
        # receiver ignores the whole IE.
        if total and 1 <= part <= total:
            concat = Concat(ref=ref, part=part, total=total, ref_bits=bits)
        i += 2 + length
    return _Udh(concat, locking, single)


# ---------------------------------------------------------------------------------------------
# The PDU


class _Reader:
    """Reads octets in order and names the field and octet offset when the input runs out."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            left = len(self.data) - self.pos
            raise PduError(f"truncated: {what} needs {n} octet(s) at octet {self.pos}, {left} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def octet(self, what: str) -> int:
        return self.take(1, what)[0]


_HEX: Final = re.compile(rb"(?:[0-9A-Fa-f]{2})*")


def _hex_bytes(text: str) -> bytes | None:
    """Hex text (surrounding whitespace ignored) to bytes; None if it is not even-length hex."""
    try:
        raw = text.strip().encode("ascii")
    except UnicodeEncodeError:
        return None
    if not _HEX.fullmatch(raw):
        return None
    return bytes.fromhex(raw.decode("ascii"))


def _address(r: _Reader, what: str) -> str:
    """An address field (9.1.2.5): length in useful semi-octets, type of address, value."""
    at = r.pos
    length = r.octet(f"{what} length")
    if length > 20:
        raise PduError(f"{what} length {length} at octet {at} exceeds 20 semi-octets")
    toa = r.octet(f"{what} type of address")
    return _address_value(length, toa, r.take((length + 1) // 2, what))


def parse_pdu(pdu: str | bytes, *, has_smsc: bool = True) -> Deliver | StatusReport:
    """Decode one PDU as a modem prints it after ``+CMGR`` / ``+CMGL`` (TS 27.005 3.1).

    ``pdu`` is hex text (any case, surrounding whitespace allowed) or raw bytes.  With
    ``has_smsc=False`` the input is a bare TPDU (no SMSC length octet).  Raises
    :class:`PduError`, and only that, for anything that is not a well-formed SMS-DELIVER or
    SMS-STATUS-REPORT.
    """
    if isinstance(pdu, str):
        raw = _hex_bytes(pdu)
        if raw is None:
            raise PduError("PDU is not an even-length hex string")
    elif isinstance(pdu, bytes | bytearray | memoryview):
        raw = bytes(pdu)
    else:
        raise PduError(f"PDU must be str or bytes, not {type(pdu).__name__}")
    try:
        return _parse(raw, has_smsc)
    except PduError:
        raise
    except Exception as exc:
        # The contract is "only PduError"; a decoder bug must not crash the modem's reader
        # loop on the same stored message forever.  The fuzz tests check this never fires.
        raise PduError(f"internal decoder error: {exc!r}") from exc


def raw_tpdu(pdu: str | bytes, *, has_smsc: bool = True) -> bytes:
    """Best-effort TPDU bytes of a PDU that :func:`parse_pdu` rejected; never raises.

    The same bytes ``Deliver.tpdu`` would hold (the SMSC field removed) whenever the hex and
    the SMSC length octet are sound, so a message id does not depend on whether the decoder
    understood the rest.  Otherwise the whole input: hex-decoded, or the text's own bytes.
    """
    if isinstance(pdu, str):
        raw = _hex_bytes(pdu)
        if raw is None:
            return pdu.strip().encode("utf-8", "surrogateescape")
    else:
        raw = bytes(pdu) if isinstance(pdu, bytes | bytearray | memoryview) else b""
    if has_smsc and raw and 1 + raw[0] < len(raw):
        return raw[1 + raw[0] :]
    return raw


def _parse(raw: bytes, has_smsc: bool) -> Deliver | StatusReport:
    r = _Reader(raw)
    smsc: str | None = None
    if has_smsc:
        # TS 27.005 3.1 / TS 24.011 8.2.5.2: length in octets (type of address + digits),
        # 0 = no SMSC address; at most 11 octets.
        length = r.octet("SMSC length")
        if length > 11:
            raise PduError(f"SMSC length {length} at octet 0 exceeds 11 octets")
        if length:
            toa = r.octet("SMSC type of address")
            smsc = _number(toa, decode_semi_octets(r.take(length - 1, "SMSC address"))) or None
    tpdu = raw[r.pos :]
    first = r.octet("TPDU first octet")
    mti = first & 0x03  # 9.2.3.1 TP-MTI
    if mti == 0:
        return _deliver(r, first, smsc, tpdu)
    if mti == 2:
        return _status_report(r, smsc, tpdu)
    kind = "SMS-SUBMIT" if mti == 1 else "reserved"
    raise PduError(f"TP-MTI {mti} ({kind}) at octet {r.pos - 1} is not a received message")


def _status_report(r: _Reader, smsc: str | None, tpdu: bytes) -> StatusReport:
    # 9.2.2.3: TP-MR, TP-RA, TP-SCTS, TP-DT, TP-ST, then optional fields that are not read.
    # The time stamps are only required to be present: the report is ignored anyway.
    ref = r.octet("TP-MR")
    recipient = _address(r, "TP-RA")
    r.take(7, "TP-SCTS")
    r.take(7, "TP-DT")
    status = r.octet("TP-ST")
    return StatusReport(smsc=smsc, tpdu=tpdu, message_ref=ref, recipient=recipient, status=status)


def _deliver(r: _Reader, first: int, smsc: str | None, tpdu: bytes) -> Deliver:
    sender = _address(r, "TP-OA")
    pid = r.octet("TP-PID")
    dcs_at = r.pos
    dcs = r.octet("TP-DCS")
    scts_at = r.pos
    sent_at = decode_scts(r.take(7, "TP-SCTS"), scts_at)
    udl_at = r.pos
    udl = r.octet("TP-UDL")
    ud_at = r.pos
    ud = r.data[ud_at:]
    coding = _sms_coding(dcs, dcs_at)
    udhi = bool(first & 0x40)  # 9.2.3.23 TP-UDHI
    septets = coding.encoding is Encoding.GSM7

    # 9.2.3.16: TP-UDL counts septets for (uncompressed) GSM 7 bit, octets otherwise; the
    # user data holds at most 140 octets.
    limit = 160 if septets else 140
    if udl > limit:
        raise PduError(f"TP-UDL {udl} at octet {udl_at} exceeds {limit}")
    need = (udl * 7 + 7) // 8 if septets else udl
    if len(ud) < need:
        raise PduError(
            f"TP-UDL {udl} at octet {udl_at} needs {need} octet(s) of TP-UD, got {len(ud)}"
        )
    trailing, malformed = b"", None
    if len(ud) > need:
        # TP-UDL governs (9.2.3.16); what follows is kept, not decoded.  Over 140 octets the
        # PDU cannot be an SMS at all (9.2.3.24), so it is not guessed at.
        if len(ud) > 140:
            raise PduError(f"TP-UD at octet {ud_at} is {len(ud)} octets, more than 140")
        ud, trailing = ud[:need], ud[need:]
        unit = "septets" if septets else "octets"
        malformed = (
            f"TP-UD carries {len(trailing)} octet(s) more than TP-UDL {udl} ({unit}) "
            "announces; decoded as announced"
        )

    udh = _Udh(None, 0, 0)
    header_octets = 0
    if udhi:
        if not ud:
            raise PduError(f"TP-UDHI set but TP-UD at octet {ud_at} is empty")
        header_octets = ud[0] + 1
        # In septet units the UDH plus its fill bits takes ceil(octets * 8 / 7) septets.
        used = (header_octets * 8 + 6) // 7 if septets else header_octets
        if used > udl:
            raise PduError(
                f"UDH length {ud[0]} at octet {ud_at} overruns the user data (TP-UDL {udl})"
            )
        udh = _parse_udh(ud[1:header_octets], ud_at + 1)

    text, data = "", b""
    if septets:
        # 9.2.3.24: after the UDH, fill bits so that the text starts on a septet boundary:
        # (7 - (UDHL + 1) * 8 % 7) % 7 of them; none at all when UDHL is 6, 13, 20...
        header_septets = (header_octets * 8 + 6) // 7
        fill = header_septets * 7 - header_octets * 8
        values = gsm7_unpack(ud[header_octets:], udl - header_septets, fill)
        text = gsm7_decode(values, udh.locking, udh.single)
    else:
        data = ud[header_octets:]
        if coding.encoding is Encoding.UCS2 and len(data) % 2:
            raise PduError(f"UCS2 user data at octet {ud_at + header_octets} has odd length")
    return Deliver(
        smsc=smsc,
        sender=sender,
        sent_at=sent_at,
        pid=pid,
        dcs=dcs,
        encoding=coding.encoding,
        text=text,
        data=data,
        concat=udh.concat,
        flash=coding.flash,
        tpdu=tpdu,
        trailing=trailing,
        malformed=malformed,
    )


# ---------------------------------------------------------------------------------------------
# USSD (TS 27.007 7.15 +CUSD; the DCS is a cell broadcast DCS, TS 23.038 clause 5)


def _cbs_alphabet(dcs: int) -> tuple[Encoding, bool]:
    """(alphabet, has language prefix) for a CBS data coding scheme, or PduError."""
    group = dcs >> 4
    if group in (0x0, 0x2, 0x3):
        # 0000 languages, 0010 more languages, 0011 other languages: GSM 7 bit default.
        return Encoding.GSM7, False
    if dcs == 0x10:
        return Encoding.GSM7, True  # "ll" + CR, then the text
    if dcs == 0x11:
        return Encoding.UCS2, True  # 2 packed GSM 7 bit characters (2 octets), then UCS2
    if 0x4 <= group <= 0x7:
        # 01xx general data coding: bit 5 compressed, bits 3..2 the alphabet.
        alphabet = (dcs >> 2) & 0x03
        if dcs & 0x20:
            raise PduError(f"USSD DCS {dcs:02X}: compressed data is not supported")
        if alphabet == 3:
            raise PduError(f"USSD DCS {dcs:02X}: reserved alphabet")
        return _ALPHABETS[alphabet], False
    if group == 0xF:
        # 1111 data coding / message handling: bit 2 = 8 bit data.
        return (Encoding.BINARY if dcs & 0x04 else Encoding.GSM7), False
    raise PduError(f"USSD DCS {dcs:02X}: reserved or not a text coding group")


def _ussd_gsm7(octets: bytes) -> str:
    septets = gsm7_unpack(octets, len(octets) * 8 // 7)
    if septets and len(septets) % 8 == 0 and septets[-1] in (0x0D, 0x00):
        # 23.038 6.1.2.3.1: 7 spare bits at the end are filled with CR (some networks send
        # zeros, which would read as "@"); an intended final CR is then doubled by the sender.
        septets.pop()
    return gsm7_decode(septets)


def decode_ussd(payload: str, dcs: int, *, as_hex: bool | None = None) -> str:
    """Text of a ``+CUSD: <m>,<str>,<dcs>`` reply (``<str>`` without its quotes).

    Modems differ: some print the packed septets / UCS2 octets as hex, others the decoded
    text.  ``as_hex=None`` guesses: the payload is taken as hex when it is valid hex of the
    right shape for the DCS (even length; a multiple of 4 digits for UCS2), else as text
    already decoded.  A driver that knows its modem's habit passes True or False.  8-bit data
    has no character set (23.038 clause 5); its octets are mapped 1:1 to U+0000..U+00FF.
    """
    if not isinstance(payload, str) or not isinstance(dcs, int) or not 0 <= dcs <= 0xFF:
        raise PduError(f"bad USSD payload or DCS: {payload!r}, {dcs!r}")
    encoding, prefixed = _cbs_alphabet(dcs)
    octets = _hex_bytes(payload)
    if octets is not None and encoding is Encoding.UCS2 and (len(octets) - 2 * prefixed) % 2:
        octets = None
    if as_hex is None:
        as_hex = octets is not None
    if not as_hex:
        text = payload
    elif octets is None:
        raise PduError(f"USSD payload is not hex of the right shape for DCS {dcs:02X}")
    elif encoding is Encoding.UCS2:
        try:
            text = octets[2 if prefixed else 0 :].decode("utf-16-be")
        except UnicodeDecodeError as exc:
            raise PduError(f"USSD UCS2 payload does not decode: {exc}") from exc
    elif encoding is Encoding.BINARY:
        text = octets.decode("latin-1")
    else:
        text = _ussd_gsm7(octets)
    if prefixed and encoding is Encoding.GSM7 and text[2:3] == "\r":
        text = text[3:]  # 23.038 clause 5, DCS 0x10: two-letter language and CR
    return text
