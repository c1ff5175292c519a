"""Store faults with real agent processes (issue #12 items 7, 8, 11): a disk that fills up
under a running agent, stores broken before a start, and the modes of what the agent creates.

The full disk is a real tmpfs of a few MiB mounted on the agent's state directory and filled
by the test; the notify socket is the one of tests/e2e/test_systemd_notify.py.  Mounting needs
root (CAP_SYS_ADMIN): without it those tests skip and say so.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.store import quick_check
from tests.e2e.conftest import Agent, HubThread, Traffic, wait_until
from tests.e2e.test_systemd_notify import NotifySocket, env_for

QUEUED = 300


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """``tmpfs(path, size)`` mounts a fresh tmpfs on ``path``; all are unmounted after."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {run.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file until the file system has no byte left (ENOSPC at every chunk size)."""
    filler = directory / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def notify_env(sock: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(sock.path)}


def wait_status_line(sock: NotifySocket, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.drain(0.5)
        for _t, line in sock.lines("STATUS="):
            if needle in line:
                return line
    raise AssertionError(f"no STATUS= line with {needle!r}: {sock.lines('STATUS=')[-3:]}")


def queue_then_stop(agent: Agent, hub: HubThread, count: int, prefix: str) -> list[str]:
    """Run the agent, let ``count`` SMS pile up in its outbox while the hub is down, stop
    it cleanly (SIGTERM) and bring the hub back.  The texts, in order."""
    agent.start()
    hub.stop()
    numbers = agent.numbers()
    texts = [f"{prefix}-{i:04d} your code {1000 + i}" for i in range(count)]
    for i, text in enumerate(texts):
        agent.net.send(numbers[i % len(numbers)], text, sender="VKcom")
    wait_until(
        lambda: agent.status()["outbox"]["depth"] == count,
        30,
        f"{count} SMS queued",
        detail=agent.tail,
    )
    code, _ = agent.terminate()
    assert code == 0
    assert not Path(f"{agent.state_dir}/agent.db-wal").exists(), "a clean stop checkpoints"
    hub.start()
    return texts


def no_traceback(agent: Agent) -> None:
    assert "Traceback" not in agent.logs(), agent.tail()


# -- (a) a disk that fills up under a running agent -----------------------------------------


def test_full_disk_is_shown_everywhere_and_queued_sms_still_go_out(
    tmp_path: Path, hub: HubThread, make_agent: Any, tmpfs: Any
) -> None:
    """40 SMS wait in the outbox (hub down); the state file system fills up; the agent is
    SIGKILLed and starts again on the full disk (as a watchdog restart would).  The 40 reach
    the hub anyway (the snapshot seq and the settles never wait for the disk); new SMS stay
    on their SIMs; /status, /metrics and STATUS= say the store cannot write, and the systemd
    watchdog keeps being fed (a full disk is no reason to restart).  Once space is freed,
    intake resumes and every SMS reaches the hub exactly once."""
    agent: Agent = make_agent(hub)
    tmpfs(agent.state_dir, "6m")
    sock = NotifySocket(tmp_path / "notify")
    try:
        agent.start(env=notify_env(sock))
        hub.stop()
        numbers = agent.numbers()
        queued = [f"queued-{i:03d} your code {i}" for i in range(40)]
        for i, text in enumerate(queued):
            agent.net.send(numbers[i % len(numbers)], text, sender="VKcom")
        wait_until(lambda: agent.status()["outbox"]["depth"] == 40, 20, "40 SMS queued")
        filler = fill(agent.state_dir)

        assert agent.kill() == -signal.SIGKILL
        hub.start()
        registered_before = hub.requests("sims")
        agent.start(env=env_for(sock))  # with WATCHDOG_USEC: pings every second
        # Opening the store after the crash may checkpoint and drop the old WAL, which
        # frees space: fill again, so every insert from now on must fail.
        refill = fill(agent.state_dir, "filler2")
        traffic = Traffic(agent.network_path, numbers, count=60, rate=10, prefix="during")
        traffic.start()

        st = wait_until(
            lambda: (s := agent.status())["store"]["writable"] is False and s,
            20,
            "the store reported unwritable",
            detail=agent.tail,
        )
        assert st["store"]["error"] == "disk full", st["store"]
        assert st["store"]["since"] and st["store"]["write_errors"] >= 1
        wait_until(
            lambda: agent.events("could not commit received SMS; retrying"),
            20,
            "intake failing to commit the new SMS",
            detail=agent.tail,
        )
        wait_until(
            lambda: set(queued) <= hub.texts(),
            20,
            "the 40 queued SMS at the hub while the disk is full",
            detail=lambda: f"hub has {len(set(queued) & hub.texts())}/40\n{agent.tail()}",
        )
        assert hub.requests("sims") > registered_before, "PUT /sims went out on a full disk"
        metrics = agent.metrics()
        assert "vsim_store_writable 0.0" in metrics
        errors = [
            ln for ln in metrics.splitlines() if ln.startswith("vsim_store_write_errors_total")
        ]
        assert errors and errors[0].startswith('vsim_store_write_errors_total{kind="disk full"}')
        assert float(errors[0].split()[-1]) >= 1
        line = wait_status_line(sock, "store: cannot write (disk full)", 15)
        assert line.startswith("STATUS=8/8 SIMs online"), line
        window = time.monotonic()
        sock.drain(2.5)
        pings = [t for t, _m in sock.lines("WATCHDOG=1") if t > window]
        assert len(pings) >= 2, f"watchdog pings in 2.5 s on a full disk: {len(pings)}"
        assert agent.status()["store"]["writable"] is False, "still full: no flapping"
        assert agent.alive

        filler.unlink()
        refill.unlink()
        traffic.join()
        everything = set(queued) | set(traffic.sent)
        wait_until(
            lambda: everything <= hub.texts(),
            30,
            "every SMS at the hub after space was freed",
            detail=lambda: f"missing {sorted(everything - hub.texts())[:5]}\n{agent.tail()}",
        )
        wait_until(lambda: agent.status()["store"]["writable"], 15, "the store writable again")
        wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 10, "the owed settles done")
        wait_until(lambda: agent.net.stored() == 0, 10, "every SMS deleted from the SIMs")
        assert agent.metric("vsim_store_writable") == 1.0
        wait_status_line(sock, "8/8 SIMs online, queue 0", 10)
        split = {t: len(r) for t, r in hub.by_text().items() if len(r) != 1}
        assert not split and len(hub.state.messages) == 100
        code, _ = agent.terminate()
        assert code == 0
        no_traceback(agent)
    finally:
        sock.close()


