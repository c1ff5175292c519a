"""The start-up check on real files: what is refused, what is moved aside, what is salvaged.

The end-to-end versions (a real ``vsim-agent run`` with 300 queued SMS, its exit code and
``/status``) are in tests/e2e/test_store_faults.py; these pin the decisions one by one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from agent.store import Store, StoreError, quick_check
from agent.storecheck import incident_message, marker_path, open_store
from tests.agent.test_store import T0, part

ROOT = os.geteuid() == 0


def queued_store(db: Path, n: int = 50) -> list[str]:
    """A store as the agent leaves it: opened through the check (marker written), ``n``
    messages queued, closed (WAL checkpointed).  The texts, in order."""
    store = open_store(db, version="test").store
    texts = [f"queued {i:03d} " + "x" * 120 for i in range(n)]
    store.ingest(
        [part(t, tag=str(i)) for i, t in enumerate(texts)], now=T0, reassembly_timeout_s=600
    )
    store.set_desired("89701012345678901234", enabled=False, now=T0)
    store.driver_state_set("bank1", "rotation", "3,1,2")
    # Part 1 of 2 waits for its sibling: acked to its SIM already, it exists only here.
    store.ingest([part("first half ", ref=7, no=1, total=2)], now=T0, reassembly_timeout_s=600)
    store.command_start({"id": "c-9", "type": "disable", "sim_id": "8970"}, now=T0)
    store.command_finish("c-9", {"ok": True, "state": "disabled"}, now=T0)
    store.close()
    assert not Path(f"{db}-wal").exists()
    return texts


def outbox_texts(store: Store) -> list[str]:
    return [json.loads(r.body)["text"] for r in store.peek(0, 10_000)]


def test_fresh_store_is_created_private_with_a_marker(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        opened = open_store(tmp_path / "state" / "agent.db", version="test")
    finally:
        os.umask(old)
    opened.store.close()
    assert opened.incident is None
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "agent.db").stat().st_mode & 0o777 == 0o600
    assert marker_path(tmp_path / "state" / "agent.db").exists()


def test_a_store_left_open_is_tightened_but_a_chosen_directory_left_alone(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state" / "agent.db"
    queued_store(db, 1)
    db.parent.chmod(0o755)
    db.chmod(0o644)
    open_store(db, version="test").store.close()
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o755  # could be /tmp: warned, not changed


def test_state_dir_is_exactly_0700_even_under_an_odd_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # takes the owner's write bit away
    try:
        open_store(tmp_path / "state" / "agent.db", version="test").store.close()
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "agent.db").stat().st_mode & 0o777 == 0o600


def test_a_foreign_file_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    db.write_bytes(b"this is somebody's notes file\n" * 100)
    with pytest.raises(StoreError, match=r"agent\.db is not an SQLite database.*refusing"):
        open_store(db, version="test")
    assert db.read_bytes().startswith(b"this is somebody's")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.db"]


@pytest.mark.skipif(not ROOT, reason="chown to another user needs root")
def test_a_store_of_another_user_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    queued_store(db, 1)
    os.chown(db, 65534, 65534)
    with pytest.raises(StoreError) as err:
        open_store(db, version="test")
    assert str(db) in str(err.value) and "uid 65534" in str(err.value)


def test_emptied_store_with_marker_is_an_incident_not_a_fresh_start(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    queued_store(db, 5)
    marker = json.loads(marker_path(db).read_text())
    marker["queued_at_stop"] = 5
    marker_path(db).write_text(json.dumps(marker))
    db.write_bytes(b"")
    opened = open_store(db, version="test")
    inc = opened.incident
    assert inc is not None and inc["reason"] == "the file is empty (0 bytes)"
    assert inc["queued_at_stop"] == 5
    moved = Path(inc["moved_to"])
    assert (
        moved.exists() and moved.stat().st_size == 0 and moved.name.startswith("agent.db.damaged-")
    )
    assert "it held 5 at its last clean stop" in incident_message(inc)
    # Recorded in the fresh store, so every later start shows it until acknowledged.
    assert opened.store.incidents() == [inc]
    opened.store.close()
    again = open_store(db, version="test")
    assert again.incident is None and len(again.store.incidents()) == 1
    assert again.store.ack_incidents() == 1 and again.store.incidents() == []
    again.store.close()


def test_missing_store_with_marker_is_an_incident(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    queued_store(db, 1)
    db.unlink()
    opened = open_store(db, version="test")
    assert opened.incident is not None and opened.incident["reason"] == "the file is missing"
    assert opened.incident["moved_to"] is None
    opened.store.close()


def test_damaged_header_is_moved_aside_and_every_queued_row_salvaged(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    texts = queued_store(db)
    with db.open("r+b") as f:
        f.write(b"\0" * 16)
    damaged = db.read_bytes()
    opened = open_store(db, version="test")
    inc = opened.incident
    assert inc is not None and inc["reason"] == "the SQLite header is damaged"
    assert inc["salvaged"] == {
        "outbox": 50,
        "dead_letters": 0,
        "sims": 1,
        "driver_state": 1,
        "parts": 1,
        "commands": 1,
    }
    assert opened.store.driver_state_get("bank1", "rotation") == "3,1,2"
    # The waiting part completes with its sibling; the done command is not run again.
    done = opened.store.command("c-9")
    assert (
        done is not None
        and done.state == "done"
        and done.result
        == {
            "ok": True,
            "state": "disabled",
        }
    )
    got = opened.store.ingest(
        [part("second half", ref=7, no=2, total=2)], now=T0, reassembly_timeout_s=600
    )
    assert got.messages == 1
    assert outbox_texts(opened.store) == [*texts, "first half second half"]  # same order
    assert opened.store.sims()["89701012345678901234"].desired_enabled is False
    # The evidence is left exactly as found.
    assert Path(inc["moved_to"]).read_bytes() == damaged
    assert quick_check(db) == ["ok"]
    opened.store.close()


def test_garbage_mid_file_is_caught_by_quick_check_and_salvaged_around(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    texts = queued_store(db, 300)
    page = 4096
    pages = db.stat().st_size // page
    with db.open("r+b") as f:
        f.seek(page * (pages // 2))
        f.write(b"\xde\xad\xbe\xef" * (page // 4))
    assert quick_check(db) != ["ok"]
    opened = open_store(db, version="test")
    inc = opened.incident
    assert inc is not None and inc["reason"].startswith("PRAGMA quick_check: ")
    got = outbox_texts(opened.store)
    # Whatever was readable came back in order; what was not is in the moved-aside file,
    # and the incident says how much was salvaged and where the rest is.
    assert got == [t for t in texts if t in set(got)]
    assert inc["salvaged"]["outbox"] == len(got)
    assert Path(inc["moved_to"]).exists()
    print(f"salvaged {len(got)} of {len(texts)}; errors: {inc['salvage_errors']}")
    opened.store.close()


@pytest.mark.skipif(not ROOT, reason="mounting a read-only tmpfs needs root")
def test_a_read_only_store_is_refused_with_its_path(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=4m tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        queued_store(mnt / "agent.db", 1)
        assert os.system(f"mount -o remount,ro {mnt}") == 0
        with pytest.raises(StoreError) as err:
            open_store(mnt / "agent.db", version="test")
        assert f"{mnt}/agent.db cannot be opened for writing: Read-only file system" in str(
            err.value
        )
    finally:
        os.system(f"umount {mnt} || umount -l {mnt}")


def test_write_failure_leaves_no_open_transaction(tmp_path: Path) -> None:
    """SQLITE_FULL (here from max_page_count, a real SQLite limit) rolls back and surfaces
    as itself, not as 'cannot rollback - no transaction is active'."""
    store = Store(tmp_path / "agent.db")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.ingest(
            [part("x" * 150, tag=str(i)) for i in range(200)], now=T0, reassembly_timeout_s=600
        )
    assert not store._db.in_transaction
    store._db.execute("PRAGMA max_page_count=1000000")
    store.ingest([part("after")], now=T0, reassembly_timeout_s=600)
    assert outbox_texts(store) == ["after"]
    store.close()


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")
def test_damage_found_on_a_full_disk_is_refused_and_says_where_the_store_went(
    tmp_path: Path,
) -> None:
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=1m tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        db = mnt / "agent.db"
        queued_store(db, 5)
        db.write_bytes(b"")
        with (mnt / "filler").open("wb", buffering=0) as f:
            for size in (4096, 1):
                with contextlib.suppress(OSError):  # ENOSPC: the file system is full
                    while True:
                        f.write(b"\0" * size)
        with pytest.raises(StoreError) as err:
            open_store(db, version="test")
        text = str(err.value)
        assert "disk full" in text and "the damaged store (the file is empty (0 bytes))" in text
        moved = text.rsplit("moved aside to ", 1)[1]
        assert Path(moved).exists() and Path(moved).name.startswith("agent.db.damaged-")
    finally:
        os.system(f"umount {mnt} || umount -l {mnt}")


def test_emptied_after_a_crash_salvages_what_the_wal_still_holds(tmp_path: Path) -> None:
    """A crash leaves recent commits in ``agent.db-wal``; the main file is then emptied.
    SQLite would delete that WAL on open; the salvage reads it instead."""
    live = tmp_path / "live" / "agent.db"
    store = open_store(live, version="test").store
    texts = [f"crash {i:03d}" for i in range(300)]
    store.ingest([part(t, tag=t) for t in texts], now=T0, reassembly_timeout_s=600)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    # The files as a SIGKILL leaves them: copied while the connection is still open.
    for name in ("agent.db", "agent.db-wal", "agent.db-shm", "agent.db.ok"):
        (crashed / name).write_bytes((live.parent / name).read_bytes())
    store.close()
    assert (crashed / "agent.db-wal").stat().st_size > 0
    (crashed / "agent.db").write_bytes(b"")
    opened = open_store(crashed / "agent.db", version="test")
    inc = opened.incident
    assert inc is not None and inc["reason"] == "the file is empty (0 bytes)"
    assert outbox_texts(opened.store) == texts
    assert inc["salvaged"]["outbox"] == 300 and inc["salvage_errors"] == []
    # The moved-aside pair is untouched: still an empty file and its WAL.
    assert Path(inc["moved_to"]).stat().st_size == 0
    assert Path(f"{inc['moved_to']}-wal").stat().st_size > 0
    opened.store.close()
