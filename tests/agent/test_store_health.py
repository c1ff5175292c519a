"""Store write failures at run time, on a real SQLite file: health, retries, the snapshot seq.

SQLITE_FULL comes from ``PRAGMA max_page_count``, SQLite's own page limit, which fails a
commit exactly as a full disk does; the real full disk (a tmpfs) is in
tests/e2e/test_store_faults.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from agent import store as store_module
from agent.store import AsyncStore, Store, StoreHealth, error_kind
from agent.uplink import SnapshotSeq
from tests.agent.test_store import T0, part


def cap(store: Store) -> None:
    """Make every commit that needs a new page fail with SQLITE_FULL."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")


def uncap(store: Store) -> None:
    store._db.execute("PRAGMA max_page_count=1000000")


def big_batch(tag: str) -> list[object]:
    return [part("x" * 150, tag=f"{tag}{i}") for i in range(100)]


def test_failed_write_is_recorded_and_cleared_only_after_failures_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WRITABLE_AFTER_S", 0.3)

    async def main() -> None:
        s = AsyncStore(Store(tmp_path / "agent.db"))
        try:
            await s.attempt(s.store.ingest, [part("before")], now=T0, reassembly_timeout_s=600)
            assert s.health.writable and s.health.last_ok is not None
            cap(s.store)
            with pytest.raises(sqlite3.OperationalError):
                await s.attempt(s.store.ingest, big_batch("a"), now=T0, reassembly_timeout_s=600)
            h = s.health.as_dict()
            assert h["writable"] is False and h["error"] == "disk full"
            assert h["write_errors"] == 1 and h["since"] and "ingest" in h["last_error"]
            # A settle (deletes, updates) may still fit while inserts fail: one success
            # right after a failure does not end the streak.
            rows = await s.read(s.reader.peek, 0, 10)
            await s.attempt(s.store.settle, rows, [rows[0].id], {}, now=T0 + 1)
            assert s.health.as_dict()["writable"] is False
            # A transaction that changed nothing proves nothing either.
            await s.attempt(s.store.expire_partials, now=T0, timeout=600)
            uncap(s.store)
            time.sleep(0.35)
            await s.attempt(s.store.ingest, big_batch("b"), now=T0, reassembly_timeout_s=600)
            h = s.health.as_dict()
            assert h["writable"] is True and h["error"] is None and h["since"] is None
            assert h["write_errors"] == 1  # the count stays: it is a counter
        finally:
            s.close()

    asyncio.run(main())


def test_call_waits_and_succeeds_once_space_returns(tmp_path: Path) -> None:
    async def main() -> None:
        s = AsyncStore(Store(tmp_path / "agent.db"))
        try:
            cap(s.store)
            task = asyncio.create_task(
                s.call(s.store.ingest, big_batch("c"), now=T0, reassembly_timeout_s=600)
            )
            while not s.health.errors:
                await asyncio.sleep(0.01)
            assert not task.done()
            await s.attempt(uncap, s.store)
            result = await asyncio.wait_for(task, 10)
            assert result.messages == 100
            assert not s.store._db.in_transaction
        finally:
            s.close()

    asyncio.run(main())


def test_error_kinds() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    ioerr = sqlite3.OperationalError("disk I/O error")
    ioerr.sqlite_errorname = "SQLITE_IOERR_WRITE"  # type: ignore[attr-defined]
    ro = sqlite3.OperationalError("attempt to write a readonly database")
    ro.sqlite_errorname = "SQLITE_READONLY_DBMOVED"  # type: ignore[attr-defined]
    assert [error_kind(e) for e in (full, ioerr, ro)] == ["disk full", "I/O error", "read-only"]
    assert error_kind(sqlite3.DatabaseError("database disk image is malformed")) == (
        "database corrupt"
    )
    health = StoreHealth()
    health.failed("ingest", full)
    health.failed("settle", ioerr)
    assert health.errors == {"disk full": 1, "I/O error": 1}
    assert health.kind == "I/O error"


def test_snapshot_seq_grows_across_restarts_even_when_never_saved() -> None:
    now = [1_800_000_000.0]
    first = SnapshotSeq(stored=0, clock=lambda: now[0])
    issued = [first.next() for _ in range(3)]  # three snapshots in the same millisecond
    assert issued == [1_800_000_000_000, 1_800_000_000_001, 1_800_000_000_002]
    now[0] += 0.5  # a restart half a second later; no save ever reached the store
    again = SnapshotSeq(stored=0, clock=lambda: now[0])
    assert again.next() > issued[-1]


def test_snapshot_seq_survives_a_clock_stepped_back_through_the_saved_value() -> None:
    now = [1_800_000_000.0]
    seq = SnapshotSeq(stored=0, clock=lambda: now[0])
    saved = seq.next()
    now[0] -= 3600  # NTP stepped the clock back an hour before the restart
    after = SnapshotSeq(stored=saved, clock=lambda: now[0])
    assert after.next() == saved + 1
    # An older store (seq counted 1, 2, 3…) moves on to the clock at once.
    assert SnapshotSeq(stored=118, clock=lambda: now[0]).next() == int(now[0] * 1000)
