"""Fixtures for the end-to-end tests over AT modems: emulated modems, the agent, the hub.

Everything is real and talks over loopback, as on a SIM farm:

* the modems: :class:`~tests.emulator.EmulatedModem` objects served by one
  :class:`~tests.emulator.ModemServer` thread of the test process, on real pseudo-terminals
  (opened by the agent through a stable symlink, the way ``/dev/serial/by-id`` is used) and
  on real TCP sockets (ser2net style, ``socket://127.0.0.1:PORT``);
* the agent: ``.venv/bin/vsim-agent run -c cfg.toml``, a separate process with one
  ``[[devices]]`` table (``driver = "at"``) per modem and shrunk poll/sweep/command timeouts;
* the reference hub on a thread (:class:`tests.e2e.conftest.HubThread`), read directly.

Reused from ``tests/e2e/conftest.py``: the hub thread, the agent process wrapper (config
file, start/kill, ``/status``, JSON log, store queries) and :func:`wait_until`.  Added here:

* :class:`Farm`: modems by profile and line kind, and the ``[[devices]]`` tables for them.
* :class:`CommitAudit` with :class:`AuditedModem`: at the very instant a modem executes
  ``AT+CMGD`` (on the emulator thread, before the message leaves the SIM), the audit opens the
  agent's store read-only and records whether that message was already committed.  A WAL
  reader sees exactly the committed transactions, so this proves invariant 1 delete by delete,
  with no race window (a polling observer could miss a commit-then-delete that happens within
  one polling interval).
* PDU helpers: the TPDU of a ``+CMGR`` PDU and the PROTOCOL.md §4 message id, computed here
  independently of the agent.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _LIVE, Agent, HubThread, agent_env, wait_until
from tests.emulator import EmulatedModem, ModemServer
from tests.emulator.atparse import Command, ParseError

#: The console script of this venv: the agent runs exactly as an operator starts it.
VSIM_AGENT = Path(sys.executable).with_name("vsim-agent")

#: Per-modem driver settings for tests: a poll (ICCID, signal, registration) every second, a
#: sweep (AT+CMGL=4) every 3 s, 1.5 s for ordinary commands.
DEVICE_DEFAULTS: dict[str, Any] = {"poll_s": 1.0, "sweep_s": 3.0, "command_timeout_s": 1.5}


# -- PDUs and ids --------------------------------------------------------------------------


def tpdu(pdu_hex: str) -> bytes:
    """The TPDU of a PDU as ``+CMGR`` prints it (the SMSC field stripped)."""
    raw = bytes.fromhex(pdu_hex)
    return raw[1 + raw[0] :]


def message_id(iccid: str, pdus: Iterable[str]) -> str:
    """PROTOCOL.md §4, computed independently of the agent: the first 128 bits of SHA-256
    over the ICCID and the TPDU of each part, in part order."""
    h = hashlib.sha256(iccid.encode("ascii"))
    for pdu in pdus:
        h.update(tpdu(pdu))
    return h.hexdigest()[:32]


# -- the commit audit ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deletion:
    """One message an ``AT+CMGD`` was about to remove, and the store's view at that instant."""

    t: float  # time.monotonic(), as the emulator's logs
    modem: str
    index: int
    pdu: str
    part_id: str
    committed: bool


