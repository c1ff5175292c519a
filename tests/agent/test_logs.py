"""Logging: foreign records coalesced per streak (:class:`agent.logs.Streaks`), the loop's
exception handler, and, in a child process configured as the agent is, every stderr line JSON
whatever wrote it (stdlib loggers, warnings, threads, the event loop)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.logs import Streaks, loop_exception_handler


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Collect, Streaks]]:
    logger = logging.getLogger("test.streaks")
    handler, streaks = Collect(), Streaks(quiet_s=0.2, report_every_s=60)
    handler.addFilter(streaks)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, handler, streaks
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_streak_is_one_line_and_a_count(
    collected: tuple[logging.Logger, Collect, Streaks],
) -> None:
    logger, handler, _ = collected
    for _ in range(500):
        logger.error("accept failed")
    logger.error("something else")
    for _ in range(3):
        logger.info("info is never coalesced")
    assert [r.getMessage() for r in handler.records] == [
        "accept failed",
        "something else",
        *["info is never coalesced"] * 3,
    ]
    wait_for(lambda: any(hasattr(r, "repeated") for r in handler.records))
    summary = [r for r in handler.records if hasattr(r, "repeated")]
    assert len(summary) == 1 and summary[0].getMessage() == "accept failed"
    assert summary[0].repeated == 499 and summary[0].levelno == logging.ERROR  # type: ignore[attr-defined]
    # The streak ended: the next one is logged again.
    logger.error("accept failed")
    assert handler.records[-1].getMessage() == "accept failed"
    assert not hasattr(handler.records[-1], "repeated")


def test_a_long_streak_reports_periodically(
    collected: tuple[logging.Logger, Collect, Streaks],
) -> None:
    logger, handler, streaks = collected
    # Gaps up to quiet_s (0.5 s) keep the streak going; counts come at least every 0.2 s
    # checked once per quiet_s.
    streaks.quiet_s, streaks.report_every_s = 0.5, 0.2
    deadline = time.monotonic() + 1.5
    sent = 0
    while time.monotonic() < deadline:
        logger.warning("still failing")
        sent += 1
        time.sleep(0.01)
    wait_for(lambda: sum(getattr(r, "repeated", 0) for r in handler.records) == sent - 1)
    summaries = [r for r in handler.records if hasattr(r, "repeated")]
    assert len(summaries) >= 2, "no interim count during a long streak"
    assert len(handler.records) == 1 + len(summaries)


def test_loop_exception_handler_logs_resource_errors_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop_exception_handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                },
            )
            loop_exception_handler(loop, {"message": "boom", "exception": ValueError("x")})
    finally:
        loop.close()
    emfile, boom = caplog.records
    assert emfile.getMessage() == "socket.accept() out of system resource"
    assert emfile.errno == "EMFILE" and emfile.exc_info is None  # type: ignore[attr-defined]
    assert boom.exc_info is not None and boom.exc_info[0] is ValueError


CHILD = r"""
import asyncio, logging, threading, warnings, errno
from agent import logs
logs.configure("info", "json")
logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=ValueError("v"))
for _ in range(100):
    logging.getLogger("asyncio").error("noisy")
warnings.warn("a warning")
t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()
async def main():
    asyncio.get_running_loop().set_exception_handler(logs.loop_exception_handler)
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0.05)
asyncio.run(main())
logs.flush_streaks()
"""


def test_every_stderr_line_is_json() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}\n{done.stderr}") from None
    events = [(r.get("logger"), r["event"]) for r in records]
    assert ("uvicorn.error", "Exception in ASGI application") in events
    assert (
        "ValueError: v"
        in records[events.index(("uvicorn.error", "Exception in ASGI application"))]["exception"]
    )
    assert events.count(("asyncio", "noisy")) == 2  # the first, then the count
    assert [r["repeated"] for r in records if r["event"] == "noisy" and "repeated" in r] == [99]
    assert any(r.get("logger") == "py.warnings" for r in records)
    assert any(
        r.get("logger") == "thread" and "ZeroDivisionError" in r.get("exception", "")
        for r in records
    )
    assert any(
        r.get("logger") == "asyncio" and "ZeroDivisionError" in r.get("exception", "")
        for r in records
    )
