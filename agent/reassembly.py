"""Message identity and multipart text assembly: pure functions, no I/O.

The store (``agent.store``) decides *when* a message is complete or timed out; this module
decides *what* it is: its id (PROTOCOL.md section 4) and its text.

* Part id and message id are the first 128 bits of SHA-256 over the ICCID (ASCII) followed by
  the raw content of each part in part order.  A single-part message's id equals its part's id.
  The same SMS re-read gets the same id; two SMS with equal text differ in their TPDU (the SMSC
  timestamp is inside it), so they stay distinct.
* UCS2 user data is joined across consecutive parts *before* decoding: a phone may split a
  UTF-16 surrogate pair (an emoji) across two parts (TS 23.040 9.2.3.24.1 concatenation works on
  octets, not characters).  A pair left unpaired by a missing part becomes U+FFFD.
* 8-bit data and undecodable PDUs are forwarded as upper-case hex with an ``encoding`` marker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.base import Encoding


def content_id(iccid: str, raws: Sequence[bytes]) -> str:
    h = hashlib.sha256(iccid.encode("ascii", "replace"))
    for raw in raws:
        h.update(raw)
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PartContent:
    """What assembly needs of one stored part."""

    encoding: Encoding
    text: str
    data: bytes


def assemble(parts: Sequence[PartContent]) -> tuple[str, str | None]:
    """Join parts (already in part order) into the message text and its encoding marker.

    The marker is None for ordinary text, ``"8bit"`` when a part is binary, and
    ``"undecodable"`` when any part could not be decoded (its raw TPDU is shown as hex).
    """
    out: list[str] = []
    ucs2 = bytearray()
    markers: set[str] = set()

    def flush_ucs2() -> None:
        if ucs2:
            out.append(bytes(ucs2).decode("utf-16-be", errors="replace"))
            ucs2.clear()

    for part in parts:
        if part.encoding is Encoding.UCS2:
            ucs2.extend(part.data)
            continue
        flush_ucs2()
        if part.encoding in (Encoding.GSM7, Encoding.TEXT):
            out.append(part.text)
        elif part.encoding is Encoding.BINARY:
            markers.add("8bit")
            out.append(part.data.hex().upper())
        else:
            markers.add("undecodable")
            out.append(part.data.hex().upper())
    flush_ucs2()
    marker = "undecodable" if "undecodable" in markers else ("8bit" if markers else None)
    return "".join(out), marker
