"""The outbox figures that ``/status``, ``/metrics`` and systemd's ``STATUS=`` line show.

Owns reading them: on the store's admin connection and thread (never the sender's), at most
once per ``max_age_s``, with concurrent callers awaiting the same query.  A flood of 2,000
``GET /metrics`` therefore costs a handful of queries, and none of them waits in line in front
of delivery's reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.store import AsyncStore, Store

MAX_AGE_S = 0.25


@dataclass(frozen=True)
class OutboxFigures:
    depth: int = 0
    oldest: float | None = None  # stored_at of the oldest queued message
    dead: int = 0
    pending: int = 0  # multipart parts waiting for their siblings


def _read(reader: Store) -> OutboxFigures:
    depth, oldest = reader.outbox_stats()
    return OutboxFigures(depth, oldest, reader.dead_letter_count(), reader.pending_parts())


class OutboxStats:
    def __init__(
        self,
        store: AsyncStore,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.clock = clock
        self.current = OutboxFigures()
        self.queries = 0
        self._read_at = float("-inf")
        self._inflight: asyncio.Future[OutboxFigures] | None = None

    async def get(self) -> OutboxFigures:
        """Figures no older than ``max_age_s`` (measured from when their query started)."""
        if self.clock() - self._read_at < self.max_age_s:
            return self.current
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        # shield: a caller that goes away (a client disconnecting) must not cancel the query
        # the other callers are waiting on.
        return await asyncio.shield(self._inflight)

    async def _refresh(self) -> OutboxFigures:
        started = self.clock()
        try:
            self.queries += 1
            figures = await self.store.read_admin(_read, self.store.admin_reader)
        finally:
            self._inflight = None
        self.current, self._read_at = figures, started
        return figures
