"""From a stored PDU to the core's :class:`~drivers.base.SmsPart`, and the ack token that
deletes exactly that message later.

Owns: the mapping of :class:`~drivers.at.pdu.Deliver` fields to ``SmsPart``, the rule that a PDU
we cannot decode is still forwarded (``UNDECODABLE``, raw bytes kept) and that one decoded
despite a defect carries it (``SmsPart.malformed``), and the token format.
Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import NamedTuple

from drivers.at.commands import StoredPdu
from drivers.at.pdu import Deliver, PduError, StatusReport, parse_pdu, raw_tpdu
from drivers.base import Encoding, SmsPart


class AckToken(NamedTuple):
    """Where a part was read, and a digest of what was read there.

    The digest lets ``ack`` check, right before ``AT+CMGD``, that the index still holds the
    message that was committed: after a lost OK or a duplicate ack the index may already hold
    a newer SMS, which must not be deleted unread.
    """

    port: str
    iccid: str
    storage: str
    location: int  # the <index> of TS 27.005 ("index" would shadow tuple.index)
    digest: str


class Decoded(NamedTuple):
    part: SmsPart | None  # None for a status report: delete it, emit nothing
    error: str | None  # why the PDU was not decodable (part is then UNDECODABLE)


def digest(pdu_hex: str) -> str:
    return hashlib.sha256(pdu_hex.strip().upper().encode("ascii", "replace")).hexdigest()[:32]


def token_for(port: str, iccid: str, storage: str, stored: StoredPdu) -> AckToken:
    return AckToken(port, iccid, storage, stored.index, digest(stored.pdu))


def decode(port: str, iccid: str, pdu_hex: str, token: AckToken | None) -> Decoded:
    """The event for one stored (or ``+CMT``-routed) PDU.  Never raises on bad input."""
    ack_token: Hashable = token if token is not None else ("unstored", port, digest(pdu_hex))
    try:
        msg = parse_pdu(pdu_hex)
    except PduError as exc:
        # The same TPDU bytes Deliver.tpdu would hold, so the message id does not depend on
        # whether the decoder understood the PDU; forwarded as hex (Encoding.UNDECODABLE).
        raw = raw_tpdu(pdu_hex)
        part = SmsPart(
            port=port,
            iccid=iccid,
            sender="",
            sent_at=None,
            encoding=Encoding.UNDECODABLE,
            raw=raw,
            ack_token=ack_token,
            data=raw,
        )
        return Decoded(part, str(exc))
    if isinstance(msg, StatusReport):
        return Decoded(None, None)
    assert isinstance(msg, Deliver)
    part = SmsPart(
        port=port,
        iccid=iccid,
        sender=msg.sender,
        sent_at=msg.sent_at,
        encoding=msg.encoding,
        raw=msg.tpdu,
        ack_token=ack_token,
        text=msg.text,
        data=msg.data,
        concat=msg.concat,
        flash=msg.flash,
        malformed=msg.malformed,
    )
    return Decoded(part, None)
