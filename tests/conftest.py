"""Suite-wide guards (pymodbus style): a test that leaves threads running fails.

Leaked threads are how a "passing" test hides a reader that never stopped; asyncio's default
executor threads are closed with each test's loop, so anything still alive a moment after the
test is a real leak.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [
            t
            for t in set(threading.enumerate()) - before
            if t.is_alive() and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left threads running: {[t.name for t in leaked]}"
