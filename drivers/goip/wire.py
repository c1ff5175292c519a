"""GoIP UDP wire format: parse what a line sends, format what the server sends back.

Owns the text grammar of research/gateways.md section 2 and Appendix A, nothing else (no
sockets, no state).  Every datagram is hostile until proven otherwise: the parser is bounded
(size, field count), never raises anything but :class:`WireError`, and costs O(size).

Three shapes reach the server:

* keepalive ``req:$count;id:$id;pass:$pw;num:…;signal:…;gsm_status:LOGIN|LOGOUT;…`` (A.2);
* pushes ``KIND:$recvid;id:$id;password:$pw;…`` (A.4: RECEIVE, DELIVER, STATE, RECORD, REMAIN,
  CELLS; HANGUP and EXPIRY exist undocumented, section 2.4), each acknowledged
  ``KIND $recvid OK``;
* replies to our commands ``$verb $sendid …`` or ``ERROR $sendid $errmsg`` (A.1, A.5).

Quirks handled here, each from the research:

* fields split at the FIRST ``:`` only: newer firmware sends values with ``:`` and ``,``
  (``CELLINFO:LAC:7E5,CELL ID:5E5B``, section 2.2);
* ``msg`` is the last field of RECEIVE and is taken verbatim to the end of the datagram, since
  the SMS text may contain ``;`` and ``:`` (section 2.3);
* the password key is ``password:`` in the format but ``pass:`` in the vendor's own RECEIVE
  example and in keepalives: both are accepted everywhere (A.4);
* the text is UTF-8 (A.4); undecodable bytes are kept with ``surrogateescape`` so a message's
  exact bytes still reach ``SmsPart.raw`` (two different byte strings never collapse into one).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bigger datagrams are dropped unread.  A RECEIVE carries one SMS segment (section 2.3: long
#: SMS arrive one segment per RECEIVE), at most a few hundred bytes of UTF-8; the largest thing
#: the protocol moves is a 3000-byte bulk-send text (A.3), which flows server -> GoIP only.
MAX_DATAGRAM = 4096
#: Fields beyond this many are ignored (a real keepalive has about twenty, section 2.2).
MAX_FIELDS = 48
#: Push kinds a GoIP sends and expects ``KIND $recvid OK`` for (A.4, section 2.4).
PUSH_KINDS = frozenset(
    {"RECEIVE", "DELIVER", "STATE", "RECORD", "REMAIN", "CELLS", "HANGUP", "EXPIRY"}
)
_MAX_ID = 20  # digits of a recvid / count / sendid: a 64-bit integer at most


class WireError(ValueError):
    """The datagram is not a well-formed GoIP message; ``str()`` is a short reason."""


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A line's periodic registration (A.2)."""

    count: str  # echoed in ``reg:$count;status:200;``; digits
    line: str
    password: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Push:
    """A GoIP-originated message that wants ``KIND $recvid OK`` (A.4)."""

    kind: str
    recvid: str  # digits
    line: str
    password: str
    fields: dict[str, str]
    msg: str | None = None  # RECEIVE only: everything after ``msg:``, surrogate-escaped


@dataclass(frozen=True, slots=True)
class Reply:
    """The GoIP's answer to a command of ours: ``$verb $sendid [$rest]`` (A.5)."""

    verb: str
    sendid: int
    rest: str


Message = Keepalive | Push | Reply


def decode(data: bytes) -> str:
    """Bytes as text, losslessly (undecodable bytes survive as surrogates)."""
    return data.decode("utf-8", "surrogateescape")


def exact_bytes(text: str) -> bytes:
    """The original bytes of a :func:`decode`-d string."""
    return text.encode("utf-8", "surrogateescape")


def readable(text: str) -> str:
    """A surrogate-escaped string as clean text (bad bytes become U+FFFD)."""
    return exact_bytes(text).decode("utf-8", "replace")


def _digits(value: str, what: str) -> str:
    if not value or len(value) > _MAX_ID or not value.isascii() or not value.isdigit():
        raise WireError(f"bad {what}")
    return value


def _fields(text: str, start: int) -> tuple[dict[str, str], str | None]:
    """``key:value;`` fields from ``start``; the first ``msg`` key ends the walk (its value
    is the rest of the datagram).  The first occurrence of a key wins."""
    out: dict[str, str] = {}
    pos, end = start, len(text)
    while pos < end and len(out) < MAX_FIELDS:
        if text.startswith("msg:", pos):
            return out, text[pos + 4 :]
        semi = text.find(";", pos)
        if semi < 0:
            semi = end
        key, sep, value = text[pos:semi].partition(":")
        key = key.strip()
        if sep and key:
            out.setdefault(key, value)
        pos = semi + 1
    return out, None


def _credentials(fields: dict[str, str]) -> tuple[str, str]:
    line = fields.get("id")
    password = fields.get("password", fields.get("pass"))
    if not line:
        raise WireError("no id")
    if password is None:
        raise WireError("no password")
    return line, password


def parse(data: bytes) -> Message:
    """One datagram as a :data:`Message`; raises :class:`WireError` otherwise."""
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized")
    text = decode(data).rstrip("\r\n\x00")
    # The head is what precedes the first ':' (push, keepalive) or ' ' (reply).
    colon, space = text.find(":"), text.find(" ")
    if colon > 0 and (space < 0 or colon < space):
        head = text[:colon]
        semi = text.find(";", colon)
        if semi < 0:
            raise WireError("no fields")
        first = text[colon + 1 : semi]
        if head == "req":
            fields, _ = _fields(text, semi + 1)
            line, password = _credentials(fields)
            return Keepalive(_digits(first, "count"), line, password, fields)
        if head in PUSH_KINDS:
            fields, msg = _fields(text, semi + 1)
            line, password = _credentials(fields)
            if head == "RECEIVE" and msg is None:
                raise WireError("RECEIVE without msg")
            return Push(head, _digits(first, "recvid"), line, password, fields, msg)
        raise WireError("unknown message")
    if space > 0:
        verb, _, tail = text.partition(" ")
        sendid, _, rest = tail.partition(" ")
        if len(verb) > 32 or not verb.isascii():
            raise WireError("unknown message")
        return Reply(verb, int(_digits(sendid, "sendid")), rest)
    raise WireError("unknown message")


# -- what the server sends -----------------------------------------------------------------


def keepalive_ack(count: str) -> bytes:
    """``reg:$count;status:200;`` (A.2: the vendor form; some clients answer ``req:``)."""
    return f"reg:{count};status:200;".encode()


def push_ack(kind: str, recvid: str) -> bytes:
    return f"{kind} {recvid} OK".encode()


def push_error(kind: str, recvid: str, reason: str) -> bytes:
    return f"{kind} {recvid} ERROR {reason}".encode()


def command(verb: str, sendid: int, *args: str) -> bytes:
    """``$verb $sendid $args…``; the caller orders the arguments as A.5 lists them (the
    password is last for most commands, second for USSD)."""
    return " ".join((verb, str(sendid), *args)).encode()
