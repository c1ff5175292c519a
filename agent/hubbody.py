"""Reading one hub answer within bounds: the size cap, gzip/deflate, and JSON nesting depth.

A hub answer is untrusted input to a daemon that must not stop (issue #12).  An endless
chunked body or a gzip bomb must not grow the agent's memory, and JSON nested 100,000 deep
must not raise ``RecursionError`` out of ``json.loads``.  So:

* :func:`read_body` streams the *raw* bytes (``aiter_raw``) and decodes them itself with
  ``zlib`` and an output limit: memory never holds more than the cap plus one network chunk,
  whatever the compression ratio.  (httpx's own decoder inflates each network chunk in full,
  about 64 MiB for one 64 KiB chunk of a bomb.)
* :func:`parse_json` refuses nesting deeper than any protocol answer has, before parsing.

Both report a body they refuse as :class:`BodyError`, with a short reason that never quotes
the body.  The client classifies it as transient (PROTOCOL.md section 2: "a body that is not
the JSON expected").
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

import httpx

#: The deepest JSON nesting accepted.  PROTOCOL.md answers nest three levels
#: (``{"commands": [{...}]}``); 32 leaves room for fields a hub may add, and keeps every later
#: ``json.dumps`` of a command far from the interpreter's recursion limit.
MAX_JSON_DEPTH = 32

#: The codings the agent asks for and decodes.  Anything else is refused rather than guessed.
ACCEPT_ENCODING = "gzip, deflate"

# 32 + 15: zlib detects a gzip (RFC 1952) or zlib (RFC 1950, HTTP "deflate") header itself.
_WBITS = 32 + zlib.MAX_WBITS
# A JSON string (escapes included) or a bracket.  Strings are matched whole so brackets inside
# them do not count; the possessive quantifiers keep an unterminated string linear.
_STEP = 256 * 1024
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


class BodyError(Exception):
    """A hub answer the agent refuses to read: too large, badly encoded, or nested too deep."""


def too_large(limit: int) -> BodyError:
    return BodyError(f"answer larger than {limit // (1 << 20)} MiB; dropped unread")


class _Inflater:
    """gzip or zlib-wrapped deflate, inflated with an output limit."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(_WBITS)

    def feed(self, data: bytes, body: bytearray, limit: int) -> None:
        """Append what ``data`` inflates to onto ``body``, never more than ``limit`` bytes
        in all (one more byte than that is enough to know the answer is too large)."""
        try:
            while data:
                z = self._z
                # In steps, so no more than one step exists twice (as bytes, then in body).
                body += z.decompress(data, min(limit - len(body) + 1, _STEP))
                if len(body) > limit:
                    raise too_large(limit)
                data = z.unconsumed_tail  # the input left when the step filled up
                if z.eof and z.unused_data:
                    # A gzip file may hold several members, one after another (RFC 1952 2.2).
                    data = z.unused_data
                    self._z = zlib.decompressobj(_WBITS)
        except zlib.error:
            raise BodyError("compressed answer is corrupt") from None

    @property
    def complete(self) -> bool:
        return self._z.eof


def _inflater(content_encoding: str) -> _Inflater | None:
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater()
    raise BodyError(f"unsupported Content-Encoding {content_encoding[:40]!r}")


async def read_body(response: httpx.Response, limit: int) -> bytearray:
    """The decoded body of a streamed ``response``, or :class:`BodyError` once it passes
    ``limit`` bytes (raw or decoded); the caller then closes the stream unread."""
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    inflater = _inflater(response.headers.get("content-encoding", ""))
    body = bytearray()
    raw = 0
    async for chunk in response.aiter_raw():
        raw += len(chunk)
        if raw > limit:  # compressed bodies are capped too: a body that inflates to nothing
            raise too_large(limit)
        if inflater is None:
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
        else:
            inflater.feed(chunk, body, limit)
    if inflater is not None and raw and not inflater.complete:
        raise BodyError("compressed answer ends early")
    return body


def json_too_deep(body: bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` nests arrays/objects deeper than ``limit`` (strings are skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the common case: too few brackets to be that deep, no scan needed
    depth = 0
    for match in _TOKENS.finditer(body):
        token = body[match.start()]
        if token in b"[{":
            depth += 1
            if depth > limit:
                return True  # stops at once, however deep the rest goes
        elif token in b"]}":
            depth -= 1
    return False


def parse_json(body: bytes | bytearray) -> Any:
    """``json.loads`` that raises only :class:`BodyError`."""
    if json_too_deep(body):
        raise BodyError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body)
    except RecursionError:  # unreachable after the depth check; kept so nothing escapes
        raise BodyError("JSON nested too deep") from None
    except ValueError:  # includes UnicodeDecodeError and Python's int digit limit
        raise BodyError("not JSON") from None
