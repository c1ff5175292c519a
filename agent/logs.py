"""Logging setup (structlog) and redaction of SMS content and phone numbers.

Only the CLI calls :func:`configure`; library code and drivers just ``structlog.get_logger()``.
Console rendering on a TTY, one JSON object per line otherwise (journald, files).  Stable keys:
``event``, ``level``, ``timestamp``, ``device``, ``port``, ``sim_id``, ``msg_id``,
``latency_ms``.  Unless ``log.show_content`` is on, values under content keys (``text``,
``number``, ``from``, ``to``, ``sender``) are masked and E.164 numbers inside any string are
masked too, keeping the last two digits so an operator can still tell numbers apart.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

CONTENT_KEYS = frozenset({"text", "number", "from", "to", "sender", "body", "forward_to"})
_NUMBER = re.compile(r"\+?\d{7,15}")


def mask_number(value: str) -> str:
    return _NUMBER.sub(lambda m: "…" + m.group(0)[-2:], value)


def _redactor(show_content: bool) -> structlog.types.Processor:
    def redact(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if show_content:
            return event
        for key, value in list(event.items()):
            if key in CONTENT_KEYS and value is not None:
                event[key] = "<redacted>" if key in ("text", "body") else mask_number(str(value))
        return event

    return redact


def configure(level: str = "info", fmt: str = "auto", show_content: bool = False) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json_out
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redactor(show_content),
            structlog.processors.format_exc_info if json_out else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn, httpx) stay quiet unless debugging.
    logging.basicConfig(
        level=logging.WARNING if numeric > logging.DEBUG else logging.DEBUG,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
