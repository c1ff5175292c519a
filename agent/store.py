"""The durable store: every SQL statement of the agent lives here.

One SQLite file in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is
fsynced, so an SMS part acknowledged to its driver (and so deleted from the SIM) survives any
crash (DESIGN.md invariant 1).  Tables:

* ``sims``: inventory keyed by ICCID: cached number, desired state (enabled, forwarding: invariant
  6), last SMS time and count.
* ``parts``: multipart parts waiting for their siblings (invariant 4), any order, 8/16-bit refs.
* ``seen_parts``: ids of parts already turned into messages, so a re-read after a failed delete
  is dropped instead of delivered again (invariant 2); pruned after 30 days.
* ``closed_groups``: multipart messages delivered partial, with their missing part numbers, so a
  late part is delivered alone at once with ``complete: false`` (PROTOCOL.md section 4).
* ``outbox``: messages not yet accepted or rejected by the hub, in arrival order (``seq``).
  The sender reads them on a separate read-only connection with an in-memory cursor: a claim
  needs no write, since the only claimer is the sender of this process and a crash forgets
  in-memory claims by itself.  (The ``state`` column of schema 1 stays 0.)
* ``dead_letters``: messages the hub rejected (invariant 3): kept, listed, re-sendable.
* ``commands``: hub commands with their durable outcome (PROTOCOL.md section 5).
* ``meta``: the last saved inventory snapshot ``seq``, and the start-up incidents (damaged
  stores moved aside, until ``vsim-agent store ack``).
* ``driver_state``: each device's small durable key-value (``DriverContext.state``): poll
  cursors, a gateway's boot id, the SIM-bank rotation order.

:class:`Store` is synchronous and not thread-safe: the app calls it only through
:class:`AsyncStore`, which runs writes on one dedicated thread (so the event loop never blocks
on fsync) and the sender's reads on a second connection and thread (so delivery never queues
behind a large intake commit); the CLI opens its own :class:`Store` (WAL lets all work at once).

Durability is spent where it buys something: intake commits fsync (invariant 1: the SIM copy
is deleted right after).  Settling delivered messages commits without fsync
(``synchronous=NORMAL`` for that transaction): losing it in a power cut only re-sends ids the
hub already holds, which it answers as accepted (PROTOCOL.md section 4).

Faults.  The file is created 0600 in a 0700 directory whatever the umask: it holds SMS texts
and numbers.  Before the agent runs, :mod:`agent.storecheck` decides what to do with the file
it finds: refuse with :class:`StoreError` (exit 2, the path and the remedy in one line) when
the agent cannot fix it (another owner, read-only, someone else's file, a newer schema), or
move a damaged store aside and salvage what :func:`salvage` can read into a fresh one, loudly
and never silently (the policy and its reasons are in that module).  At run time a write can
fail (SQLITE_FULL on a full disk, SQLITE_IOERR, a read-only remount): :class:`StoreHealth`
tracks it for ``/status``, ``/metrics`` and ``STATUS=``, and callers choose between waiting
(:meth:`AsyncStore.call`, for what must not be lost) and trying once (:meth:`AsyncStore.attempt`,
for what may be redone: a settle, the snapshot ``seq``, the SIM cache), so delivering what
is already stored never waits for disk space.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent.reassembly import PartContent, assemble, content_id
from drivers.base import Encoding, SmsPart

T = TypeVar("T")
log = structlog.get_logger("agent.store")
SEEN_RETENTION_S = 30 * 86400
#: How long a partial message's missing parts are remembered for late arrivals, in timeouts.
CLOSED_GROUP_TIMEOUTS = 6

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE sims (
        iccid TEXT PRIMARY KEY,
        imsi TEXT, number TEXT, number_source TEXT,
        device TEXT, port TEXT, operator TEXT, mcc_mnc TEXT,
        desired_enabled INTEGER NOT NULL DEFAULT 1,
        desired_forward TEXT,
        last_sms_at TEXT, sms_count INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL
    );
    CREATE TABLE parts (
        part_id TEXT PRIMARY KEY,
        iccid TEXT NOT NULL, sender TEXT NOT NULL,
        ref_bits INTEGER NOT NULL, ref INTEGER NOT NULL,
        part_no INTEGER NOT NULL, total INTEGER NOT NULL,
        encoding TEXT NOT NULL, text TEXT NOT NULL, data BLOB NOT NULL, raw BLOB NOT NULL,
        sent_at TEXT, flash INTEGER NOT NULL, received_at REAL NOT NULL
    );
    CREATE INDEX parts_group ON parts (iccid, sender, ref_bits, ref, total);
    CREATE INDEX parts_age ON parts (received_at);
    CREATE TABLE seen_parts (part_id TEXT PRIMARY KEY, at REAL NOT NULL);
    CREATE INDEX seen_parts_at ON seen_parts (at);
    CREATE TABLE closed_groups (
        iccid TEXT NOT NULL, sender TEXT NOT NULL, ref_bits INTEGER NOT NULL,
        ref INTEGER NOT NULL, total INTEGER NOT NULL,
        missing TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (iccid, sender, ref_bits, ref, total)
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        iccid TEXT NOT NULL,
        body TEXT NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        stored_at REAL NOT NULL
    );
    CREATE INDEX outbox_ready ON outbox (state, seq);
    CREATE TABLE dead_letters (
        id TEXT PRIMARY KEY, iccid TEXT NOT NULL, body TEXT NOT NULL,
        reason TEXT NOT NULL, attempts INTEGER NOT NULL,
        stored_at REAL NOT NULL, dead_at REAL NOT NULL
    );
    CREATE TABLE commands (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, sim_id TEXT, body TEXT NOT NULL,
        state TEXT NOT NULL, result TEXT, reported INTEGER NOT NULL DEFAULT 0,
        received_at REAL NOT NULL, finished_at REAL
    );
    CREATE INDEX commands_unreported ON commands (reported, state);
    """,
    # 2: drivers' small durable key-value (poll cursors, gateway boot ids, rotation order).
    """
    CREATE TABLE driver_state (
        device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (device, key)
    );
    """,
    # 3: a part decoded despite a defect in its PDU says what the defect was.
    """
    ALTER TABLE parts ADD COLUMN malformed TEXT;
    """,
)


