"""Opening the store at start-up: refuse what cannot be fixed here, move damage aside loudly.

This module owns the decision, made once before the agent runs, about the file
``<state_dir>/agent.db``.  It touches files (modes, owners, renames, the marker) and calls
:mod:`agent.store` for everything that is SQL.  The policy (README, "The store"):

* **Refused** (:class:`~agent.store.StoreError`; ``vsim-agent run`` exits 2 with the message,
  no traceback, and systemd does not restart it, ``RestartPreventExitStatus=2``): a state
  directory or store file owned by another user, a store that cannot be opened for writing
  (permissions, read-only file system), a file that is not an SQLite database although no
  marker says the agent ever created a store there (someone else's file: never touched), a
  schema newer than this agent.  Restarting cannot fix these; the message says what can.
* **Damaged** (moved aside, the agent starts on a fresh store): ``PRAGMA quick_check`` finds
  faults, the header is no longer SQLite's, or the file is empty or missing while the marker
  ``agent.db.ok`` says a store was created here.  The file and its ``-wal``/``-shm`` are
  renamed to ``agent.db.damaged-<UTC time>`` (the WAL keeps its pairing, so its committed
  transactions stay with it); what can still be read from a copy (queued messages, dead
  letters, desired SIM state, driver state) is restored into the fresh store; and the
  incident is recorded in the fresh store, so ``/status``, ``vsim_store_incidents`` (alert
  ``VsimStoreDamaged``), the ``STATUS=`` line and the start-up log show it until
  ``vsim-agent store ack``.
  A refusal would keep every SMS on its SIM, but SIM storage fills within minutes and
  activation codes expire in minutes: starting fresh and keeping the evidence serves both.

The marker is what tells "fresh" from "lost": written once the schema exists, rewritten at
each clean stop with the number of messages still queued, so an emptied store reports how many
messages it held.  Nothing here deletes a file.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.store import SQLITE_MAGIC, Salvage, Store, StoreError, error_kind, iso, quick_check
from agent.store import salvage as salvage_copy

log = structlog.get_logger("agent.storecheck")

SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class Opened:
    store: Store
    #: The damage found and moved aside at this start, or None.
    incident: dict[str, Any] | None


def marker_path(db: Path) -> Path:
    return db.with_name(db.name + ".ok")


def open_store(db: Path, *, version: str) -> Opened:
    """Check and open the agent's store; see the module docstring for what is refused."""
    _prepare_dir(db.parent)
    marker = _read_marker(db)
    damage: str | None = None
    if db.exists():
        _check_owned_and_writable(db)
        size = db.stat().st_size
        if size == 0:
            if marker is not None:
                damage = "the file is empty (0 bytes)"
        elif _header(db) != SQLITE_MAGIC:
            if marker is None:
                raise StoreError(
                    f"{db} is not an SQLite database, and no {marker_path(db).name} says this "
                    "agent created it: refusing to touch it. Point agent.state_dir at another "
                    "directory, or move the file away if it is a damaged store of this agent."
                )
            damage = "the SQLite header is damaged"
        else:
            findings = _quick_check(db)
            if findings != ["ok"]:
                damage = "PRAGMA quick_check: " + "; ".join(findings[:3])
    elif marker is not None:
        damage = "the file is missing"
    if damage is not None:
        return _replace_damaged(db, damage, marker, version)
    store = _open(db)
    if marker is None:
        write_marker(db, version=version)
    return Opened(store, None)


def write_marker(db: Path, *, version: str, queued: int | None = None) -> None:
    """Create or refresh ``agent.db.ok`` (atomically; best effort: a full disk only costs
    the queued count of this stop)."""
    data = _read_marker(db) or {"created_at": iso(time.time()), "version": version}
    if queued is not None:
        data.update(queued_at_stop=queued, stopped_at=iso(time.time()), version=version)
    path = marker_path(db)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not write the store marker", path=str(path), reason=str(exc))


def incident_message(incident: dict[str, Any]) -> str:
    """One line for the log, ``/status`` and ``STATUS=``."""
    where = incident.get("moved_to")
    text = f"{incident['file']}: {incident['reason']}"
    text += f"; moved aside to {where}" if where else "; nothing left to move aside"
    text += f"; {incident['salvaged']['outbox']} queued messages salvaged"
    held = incident.get("queued_at_stop")
    if held is not None:
        text += f" (it held {held} at its last clean stop)"
    return text


# -- checks ---------------------------------------------------------------------------------


def _prepare_dir(state_dir: Path) -> None:
    created = not state_dir.exists()
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            state_dir.chmod(0o700)  # exactly 0700, whatever the umask took away or left
        st = state_dir.stat()
    except OSError as exc:
        raise StoreError(
            f"{state_dir}: cannot create the state directory: {exc.strerror}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{state_dir}: agent.state_dir is not a directory")
    _check_owner(state_dir, st)
    if st.st_mode & 0o077:
        # Not changed: an existing directory may be shared on purpose (the store file itself
        # is kept 0600), and chmod on a directory someone chose, say /tmp, would do harm.
        log.warning(
            "state directory is open to other users; the store file is 0600",
            path=str(state_dir),
            mode=oct(st.st_mode & 0o777),
        )


