"""Config edges (issue #12 items 3, 4, 9) with real ``vsim-agent check`` and ``run`` processes.

Each bad input (a key with a trailing space or newline, inline or from the environment, a key
pasted into ``api_key_file``, a non-ASCII key or ``agent.id``, 5,000-level nesting, broken
``VSIM_*`` JSON, a 10 MB value, an unknown ``VSIM_*`` variable, a timeout of inf, nan or -1)
makes both commands exit 2 with the same message: the key path or the variable named, no
traceback, the secret never printed, the value cut short.  ``run`` refuses it before it talks
to the hub (a recording hub on loopback sees no request) or opens its store.  The one good
edge, key files ending in a newline, really authenticates against the hub.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.hub import HubConfig
from tests.e2e.conftest import (
    CUSTOMER_KEY,
    PYTHON,
    Agent,
    HubThread,
    Recorder,
    agent_env,
    to_toml,
    wait_until,
)

SECRET = "sk-e2e-5d1c0b9a8f7e6d5c4b3a2918"
#: Any 12 characters of the secret must not appear anywhere in the output.
SECRET_PIECES = [SECRET[i : i + 12] for i in range(len(SECRET) - 11)]
TEN_MB = 10_000_000


@dataclass
class Case:
    #: Changes the config dict (or returns extra TOML text to append).
    edit: Callable[[dict[str, Any]], str | None]
    #: What stderr must name: the key path or the variable.
    names: str
    env: dict[str, str] = field(default_factory=dict)
    #: The message names the config file (False: it names a variable instead).
    names_file: bool = True


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        cfg[section][key] = value

    return edit


def _drop_key(cfg: dict[str, Any]) -> None:
    del cfg["upstream"]["api_key"]


def _append(text: str) -> Callable[[dict[str, Any]], str]:
    return lambda cfg: text


CASES: dict[str, Case] = {
    "api_key trailing space": Case(_set("upstream", "api_key", SECRET + " "), "upstream.api_key"),
    "api_key trailing newline": Case(
        _set("upstream", "api_key", SECRET + "\n"), "upstream.api_key"
    ),
    "env api_key trailing space": Case(
        _drop_key, "VSIM_UPSTREAM__API_KEY", {"VSIM_UPSTREAM__API_KEY": SECRET + " "}, False
    ),
    "env api_key trailing newline": Case(
        _drop_key, "VSIM_UPSTREAM__API_KEY", {"VSIM_UPSTREAM__API_KEY": SECRET + "\n"}, False
    ),
    "env signing_secret trailing newline": Case(
        lambda cfg: None,
        "VSIM_UPSTREAM__SIGNING_SECRET",
        {"VSIM_UPSTREAM__SIGNING_SECRET": SECRET + "\n"},
        False,
    ),
    "api_key_file holds the key": Case(
        lambda cfg: cfg["upstream"].update(api_key_file=SECRET) or _drop_key(cfg),
        "upstream.api_key_file: no such file",
    ),
    "non-ASCII api_key": Case(_set("upstream", "api_key", SECRET + "ключ"), "upstream.api_key"),
    "non-ASCII agent.id": Case(_set("agent", "id", "ферма-3"), "agent.id"),
    "env non-ASCII agent.id": Case(
        lambda cfg: None, "VSIM_AGENT__ID", {"VSIM_AGENT__ID": "ферма-3"}, False
    ),
    "5000-level nested array": Case(
        _append("\n[deep]\nx = " + "[" * 5000 + "]" * 5000 + "\n"),
        "not valid TOML: nested too deeply",
    ),
    "5000-level nested tables": Case(
        _append("\n[" + ".".join(["deep"] * 5000) + "]\n"), "nested deeper than 16 levels"
    ),
    "VSIM_UPSTREAM={": Case(lambda cfg: None, "VSIM_UPSTREAM", {"VSIM_UPSTREAM": "{"}, False),
    "VSIM_DEVICES=notjson": Case(
        lambda cfg: None, "VSIM_DEVICES", {"VSIM_DEVICES": "notjson"}, False
    ),
    "10 MB value": Case(_set("agent", "id", "x" * TEN_MB), "agent.id"),
    "10 MB key": Case(_set("upstream", "y" * TEN_MB, 1), "unknown key"),
    "VSIM_NOPE__X": Case(lambda cfg: None, "VSIM_NOPE__X", {"VSIM_NOPE__X": "1"}, False),
    "timeout_s inf": Case(_set("upstream", "timeout_s", float("inf")), "upstream.timeout_s"),
    "timeout_s nan": Case(_set("upstream", "timeout_s", float("nan")), "upstream.timeout_s"),
    "timeout_s -1": Case(_set("upstream", "timeout_s", -1), "upstream.timeout_s"),
    "env timeout_s inf": Case(
        lambda cfg: None,
        "VSIM_UPSTREAM__TIMEOUT_S",
        {"VSIM_UPSTREAM__TIMEOUT_S": "inf"},
        False,
    ),
}


def _config(tmp_path: Path, hub: HubThread) -> dict[str, Any]:
    return {
        "agent": {"id": "edges", "state_dir": str(tmp_path / "state")},
        "upstream": {"url": hub.agent_url, "api_key": "demo-key"},
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"format": "json"},
        "devices": [
            {
                "name": "bank1",
                "driver": "simulated",
                "sims": 2,
                "network": str(tmp_path / "simnet.db"),
            }
        ],
    }


@pytest.mark.parametrize("case", list(CASES))
def test_check_and_run_refuse_alike_with_exit_2(
    make_hub: Callable[..., HubThread], tmp_path: Path, case: str
) -> None:
    """``check`` and ``run`` exit 2 with the same config error; see the module docstring."""
    spec = CASES[case]
    recorder = Recorder()
    hub = make_hub(wrap=recorder)
    cfg = _config(tmp_path, hub)
    extra = spec.edit(cfg)
    cfg_path = tmp_path / "edge.toml"
    cfg_path.write_text(to_toml(cfg) + (extra or ""), encoding="utf-8")
    cfg_path.chmod(0o600)
    env = {**agent_env(), **spec.env}
    procs = {
        cmd: subprocess.Popen(
            [PYTHON, "-m", "agent", cmd, "-c", str(cfg_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for cmd in ("check", "run")
    }
    # Reap both before asserting: a run that did start must not outlive the test.
    outputs: dict[str, tuple[str, str]] = {}
    for cmd, proc in procs.items():
        try:
            outputs[cmd] = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs[cmd] = proc.communicate()
    for cmd, proc in procs.items():
        out, err = outputs[cmd]
        report = f"{cmd}: exit {proc.returncode}\nstdout: {out[:2000]}\nstderr: {err[:2000]}"
        assert proc.returncode == 2, report
        assert spec.names in err, report
        assert (str(cfg_path) in err) == spec.names_file, report
        assert "Traceback" not in err, report
        assert len(err) < 2000, report  # the 10 MB value is cut, not echoed
        assert "x" * 200 not in err and "y" * 200 not in err, report
        for piece in SECRET_PIECES:
            assert piece not in out + err, f"a piece of the secret leaked\n{report}"
    assert outputs["check"][1] == outputs["run"][1], "check and run refuse differently"
    # run stopped before it talked to the hub or opened its store.  Both processes have
    # exited, so nothing can arrive later: this observation is final.
    assert recorder.calls == []
    assert not (tmp_path / "state").exists()


def test_key_files_with_trailing_newline_authenticate(
    make_hub: Callable[..., HubThread], make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    """The good edge: an API key file and a signing secret file written with ``echo`` (a
    trailing newline) pass ``check`` and let ``run`` register its SIMs with a hub that
    checks both the key and every request's signature."""
    signing = "whsec-e2e-0123456789abcdef"
    hub = make_hub(
        HubConfig(agent_keys={SECRET}, customer_key=CUSTOMER_KEY, signing_secret=signing)
    )
    key_file, secret_file = tmp_path / "api_key", tmp_path / "signing_secret"
    key_file.write_text(SECRET + "\n")
    secret_file.write_text(signing + "\r\n")
    agent = make_agent(
        hub,
        upstream={
            "api_key": None,
            "api_key_file": str(key_file),
            "signing_secret_file": str(secret_file),
        },
    )
    check = agent.cli("check")
    assert check.returncode == 0, check.stderr
    assert "(signing on)" in check.stdout
    agent.start()
    wait_until(
        lambda: sum(1 for s in hub.sims().values() if s["agent_id"] == "t1") == agent.sims_count,
        20,
        f"the agent's {agent.sims_count} SIMs registered at the hub",
        detail=agent.tail,
    )
    for piece in SECRET_PIECES:
        assert piece not in agent.logs() + check.stdout + check.stderr