# -- (b) stores broken before a start -------------------------------------------------------


def start_expecting_exit(agent: Agent, env: dict[str, str] | None = None) -> tuple[int, str]:
    agent.start(wait=False, env=env)
    code = agent.proc.wait(30)
    return code, agent.logs()


def test_read_only_store_exits_2_naming_the_file(
    tmp_path: Path, hub: HubThread, make_agent: Any, tmpfs: Any
) -> None:
    agent: Agent = make_agent(hub)
    tmpfs(agent.state_dir, "8m")
    agent.start()
    assert agent.terminate()[0] == 0
    assert subprocess.run(["mount", "-o", "remount,ro", str(agent.state_dir)]).returncode == 0
    sock = NotifySocket(tmp_path / "notify")
    try:
        code, logs = start_expecting_exit(agent, env=notify_env(sock))
        sock.drain(0.3)
    finally:
        sock.close()
    assert code == 2, agent.tail()
    message = f"{agent.state_dir}/agent.db cannot be opened for writing: Read-only file system"
    assert f"store error: {message}" in logs, agent.tail()
    # systemctl status shows why the unit does not start.
    assert any(message in line for _t, line in sock.lines("STATUS=store error: ")), sock.messages
    no_traceback(agent)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the store to another user needs root")
def test_foreign_owned_store_exits_2_naming_the_file(hub: HubThread, make_agent: Any) -> None:
    agent: Agent = make_agent(hub)
    agent.start()
    assert agent.terminate()[0] == 0
    os.chown(agent.state_dir / "agent.db", 65534, 65534)
    code, logs = start_expecting_exit(agent)
    assert code == 2, agent.tail()
    assert f"store error: {agent.state_dir}/agent.db belongs to uid 65534" in logs
    no_traceback(agent)
    assert (agent.state_dir / "agent.db").stat().st_uid == 65534, "left as it was"


def incident_of(agent: Agent) -> dict[str, Any]:
    st = agent.status()
    [incident] = st["store"]["incidents"]
    assert agent.metric("vsim_store_incidents") == 1.0
    return dict(incident)