def _check_owner(path: Path, st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise StoreError(
            f"{path} belongs to {_user(st.st_uid)}, but the agent runs as {_user(me)}: files it "
            "creates there would lock the service user out. Run the agent as that user "
            f"(the unit's User=), or `chown -R {_user(me, bare=True)} {path.parent}` if the "
            "agent should own it."
        )


def _check_owned_and_writable(db: Path) -> None:
    for path in (db, *(Path(f"{db}{s}") for s in SIDE_FILES)):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file")
        _check_owner(path, st)
        if st.st_mode & 0o077:
            path.chmod(0o600)
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as exc:
            raise StoreError(
                f"{path} cannot be opened for writing: {exc.strerror}. The agent needs to "
                "write its store (a read-only mount? a full or failing disk?)."
            ) from None


def _header(db: Path) -> bytes:
    with db.open("rb") as f:
        return f.read(16)


def _quick_check(db: Path) -> list[str]:
    started = time.monotonic()
    try:
        findings = quick_check(db)
    except sqlite3.Error as exc:
        raise StoreError(f"{db}: cannot open the store ({error_kind(exc)}: {exc})") from None
    log.debug("store quick_check", path=str(db), took_s=round(time.monotonic() - started, 3))
    return findings


def _open(db: Path) -> Store:
    try:
        return Store(db)
    except sqlite3.Error as exc:
        raise StoreError(f"{db}: cannot open the store ({error_kind(exc)}: {exc})") from None
    except OSError as exc:
        raise StoreError(f"{db}: cannot create the store: {exc.strerror}") from None


# -- damage ---------------------------------------------------------------------------------


def _replace_damaged(db: Path, reason: str, marker: dict[str, Any] | None, version: str) -> Opened:
    now = time.time()
    target = _free_name(db, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
    moved = False
    for suffix in ("", *SIDE_FILES):
        src = Path(f"{db}{suffix}")
        if src.exists():
            try:
                src.rename(Path(f"{target}{suffix}"))
            except OSError as exc:
                raise StoreError(
                    f"{db} is damaged ({reason}) and cannot be moved aside: {exc.strerror}"
                ) from None
            moved = moved or suffix == ""
    # An emptied file may still have its WAL, which holds every page written since the last
    # checkpoint (after a crash, often the whole recent outbox): worth reading too.
    wal = Path(f"{target}-wal")
    readable = moved and (target.stat().st_size > 0 or (wal.exists() and wal.stat().st_size > 0))
    salvaged = _salvage(target) if readable else Salvage()
    try:
        store = _open(db)
    except StoreError as exc:
        where = f"moved aside to {target}" if moved else "nothing to move aside"
        raise StoreError(f"{exc}; the damaged store ({reason}) was {where}") from None
    store.restore(salvaged, now=now)
    incident: dict[str, Any] = {
        "at": iso(now),
        "file": str(db),
        "reason": reason,
        "moved_to": str(target) if moved else None,
        "salvaged": salvaged.counts(),
        "salvage_errors": salvaged.errors[:6],
        "queued_at_stop": (marker or {}).get("queued_at_stop"),
        "marker_created_at": (marker or {}).get("created_at"),
    }
    store.add_incident(incident)
    write_marker(db, version=version)
    log.error("store damaged; started on a fresh store", detail=incident_message(incident))
    return Opened(store, incident)


def _free_name(db: Path, stamp: str) -> Path:
    target = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target = db.with_name(f"{db.name}.damaged-{stamp}.{n}")
        n += 1
    return target


def _salvage(damaged: Path) -> Salvage:
    """Salvage from a copy, so the moved-aside files stay exactly as they were found."""
    try:
        with tempfile.TemporaryDirectory(prefix=".salvage-", dir=damaged.parent) as tmp:
            copy = Path(tmp) / "copy.db"
            shutil.copyfile(damaged, copy)
            wal = Path(f"{damaged}-wal")
            if wal.exists():
                shutil.copyfile(wal, Path(f"{copy}-wal"))
            return salvage_copy(copy)
    except OSError as exc:
        out = Salvage()
        out.errors.append(f"copy for salvage: {exc}")
        return out


def _read_marker(db: Path) -> dict[str, Any] | None:
    path = marker_path(db)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # present but unreadable: it still says a store existed
    return data if isinstance(data, dict) else {}


def _user(uid: int, *, bare: bool = False) -> str:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid) if bare else f"uid {uid}"
    return name if bare else f"uid {uid} ({name})"
