"""End to end over network gateways: real agent processes, gateway emulator processes, the
reference hub.

The emulators run as their own processes (``python -m tests.gateways.goip`` /
``tests.gateways.ejoin``), as a box on the LAN would: the agent reaches them only over real
UDP / HTTP on 127.0.0.1, and the tests steer them through their control APIs (inject SMS,
reboot, faults).  The agent and hub fixtures are those of ``tests/e2e``.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (  # noqa: F401  (fixtures used by the tests here)
    _LIVE,
    PYTHON,
    agent_env,
    hub,
    make_agent,
    make_hub,
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """One gateway emulator process; its first stdout line is a JSON description."""

    def __init__(self, module: str, args: list[str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=agent_env(),
            start_new_session=True,
        )
        _LIVE.add(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise AssertionError(f"{module} did not start:\n{log.read_text()[-2000:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.http = httpx.Client(base_url=self.info["control"], timeout=10)

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.http.post(path, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _LIVE.discard(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[Callable[[str, list[str]], Emulator]]:
    """``emulators(module, args)`` → a started :class:`Emulator`; all stopped after."""
    started: list[Emulator] = []

    def start(module: str, args: list[str]) -> Emulator:
        emu = Emulator(module, args, tmp_path / f"emulator{len(started)}.log")
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()
