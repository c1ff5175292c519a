"""Shape rules for configuration values, shared by the file, the environment and secret files.

Owns three things that :mod:`agent.config` applies before and after pydantic validation:

* :func:`shown` / :func:`cut`: what an error message may repeat of an operator's value.  A value
  is cut to :data:`SHOWN_CHARS` characters, so a 10 MB string in a config produces a one-line
  error, not a 10 MB one; :func:`limit_lines` caps the number and width of error lines.
* :func:`token_problem`: the rule for values that travel in HTTP headers (the API key as
  ``Authorization: Bearer …``, ``agent.id`` as ``X-Agent-Id``) and the signing secret (an HMAC
  key the hub must reproduce byte for byte): visible ASCII only (``!`` to ``~``).  httpx refuses
  anything else only when the first request is built (``UnicodeEncodeError``, ``Illegal header
  value``), that is after ``check`` said OK and in a loop that restarts forever; so the rule is
  applied when the config is loaded.  The problem is described, the value never repeated.
* :func:`structure_problem`: nesting deeper than :data:`MAX_DEPTH` and NUL characters anywhere
  (keys included).  No config key nests deeper than a few levels, and pydantic and ``os`` calls
  fail on those inputs with ``RecursionError`` or ``ValueError`` tracebacks instead of errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Characters of an operator's value an error message repeats.
SHOWN_CHARS = 80
#: No config nests deeper than ``devices[0].ports[1]`` (3 levels); 16 leaves room for drivers.
MAX_DEPTH = 16
#: Error lines reported at most, and their width; the rest is counted.
MAX_LINES = 40
MAX_LINE_CHARS = 400


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` shortened to ``limit`` characters with the count of what was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut to :data:`SHOWN_CHARS`."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        # repr of a 10 MB string would be built whole first; cut the string itself.
        return cut(repr(value[:SHOWN_CHARS]), SHOWN_CHARS + 2) + f" ({len(value)} characters)"
    return cut(repr(value))


def limit_lines(lines: Iterable[str]) -> str:
    """Join error lines, each cut to :data:`MAX_LINE_CHARS`, at most :data:`MAX_LINES` of them."""
    out: list[str] = []
    extra = 0
    for line in lines:
        if len(out) < MAX_LINES:
            out.append(cut(line, MAX_LINE_CHARS))
        else:
            extra += 1
    if extra:
        out.append(f"... and {extra} more errors")
    return "\n".join(out)


def token_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header token (``None``: it can).  Never quotes it."""
    if value != value.strip():
        return "has leading or trailing whitespace (a pasted space or newline?)"
    for ch in value:
        if ch in " \t":
            return "contains whitespace"
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return "contains a control character"
        if ord(ch) > 0x7E:
            return "contains a non-ASCII character (only visible ASCII is allowed)"
    return None


def structure_problem(data: Any) -> tuple[tuple[int | str, ...], str] | None:
    """The first place (a key path) where ``data`` nests too deep or holds a NUL character.

    Iterative on purpose: a recursive walk would itself hit the recursion limit it guards.
    """
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict | list):
            if len(loc) >= MAX_DEPTH:
                return loc, f"nested deeper than {MAX_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\x00" in key:
                    return (*loc, key), "a key contains a NUL character"
                stack.append(((*loc, key), item))
        elif isinstance(value, str) and "\x00" in value:
            return loc, "contains a NUL character"
    return None
