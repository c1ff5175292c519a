"""Bad input from every side (issue part 4): config files, hub answers, hub commands, and
messages the hub refuses for good.  The agent says exactly what is wrong, keeps running, and
loses nothing: refused messages wait in the dead-letter table until an operator re-sends them.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.e2e.conftest import (
    DEVICE,
    PYTHON,
    Agent,
    HubThread,
    Traffic,
    agent_env,
    to_toml,
    wait_until,
)

# -- config files -------------------------------------------------------------------------


def base_config(tmp: Path) -> dict[str, Any]:
    return {
        "agent": {"id": "bad", "state_dir": str(tmp / "state")},
        "upstream": {"url": "http://127.0.0.1:9/agent/v1", "api_key": "demo-key"},
        "admin": {"listen": "127.0.0.1:0"},
        "devices": [{"name": "bank1", "driver": "simulated", "sims": 2}],
    }


def _unknown_device_key(cfg: dict[str, Any]) -> str:
    cfg["devices"].append({"name": "bank2", "driver": "simulated", "baudrate": 9600})
    return to_toml(cfg)


def _wrong_type(cfg: dict[str, Any]) -> str:
    cfg["upstream"]["heartbeat_s"] = "fast"
    return to_toml(cfg)


def _duplicate_device(cfg: dict[str, Any]) -> str:
    cfg["devices"].append({"name": "bank1", "driver": "simulated"})
    return to_toml(cfg)


def _missing_api_key(cfg: dict[str, Any]) -> str:
    del cfg["upstream"]["api_key"]
    return to_toml(cfg)


def _unknown_section_key(cfg: dict[str, Any]) -> str:
    cfg["upstream"]["retries"] = 3
    return to_toml(cfg)


def _bad_toml(cfg: dict[str, Any]) -> str:
    return to_toml(cfg) + "\n[upstream\nheartbeat_s = 5\n"


CONFIG_CASES = {
    "unknown device key": (_unknown_device_key, ["devices[1].baudrate", "unknown key"]),
    "wrong type": (_wrong_type, ["upstream.heartbeat_s", "'fast'"]),
    "duplicate device name": (_duplicate_device, ["devices[1].name", "duplicate", "devices[0]"]),
    "missing api key": (_missing_api_key, ["upstream.api_key", "required"]),
    "unknown section key": (_unknown_section_key, ["upstream.retries", "unknown key"]),
    "bad TOML": (_bad_toml, ["not valid TOML", "line"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_refused_with_file_and_key(tmp_path: Path, case: str) -> None:
    """``vsim-agent check`` and ``vsim-agent run`` both exit 2 on a malformed config, with a
    message naming the file and the key path as an operator writes it; ``run`` creates no
    state (it never got as far as opening the store).  A missing API key stops ``run``, while
    ``check`` only warns about it (systemd may supply it as a credential)."""
    build, fragments = CONFIG_CASES[case]
    cfg_path = tmp_path / "bad.toml"
    cfg_path.write_text(build(base_config(tmp_path)), encoding="utf-8")
    cfg_path.chmod(0o600)
    procs = {
        cmd: subprocess.Popen(
            [PYTHON, "-m", "agent", cmd, "-c", str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=agent_env(),
        )
        for cmd in ("check", "run")
    }
    # Reap both before asserting anything: a process left behind by a failed assertion would
    # surface as a ResourceWarning in whichever test runs next.
    outputs = {cmd: proc.communicate(timeout=30) for cmd, proc in procs.items()}
    for cmd, proc in procs.items():
        out, err = outputs[cmd]
        if cmd == "check" and case == "missing api key":
            # By design (commit 3c48321) check only warns: under systemd the key arrives as a
            # credential that an operator's shell does not have.
            assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{out}\n{err}"
            assert f"warning: {cfg_path}: upstream.api_key: required" in out, out
            continue
        assert proc.returncode == 2, f"{cmd}: exit {proc.returncode}\n{out}\n{err}"
        assert str(cfg_path) in err, f"{cmd} does not name the file:\n{err}"
        for fragment in fragments:
            assert fragment in err, f"{cmd} does not say {fragment!r}:\n{err}"
        assert "Traceback" not in err
    assert not (tmp_path / "state").exists()


# -- a hub that answers badly -------------------------------------------------------------


class ScriptedFront:
    """An ASGI layer in front of the reference hub for answers it never gives by itself.

    * ``commands``: raw entries handed out (instead of the hub's) by the next GET /commands;
      results POSTed for their ids are kept in ``results`` and answered 200.
    * ``message_answers``: bodies that replace the hub's answer to the next POST /messages
      (the hub still handles the request: as if the answer were mangled on the way back).
    * ``command_answers``: bodies answered at once to the next GET /commands.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commands: list[Any] = []
        self.message_answers: list[bytes] = []
        self.command_answers: list[bytes] = []
        self.results: dict[str, Any] = {}
        self.injected: set[str] = set()

    def inject(self, *commands: Any) -> None:
        with self.lock:
            self.commands.extend(commands)
            for c in commands:
                if isinstance(c, dict) and isinstance(c.get("id"), str | int):
                    self.injected.add(str(c["id"]))

    def pending(self) -> int:
        with self.lock:
            return len(self.commands) + len(self.message_answers) + len(self.command_answers)

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def respond(send: Send, body: bytes) -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        async def read(receive: Receive) -> bytes:
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(chunks)

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            method, path = scope["method"], scope["path"]
            if method == "GET" and path == "/agent/v1/commands":
                with self.lock:
                    answer = self.command_answers.pop(0) if self.command_answers else None
                    if answer is None and self.commands:
                        answer = json.dumps({"commands": self.commands}).encode()
                        self.commands = []
                if answer is not None:
                    await respond(send, answer)
                    return
            if method == "POST" and path.startswith("/agent/v1/commands/"):
                cid = path.split("/")[-2]
                if cid in self.injected:
                    body = json.loads(await read(receive))
                    with self.lock:
                        self.results[cid] = body
                    await respond(send, b'{"ok":true}')
                    return
            if method == "POST" and path == "/agent/v1/messages":
                with self.lock:
                    answer = self.message_answers.pop(0) if self.message_answers else None
                if answer is not None:

                    async def swallow(message: Message) -> None:
                        pass

                    await app(scope, receive, swallow)
                    await respond(send, answer)
                    return
            await app(scope, receive, send)

        return asgi


def test_malformed_hub_answers_lose_nothing(make_hub: Any, make_agent: Any) -> None:
    """POST /messages answered with: not JSON, JSON without ``accepted``, ``accepted`` not a
    list, lists of the wrong element types, a bare list, ``null``; GET /commands answered with
    ``commands`` not a list and a bare list; PUT /sims answered with garbage.  The agent
    treats each as transient: it keeps running (same pid), dead-letters nothing, retries, and
    every SMS reaches the hub under one id (repeats only as repeated ids)."""
    front = ScriptedFront()
    hub: HubThread = make_hub(wrap=front)
    agent: Agent = make_agent(hub, upstream={"poll_wait_s": 1})
    agent.start()
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")
    pid = agent.pid
    with front.lock:
        front.message_answers += [
            b'{"accepted": ["5f0c2a9e41d7b3c8a6e2f1d0\x00\xff',
            b'{"ok": true}',
            b'{"accepted": "all", "rejected": {}}',
            b'{"accepted": [12345, null], "rejected": [{"id": 5}, "x"]}',
            b"[]",
            b"null",
        ]
        front.command_answers += [b'{"commands": "none"}', b"[1, 2]", b"<html>"]
    hub.state.add_fault(mode="garbage_json", endpoint="sims", count=2)
    hub.state.add_fault(mode="garbage_json", endpoint="messages", count=1)
    traffic = Traffic(agent.network_path, agent.numbers(), count=20, rate=20, prefix="mangled")
    traffic.start().join()
    wait_until(lambda: front.pending() == 0, 20, "every scripted answer used")
    wait_until(lambda: set(traffic.sent) <= hub.texts(), 20, "all SMS at the hub")
    wait_until(lambda: not hub.state.faults.pending(), 15, "the sims faults used")
    by_text = hub.by_text()
    assert all(len(by_text[t]) == 1 for t in traffic.sent)
    assert hub.state.duplicates >= 1, "the mangled answers hid accepted batches: re-sent"
    # The hub took every message before the mangled answers: the agent still has to hear a
    # valid answer for each before its outbox empties.
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 20, "an empty outbox")
    assert agent.alive and agent.pid == pid
    assert agent.status()["outbox"]["dead_letters"] == 0
    assert not agent.events("command executed")