class CommitAudit:
    """Records, for every message a modem is about to delete, whether the agent's store
    (``state_dir/agent.db``) held it at that instant (``parts`` or ``seen_parts``)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.deletions: list[Deletion] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def committed(self, part_id: str) -> bool:
        if not self.db.exists():
            return False
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, isolation_level=None, timeout=5)
        try:
            row = con.execute(
                "SELECT 1 FROM seen_parts WHERE part_id = :id"
                " UNION ALL SELECT 1 FROM parts WHERE part_id = :id",
                {"id": part_id},
            ).fetchone()
        finally:
            con.close()
        return row is not None

    def before_delete(self, modem: EmulatedModem, cmd: Command) -> None:
        """Called on the emulator thread, with the modem locked, before CMGD executes."""
        try:
            index, flag = cmd.int_arg(0), cmd.int_arg(1, 0)
        except ParseError:
            return
        sim = modem.sim
        if index is None or sim is None:
            return
        stored = modem.stored("SM")
        # <delflag> 0 deletes the index; 1..4 delete many (TS 27.005 3.5.4): audit them all.
        victims = [index] if flag == 0 else sorted(stored)
        now = time.monotonic()
        for i in victims:
            if i not in stored:
                continue
            pdu = stored[i][1]
            part_id = message_id(sim.iccid, [pdu])
            try:
                ok = self.committed(part_id)
            except sqlite3.Error as exc:  # pragma: no cover - reported, never silent
                with self._lock:
                    self.errors.append(f"{modem.name} index {i}: {exc!r}")
                ok = False
            with self._lock:
                self.deletions.append(Deletion(now, modem.name, i, pdu, part_id, ok))

    def violations(self) -> list[Deletion]:
        with self._lock:
            return [d for d in self.deletions if not d.committed]

    def count(self) -> int:
        with self._lock:
            return len(self.deletions)


class AuditedModem(EmulatedModem):
    """An emulated modem that asks its :class:`CommitAudit` before executing ``AT+CMGD``."""

    def __init__(self, *args: Any, audit: CommitAudit, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audit = audit

    def _execute(self, cmd: Command) -> Any:
        if cmd.form == "set" and cmd.text.startswith("+CMGD="):
            self.audit.before_delete(self, cmd)
        return super()._execute(cmd)


# -- modems --------------------------------------------------------------------------------


@dataclass
class Line:
    """One emulated modem as the agent sees it: a ``[[devices]]`` entry."""

    name: str
    modem: EmulatedModem
    kind: str  # "tcp" or "pty"
    url: str  # what the agent opens: socket://127.0.0.1:PORT, or the stable pty symlink
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def iccid(self) -> str:
        sim = self.modem.sim
        assert sim is not None, f"{self.name} has no SIM"
        return sim.iccid

    def device(self) -> dict[str, Any]:
        return {"name": self.name, "driver": "at", "port": self.url, **self.settings}

    def empty(self) -> bool:
        """Nothing left on the SIM and nothing held by the network for it."""
        return not self.modem.stored("SM") and not self.modem.pending()


class Farm:
    """Emulated modems on one :class:`ModemServer`; pty symlinks under ``root/by-id``."""

    def __init__(self, server: ModemServer, root: Path) -> None:
        self.server = server
        self.links = root / "by-id"
        self.links.mkdir(parents=True, exist_ok=True)
        self.lines: list[Line] = []
        self.audit: CommitAudit | None = None

    def add(
        self,
        profile: str = "ec25",
        kind: str = "tcp",
        *,
        name: str | None = None,
        settings: dict[str, Any] | None = None,
        **modem_kw: Any,
    ) -> Line:
        name = name or f"m{len(self.lines)}"
        if self.audit is not None:
            modem: EmulatedModem = AuditedModem(profile, name=name, audit=self.audit, **modem_kw)
        else:
            modem = EmulatedModem(profile, name=name, **modem_kw)
        if kind == "tcp":
            url = f"socket://127.0.0.1:{self.server.start_tcp(modem)}"
        elif kind == "pty":
            link = self.links / name
            self.server.start_pty(modem, link=link)
            url = str(link)
        else:
            raise ValueError(f"kind is tcp or pty, not {kind!r}")
        line = Line(name, modem, kind, url, {**DEVICE_DEFAULTS, **(settings or {})})
        self.lines.append(line)
        return line

    def devices(self) -> list[dict[str, Any]]:
        return [line.device() for line in self.lines]

    def all_empty(self) -> bool:
        return all(line.empty() for line in self.lines)

    def storage(self) -> str:
        """What is left on each SIM (for failure messages)."""
        return "\n".join(
            f"{line.name}: stored={sorted(line.modem.stored('SM'))} "
            f"pending={len(line.modem.pending())}"
            for line in self.lines
        )


# -- the agent -----------------------------------------------------------------------------


class AtAgent(Agent):
    """The agent over AT modems: :class:`tests.e2e.conftest.Agent` with ``devices`` from a
    :class:`Farm`, started through the ``vsim-agent`` console script."""

    def start(self, *, wait: bool = True, timeout: float = 20) -> AtAgent:
        with self.log_path.open("ab") as log:
            log.write(f"=== e2e_at: start #{len(self.procs) + 1} at {time.time():.3f}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [str(VSIM_AGENT), "run", "-c", str(self.cfg_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=agent_env(),
                cwd=self.root,
                start_new_session=True,
            )
        self.procs.append(proc)
        _LIVE.add(proc)  # killed by tests/e2e/conftest.py's atexit hook if a run is interrupted
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def db(self) -> Path:
        return self.state_dir / "agent.db"


# -- the hub's view --------------------------------------------------------------------------


def records(hub: HubThread) -> dict[str, dict[str, Any]]:
    """The hub's message records by id (``body``, ``count`` of receipts, ``received``)."""
    with hub.state.lock:
        return {k: dict(v) for k, v in hub.state.messages.items()}


