"""Secrets (issue part 6, DESIGN.md invariant 8): the API key and the signing secret never
appear in logs (debug level included), /status, /metrics, CLI output or config errors."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from agent.hub import HubConfig
from tests.e2e.conftest import CUSTOMER_KEY, Agent, HubThread, Traffic, cli, to_toml, wait_until


def test_api_key_and_signing_secret_never_leak(
    make_hub: Any, make_agent: Any, tmp_path: Path
) -> None:
    """The agent runs at debug log level with a random API key and signing secret through:
    the hub refusing its key (401, auth failure), the hub verifying its signatures (the SMS get
    through, so the signing really happens), and the hub expecting another signing secret (401
    code 204).  Everything it wrote to stdout/stderr, /status, /metrics and /healthz at each
    stage, ``vsim-agent check``, ``status``, ``status --json`` and ``queue list``, and the config
    error for a key of the wrong type, contain neither secret nor a 12-character piece of one."""
    key = "sk-e2e-" + secrets.token_hex(16)
    secret = "whsec-" + secrets.token_hex(16)
    hub: HubThread = make_hub(
        HubConfig(agent_keys={"another-key"}, customer_key=CUSTOMER_KEY, signing_secret=secret)
    )
    agent: Agent = make_agent(
        hub, api_key=key, upstream={"signing_secret": secret}, log={"level": "debug"}
    )
    seen: dict[str, str] = {}

    def capture(stage: str) -> None:
        seen[f"{stage} /status"] = agent._get("/status").text
        seen[f"{stage} /metrics"] = agent.metrics()
        seen[f"{stage} /healthz"] = agent._get("/healthz").text
        for args in (("status",), ("status", "--json"), ("queue", "list"), ("check",)):
            done = agent.cli(*args)
            seen[f"{stage} {' '.join(args)}"] = done.stdout + done.stderr

    agent.start()
    traffic = Traffic(agent.network_path, agent.numbers(), count=5, rate=50, prefix="secret")
    traffic.start().join()
    wait_until(lambda: agent.status()["hub"]["auth_failed"], 10, "auth failure")
    capture("auth failure")

    hub.stop()
    hub.start(HubConfig(agent_keys={key}, customer_key=CUSTOMER_KEY, signing_secret=secret))
    wait_until(lambda: set(traffic.sent) <= hub.texts(), 15, "signed requests accepted")
    wait_until(lambda: not agent.status()["hub"]["auth_failed"], 5, "auth recovered")
    capture("signed")

    hub.stop()
    other = HubConfig(agent_keys={key}, customer_key=CUSTOMER_KEY, signing_secret="not-it")
    hub.start(other)
    agent.net.send(agent.numbers()[0], "signature refused 4321")
    wait_until(lambda: agent.status()["hub"]["auth_failed"], 10, "signature refused")
    capture("bad signature")
    code, _ = agent.terminate()
    assert code == 0
    seen["agent output"] = agent.logs()

    bad = tmp_path / "bad.toml"
    digits = str(secrets.randbelow(10**15) + 10**15)
    cfg = dict(agent.config)
    cfg["upstream"] = {**cfg["upstream"], "api_key": int(digits), "signing_secret": secret}
    bad.write_text(to_toml(cfg), encoding="utf-8")
    done = cli("check", "-c", str(bad))
    assert done.returncode == 2 and "upstream.api_key" in done.stderr, done.stderr
    seen["config error"] = done.stdout + done.stderr

    assert "hub rejected the API key" in seen["agent output"]
    assert '"level": "debug"' in seen["agent output"], "debug logging was not on"
    needles = {key, secret, digits}
    for value in (key, secret, digits):
        needles |= {value[i : i + 12] for i in range(0, len(value) - 11, 6)}
    for where, text in seen.items():
        leaked = sorted(n for n in needles if n in text)
        assert not leaked, f"{where} shows secret material {leaked}"