def iso(ts: float, *, millis: bool = False) -> str:
    """RFC 3339 with an explicit offset (PROTOCOL.md section 1)."""
    spec = "milliseconds" if millis else "seconds"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=spec)


@dataclass(frozen=True, slots=True)
class SimRow:
    iccid: str
    imsi: str | None
    number: str | None
    number_source: str | None
    device: str | None
    port: str | None
    operator: str | None
    mcc_mnc: str | None
    desired_enabled: bool
    desired_forward: str | None
    last_sms_at: str | None
    sms_count: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    id: str
    iccid: str
    body: str  # the message JSON object, ready to splice into a batch
    attempts: int
    stored_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    iccid: str
    body: str
    reason: str
    attempts: int
    stored_at: float
    dead_at: float


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: str
    type: str
    sim_id: str | None
    body: dict[str, Any]
    state: str  # "running" | "done"
    result: dict[str, Any] | None
    reported: bool


@dataclass(slots=True)
class IngestResult:
    stored_parts: int = 0
    duplicates: int = 0
    messages: int = 0
    partial: int = 0


@dataclass(frozen=True, slots=True)
class Settled:
    delivered: int
    dead: int
    latencies: tuple[float, ...]


class StoreError(Exception):
    """A store the agent must not run on (unreadable, read-only, foreign-owned, not a
    database, too new).  The message names the file and says what to do; ``vsim-agent run``
    prints it and exits 2 (agent/cli.py)."""


#: SQLite primary result codes, as the operator should read them.
_REASONS = {
    "SQLITE_FULL": "disk full",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_READONLY": "read-only",
    "SQLITE_CORRUPT": "database corrupt",
    "SQLITE_NOTADB": "database corrupt",
    "SQLITE_BUSY": "locked by another process",
    "SQLITE_LOCKED": "locked by another process",
    "SQLITE_CANTOPEN": "cannot open",
    "SQLITE_PERM": "permission denied",
}