def test_corrupt_header_is_moved_aside_and_all_300_queued_sms_delivered(
    hub: HubThread, make_agent: Any
) -> None:
    agent: Agent = make_agent(hub)
    texts = queue_then_stop(agent, hub, QUEUED, "hdr")
    db = agent.state_dir / "agent.db"
    with db.open("r+b") as f:
        f.write(b"garbage garbage!")
    damaged = db.read_bytes()
    agent.start()
    inc = incident_of(agent)
    assert inc["reason"] == "the SQLite header is damaged"
    assert inc["salvaged"]["outbox"] == QUEUED
    assert Path(inc["moved_to"]).read_bytes() == damaged
    assert f"moved aside to {inc['moved_to']}" in inc["message"]
    wait_until(lambda: set(texts) <= hub.texts(), 20, "the 300 salvaged SMS at the hub")
    assert len(agent.events("store damaged; started on a fresh store")) == 1
    no_traceback(agent)


def test_store_truncated_to_zero_is_loud_and_says_how_many_were_lost(
    hub: HubThread, make_agent: Any, tmp_path: Path
) -> None:
    agent: Agent = make_agent(hub)
    queue_then_stop(agent, hub, QUEUED, "zero")
    marker = json.loads((agent.state_dir / "agent.db.ok").read_text())
    assert marker["queued_at_stop"] == QUEUED
    os.truncate(agent.state_dir / "agent.db", 0)
    sock = NotifySocket(tmp_path / "notify")
    try:
        agent.start(env=notify_env(sock))
        inc = incident_of(agent)
        assert inc["reason"] == "the file is empty (0 bytes)"
        assert f"it held {QUEUED} at its last clean stop" in inc["message"]
        assert Path(inc["moved_to"]).exists()
        wait_status_line(sock, "STORE DAMAGED AT START", 15)
    finally:
        sock.close()
    shown = agent.cli("status")
    assert "store DAMAGED AT START" in shown.stdout and str(inc["moved_to"]) in shown.stdout
    # A restart does not make it go away; the operator's acknowledgement does.
    assert agent.terminate()[0] == 0
    agent.start()
    assert incident_of(agent)["moved_to"] == inc["moved_to"]
    ack = agent.cli("store", "ack")
    assert ack.returncode == 0 and "1 incident(s) acknowledged" in ack.stdout
    wait_until(lambda: agent.metric("vsim_store_incidents") == 0.0, 10, "the incident cleared")
    no_traceback(agent)


def test_garbage_mid_file_is_caught_and_what_is_readable_delivered(
    hub: HubThread, make_agent: Any
) -> None:
    agent: Agent = make_agent(hub)
    texts = queue_then_stop(agent, hub, QUEUED, "mid")
    db = agent.state_dir / "agent.db"
    page = 4096
    with db.open("r+b") as f:
        f.seek(page * (db.stat().st_size // page // 2))
        f.write(b"\xde\xad\xbe\xef" * (page // 4))
    assert quick_check(db) != ["ok"], "the test must really damage the file"
    damaged = db.read_bytes()
    agent.start()
    inc = incident_of(agent)
    assert inc["reason"].startswith("PRAGMA quick_check: ")
    salvaged = inc["salvaged"]["outbox"]
    assert 0 < salvaged <= QUEUED
    assert Path(inc["moved_to"]).read_bytes() == damaged, "the evidence is kept as found"
    wait_until(
        lambda: len(hub.texts() & set(texts)) == salvaged,
        20,
        f"the {salvaged} salvaged SMS at the hub",
    )
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 10, "the outbox drained")
    assert hub.texts() <= set(texts)
    print(f"salvaged {salvaged} of {QUEUED}: {inc['salvage_errors']}")
    no_traceback(agent)


# -- (c) modes ------------------------------------------------------------------------------


def test_state_dir_and_store_are_private_under_umask_022(hub: HubThread, make_agent: Any) -> None:
    agent: Agent = make_agent(hub)
    old = os.umask(0o022)
    try:
        agent.start()
    finally:
        os.umask(old)
    modes = {
        p.name: oct(p.stat().st_mode & 0o777)
        for p in [agent.state_dir, *agent.state_dir.iterdir()]
        if p.name.startswith(("state", "agent.db"))
    }
    assert modes == {
        "state": "0o700",
        "agent.db": "0o600",
        "agent.db-wal": "0o600",
        "agent.db-shm": "0o600",
        "agent.db.ok": "0o600",
    }
