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
* ``meta``: the inventory snapshot ``seq``.
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
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


_GROUP = (
    "iccid = :iccid AND sender = :sender AND ref_bits = :ref_bits AND ref = :ref AND total = :total"
)


class Store:
    """The agent's SQLite database.  See the module docstring for what each table holds."""

    def __init__(self, path: Path, *, reader: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
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
            raise RuntimeError(
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
        with self._tx():
            self._db.execute(
                "INSERT INTO driver_state (device, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (device, key) DO UPDATE SET value = excluded.value",
                (device, key, value),
            )

    def next_seq(self) -> int:
        """The next inventory snapshot number; persisted so it grows across restarts."""
        with self._tx():
            row = self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('seq', '1') ON CONFLICT (key)"
                " DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value"
            ).fetchone()
        return int(row[0])

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
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            if self._relaxed:
                self._db.execute("PRAGMA synchronous=FULL")


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
    operators or scrapers ask, their queries never queue in front of delivery's."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reader = Store(store.path, reader=True)
        self.admin_reader = Store(store.path, reader=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        self._admin_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-admin")

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a write on the writer thread.  A transient failure (locked by another process
        past ``busy_timeout``, disk full) rolled the transaction back: wait and run it again,
        so no loop of the agent dies of it.  Should it last, the loops stop beating and the
        systemd watchdog restarts the service."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                return await loop.run_in_executor(
                    self._pool, functools.partial(fn, *args, **kwargs)
                )
            except sqlite3.OperationalError as exc:
                log.error(
                    "store write failed; retrying",
                    op=getattr(fn, "__name__", "?"),
                    reason=str(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

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
