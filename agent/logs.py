"""Logging setup (structlog) and redaction of SMS content and phone numbers.

Only the CLI calls :func:`configure`; library code and drivers just ``structlog.get_logger()``.
Console rendering on a TTY, one JSON object per line otherwise (journald, files).  Stable keys:
``event``, ``level``, ``timestamp``, ``device``, ``port``, ``sim_id``, ``msg_id``,
``latency_ms``.  Unless ``log.show_content`` is on, values under content keys (``text``,
``number``, ``from``, ``to``, ``sender``) are masked and E.164 numbers inside any string are
masked too, keeping the last two digits so an operator can still tell numbers apart.

Everything else that writes to stderr goes through the same renderer, so under journald every
line is one JSON object: stdlib logging (uvicorn, asyncio, httpx), warnings, uncaught
exceptions in threads, unraisable exceptions, and the event loop's exception handler
(:func:`loop_exception_handler`, which the CLI installs).  Those foreign warnings and errors
are coalesced by :class:`Streaks`: the first of a run of identical ones is logged, the rest
are counted and reported in one line when the run ends, so a storm (an fd limit hit on every
accept) costs a few lines, not megabytes of tracebacks.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass, field
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


# Fields a foreign record may carry (``extra=``) into its JSON line.
_EXTRA_KEYS = ("repeated", "over_s", "error", "errno", "where")


@dataclass
class _Streak:
    level: int
    logger: str
    message: str
    first: float
    last: float
    reported: float
    suppressed: int = 0
    timer: threading.Timer | None = field(default=None, repr=False)


class Streaks(logging.Filter):
    """Coalesce runs of identical foreign warnings and errors.

    Identical means same logger, level, message template, exception type and errno.  The first
    record of a run passes; later ones are counted while they keep coming less than
    ``quiet_s`` apart.  When the run has been quiet for ``quiet_s`` (or every ``report_every_s``
    while it lasts), one record says how many were left out (``repeated``) and over how many
    seconds (``over_s``).  Thread-safe: records come from the loop and from worker threads.
    """

    def __init__(
        self,
        quiet_s: float = 5.0,
        report_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.quiet_s, self.report_every_s, self.clock = quiet_s, report_every_s, clock
        self._lock = threading.Lock()
        self._streaks: dict[Hashable, _Streak] = {}

    @staticmethod
    def key(record: logging.LogRecord) -> Hashable:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        return (record.name, record.levelno, str(record.msg), exc, getattr(record, "errno", None))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or hasattr(record, "repeated"):
            return True
        key, now = self.key(record), self.clock()
        with self._lock:
            streak = self._streaks.get(key)
            if streak is None or now - streak.last >= self.quiet_s:
                self._streaks[key] = _Streak(
                    record.levelno, record.name, str(record.msg), now, now, now
                )
                return True
            streak.last = now
            streak.suppressed += 1
            if streak.timer is None:
                self._arm(key, streak, self.quiet_s)
        return False

    def _arm(self, key: Hashable, streak: _Streak, delay: float) -> None:
        streak.timer = threading.Timer(delay, self._check, (key,))
        streak.timer.daemon = True
        streak.timer.start()

    def _check(self, key: Hashable) -> None:
        with self._lock:
            streak = self._streaks.get(key)
            if streak is None:
                return
            streak.timer = None
            now = self.clock()
            ended = now - streak.last >= self.quiet_s
            if not ended and now - streak.reported < self.report_every_s:
                self._arm(key, streak, max(0.05, self.quiet_s - (now - streak.last)))
                return
            count, since = streak.suppressed, streak.reported
            streak.suppressed, streak.reported = 0, now
            if ended:
                del self._streaks[key]
            else:
                self._arm(key, streak, self.quiet_s)
            if count == 0:
                return
        logging.getLogger(streak.logger).log(
            streak.level,
            "%s",
            streak.message,
            extra={"repeated": count, "over_s": round(now - since, 1)},
        )

    def flush(self) -> None:
        """Report every open streak now (at exit)."""
        with self._lock:
            keys = list(self._streaks)
            for streak in self._streaks.values():
                if streak.timer is not None:
                    streak.timer.cancel()
                    streak.timer = None
                streak.last = float("-inf")
        for key in keys:
            self._check(key)


class _StderrHandler(logging.Handler):
    """Writes formatted records through structlog's stderr logger, under the same lock as
    the agent's own lines, so a foreign line never interleaves with one of ours."""

    def __init__(self) -> None:
        super().__init__()
        self._out = structlog.PrintLogger(file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record))
        except Exception:
            self.handleError(record)


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: one JSON line through logging (so :class:`Streaks`
    coalesces storms).  Resource errors (EMFILE on accept, ENOBUFS, ...) carry their errno,
    not a traceback: the stack says nothing an operator can act on."""
    exc = context.get("exception")
    message = str(context.get("message") or "unhandled exception in the event loop")
    where = context.get("task") or context.get("future") or context.get("handle")
    extra: dict[str, Any] = {"where": repr(where)[:200]} if where is not None else {}
    exc_info: BaseException | None = exc if isinstance(exc, BaseException) else None
    if isinstance(exc, OSError):
        extra["error"] = exc.strerror or str(exc)
        extra["errno"] = errno.errorcode.get(exc.errno or 0, exc.errno)
        exc_info = None
    logging.getLogger("asyncio").error(message, exc_info=exc_info, extra=extra)


_streaks: Streaks | None = None


def configure(level: str = "info", fmt: str = "auto", show_content: bool = False) -> None:
    global _streaks
    numeric = getattr(logging, level.upper(), logging.INFO)
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json_out
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    exc_info = structlog.processors.format_exc_info if json_out else structlog.dev.set_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redactor(show_content),
            exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn, asyncio, httpx) stay quiet unless
    # debugging, and render exactly like the agent's own lines.
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=_EXTRA_KEYS),
                _redactor(show_content),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exc_info,
                renderer,
            ],
        )
    )
    if _streaks is not None:
        _streaks.flush()
    _streaks = Streaks()
    handler.addFilter(_streaks)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING if numeric > logging.DEBUG else logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # A failing handler must not print its own plain-text traceback.
    logging.raiseExceptions = False
    threading.excepthook = _thread_exception
    sys.unraisablehook = _unraisable


def flush_streaks() -> None:
    """Report the counts of open streaks (the CLI calls it before exiting)."""
    if _streaks is not None:
        _streaks.flush()


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("thread").error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def _unraisable(args: Any) -> None:
    exc = args.exc_value
    logging.getLogger("unraisable").error(
        "%s: %r",
        args.err_msg or "exception ignored",
        args.object,
        exc_info=(type(exc), exc, args.exc_traceback) if exc is not None else None,
    )
