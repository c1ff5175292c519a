"""Character sets the emulated modem speaks: GSM 7-bit default alphabet, packing, UCS2 hex.

Owns the text encodings that appear on the AT interface outside SMS PDUs (which the emulator
never decodes: PDUs are opaque hex handed in by tests).  Used for ``+CUSD`` replies, for
Huawei's packed-hex USSD requests, and for ``+CSCS="UCS2"`` string parameters.
Must not know about modems or commands.
"""

from __future__ import annotations

# TS 23.038 clause 6.2.1: the GSM 7-bit default alphabet, indexed by septet value.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# TS 23.038 clause 6.2.1.1: the extension table, reached through ESC (0x1B).
GSM7_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_ESC = 0x1B
_BASIC_INDEX = {ch: i for i, ch in enumerate(GSM7_BASIC)}
_EXT_REVERSE = {v: k for k, v in GSM7_EXTENSION.items()}

assert len(GSM7_BASIC) == 128


def gsm7_septets(text: str) -> list[int]:
    """Text to septet values (escape sequences for the extension table).

    Raises ValueError for a character outside both tables.
    """
    out: list[int] = []
    for ch in text:
        if ch in _BASIC_INDEX:
            out.append(_BASIC_INDEX[ch])
        elif ch in GSM7_EXTENSION:
            out.extend((_ESC, GSM7_EXTENSION[ch]))
        else:
            raise ValueError(f"{ch!r} is not in the GSM 7-bit default alphabet")
    return out


def gsm7_text(septets: list[int]) -> str:
    """Septet values back to text (unknown escapes decode as a space, TS 23.038 6.2.1.1)."""
    chars: list[str] = []
    escaped = False
    for s in septets:
        if escaped:
            chars.append(_EXT_REVERSE.get(s, " "))
            escaped = False
        elif s == _ESC:
            escaped = True
        else:
            chars.append(GSM7_BASIC[s])
    return "".join(chars)


def is_gsm7(text: str) -> bool:
    return all(ch in _BASIC_INDEX or ch in GSM7_EXTENSION for ch in text)


def pack_septets(septets: list[int], *, ussd_padding: bool = False) -> bytes:
    """Pack septets LSB first into octets (TS 23.038 6.1.2.1.1).

    With ``ussd_padding``, a message whose last octet would carry 7 spare bits gets a CR filler
    septet, so the receiver does not read an extra '@' (TS 23.038 6.1.2.3.1).
    """
    values = list(septets)
    if ussd_padding and len(values) % 8 == 7:
        values.append(0x0D)
    acc = 0
    bits = 0
    out = bytearray()
    for v in values:
        acc |= (v & 0x7F) << bits
        bits += 7
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_septets(data: bytes, *, ussd_padding: bool = False) -> list[int]:
    """Inverse of :func:`pack_septets`; the septet count is inferred from the octet count."""
    count = len(data) * 8 // 7
    acc = int.from_bytes(data, "little")
    values = [(acc >> (7 * i)) & 0x7F for i in range(count)]
    if ussd_padding and values and values[-1] == 0x0D and len(data) % 7 == 0:
        values.pop()
    return values


def ussd_pack_hex(text: str) -> str:
    """USSD string as packed GSM-7 hex, as Huawei firmware exchanges it: ``*100#`` → AA180C3602."""
    return pack_septets(gsm7_septets(text), ussd_padding=True).hex().upper()


def ussd_unpack_hex(hex_text: str) -> str:
    """Raises ValueError when ``hex_text`` is not hex."""
    return gsm7_text(unpack_septets(bytes.fromhex(hex_text), ussd_padding=True))


def ucs2_hex(text: str) -> str:
    """UTF-16BE hex, the ``+CSCS="UCS2"`` and DCS 0x48 representation (TS 27.007 5.5)."""
    return text.encode("utf-16-be").hex().upper()


def from_ucs2_hex(hex_text: str) -> str:
    """Raises ValueError for odd or non-hex input."""
    return bytes.fromhex(hex_text).decode("utf-16-be")