def error_kind(exc: BaseException) -> str:
    """``disk full``, ``I/O error``, ``read-only``…: the kind of an SQLite error, for status
    lines and metric labels (extended codes like SQLITE_IOERR_WRITE fold into their class)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    for prefix, kind in _REASONS.items():
        if name == prefix or name.startswith(prefix + "_"):
            return kind
    text = str(exc).lower()
    if "disk is full" in text:
        return "disk full"
    if "readonly" in text or "read-only" in text:
        return "read-only"
    if "malformed" in text or "not a database" in text:
        return "database corrupt"
    return "error"


#: A store counts as writable again only once no write has failed for this long.
WRITABLE_AFTER_S = 5.0


@dataclass(slots=True)
class StoreHealth:
    """Whether the store accepts writes, for ``/status``, ``/metrics`` and ``STATUS=``.

    A failed write (disk full, I/O error, read-only remount, corruption) marks the store
    unwritable from the first failure of a streak.  On a full disk some writes still succeed
    (a delete or an update reuses pages the WAL already holds) while every insert fails, so
    one success does not end the streak: a write that changed rows must succeed *and* no
    write may have failed for :data:`WRITABLE_AFTER_S`.  The intake retries at least that
    often while SMS wait, so the flag does not flap while the disk is full.  Transactions
    that changed nothing prove nothing (they write no WAL frame) and are not counted."""

    writable: bool = True
    last_error: str | None = None
    kind: str | None = None
    since: float | None = None
    last_failure: float | None = None
    last_ok: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # kind → failed writes

    def failed(self, op: str, exc: BaseException) -> None:
        now = time.time()
        kind = error_kind(exc)
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.writable:
            log.error("store cannot write", op=op, kind=kind, reason=str(exc))
            self.since = now
        self.writable = False
        self.kind = kind
        self.last_error = f"{op}: {exc}"
        self.last_failure = now

    def ok(self, op: str) -> None:
        self.last_ok = time.time()
        self.refresh(op)

    def refresh(self, op: str | None = None) -> None:
        """End a failure streak once a write succeeded after the failures stopped."""
        if self.writable or self.last_ok is None or self.last_failure is None:
            return
        if self.last_ok > self.last_failure and time.time() - self.last_failure >= (
            WRITABLE_AFTER_S
        ):
            log.warning(
                "store writable again",
                op=op,
                kind=self.kind,
                after_s=round(time.time() - (self.since or time.time()), 1),
            )
            self.writable = True
            self.kind = None
            self.since = None

    def as_dict(self) -> dict[str, Any]:
        self.refresh()
        return {
            "writable": self.writable,
            "error": self.kind,
            "last_error": self.last_error,
            "since": iso(self.since) if self.since else None,
            "write_errors": sum(self.errors.values()),
        }


@dataclass(slots=True)
class Salvage:
    """Rows read back from a damaged store (see :func:`salvage`)."""

    outbox: list[tuple[str, str, str, float]] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    sims: list[tuple[Any, ...]] = field(default_factory=list)
    driver_state: list[tuple[Any, ...]] = field(default_factory=list)
    #: Multipart parts waiting for siblings: acked to their SIMs already, so only here.
    parts: list[tuple[Any, ...]] = field(default_factory=list)
    #: Commands with their outcome: a done one is not run again when the hub repeats it.
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "outbox": len(self.outbox),
            "dead_letters": len(self.dead_letters),
            "sims": len(self.sims),
            "driver_state": len(self.driver_state),
            "parts": len(self.parts),
            "commands": len(self.commands),
        }


SQLITE_MAGIC = b"SQLite format 3\x00"


def quick_check(path: Path) -> list[str]:
    """``PRAGMA quick_check`` of a store file: ``["ok"]`` when sound, else SQLite's findings.
    Damage that stops SQLite from reading the file at all (SQLITE_CORRUPT, SQLITE_NOTADB)
    is returned as a finding too; any other error (permissions, I/O) is raised."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        return [str(r[0]) for r in db.execute("PRAGMA quick_check(20)").fetchall()]
    except sqlite3.DatabaseError as exc:
        if error_kind(exc) != "database corrupt":
            raise
        return [str(exc)]
    finally:
        db.close()


def salvage(copy: Path) -> Salvage:
    """Read what can still be read from a *copy* of a damaged store (the copy may be
    written to: its header magic is restored, SQLite may replay its WAL).  Each table is read
    forwards and then backwards, so rows on both sides of one bad page come back."""
    out = Salvage()
    with copy.open("r+b") as f:
        header = f.read(100)
        if not header:
            # SQLite deletes the WAL of an empty database file; one placeholder page makes it
            # read the WAL, whose frames (page 1 included, if written since the last
            # checkpoint) stand in for the lost pages.
            f.write(SQLITE_MAGIC + bytes(4096 - 16))
        elif header[:16] != SQLITE_MAGIC:
            f.seek(0)
            f.write(SQLITE_MAGIC)
    try:
        db = sqlite3.connect(str(copy), isolation_level=None)
    except sqlite3.Error as exc:
        out.errors.append(f"open: {exc}")
        return out
    try:
        errors = out.errors
        cols = "seq, id, iccid, body, stored_at"
        outbox = _both_ends(db, errors, "outbox", cols, ("seq",), (1,))
        out.outbox = [(r[1], r[2], r[3], r[4]) for r in sorted(outbox.values())]
        cols = "id, iccid, body, reason, attempts, stored_at, dead_at"
        out.dead_letters = list(
            _both_ends(db, errors, "dead_letters", cols, ("id",), (0,)).values()
        )
        cols = "iccid, number, number_source, desired_enabled, desired_forward"
        out.sims = list(_both_ends(db, errors, "sims", cols, ("iccid",), (0,)).values())
        cols = "device, key, value"
        state = _both_ends(db, errors, "driver_state", cols, ("device", "key"), (0, 1))
        out.driver_state = list(state.values())
        # Schema 1 parts have no ``malformed``: read it as NULL there.
        flag = "malformed" if _has_column(db, "parts", "malformed") else "NULL"
        cols = f"{PART_COLUMNS}, {flag}"
        out.parts = list(_both_ends(db, errors, "parts", cols, ("part_id",), (0,)).values())
        cols = COMMAND_COLUMNS
        out.commands = list(_both_ends(db, errors, "commands", cols, ("id",), (0,)).values())
    finally:
        db.close()
    return out


