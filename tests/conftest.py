"""Suite-wide settings and guards.

Hypothesis profiles: CI (``CI`` set, as ``.ci/run`` runs) loads ``ci``, which is derandomized:
every run draws the same examples, so a property test cannot pass on one run and fail on the
next.  Local runs load ``dev``: the randomized search, which keeps finding new cases (and
records them in ``.hypothesis/``).  ``HYPOTHESIS_PROFILE=ci|dev`` picks one explicitly.

Thread guard (pymodbus style): a test that leaves threads running fails.  Leaked threads are
how a "passing" test hides a reader that never stopped; asyncio's default executor threads are
closed with each test's loop, so anything still alive a moment after the test is a real leak.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings

from agent.logs import flush_streaks

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    # A test that configured the agent's logging may have left a streak of repeated library
    # errors open, whose report waits on a timer thread: report it now, as the CLI does at
    # exit, so the timer ends with the test.
    flush_streaks()
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
