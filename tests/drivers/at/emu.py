"""Harness for driving :class:`AtDriver` against emulated modems on real ptys and TCP ports.

``fast_timeouts`` shrinks every module constant the driver waits on, so a hang, a reset or a
reconnect takes tenths of a second.  :class:`Harness` runs a driver, collects its events and
waits for conditions on them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.at import actions, commands, framing, port, port_base, recovery, session
from drivers.at.driver import AtConfig, AtDriver
from drivers.base import DriverContext, Event, SimGone, SimPresent, SmsPart, UssdRecipe
from tests.support.pdu_encoder import encode_deliver

E = TypeVar("E")
WHEN = datetime(2026, 11, 26, 15, 1, 9, tzinfo=UTC)


def fast_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "quick": 0.5,
        "default": 0.8,
        "sim": 0.8,
        "list": 1.5,
        "network": 2.0,
    }.items():
        monkeypatch.setitem(commands.TIMEOUTS, key, value)
    monkeypatch.setattr(framing, "RESYNC_QUIET_S", 0.02)
    monkeypatch.setattr(framing, "RESYNC_MAX_S", 0.3)
    monkeypatch.setattr(framing, "RESYNC_PING_TIMEOUT_S", 0.4)
    monkeypatch.setattr(port_base, "RECONNECT_INITIAL_S", 0.05)
    monkeypatch.setattr(port_base, "RECONNECT_CAP_S", 0.3)
    monkeypatch.setattr(recovery, "RESET_SETTLE_S", 0.3)
    monkeypatch.setattr(port, "ACK_RETRY_DELAYS_S", (0.05, 0.1, 0.1))
    monkeypatch.setattr(actions, "REGISTRATION_WAIT_S", 2.0)
    monkeypatch.setattr(actions, "REGISTRATION_POLL_S", 0.05)
    monkeypatch.setattr(actions, "USSD_REPLY_TIMEOUT_S", 2.0)
    monkeypatch.setattr(actions, "DISCOVERY_REGISTRATION_WAIT_S", 2.0)
    monkeypatch.setattr(session, "SIM_BUSY_DELAYS_S", (0.05, 0.1))


def sms(text: str, sender: str = "+79001234567", **kw: Any) -> str:
    return encode_deliver(sender, text, sent_at=kw.pop("sent_at", WHEN), **kw)


class Harness:
    """One driver, its events, and helpers to wait on them."""

    def __init__(
        self,
        ports: list[str],
        *,
        state_dir: Path,
        numbers: dict[str, str] | None = None,
        recipes: tuple[UssdRecipe, ...] = (),
        **config: Any,
    ) -> None:
        cfg: dict[str, Any] = {"name": "pool", "driver": "at", "poll_s": 30.0, "sweep_s": 30.0}
        cfg.update(config)
        if len(ports) == 1:
            cfg["port"] = ports[0]
        else:
            cfg["ports"] = ports
        known = numbers or {}
        self.context = DriverContext(
            device="pool",
            state_dir=state_dir,
            cached_number=lambda iccid: known.get(iccid),
            number_recipes=recipes,
        )
        self.driver = AtDriver(AtConfig(**cfg), self.context)
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.driver.connect()
        self._reader = asyncio.create_task(self._read(), name="test:events")

    async def _read(self) -> None:
        async for event in self.driver.events():
            self.events.append(event)
            self._changed.set()

    async def stop(self) -> None:
        await self.driver.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(
        self, kind: type[E], pred: Callable[[E], bool] = lambda _e: True, timeout: float = 5.0
    ) -> E:
        """The first event of ``kind`` satisfying ``pred`` (already seen or yet to come)."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[seen:]:
                    if isinstance(event, kind) and pred(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def wait_new(
        self, kind: type[E], pred: Callable[[E], bool] = lambda _e: True, timeout: float = 5.0
    ) -> E:
        """Like :meth:`wait`, ignoring events already received."""
        start = len(self.events)
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[start:]:
                    if isinstance(event, kind) and pred(event):
                        return event
                start = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def sim(self, port: str = "pool/0", timeout: float = 5.0) -> SimPresent:
        return await self.wait(SimPresent, lambda e: e.info.port == port, timeout)

    async def part(self, pred: Callable[[SmsPart], bool] = lambda _p: True, **kw: Any) -> SmsPart:
        return await self.wait(SmsPart, pred, **kw)

    async def gone(self, port: str = "pool/0", timeout: float = 5.0) -> SimGone:
        return await self.wait_new(SimGone, lambda e: e.port == port, timeout)


async def until(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(step)