def test_bad_commands_answer_ok_false(make_hub: Any, make_agent: Any) -> None:
    """Commands of an unknown type, for an unknown SIM, without a SIM, ``forward`` without
    ``to`` or with a ``to`` that is not E.164, an integer id, an id with a newline and a space:
    each gets a result
    ``{"ok": false, "error": "<reason>"}``; entries that are not objects or have no id are
    skipped.  Nothing touches the SIMs, the process keeps running, and a valid command and SMS
    right after are handled normally."""
    front = ScriptedFront()
    hub: HubThread = make_hub(wrap=front)
    agent: Agent = make_agent(hub, upstream={"poll_wait_s": 1})
    agent.start()
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")
    pid = agent.pid
    s0, s1 = (r["iccid"] for r in agent.net.sims(DEVICE)[:2])
    bad = {
        "bad-type": {"id": "bad-type", "type": "reboot", "sim_id": s0},
        "bad-sim": {"id": "bad-sim", "type": "disable", "sim_id": "8970199999999999999"},
        "no-sim": {"id": "no-sim", "type": "enable"},
        "no-to": {"id": "no-to", "type": "forward", "sim_id": s0},
        "bad-to": {"id": "bad-to", "type": "forward", "sim_id": s0, "to": "12345"},
        "77": {"id": 77, "type": None, "sim_id": s0},
        # An id that cannot stand in a URL as it is: its result must still be reported.
        "line\nbreak id": {"id": "line\nbreak id", "type": "reboot", "sim_id": s0},
    }
    front.inject("not an object", 42, None, {"type": "disable", "sim_id": s0}, *bad.values())
    wait_until(lambda: set(front.results) == set(bad), 15, "a result for every bad command")
    for cid, result in front.results.items():
        assert result["ok"] is False, (cid, result)
        assert isinstance(result["error"], str) and result["error"], (cid, result)
        assert result["finished_at"]
    assert "reboot" in front.results["bad-type"]["error"]
    assert "unknown sim" in front.results["bad-sim"]["error"]
    assert "E.164" in front.results["no-to"]["error"]
    sim = agent.net.sim(s0)
    assert sim["radio_on"] == 1 and sim["forward_to"] is None
    assert agent.alive and agent.pid == pid

    cid = hub.state.enqueue_command("disable", s1)
    wait_until(lambda: cid in hub.state.command_results, 10, "a valid command after them")
    assert hub.state.command_results[cid]["ok"] is True
    assert agent.net.sim(s1)["radio_on"] == 0
    agent.net.send(agent.numbers()[0], "still alive 3141")
    wait_until(lambda: "still alive 3141" in hub.texts(), 10, "an SMS after them")