PART_COLUMNS = (
    "part_id, iccid, sender, ref_bits, ref, part_no, total, encoding, text, data, raw, sent_at,"
    " flash, received_at"
)
COMMAND_COLUMNS = "id, type, sim_id, body, state, result, reported, received_at, finished_at"


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    try:
        return any(r[1] == column for r in db.execute(f"PRAGMA table_info({table})"))
    except sqlite3.Error:
        return False


def _both_ends(
    db: sqlite3.Connection,
    errors: list[str],
    table: str,
    columns: str,
    order: tuple[str, ...],
    key: tuple[int, ...],
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """A damaged table read forwards, then backwards (rows on both sides of one bad page come
    back), keyed by the columns at ``key``; the first read of a row wins."""
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for direction in ("ASC", "DESC"):
        by = ", ".join(f"{c} {direction}" for c in order)
        sql = f"SELECT {columns} FROM {table} ORDER BY {by}"
        for r in _salvage_rows(db, sql, errors, f"{table} {direction}"):
            rows.setdefault(tuple(r[k] for k in key), r)
    return rows


def _salvage_rows(
    db: sqlite3.Connection, sql: str, errors: list[str], what: str
) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    try:
        for r in db.execute(sql):
            rows.append(tuple(r))
    except sqlite3.Error as exc:
        errors.append(f"{what}: {exc} after {len(rows)} rows")
    return rows


_GROUP = (
    "iccid = :iccid AND sender = :sender AND ref_bits = :ref_bits AND ref = :ref AND total = :total"
)


class Store:
    """The agent's SQLite database.  See the module docstring for what each table holds."""

    def __init__(self, path: Path, *, reader: bool = False) -> None:
        self.path = path
        if not reader:
            # 0700 / 0600 whatever the umask: the store holds SMS texts and numbers.  SQLite
            # gives the -wal and -shm files the mode of the database file.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.fchmod(fd, 0o600)  # exactly, whatever bits the umask took away
                os.close(fd)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self._setup(reader)
        except BaseException:
            self._db.close()  # a refused store leaves no open file behind
            raise

    def _setup(self, reader: bool) -> None:
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")
        if reader:
            self._db.execute("PRAGMA query_only=ON")
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit (invariant 1), not only at checkpoints.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: database schema {version} is newer than this agent "
                f"({len(MIGRATIONS)}); upgrade the agent"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx():
                for stmt in script.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {number}")

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    # -- inventory ------------------------------------------------------------------------

    def sims(self) -> dict[str, SimRow]:
        rows = self._db.execute(
            "SELECT iccid, imsi, number, number_source, device, port, operator, mcc_mnc, "
            "desired_enabled, desired_forward, last_sms_at, sms_count FROM sims"
        ).fetchall()
        return {
            r["iccid"]: SimRow(
                r["iccid"],
                r["imsi"],
                r["number"],
                r["number_source"],
                r["device"],
                r["port"],
                r["operator"],
                r["mcc_mnc"],
                bool(r["desired_enabled"]),
                r["desired_forward"],
                r["last_sms_at"],
                r["sms_count"],
            )
            for r in rows
        }

    def upsert_sim(
        self,
        *,
        iccid: str,
        imsi: str | None,
        number: str | None,
        number_source: str | None,
        device: str,
        port: str,
        operator: str | None,
        mcc_mnc: str | None,
        now: float,
    ) -> None:
        """Record a SIM as seen.  A known number is kept when the hardware reports none."""
        with self._tx():
            self._db.execute(
                "INSERT INTO sims (iccid, imsi, number, number_source, device, port, operator,"
                " mcc_mnc, first_seen, last_seen) VALUES (:iccid, :imsi, :number, :source,"
                " :device, :port, :operator, :mcc_mnc, :now, :now)"
                " ON CONFLICT (iccid) DO UPDATE SET imsi = coalesce(:imsi, imsi),"
                " number = coalesce(:number, number),"
                " number_source = CASE WHEN :number IS NULL THEN number_source ELSE :source END,"
                " device = :device, port = :port, operator = coalesce(:operator, operator),"
                " mcc_mnc = coalesce(:mcc_mnc, mcc_mnc), last_seen = :now",
                {
                    "iccid": iccid,
                    "imsi": imsi,
                    "number": number,
                    "source": number_source,
                    "device": device,
                    "port": port,
                    "operator": operator,
                    "mcc_mnc": mcc_mnc,
                    "now": now,
                },
            )

    def set_desired(
        self,
        iccid: str,
        *,
        enabled: bool | None = None,
        forward: str | None = None,
        set_forward: bool = False,
        now: float,
    ) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO sims (iccid, first_seen, last_seen)"
                " VALUES (:iccid, :now, :now)",
                {"iccid": iccid, "now": now},
            )
            if enabled is not None:
                self._db.execute(
                    "UPDATE sims SET desired_enabled = :e WHERE iccid = :iccid",
                    {"e": int(enabled), "iccid": iccid},
                )
            if set_forward:
                self._db.execute(
                    "UPDATE sims SET desired_forward = :f WHERE iccid = :iccid",
                    {"f": forward, "iccid": iccid},
                )

    def driver_state_get(self, device: str, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM driver_state WHERE device = ? AND key = ?", (device, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def driver_state_set(self, device: str, key: str, value: str) -> None:
        # Without fsync (WAL, synchronous=NORMAL): it survives the agent's crash, and a power
        # cut loses at most the latest values; a gateway cursor then re-reads rows that the
        # content ids absorb.  One fsync per SMS on the writer thread would queue intake.
        with self._relaxed():
            self._db.execute(
                "INSERT INTO driver_state (device, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (device, key) DO UPDATE SET value = excluded.value",
                (device, key, value),
            )

    def stored_seq(self) -> int:
        """The highest inventory snapshot number saved so far (0 if none)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def save_seq(self, seq: int) -> None:
        """Remember a snapshot number; never lowers the saved one.  Committed without fsync:
        the clock seeds the next start anyway (see :class:`agent.uplink.SnapshotSeq`)."""
        with self._relaxed():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('seq', :seq) ON CONFLICT (key)"
                " DO UPDATE SET value = max(CAST(value AS INTEGER), :seq)",
                {"seq": seq},
            )

    # -- start-up incidents (a damaged store moved aside: agent/storecheck.py) ---------------

    def incidents(self) -> list[dict[str, Any]]:
        """Damaged stores moved aside at start that no operator has acknowledged yet."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'incidents'").fetchone()
        data = json.loads(row[0]) if row else []
        return data if isinstance(data, list) else []

    def add_incident(self, incident: dict[str, Any]) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('incidents', json_array(json(:i)))"
                " ON CONFLICT (key) DO UPDATE SET value = json_insert(value, '$[#]', json(:i))",
                {"i": json.dumps(incident)},
            )

    def ack_incidents(self) -> int:
        """Forget every incident (``vsim-agent store ack``); how many there were."""
        n = len(self.incidents())
        with self._tx():
            self._db.execute("DELETE FROM meta WHERE key = 'incidents'")
        return n

    def restore(self, salvage: Salvage, *, now: float) -> None:
        """Put rows read from a damaged store into this (fresh) one: queued messages keep
        their order and ids (the hub absorbs repeats); dead letters, desired state, driver
        state, waiting multipart parts and commands with their outcomes stay."""
        with self._tx():
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (id, iccid, body, stored_at) VALUES (?, ?, ?, ?)",
                salvage.outbox,
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO dead_letters (id, iccid, body, reason, attempts,"
                " stored_at, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                salvage.dead_letters,
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO sims (iccid, number, number_source, desired_enabled,"
                " desired_forward, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*r, now, now) for r in salvage.sims],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO driver_state (device, key, value) VALUES (?, ?, ?)",
                salvage.driver_state,
            )
            self._db.executemany(
                f"INSERT OR IGNORE INTO parts ({PART_COLUMNS}, malformed)"
                f" VALUES ({', '.join('?' * 15)})",
                salvage.parts,
            )
            self._db.executemany(
                f"INSERT OR IGNORE INTO commands ({COMMAND_COLUMNS}) VALUES ({', '.join('?' * 9)})",
                salvage.commands,
            )

    # -- intake and reassembly ------------------------------------------------------------

    def ingest(
        self, parts: Sequence[SmsPart], *, now: float, reassembly_timeout_s: float
    ) -> IngestResult:
        """Commit received parts (one transaction, one fsync) and build complete messages."""
        result = IngestResult()
        with self._tx():
            for part in parts:
                self._ingest_one(part, now, reassembly_timeout_s, result)
        return result

    def _seen(self, part_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM seen_parts WHERE part_id = ?", (part_id,)).fetchone()
            is not None
            or self._db.execute("SELECT 1 FROM parts WHERE part_id = ?", (part_id,)).fetchone()
            is not None
        )

    def _ingest_one(self, part: SmsPart, now: float, timeout: float, result: IngestResult) -> None:
        part_id = content_id(part.iccid, [part.raw])
        if self._seen(part_id):
            result.duplicates += 1
            return
        result.stored_parts += 1
        self._db.execute(
            "UPDATE sims SET last_sms_at = :at, sms_count = sms_count + 1 WHERE iccid = :iccid",
            {"at": iso(now), "iccid": part.iccid},
        )
        c = part.concat
        if c is None or c.total <= 1 or not 1 <= c.part <= c.total:
            self._emit_message(part.iccid, [_row_of(part)], complete=True, now=now)
            self._mark_seen([part_id], now)
            result.messages += 1
            return
        key = {
            "iccid": part.iccid,
            "sender": part.sender,
            "ref_bits": c.ref_bits,
            "ref": c.ref,
            "total": c.total,
        }
        closed = self._db.execute(
            f"SELECT missing, at FROM closed_groups WHERE {_GROUP}", key
        ).fetchone()
        if closed is not None and now - closed["at"] < timeout * CLOSED_GROUP_TIMEOUTS:
            missing = set(json.loads(closed["missing"]))
            if c.part in missing:
                # The late part of a message already delivered partial: deliver it alone now.
                missing.discard(c.part)
                self._db.execute(
                    f"UPDATE closed_groups SET missing = :m WHERE {_GROUP}",
                    {**key, "m": json.dumps(sorted(missing))},
                )
                self._emit_message(part.iccid, [_row_of(part)], complete=False, now=now)
                self._mark_seen([part_id], now)
                result.messages += 1
                result.partial += 1
                return
        self._db.execute(
            "INSERT INTO parts (part_id, iccid, sender, ref_bits, ref, part_no, total, encoding,"
            " text, data, raw, sent_at, flash, malformed, received_at) VALUES (:part_id, :iccid,"
            " :sender, :ref_bits, :ref, :part_no, :total, :encoding, :text, :data, :raw,"
            " :sent_at, :flash, :malformed, :now)",
            {
                **key,
                "part_id": part_id,
                "part_no": c.part,
                "encoding": part.encoding.value,
                "text": part.text,
                "data": part.data,
                "raw": part.raw,
                "sent_at": part.sent_at.isoformat() if part.sent_at else None,
                "flash": int(part.flash),
                "malformed": part.malformed,
                "now": now,
            },
        )
        rows = self._group_rows(key)
        if len({r["part_no"] for r in rows}) == c.total:
            self._complete_group(key, rows, complete=True, now=now)
            result.messages += 1

    def _group_rows(self, key: dict[str, Any]) -> list[sqlite3.Row]:
        return self._db.execute(
            f"SELECT * FROM parts WHERE {_GROUP} ORDER BY part_no, rowid", key
        ).fetchall()

    def _complete_group(
        self, key: dict[str, Any], rows: list[sqlite3.Row], *, complete: bool, now: float
    ) -> None:
        chosen: dict[int, sqlite3.Row] = {}
        for r in rows:
            chosen.setdefault(r["part_no"], r)  # first arrival wins if a ref was reused
        ordered = [chosen[n] for n in sorted(chosen)]
        self._emit_message(key["iccid"], [_row_dict(r) for r in ordered], complete, now)
        ids = [r["part_id"] for r in ordered]
        self._db.executemany("DELETE FROM parts WHERE part_id = ?", [(i,) for i in ids])
        self._mark_seen(ids, now)
        if not complete:
            missing = sorted(set(range(1, key["total"] + 1)) - set(chosen))
            self._db.execute(
                "INSERT OR REPLACE INTO closed_groups (iccid, sender, ref_bits, ref, total,"
                " missing, at) VALUES (:iccid, :sender, :ref_bits, :ref, :total, :m, :now)",
                {**key, "m": json.dumps(missing), "now": now},
            )

    def expire_partials(self, *, now: float, timeout: float) -> int:
        """Deliver, with ``complete: false``, every group whose oldest part is past the timeout."""
        delivered = 0
        with self._tx():
            groups = self._db.execute(
                "SELECT iccid, sender, ref_bits, ref, total FROM parts GROUP BY iccid, sender,"
                " ref_bits, ref, total HAVING min(received_at) <= :limit",
                {"limit": now - timeout},
            ).fetchall()
            for g in groups:
                key = dict(g)
                self._complete_group(key, self._group_rows(key), complete=False, now=now)
                delivered += 1
        return delivered

    def pending_parts(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM parts").fetchone()[0])

    def _mark_seen(self, part_ids: Iterable[str], now: float) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO seen_parts (part_id, at) VALUES (?, ?)",
            [(p, now) for p in part_ids],
        )

    def _emit_message(
        self, iccid: str, parts: list[dict[str, Any]], complete: bool, now: float
    ) -> None:
        msg_id = content_id(iccid, [p["raw"] for p in parts])
        text, marker = assemble(
            [PartContent(Encoding(p["encoding"]), p["text"], p["data"]) for p in parts]
        )
        sim = self._db.execute("SELECT number FROM sims WHERE iccid = ?", (iccid,)).fetchone()
        body: dict[str, Any] = {
            "id": msg_id,
            "sim_id": iccid,
            "number": sim["number"] if sim else None,
            "from": parts[0]["sender"],
            "text": text,
            "sent_at": next((p["sent_at"] for p in parts if p["sent_at"]), None),
            "received_at": iso(now, millis=True),
            "parts": len(parts),
            "complete": complete and marker != "undecodable",
        }
        if marker:
            body["encoding"] = marker
        if any(p["flash"] for p in parts):
            body["flash"] = True
        defects = [(n, p["malformed"]) for n, p in enumerate(parts, 1) if p["malformed"]]
        if defects:
            # Decoded as the PDU announced, but flagged, with every raw byte kept (the TPDU
            # of each part, in part order) so the platform can look at what was dropped.
            body["malformed"] = "; ".join(
                f"part {n}: {d}" if len(parts) > 1 else d for n, d in defects
            )
            body["raw"] = [bytes(p["raw"]).hex().upper() for p in parts]
        self._db.execute(
            "INSERT OR IGNORE INTO outbox (id, iccid, body, stored_at)"
            " VALUES (:id, :iccid, :body, :now)",
            {
                "id": msg_id,
                "iccid": iccid,
                "body": json.dumps(body, ensure_ascii=False),
                "now": now,
            },
        )

    # -- outbox ---------------------------------------------------------------------------

    def peek(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` queued messages after ``after_seq``, oldest first (read only)."""
        rows = self._db.execute(
            "SELECT seq, id, iccid, body, attempts, stored_at FROM outbox WHERE seq > :after"
            " ORDER BY seq LIMIT :limit",
            {"after": after_seq, "limit": limit},
        ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def _relaxed(self) -> _Tx:
        """A transaction committed without fsync: for settling, never for intake."""
        return _Tx(self._db, relaxed=True)

    def settle(
        self,
        claimed: Sequence[OutboxRow],
        accepted: Iterable[str],
        rejected: dict[str, str],
        *,
        now: float,
    ) -> Settled:
        """Apply the hub's answer: accepted rows leave, rejected rows become dead letters;
        rows the hub did not mention stay queued (the sender sends them again)."""
        acc = set(accepted)
        latencies: list[float] = []
        dead = 0
        with self._relaxed():
            for row in claimed:
                if row.id in acc:
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
                    latencies.append(now - row.stored_at)
                elif row.id in rejected:
                    self._dead(row, rejected[row.id], now)
                    dead += 1
        return Settled(len(latencies), dead, tuple(latencies))

    def _dead(self, row: OutboxRow, reason: str, now: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO dead_letters (id, iccid, body, reason, attempts, stored_at,"
            " dead_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.iccid, row.body, reason[:500], row.attempts, row.stored_at, now),
        )
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))

    def outbox_stats(self) -> tuple[int, float | None]:
        """Depth and the ``stored_at`` of the oldest message (None when empty)."""
        row = self._db.execute("SELECT count(*), min(stored_at) FROM outbox").fetchone()
        return int(row[0]), row[1]

    def dead_letter_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT id, iccid, body, reason, attempts, stored_at, dead_at FROM dead_letters"
            " ORDER BY dead_at LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def resend_dead(self, ids: Sequence[str] | None) -> int:
        """Move dead letters (all, or the given ids) back to the outbox."""
        with self._tx():
            if ids is None:
                rows = self._db.execute("SELECT id, iccid, body, stored_at FROM dead_letters")
            else:
                marks = ",".join("?" * len(ids))
                rows = self._db.execute(
                    f"SELECT id, iccid, body, stored_at FROM dead_letters WHERE id IN ({marks})",
                    tuple(ids),
                )
            moved = 0
            for r in rows.fetchall():
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (id, iccid, body, stored_at) VALUES (?,?,?,?)",
                    (r[0], r[1], r[2], r[3]),
                )
                self._db.execute("DELETE FROM dead_letters WHERE id = ?", (r[0],))
                moved += 1
        return moved

    # -- commands -------------------------------------------------------------------------

    def command(self, command_id: str) -> CommandRow | None:
        r = self._db.execute(
            "SELECT id, type, sim_id, body, state, result, reported FROM commands WHERE id = ?",
            (command_id,),
        ).fetchone()
        return None if r is None else _command_row(r)

    def command_start(self, body: dict[str, Any], *, now: float) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO commands (id, type, sim_id, body, state, received_at)"
                " VALUES (:id, :type, :sim_id, :body, 'running', :now)",
                {
                    "id": str(body["id"]),
                    "type": str(body.get("type")),
                    "sim_id": body.get("sim_id") if isinstance(body.get("sim_id"), str) else None,
                    "body": json.dumps(body),
                    "now": now,
                },
            )

    def command_finish(self, command_id: str, result: dict[str, Any], *, now: float) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE commands SET state = 'done', result = ?, finished_at = ?, reported = 0"
                " WHERE id = ?",
                (json.dumps(result), now, command_id),
            )

    def commands_running(self) -> list[CommandRow]:
        rows = self._db.execute(
            "SELECT id, type, sim_id, body, state, result, reported FROM commands"
            " WHERE state = 'running' ORDER BY received_at"
        ).fetchall()
        return [_command_row(r) for r in rows]

    def commands_unreported(self) -> list[CommandRow]:
        rows = self._db.execute(
            "SELECT id, type, sim_id, body, state, result, reported FROM commands"
            " WHERE state = 'done' AND reported = 0 ORDER BY finished_at"
        ).fetchall()
        return [_command_row(r) for r in rows]

    def command_reported(self, command_id: str) -> None:
        with self._tx():
            self._db.execute("UPDATE commands SET reported = 1 WHERE id = ?", (command_id,))

    # -- housekeeping ---------------------------------------------------------------------

    def prune(self, *, now: float, reassembly_timeout_s: float) -> None:
        with self._tx():
            self._db.execute("DELETE FROM seen_parts WHERE at < ?", (now - SEEN_RETENTION_S,))
            self._db.execute(
                "DELETE FROM closed_groups WHERE at < ?",
                (now - reassembly_timeout_s * CLOSED_GROUP_TIMEOUTS,),
            )
            self._db.execute(
                "DELETE FROM commands WHERE state = 'done' AND reported = 1 AND finished_at < ?",
                (now - SEEN_RETENTION_S,),
            )


class _Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): one writer, no deadlocks."""

    def __init__(self, db: sqlite3.Connection, *, relaxed: bool = False) -> None:
        self._db = db
        self._relaxed = relaxed

    def __enter__(self) -> None:
        if self._relaxed:
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    self._rollback()  # a failed COMMIT (disk full) may leave it open
                    raise
            else:
                # The original error is the one worth reporting: SQLite may already have
                # rolled back (SQLITE_FULL does), and "no transaction is active" would hide it.
                self._rollback()
        finally:
            if self._relaxed:
                self._db.execute("PRAGMA synchronous=FULL")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


def _row_of(part: SmsPart) -> dict[str, Any]:
    return {
        "sender": part.sender,
        "encoding": part.encoding.value,
        "text": part.text,
        "data": part.data,
        "raw": part.raw,
        "sent_at": part.sent_at.isoformat() if part.sent_at else None,
        "flash": part.flash,
        "malformed": part.malformed,
    }


_PART_FIELDS = ("sender", "encoding", "text", "data", "raw", "sent_at", "flash", "malformed")


def _row_dict(r: sqlite3.Row) -> dict[str, Any]:
    return {k: r[k] for k in _PART_FIELDS}


def _command_row(r: sqlite3.Row) -> CommandRow:
    return CommandRow(
        r["id"],
        r["type"],
        r["sim_id"],
        json.loads(r["body"]),
        r["state"],
        json.loads(r["result"]) if r["result"] else None,
        bool(r["reported"]),
    )


class AsyncStore:
    """Writes on one worker thread in submission order; the sender's reads on a second
    connection and thread; admin reads (``/status``, ``/metrics``) on a third, so however many
    operators or scrapers ask, their queries never queue in front of delivery's.

    Every write goes through :meth:`call` (retried until it succeeds: for work that must
    not be lost, like intake or a command's durable state) or :meth:`attempt` (tried once:
    for writes that may be lost, like a settle or the snapshot number).  Both keep
    :attr:`health` current, which the app shows in ``/status``, ``/metrics`` and ``STATUS=``.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reader = Store(store.path, reader=True)
        self.admin_reader = Store(store.path, reader=True)
        self.health = StoreHealth()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        self._admin_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-admin")

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a write on the writer thread.  A transient failure (locked by another process
        past ``busy_timeout``, disk full) rolled the transaction back: wait and run it again,
        so no loop of the agent dies of it."""
        delay = 0.5
        while True:
            try:
                return await self.attempt(fn, *args, **kwargs)
            except sqlite3.OperationalError as exc:
                log.warning(
                    "store write failed; retrying",
                    op=getattr(fn, "__name__", "?"),
                    reason=str(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def attempt(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a write once on the writer thread; an SQLite error is recorded in
        :attr:`health` and raised."""
        loop = asyncio.get_running_loop()
        db = self.store._db

        def run() -> tuple[T, bool]:
            # total_changes counts rows changed by committed and open transactions of this
            # connection: it grows only when the write really reached the WAL.
            before = db.total_changes
            result = fn(*args, **kwargs)
            return result, db.total_changes > before and not db.in_transaction

        try:
            result, wrote = await loop.run_in_executor(self._pool, run)
        except sqlite3.Error as exc:
            self.health.failed(getattr(fn, "__name__", "?"), exc)
            raise
        if wrote:
            self.health.ok(getattr(fn, "__name__", "?"))
        return result

    async def read(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a read-only method of ``self.reader`` (pass it as ``store.reader.method``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, functools.partial(fn, *args, **kwargs))

    async def read_admin(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a read-only method of ``self.admin_reader`` on the admin's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._admin_pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)
        self._admin_pool.shutdown(wait=True)
        self.reader.close()
        self.admin_reader.close()
        self.store.close()
