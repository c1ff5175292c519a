"""Parsing of one AT command line into commands (ITU-T V.250 5.2 and 5.4, TS 27.007 4).

Owns syntax only: the "AT" prefix, concatenation of basic and extended commands
(``ATE0+CMEE=1;+CMGF=0``), the four extended forms (action, ``?`` read, ``=?`` test,
``=<args>`` set) and argument splitting with quoted strings.  Knows nothing about what a
command means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Form = Literal["exec", "read", "test", "set"]
_EXTENDED_START = "+^$%!#*"


class ParseError(ValueError):
    """The line is not valid V.250 syntax: the modem answers ERROR."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command of a command line.

    ``text`` is the normalised command (upper case and no spaces outside quotes, no "AT"):
    ``"+CMGR=1"``, ``"E0"``, or ``""`` for a bare ``AT``.  ``args`` holds the set-form
    parameters, quotes removed (case kept inside quotes), ``None`` for an omitted one.
    """

    text: str
    name: str
    form: Form
    args: tuple[str | None, ...] = ()

    def matches(self, prefix: str) -> bool:
        return self.text.startswith(normalize_prefix(prefix))

    def arg(self, i: int, default: str | None = None) -> str | None:
        if i < len(self.args) and self.args[i] is not None:
            return self.args[i]
        return default

    def int_arg(self, i: int, default: int | None = None) -> int | None:
        """The integer at position ``i``; ParseError if present and not an integer."""
        raw = self.arg(i)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ParseError(f"{self.name}: parameter {i + 1} is not an integer") from None


def normalize_prefix(prefix: str) -> str:
    """``"at+csq"`` → ``"+CSQ"``: how fault-injection prefixes are compared to commands."""
    p = _normalize(prefix.strip())
    return p[2:] if p.startswith("AT") else p


def _normalize(text: str) -> str:
    out: list[str] = []
    in_quotes = False
    for ch in text:
        if ch == '"':
            in_quotes = not in_quotes
            out.append(ch)
        elif in_quotes:
            out.append(ch)
        elif ch != " ":
            out.append(ch.upper())
    return "".join(out)


def find_prefix(line: str) -> int | None:
    """Index just after the "AT" (or "at") prefix; what precedes it is ignored (V.250 5.2.1)."""
    for i in range(len(line) - 1):
        pair = line[i : i + 2]
        if pair in ("AT", "at"):
            return i + 2
    return None


def split_args(text: str) -> tuple[str | None, ...]:
    args: list[str | None] = []
    current: list[str] = []
    quoted = False
    in_quotes = False
    for ch in text:
        if ch == '"':
            in_quotes = not in_quotes
            quoted = True
        elif ch == "," and not in_quotes:
            args.append(_finish_arg(current, quoted))
            current, quoted = [], False
        else:
            current.append(ch)
    if in_quotes:
        raise ParseError("unterminated string")
    args.append(_finish_arg(current, quoted))
    return tuple(args)


def _finish_arg(chars: list[str], quoted: bool) -> str | None:
    value = "".join(chars)
    if quoted:
        return value
    value = value.strip()
    return value or None


def _parse_extended(segment: str) -> Command:
    text = _normalize(segment)
    cut = len(text)
    for i, ch in enumerate(text):
        if ch in "=?":
            cut = i
            break
    name, rest = text[:cut], text[cut:]
    if len(name) < 2:
        raise ParseError(f"bad command name {segment!r}")
    if rest == "":
        return Command(text, name, "exec")
    if rest == "?":
        return Command(text, name, "read")
    if rest == "=?":
        return Command(text, name, "test")
    if rest.startswith("="):
        # Arguments come from the original segment so quoted strings keep their case.
        raw = segment[segment.index("=") + 1 :]
        return Command(text, name, "set", split_args(raw))
    raise ParseError(f"bad syntax {segment!r}")


def split_command_line(line: str) -> list[Command] | None:
    """Commands of one line (the terminating CR already removed); None without an AT prefix."""
    start = find_prefix(line)
    if start is None:
        return None
    body = line[start:]
    if not body.strip():
        return [Command("", "", "exec")]
    commands: list[Command] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch in " ;":
            i += 1
        elif ch in _EXTENDED_START:
            j, in_quotes = i, False
            while j < n and (in_quotes or body[j] != ";"):
                if body[j] == '"':
                    in_quotes = not in_quotes
                j += 1
            commands.append(_parse_extended(body[i:j]))
            i = j + 1
        elif ch == "&":
            if i + 1 >= n or not body[i + 1].isalpha():
                raise ParseError("bad & command")
            j = i + 2
            while j < n and body[j].isdigit():
                j += 1
            value = body[i + 2 : j]
            name = "&" + body[i + 1].upper()
            commands.append(
                Command(name + value, name, "set" if value else "exec", (value,) if value else ())
            )
            i = j
        elif ch in "Ss" and i + 1 < n and body[i + 1].isdigit():
            j = i + 1
            while j < n and body[j].isdigit():
                j += 1
            name = "S" + str(int(body[i + 1 : j]))
            if j < n and body[j] == "?":
                commands.append(Command(name + "?", name, "read"))
                i = j + 1
            elif j < n and body[j] == "=":
                k = j + 1
                while k < n and body[k].isdigit():
                    k += 1
                value = body[j + 1 : k]
                commands.append(Command(f"{name}={value}", name, "set", (value,)))
                i = k
            else:
                raise ParseError("bad S-register syntax")
        elif ch.isalpha():
            j = i + 1
            while j < n and body[j].isdigit():
                j += 1
            value = body[i + 1 : j]
            name = ch.upper()
            commands.append(
                Command(name + value, name, "set" if value else "exec", (value,) if value else ())
            )
            i = j
        else:
            raise ParseError(f"unexpected {ch!r}")
    return commands