def test_refused_messages_go_to_dead_letters_and_are_resent(
    hub: HubThread, make_agent: Any
) -> None:
    """A message rejected as "unknown sim" (the hub lost its inventory) is not dead-lettered:
    the agent registers its SIMs again and delivers it.  A message refused with HTTP 422 goes
    to the dead-letter table at once (no retry loop) while other SMS keep flowing;
    ``vsim-agent queue list`` shows it with its reason; ``vsim-agent queue resend --all`` puts
    it back and the running agent delivers it under the same id."""
    agent: Agent = make_agent(hub, upstream={"heartbeat_s": 2})
    agent.start()
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")
    n0 = agent.numbers()[0]

    # The hub forgets everything (a restart of an in-memory hub) right after a heartbeat: the
    # agent believes its SIMs registered, so the next message is rejected as "unknown sim".
    # Past the start-up snapshots: wait for a snapshot that follows the previous one by most of
    # a heartbeat period (2 s), so it is a heartbeat and the next one is ~2 s away.
    def heartbeat_seen() -> bool:
        times = hub.state.request_times("sims")
        return len(times) >= 2 and times[-1] - times[-2] >= 1.5

    wait_until(heartbeat_seen, 10, "a heartbeat", interval=0.002)
    beat = hub.state.request_times("sims")[-1]  # recorded on arrival, applied just after
    wait_until(
        lambda: hub.state.agents["t1"]["updated"] >= beat, 2, "heartbeat applied", interval=0.002
    )
    hub.state.reset()  # after the heartbeat was applied, ~2 s before the next one
    agent.net.send(n0, "rejected as unknown sim 1111", sender="VKcom")
    wait_until(lambda: "rejected as unknown sim 1111" in hub.texts(), 10, "re-registered, sent")
    assert [r["reason"] for r in hub.state.rejected] == ["unknown sim"]
    assert len(hub.sims()) == 8, "the agent registered its SIMs again"
    assert agent.status()["outbox"]["dead_letters"] == 0

    hub.state.add_fault(status=422, count=1, endpoint="messages")
    agent.net.send(n0, "refused with 422 2222", sender="VKcom")
    wait_until(lambda: agent.status()["outbox"]["dead_letters"] == 1, 10, "a dead letter")
    agent.net.send(n0, "a normal one 3333", sender="VKcom")
    wait_until(lambda: "a normal one 3333" in hub.texts(), 10, "traffic goes on")
    tries = hub.requests("messages")

    listed = agent.cli("queue", "list")
    assert listed.returncode == 0, listed.stderr
    assert "dead letters: 1" in listed.stdout
    assert "HTTP 422" in listed.stdout
    ids = agent.query("SELECT id FROM dead_letters")
    assert len(ids) == 1 and all(i in listed.stdout for (i,) in ids)
    assert hub.requests("messages") == tries, "a dead letter was retried"

    resent = agent.cli("queue", "resend", "--all")
    assert resent.returncode == 0, resent.stderr
    assert "1 message(s) moved back" in resent.stdout
    wait_until(lambda: "refused with 422 2222" in hub.texts(), 10, "the re-sent dead letter")
    delivered = {r["body"]["id"] for r in hub.messages()}
    assert {i for (i,) in ids} <= delivered, "re-sent under other ids"
    wait_until(lambda: agent.status()["outbox"]["dead_letters"] == 0, 5, "no dead letters")
    assert "dead letters: 0" in agent.cli("queue", "list").stdout


