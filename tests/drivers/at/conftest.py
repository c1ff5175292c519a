"""Fixtures for AT driver tests: a modem server thread per test, fast timeouts, a harness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.drivers.at.emu import Harness, fast_timeouts
from tests.emulator import ModemServer


@pytest.fixture
def server() -> Iterator[ModemServer]:
    with ModemServer(name="test-modems") as srv:
        yield srv


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_timeouts(monkeypatch)


@pytest.fixture
async def harness(fast: None, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await harness([url, ...], **config)``: a started driver; stopped and checked after."""
    made: list[Harness] = []

    async def make(ports: list[str], **kw: Any) -> Harness:
        h = Harness(ports, state_dir=tmp_path, **kw)
        made.append(h)
        await h.start()
        return h

    yield make
    for h in made:
        await h.stop()
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not left, f"driver left tasks running: {[t.get_name() for t in left]}"
