"""Fixtures for the end-to-end tests: a reference hub on 127.0.0.1, agent processes, waits.

Everything here is real: the hub is :func:`agent.hub.run_hub` (uvicorn, loopback HTTP) on a
thread of the test process, so a test reads :class:`~agent.hub.HubState` directly (per-id
receive counts, request log, faults) while the agent under test is a separate ``python -m agent
run`` process with its own config file, state directory and SQLite files.  The simulated
network file (:class:`drivers.simulated.SimNetwork`) is the air between the test and the SIMs.

* :class:`HubThread`: start, stop and restart a hub on the same port with the same state (a hub
  that is down for a while), optionally wrapped in an extra ASGI layer (scripted bad answers).
* :class:`Agent`: writes the TOML config, starts/kills/terminates the process, reads ``/status``,
  ``/metrics``, the JSON log and the agent's database, runs CLI sub-commands.
* :class:`Traffic`: a thread that sends numbered SMS at a steady rate into the network.
* :func:`wait_until`: poll a condition with a deadline and a message that says what was awaited.

No process outlives its test: every agent is started in its own session and killed (by its own
process group id) at teardown, and an ``atexit`` hook covers an interrupted run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.hub import HubConfig, HubState, create_app, run_hub
from drivers.simulated import SimNetwork

T = TypeVar("T")

PYTHON = sys.executable
CUSTOMER_KEY = "customer-key"
DEVICE = "bank1"

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:  # an interrupted session must not leave agents running
    for proc in list(_LIVE):
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: pgid == pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    _LIVE.discard(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return it; fail after
    ``timeout`` seconds with ``what`` (and ``detail()``, evaluated then) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)


def agent_env() -> dict[str, str]:
    """The environment of agent processes: no ``VSIM_*`` overrides, no systemd sockets or
    credentials leaking in from wherever the tests run."""
    drop = ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSIM_") and k not in drop}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``vsim-agent ARGS`` (as ``python -m agent``) to completion."""
    return subprocess.run(
        [PYTHON, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=timeout,
        check=False,
    )


# -- TOML ---------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # JSON escapes are TOML escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for agent configs: scalars, tables, arrays of tables (one level)."""
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict) and not (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# -- hub ----------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without signal handling (only used for a wrapped hub app)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HubThread:
    """The reference hub on ``127.0.0.1`` in a thread with its own event loop.

    ``stop()`` closes the listener (the agent then sees connection refused); ``start()``
    again serves the same :class:`HubState` on the same port.  ``wrap`` puts an ASGI layer in
    front of the hub app (for answers the hub itself never gives).
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> None:
        self.config = config or HubConfig(customer_key=CUSTOMER_KEY)
        self.state = HubState()
        self.wrap = wrap
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle

    def start(self, config: HubConfig | None = None) -> None:
        if config is not None:
            self.config = config
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("hub already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._main, name="e2e-hub", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("reference hub did not start within 15 s")
        if self._error is not None:
            raise RuntimeError(f"reference hub failed to start: {self._error!r}")
        self.port = self.state.bound_port

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
            thread.join(20)
            if thread.is_alive():
                raise RuntimeError("reference hub did not stop within 20 s")
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"reference hub failed: {self._error!r}")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        port = self.port or 0
        if self.wrap is None:
            main = run_hub(
                self.config, "127.0.0.1", port, state=self.state, ready=ready, shutdown=self._stop
            )
        else:
            main = self._serve_wrapped(port, ready)
        task = asyncio.create_task(main, name="e2e-hub")
        waiter = asyncio.create_task(ready.wait(), name="e2e-hub-ready")
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            self._ready.set()
        waiter.cancel()
        await task

    async def _serve_wrapped(self, port: int, ready: asyncio.Event) -> None:
        assert self.wrap is not None and self._stop is not None
        app = create_app(self.config, self.state)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(512)
        self.state.bound_host, self.state.bound_port = "127.0.0.1", sock.getsockname()[1]
        server = _Server(
            uvicorn.Config(
                self.wrap(app),
                http="h11",
                ws="none",
                lifespan="off",
                access_log=False,
                log_config=None,
                timeout_graceful_shutdown=1,
            )
        )
        serve = asyncio.create_task(server.serve(sockets=[sock]), name="e2e-hub-serve")
        try:
            while not server.started:
                if serve.done():
                    serve.result()
                await asyncio.sleep(0.01)
            ready.set()
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait([serve, stop], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
        finally:
            app.state.runtime.stop()
            server.should_exit = True
            await asyncio.wait([serve])
            sock.close()

    # -- views

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def agent_url(self) -> str:
        return f"{self.url}/agent/v1"

    def messages(self) -> list[dict[str, Any]]:
        """Every stored message record (first body, ``count`` of receipts), arrival order."""
        with self.state.lock:
            return sorted((dict(r) for r in self.state.messages.values()), key=lambda r: r["seq"])

    def by_text(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for record in self.messages():
            out.setdefault(record["body"]["text"], []).append(record)
        return out

    def texts(self) -> set[str]:
        with self.state.lock:
            return {r["body"]["text"] for r in self.state.messages.values()}

    def sims(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            return {k: dict(v) for k, v in self.state.sims.items()}

    def requests(self, endpoint: str, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t in self.state.request_times(endpoint) if since <= t < until)

    def customer(self, method: str, **params: Any) -> Any:
        """A customer API call (``/api/<method>/<key>``); the decoded JSON answer."""
        r = httpx.get(f"{self.url}/api/{method}/{self.config.customer_key}", params=params)
        assert r.status_code == 200, r.text
        return r.json()


class Recorder:
    """An ASGI layer (``HubThread(wrap=recorder)``) that records every agent request as
    ``(time.time(), method, path, body)`` before the hub handles it.  (The hub's ``reset`` fault
    degrades to a cut-off response behind it: it needs uvicorn's own ``receive``.)"""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, bytes]] = []
        self._lock = threading.Lock()

    def bodies(self, method: str, path: str) -> list[Any]:
        with self._lock:
            calls = list(self.calls)
        return [json.loads(b) for _t, m, p, b in calls if m == method and p.endswith(path)]

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].startswith("/agent/v1/"):
                await app(scope, receive, send)
                return
            seen: list[Message] = []
            chunks: list[bytes] = []
            while True:
                message = await receive()
                seen.append(message)
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            with self._lock:
                self.calls.append((time.time(), scope["method"], scope["path"], b"".join(chunks)))

            async def replay() -> Message:
                return seen.pop(0) if seen else await receive()

            await app(scope, replay, send)

        return asgi


# -- agent --------------------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


class Agent:
    """One agent under test: its directory, config, network file and processes.

    ``sections`` deep-merge into the default config (a ``None`` value removes a key), e.g.
    ``Agent(root, hub, upstream={"timeout_s": 1}, agent={"reassembly_timeout_s": 2})``.
    """

    def __init__(
        self,
        root: Path,
        hub: HubThread,
        *,
        agent_id: str = "t1",
        sims: int = 8,
        api_key: str = "demo-key",
        **sections: dict[str, Any],
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.hub = hub
        self.sims_count = sims
        self.state_dir = root / "state"
        self.network_path = root / "simnet.db"
        self.log_path = root / "agent.log"
        self.cfg_path = root / "agent.toml"
        self.admin_port = free_port()
        base: dict[str, Any] = {
            "agent": {
                "id": agent_id,
                "state_dir": str(self.state_dir),
                "reassembly_timeout_s": 5,
            },
            "upstream": {
                "url": hub.agent_url,
                "api_key": api_key,
                "heartbeat_s": 5,
                "auth_retry_s": 2,
                "backoff_max_s": 2,
            },
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "log": {"format": "json"},
            "devices": [
                {
                    "name": DEVICE,
                    "driver": "simulated",
                    "sims": sims,
                    "network": str(self.network_path),
                }
            ],
        }
        self.config = _merge(base, sections)
        self.write_config()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._net: SimNetwork | None = None

    def write_config(self) -> None:
        self.cfg_path.write_text(to_toml(self.config), encoding="utf-8")
        self.cfg_path.chmod(0o600)

    # -- processes

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.procs, "agent never started"
        return self.procs[-1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return bool(self.procs) and self.proc.poll() is None

    def start(
        self, *, wait: bool = True, timeout: float = 20, env: dict[str, str] | None = None
    ) -> Agent:
        with self.log_path.open("ab") as log:
            log.write(f"=== e2e: start #{len(self.procs) + 1} at {time.time():.3f}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [PYTHON, "-m", "agent", "run", "-c", str(self.cfg_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**agent_env(), **(env or {})},
                cwd=self.root,
                start_new_session=True,
            )
        self.procs.append(proc)
        _LIVE.add(proc)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.proc.returncode} before it was ready\n{self.tail()}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                st = self.status()
                if st["agent"]["ready"] and st["agent"]["pid"] == self.pid:
                    return st
            return None

        return wait_until(ready, timeout, "agent /status ready", interval=0.05, detail=self.tail)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` to the agent and wait for it to exit; its exit status."""
        proc = self.proc
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        code = proc.wait(30)
        _LIVE.discard(proc)
        return code

    def terminate(self, timeout: float = 15) -> tuple[int, float]:
        """SIGTERM; ``(exit status, seconds until exit)``."""
        proc = self.proc
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise AssertionError(f"agent ignored SIGTERM for {timeout} s\n{self.tail()}") from None
        _LIVE.discard(proc)
        return code, time.monotonic() - started

    def cleanup(self) -> None:
        for proc in self.procs:
            _kill_group(proc)
        if self._net is not None:
            self._net.close()
            self._net = None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running agent process."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``vsim-agent ARGS -c <this agent's config>``."""
        return cli(*args, "-c", str(self.cfg_path), timeout=timeout)

    # -- observation

    def _get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def status(self) -> dict[str, Any]:
        r = self._get("/status")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def metrics(self) -> str:
        r = self._get("/metrics")
        r.raise_for_status()
        return r.text

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled sample ``name`` in ``/metrics``."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of every run (optionally only those with ``event``)."""
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if event is None or rec.get("event") == event:
                        out.append(rec)
        return out

    def tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return "(no agent log)"
        return "agent log tail:\n" + "\n".join(self.logs().splitlines()[-n:])

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` against the agent's store (``state_dir/agent.db``)."""
        db = sqlite3.connect(self.state_dir / "agent.db", timeout=10)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    # -- the simulated network

    @property
    def net(self) -> SimNetwork:
        if self._net is None:
            self._net = SimNetwork(self.network_path)
        return self._net

    def provision(self) -> list[sqlite3.Row]:
        """Create the device's SIMs in the network now (the agent does it at connect too)."""
        return self.net.provision(DEVICE, self.sims_count, "RU")

    def numbers(self) -> list[str]:
        """The SIMs' numbers in port order."""
        return [r["number"] for r in self.net.sims(DEVICE)]


# -- traffic ------------------------------------------------------------------------------


def long_text(label: str, length: int = 400) -> str:
    """A GSM-7 text of ``length`` characters starting with ``label`` (3 parts at 400)."""
    filler = " the quick brown fox jumps over the lazy dog 0123456789"
    return (label + filler * (length // len(filler) + 1))[:length]


class Traffic:
    """Sends ``count`` numbered SMS at ``rate`` per second from a thread, round-robin over
    ``numbers``; every ``multipart_every``-th one is a 3-part message with its parts in a
    random order.  ``sent`` lists the texts sent so far, ``sent_at`` their ``time.time()``."""

    def __init__(
        self,
        network: Path,
        numbers: list[str],
        *,
        count: int,
        rate: float,
        prefix: str = "sms",
        multipart_every: int = 0,
        seed: int = 0,
    ) -> None:
        self.network, self.numbers = network, numbers
        self.count, self.rate, self.prefix = count, rate, prefix
        self.multipart_every = multipart_every
        self.rng = random.Random(seed)
        self.sent: list[str] = []
        self.sent_at: dict[str, float] = {}
        self.multipart: set[str] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"e2e-traffic-{prefix}")

    def text(self, i: int) -> str:
        label = f"{self.prefix}-{i:05d}"
        if self.multipart_every and i % self.multipart_every == self.multipart_every - 1:
            return long_text(label + " multipart")
        return f"{label} your code {1000 + i}"

    def _run(self) -> None:
        net = SimNetwork(self.network)
        try:
            start = time.monotonic()
            for i in range(self.count):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if self._stop.is_set():
                    return
                text = self.text(i)
                to = self.numbers[i % len(self.numbers)]
                self.sent_at[text] = time.time()
                if len(text) > 160:
                    order = [1, 2, 3]
                    self.rng.shuffle(order)
                    net.send(to, text, sender="VKcom", order=order)
                    self.multipart.add(text)
                else:
                    net.send(to, text, sender="VKcom")
                self.sent.append(text)
        except BaseException as exc:
            self.error = exc
        finally:
            net.close()

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("traffic thread did not finish")
        if self.error is not None:
            raise AssertionError(f"traffic thread failed: {self.error!r}")

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


# -- fixtures -----------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def make_hub() -> Iterator[Callable[..., HubThread]]:
    """``make_hub(config=None, wrap=None)`` → a started :class:`HubThread`; all stop after."""
    hubs: list[HubThread] = []

    def make(config: HubConfig | None = None, **kw: Any) -> HubThread:
        hub = HubThread(config, **kw)
        hubs.append(hub)
        hub.start()
        return hub

    yield make
    errors = []
    for hub in hubs:
        try:
            hub.stop()
        except RuntimeError as exc:
            errors.append(exc)
    assert not errors, errors


@pytest.fixture
def hub(make_hub: Callable[..., HubThread]) -> HubThread:
    return make_hub()


@pytest.fixture
def make_agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """``make_agent(hub, **config sections)`` → an :class:`Agent` (not started).  Every
    process it started is killed at teardown; a failed test prints each agent's log tail."""
    agents: list[Agent] = []

    def make(hub: HubThread, **kw: Any) -> Agent:
        agent = Agent(tmp_path / f"agent{len(agents)}", hub, **kw)
        agents.append(agent)
        return agent

    yield make
    rep = getattr(request.node, "rep_call", None)
    for agent in agents:
        if rep is not None and rep.failed:
            print(f"--- {agent.root}\n{agent.tail(80)}")
        agent.cleanup()