def test_permanently_refused_inventory_is_not_retried_in_a_loop(
    hub: HubThread, make_agent: Any
) -> None:
    """PROTOCOL.md §2: a 4xx other than 401/403/408/425/429 is permanent for that request and
    "never retried in a loop".  With the hub refusing PUT /sims with 400 and an SMS waiting for
    its SIM to be registered, the agent may try again at its heartbeat (60 s here), not every
    second for 5 s; the SMS itself stays queued (not lost, not dead-lettered)."""
    hub.state.add_fault(status=400, count=-1, endpoint="sims")
    agent: Agent = make_agent(hub, upstream={"heartbeat_s": 60})
    agent.start()
    # Past the start-up snapshot: the hub has refused it once.
    wait_until(lambda: hub.requests("sims") >= 1, 10, "the first PUT /sims")
    agent.net.send(agent.numbers()[0], "held for an unregistered SIM 1234")
    t0 = time.time()
    time.sleep(5)
    outbox = agent.status()["outbox"]
    assert outbox["depth"] == 1 and outbox["dead_letters"] == 0
    tries = hub.requests("sims", t0)
    assert tries <= 2, f"{tries} PUT /sims in 5 s after a permanent refusal"


def test_store_locked_by_another_process_delays_but_loses_nothing(
    hub: HubThread, make_agent: Any
) -> None:
    """Another process holds the agent's database write lock for longer than its busy
    timeout (5 s) while SMS arrive: the agent keeps running, deletes nothing from the SIMs
    while it cannot commit, and delivers everything once the lock is gone."""
    agent: Agent = make_agent(hub)
    agent.start()
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")
    numbers = agent.numbers()
    blocker = sqlite3.connect(agent.root / "state" / "agent.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        for i in range(5):
            agent.net.send(numbers[i], f"while locked {i}", sender="Bank")
        time.sleep(7)
        assert agent.alive
        assert agent.net.stored() == 5, "nothing may leave the SIMs before it is committed"
        assert not {f"while locked {i}" for i in range(5)} & hub.texts()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_until(lambda: {f"while locked {i}" for i in range(5)} <= hub.texts(), 20, "delivery")
    wait_until(lambda: agent.net.stored() == 0, 10, "deleted from the SIMs")
    assert agent.alive
