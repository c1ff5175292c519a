"""GSM 7-bit alphabet tables (TS 23.038 clause 6.2.1 and Annex A), as pure data.

This module owns the character tables only; the bit unpacking and the ESC / shift-table logic
that use them live in :mod:`drivers.at.pdu` (``gsm7_unpack``, ``gsm7_decode``).

* A *locking shift* table (TS 23.038 6.2.1 default, A.3.x national) replaces the whole main
  table for a message; it is selected by UDH IEI 0x25 (TS 23.040 9.2.3.24.16).
* A *single shift* table (6.2.1.1 default extension, A.2.x national) gives the meaning of the
  septet that follows ESC (0x1B); it is selected by UDH IEI 0x24 (TS 23.040 9.2.3.24.15).

National language identifiers are those of TS 23.038 6.2.1.2.4: 1 Turkish, 2 Spanish,
3 Portuguese (4..13 are Indic languages, not carried here).  Spanish has no locking shift
table of its own (A.3.2 is the default table), so only Turkish and Portuguese appear in
:data:`LOCKING_SHIFT`.  Any identifier missing from these maps means the default table.

Main tables are 128-character strings indexed by septet value.  Position 0x1B (ESC) holds
:data:`ESC_PLACEHOLDER`; the decoder handles ESC before any table look-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

ESC: Final = 0x1B
ESC_PLACEHOLDER: Final = "\x1b"

# TS 23.038 6.2.1: GSM 7 bit default alphabet, septets 0x00..0x7F in order.
DEFAULT_ALPHABET: Final = (
    "@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\n\u00d8\u00f8\r\u00c5\u00e5"  # 0x00
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e"  # 0x10..0x1A Greek
    "\x1b\u00c6\u00e6\u00df\u00c9"  # 0x1B ESC, 0x1C..0x1F
    " !\"#\u00a4%&'()*+,-./"  # 0x20 (0x24 is CURRENCY SIGN, not $)
    "0123456789:;<=>?"  # 0x30
    "\u00a1ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZ\u00c4\u00d6\u00d1\u00dc\u00a7"  # 0x50
    "\u00bfabcdefghijklmno"  # 0x60
    "pqrstuvwxyz\u00e4\u00f6\u00f1\u00fc\u00e0"  # 0x70
)

# TS 23.038 6.2.1.1: default alphabet extension table (the septet after ESC).  0x0A is a page
# break, rendered as FORM FEED.  0x1B (another ESC) is handled by the decoder (shown as space).
DEFAULT_EXTENSION: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x0A: "\x0c",
        0x14: "^",
        0x28: "{",
        0x29: "}",
        0x2F: "\\",
        0x3C: "[",
        0x3D: "~",
        0x3E: "]",
        0x40: "|",
        0x65: "\u20ac",
    }
)


def _with(base: str, changes: Mapping[int, str]) -> str:
    """``base`` with the characters at the given septet positions replaced."""
    chars = list(base)
    for code, char in changes.items():
        chars[code] = char
    return "".join(chars)


# TS 23.038 A.3.1: Turkish national language locking shift table (default table + 8 changes).
TURKISH_LOCKING: Final = _with(
    DEFAULT_ALPHABET,
    {
        0x04: "\u20ac",  # EURO SIGN (default: è)
        0x07: "\u0131",  # LATIN SMALL LETTER DOTLESS I (default: ì)
        0x0B: "\u011e",  # LATIN CAPITAL LETTER G WITH BREVE (default: Ø)
        0x0C: "\u011f",  # LATIN SMALL LETTER G WITH BREVE (default: ø)
        0x1C: "\u015e",  # LATIN CAPITAL LETTER S WITH CEDILLA (default: Æ)
        0x1D: "\u015f",  # LATIN SMALL LETTER S WITH CEDILLA (default: æ)
        0x40: "\u0130",  # LATIN CAPITAL LETTER I WITH DOT ABOVE (default: ¡)
        0x60: "\u00e7",  # LATIN SMALL LETTER C WITH CEDILLA (default: ¿)
    },
)

# TS 23.038 A.3.3: Portuguese national language locking shift table.
PORTUGUESE_LOCKING: Final = (
    "@\u00a3$\u00a5\u00ea\u00e9\u00fa\u00ed\u00f3\u00e7\n\u00d4\u00f4\r\u00c1\u00e1"  # 0x00
    "\u0394_\u00aa\u00c7\u00c0\u221e^\\\u20ac\u00d3|"  # 0x10..0x1A
    "\x1b\u00c2\u00e2\u00ca\u00c9"  # 0x1B ESC, 0x1C..0x1F
    " !\"#\u00ba%&'()*+,-./"  # 0x20 (0x24 is MASCULINE ORDINAL INDICATOR)
    "0123456789:;<=>?"  # 0x30
    "\u00cdABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZ\u00c3\u00d5\u00da\u00dc\u00a7"  # 0x50
    "~abcdefghijklmno"  # 0x60
    "pqrstuvwxyz\u00e3\u00f5`\u00fc\u00e0"  # 0x70
)

# The characters every national single shift table repeats from the default extension table.
_COMMON_SHIFT: Final = dict(DEFAULT_EXTENSION)

# TS 23.038 A.2.1: Turkish national language single shift table.
TURKISH_SINGLE: Final[Mapping[int, str]] = MappingProxyType(
    {
        **_COMMON_SHIFT,
        0x47: "\u011e",  # Ğ
        0x49: "\u0130",  # İ
        0x53: "\u015e",  # Ş
        0x63: "\u00e7",  # ç
        0x67: "\u011f",  # ğ
        0x69: "\u0131",  # ı
        0x73: "\u015f",  # ş
    }
)

# TS 23.038 A.2.2: Spanish national language single shift table.
SPANISH_SINGLE: Final[Mapping[int, str]] = MappingProxyType(
    {
        **_COMMON_SHIFT,
        0x09: "\u00e7",  # ç
        0x41: "\u00c1",  # Á
        0x49: "\u00cd",  # Í
        0x4F: "\u00d3",  # Ó
        0x55: "\u00da",  # Ú
        0x61: "\u00e1",  # á
        0x69: "\u00ed",  # í
        0x6F: "\u00f3",  # ó
        0x75: "\u00fa",  # ú
    }
)

# TS 23.038 A.2.3: Portuguese national language single shift table.
PORTUGUESE_SINGLE: Final[Mapping[int, str]] = MappingProxyType(
    {
        **_COMMON_SHIFT,
        0x05: "\u00ea",  # ê
        0x09: "\u00e7",  # ç
        0x0B: "\u00d4",  # Ô
        0x0C: "\u00f4",  # ô
        0x0E: "\u00c1",  # Á
        0x0F: "\u00e1",  # á
        0x12: "\u03a6",  # Φ
        0x13: "\u0393",  # Γ
        0x15: "\u03a9",  # Ω
        0x16: "\u03a0",  # Π
        0x17: "\u03a8",  # Ψ
        0x18: "\u03a3",  # Σ
        0x19: "\u0398",  # Θ
        0x1F: "\u00ca",  # Ê
        0x41: "\u00c0",  # À
        0x49: "\u00cd",  # Í
        0x4F: "\u00d3",  # Ó
        0x55: "\u00da",  # Ú
        0x5B: "\u00c3",  # Ã
        0x5C: "\u00d5",  # Õ
        0x61: "\u00c2",  # Â
        0x69: "\u00ed",  # í
        0x6F: "\u00f3",  # ó
        0x75: "\u00fa",  # ú
        0x7B: "\u00e3",  # ã
        0x7C: "\u00f5",  # õ
        0x7F: "\u00e2",  # â
    }
)

# National language identifier (TS 23.038 6.2.1.2.4) -> table.
LOCKING_SHIFT: Final[Mapping[int, str]] = MappingProxyType(
    {1: TURKISH_LOCKING, 3: PORTUGUESE_LOCKING}
)
SINGLE_SHIFT: Final[Mapping[int, Mapping[int, str]]] = MappingProxyType(
    {1: TURKISH_SINGLE, 2: SPANISH_SINGLE, 3: PORTUGUESE_SINGLE}
)