def wait_online(hub: HubThread, iccids: Iterable[str], timeout: float = 20) -> None:
    want = set(iccids)

    def online() -> bool:
        sims = hub.sims()
        return all(i in sims and sims[i]["state"] == "online" for i in want)

    wait_until(
        online, timeout, f"{len(want)} SIMs online at the hub", detail=lambda: str(hub.sims())
    )


def wait_texts(
    hub: HubThread, texts: Iterable[str], timeout: float, detail: Callable[[], str] | None = None
) -> None:
    want = set(texts)

    def arrived() -> bool:
        return want <= hub.texts()

    def missing() -> str:
        lost = sorted(want - hub.texts())
        extra = f"\n{detail()}" if detail is not None else ""
        return f"missing {len(lost)}: {lost[:10]}{extra}"

    wait_until(arrived, timeout, f"{len(want)} texts at the hub", detail=missing)


# -- fixtures ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def hub() -> Iterator[HubThread]:
    """The reference hub on 127.0.0.1, on a thread of the test process."""
    thread = HubThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    """Emulated modems served by one ModemServer thread (stopped after the test)."""
    with ModemServer(name="e2e-at-modems") as server:
        yield Farm(server, tmp_path)


@pytest.fixture
def make_agent(
    request: pytest.FixtureRequest, tmp_path: Path, hub: HubThread, farm: Farm
) -> Iterator[Callable[..., AtAgent]]:
    """``make_agent(**config sections)`` → an :class:`AtAgent` (not started) for the farm's
    modems as they are when called.  Every process it started is killed at teardown; a failed
    test prints each agent's log tail and the SIM storages."""
    agents: list[AtAgent] = []

    def make(*, devices: list[dict[str, Any]] | None = None, **sections: Any) -> AtAgent:
        root = tmp_path / f"agent{len(agents)}"
        agent = AtAgent(
            root, hub, devices=devices if devices is not None else farm.devices(), **sections
        )
        agents.append(agent)
        return agent

    yield make
    rep = getattr(request.node, "rep_call", None)
    for agent in agents:
        if rep is not None and rep.failed:
            print(f"--- {agent.root}\n{agent.tail(80)}\n{farm.storage()}")
        agent.cleanup()


@pytest.fixture
def audited(farm: Farm, tmp_path: Path) -> CommitAudit:
    """Modems added to the farm from now on audit every AT+CMGD against the store of the
    first agent ``make_agent`` creates (``tmp_path/agent0/state/agent.db``)."""
    audit = CommitAudit(tmp_path / "agent0" / "state" / "agent.db")
    farm.audit = audit
    return audit
