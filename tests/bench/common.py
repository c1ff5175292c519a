"""What the benchmark scripts share: /proc readings, machine facts, percentiles, waiting.

Linux only (reads ``/proc``); the figures a benchmark prints come from here so the scripts
measure the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def machine_line() -> str:
    m = machine()
    return f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]],
    where: Path,
    interval: float = 0.1,
) -> T:
    """Poll ``check`` until it returns something truthy; give up (SystemExit, naming ``where``
    for the logs) on timeout or as soon as one of ``procs`` has died."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            value = check()
            if value:
                return value
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a process died while waiting for {what}; see {where}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}; see {where}")
        time.sleep(interval)


def spawn(argv: Sequence[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own session with stdout and stderr into ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )


def forwarded_latencies(log_path: Path, since: float, until: float) -> list[float]:
    """The agent's own share of the latency: ``latency_ms`` (stored → hub accepted) of the
    "forwarded" lines of its JSON log between ``since`` and ``until`` (Unix times)."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"forwarded"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            rec = json.loads(line)
            ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
            if since <= ts <= until and rec.get("latency_ms") is not None:
                out.append(float(rec["latency_ms"]))
    return out
