"""The reference hub's in-memory model, shared by its HTTP handlers and the tests that drive it.

Owns: the agents and their latest inventory snapshot (§3), the SIMs by ICCID, the messages by
id with their repeat counts (§4), the command queue and results (§5), the request log, the
fault queue, and the rentals (:mod:`agent.hub.rentals`).  It does no I/O and knows no HTTP.

Threading: the server runs on one event loop; a test may call these methods from another
thread.  Every mutation holds one lock for a short, await-free section; a wake-up of the
long-polls from a foreign thread goes through ``call_soon_threadsafe``.  A test thread that
iterates one of the dicts below while the hub runs should hold ``state.lock`` meanwhile.

Records, as the tests see them:

* ``sims[sim_id]``: the SIM object of the newest snapshot that lists it, plus ``agent_id``
  (who registered it) and ``updated`` (``time.time()``).  A SIM that leaves its agent's
  inventory leaves ``sims``; ``known_sims`` remembers every ICCID ever registered.
* ``agents[agent_id]``: ``{"agent", "seq", "sim_ids", "updated", "snapshots", "stale"}``.
* ``messages[id]``: ``{"body", "agent_id", "received", "count", "seq", "number"}``: the first
  body seen, its arrival (``time.time()``), how many times the id arrived, a hub-wide arrival
  sequence number and the receiving number's digits (for the customer API).
* ``commands[id]``: a :class:`Command`; ``command_results[id]``: the first result body plus
  ``agent_id``, ``received`` and ``count`` (repeats).
* ``requests[endpoint]``: ``time.time()`` of each agent request, faulted ones included.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from agent.hub.faults import Fault, FaultBook, parse_fault
from agent.hub.rentals import Rentals
from agent.hub.validate import check_message, is_message_id

COMMAND_TYPES: Final = frozenset(
    {"enable", "disable", "forward", "unforward", "ussd", "esim_download", "esim_delete"}
)
#: The fields each v1.1 command carries besides ``id``/``type``/``sim_id`` (PROTOCOL.md §5).
COMMAND_PARAMS: Final = {
    "ussd": ({"code"}, set()),
    "esim_download": ({"device", "activation_code"}, {"port", "confirmation_code"}),
}
_REQUEST_LOG_MAX: Final = 100_000


@dataclass
class Command:
    """One command for the SIM ``sim_id``, routed to whichever agent registered that SIM."""

    id: str
    type: str
    sim_id: str | None  # None for esim_download, which names an agent's device instead
    to: str | None
    created: float  # time.time()
    delivered: float | None = None  # time.monotonic() of the last delivery
    deliveries: int = 0
    agent_id: str | None = None  # the agent it was last delivered to (or is meant for)
    params: dict[str, str] = field(default_factory=dict)  # code, device, activation_code, …

    def wire(self) -> dict[str, Any]:
        """The command as PROTOCOL.md §5 lists it."""
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.sim_id is not None:
            out["sim_id"] = self.sim_id
        if self.to is not None:
            out["to"] = self.to
        out.update(self.params)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.wire(),
            "to": self.to,
            "created": self.created,
            "deliveries": self.deliveries,
            "agent_id": self.agent_id,
        }


def number_key(number: str | None) -> str | None:
    """The digits of a phone number, the key the customer API looks numbers up by."""
    if not number:
        return None
    digits = number[1:] if number[0] == "+" else number
    if digits.isdigit():
        return digits
    digits = "".join(c for c in number if c.isdigit())
    return digits or None


class HubState:
    """Everything the hub knows; see the module docstring for the record shapes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bound_host = "127.0.0.1"  # set by run_hub before serving
        self.bound_port: int | None = None  # set by run_hub before serving (the real port)
        self.faults = FaultBook()
        self._boot = secrets.token_hex(3)  # command ids never repeat across hub restarts
        self._command_counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self.rentals = Rentals(self)
        self._init_data()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running hub; the agent's upstream is this + /agent/v1."""
        host = f"[{self.bound_host}]" if ":" in self.bound_host else self.bound_host
        return f"http://{host}:{self.bound_port}"

    def _init_data(self) -> None:
        self.agents: dict[str, dict[str, Any]] = {}
        self.sims: dict[str, dict[str, Any]] = {}
        self.known_sims: set[str] = set()
        self.messages: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self.rejected: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.commands: dict[str, Command] = {}
        self._open: dict[str, Command] = {}  # commands without a result, in creation order
        self.command_results: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, deque[float]] = {}
        self._by_sim: dict[str, list[dict[str, Any]]] = {}
        self._by_number: dict[str, list[dict[str, Any]]] = {}
        self._msg_seq = 0

    def reset(self) -> None:
        """Forget everything but the id counters (ids are never reused within a process)."""
        with self.lock:
            self._init_data()
            self.rentals.clear()
            self.faults.clear()
        self.wake_all()

    # ---- §3 inventory -------------------------------------------------------------------

    def apply_snapshot(
        self, agent_id: str, seq: int, agent: dict[str, Any], sims: list[dict[str, Any]]
    ) -> bool:
        """Take an agent's inventory; ``False`` when ``seq`` is older than the one held."""
        now = time.time()
        with self.lock:
            held = self.agents.get(agent_id)
            if held is not None and seq < held["seq"]:
                held["stale"] += 1
                return False
            new_ids = [sim["sim_id"] for sim in sims]
            if held is not None:
                keep = set(new_ids)
                for old in held["sim_ids"]:
                    current = self.sims.get(old)
                    if old not in keep and current is not None and current["agent_id"] == agent_id:
                        del self.sims[old]
            for sim in sims:
                self.sims[sim["sim_id"]] = {**sim, "agent_id": agent_id, "updated": now}
            self.known_sims.update(new_ids)
            self.agents[agent_id] = {
                "agent": agent,
                "seq": seq,
                "sim_ids": new_ids,
                "updated": now,
                "snapshots": (held["snapshots"] if held else 0) + 1,
                "stale": held["stale"] if held else 0,
            }
        self.wake_all()  # a SIM may now have an owner for its queued commands
        return True

    def sim_by_number(self, number: str) -> dict[str, Any] | None:
        key = number_key(number)
        if key is None:
            return None
        with self.lock:
            for sim in self.sims.values():
                if number_key(sim.get("number")) == key:
                    return sim
        return None

    # ---- §4 messages --------------------------------------------------------------------

    def ingest(
        self, agent_id: str, batch: Iterable[object]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Validate and store a batch; ``(accepted ids, rejected {"id", "reason"})``."""
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        now = time.time()
        messages = self.messages
        with self.lock:
            for msg in batch:
                if not isinstance(msg, dict):
                    rejected.append({"id": None, "reason": "a message is not an object"})
                    continue
                msg_id = msg.get("id")
                if not is_message_id(msg_id):
                    shown = msg_id if isinstance(msg_id, str) else None
                    rejected.append({"id": shown, "reason": "id must be 32 lowercase hex digits"})
                    continue
                seen = messages.get(msg_id)
                if seen is not None:  # PROTOCOL §4: a repeated id is accepted, whatever it holds
                    seen["count"] += 1
                    self.duplicates += 1
                    accepted.append(msg_id)
                    continue
                reason = check_message(msg)
                if reason is None and msg["sim_id"] not in self.known_sims:
                    reason = "unknown sim"
                if reason is not None:
                    rejected.append({"id": msg_id, "reason": reason})
                    continue
                self._msg_seq += 1
                sim_id = msg["sim_id"]
                number = msg.get("number")
                if number is None:
                    sim = self.sims.get(sim_id)
                    number = sim.get("number") if sim else None
                key = number_key(number)
                record = {
                    "body": msg,
                    "agent_id": agent_id,
                    "received": now,
                    "count": 1,
                    "seq": self._msg_seq,
                    "number": key,
                }
                messages[msg_id] = record
                self._by_sim.setdefault(sim_id, []).append(record)
                if key is not None:
                    self._by_number.setdefault(key, []).append(record)
                accepted.append(msg_id)
            self.rejected.extend(rejected)
        return accepted, rejected

    def messages_on_sim(self, sim_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        """Records of the SIM's messages that arrived after ``after_seq``, oldest first."""
        with self.lock:
            records = self._by_sim.get(sim_id, [])
            i = len(records)
            while i > 0 and records[i - 1]["seq"] > after_seq:
                i -= 1
            return records[i:]

    def messages_on_number(self, number: str) -> list[dict[str, Any]]:
        """Records of every message received on ``number``, oldest first."""
        key = number_key(number)
        with self.lock:
            return list(self._by_number.get(key, [])) if key else []

    @property
    def message_seq(self) -> int:
        """The arrival sequence number of the newest message (0 before any)."""
        return self._msg_seq

    # ---- §5 commands --------------------------------------------------------------------

    def enqueue_command(
        self,
        type: str,
        sim_id: str | None,
        to: str | None = None,
        *,
        agent_id: str | None = None,
        **params: str,
    ) -> str:
        """Queue a command for the agent that registered ``sim_id`` (``esim_download``: for
        ``agent_id``, with ``device``, ``activation_code`` …); wakes its long-poll."""
        if type not in COMMAND_TYPES:
            raise ValueError(f"unknown command type {type!r}")
        if (type == "forward") != (to is not None):
            raise ValueError("forward needs `to`, and only forward takes it")
        required, optional = COMMAND_PARAMS.get(type, (set(), set()))
        if missing := required - params.keys():
            raise ValueError(f"{type} needs {', '.join(sorted(missing))}")
        if extra := params.keys() - required - optional:
            raise ValueError(f"{type} does not take {', '.join(sorted(extra))}")
        if type == "esim_download":
            if agent_id is None or sim_id is not None:
                raise ValueError("esim_download names an agent_id and a device, not a sim_id")
        elif sim_id is None:
            raise ValueError(f"{type} needs a sim_id")
        with self.lock:
            self._command_counter += 1
            command = Command(
                id=f"c-{self._boot}-{self._command_counter}",
                type=type,
                sim_id=sim_id,
                to=to,
                created=time.time(),
                agent_id=agent_id,
                params={k: v for k, v in params.items() if v is not None},
            )
            self.commands[command.id] = command
            self._open[command.id] = command
        self.wake_all()
        return command.id

    def take_commands(self, agent_id: str, redeliver_after_s: float) -> list[dict[str, Any]]:
        """The commands due for ``agent_id`` now, marked delivered."""
        now = time.monotonic()
        out: list[dict[str, Any]] = []
        with self.lock:
            for command in self._open.values():
                if command.sim_id is None:
                    if command.agent_id != agent_id:
                        continue
                else:
                    sim = self.sims.get(command.sim_id)
                    if sim is None or sim["agent_id"] != agent_id:
                        continue
                if command.delivered is not None and now - command.delivered < redeliver_after_s:
                    continue
                command.delivered = now
                command.deliveries += 1
                command.agent_id = agent_id
                out.append(command.wire())
        return out

    def next_redelivery_in(self, agent_id: str, redeliver_after_s: float) -> float | None:
        """Seconds until a delivered, unanswered command of ``agent_id`` falls due again."""
        now = time.monotonic()
        soonest: float | None = None
        with self.lock:
            for command in self._open.values():
                if command.delivered is None or command.agent_id != agent_id:
                    continue
                due = max(0.0, command.delivered + redeliver_after_s - now)
                soonest = due if soonest is None else min(soonest, due)
        return soonest

    def record_result(self, command_id: str, agent_id: str, body: dict[str, Any]) -> bool:
        """Store a result; a repeat is counted and kept out.  ``False``: unknown command."""
        with self.lock:
            if command_id not in self.commands:
                return False
            held = self.command_results.get(command_id)
            if held is not None:
                held["count"] += 1
                return True
            self.command_results[command_id] = {
                **body,
                "agent_id": agent_id,
                "received": time.time(),
                "count": 1,
            }
            self._open.pop(command_id, None)
        return True

    def open_commands(self, sim_id: str, type: str | None = None) -> list[Command]:
        """Commands for ``sim_id`` still waiting for a result (of ``type`` if given)."""
        with self.lock:
            return [
                c
                for c in self._open.values()
                if c.sim_id == sim_id and (type is None or c.type == type)
            ]

    # ---- long-poll wake-ups -------------------------------------------------------------

    def new_waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next :meth:`wake_all`; call from the server loop."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        return fut

    def drop_waiter(self, fut: asyncio.Future[None]) -> None:
        self._waiters.discard(fut)

    def wake_all(self) -> None:
        """Resolve every pending waiter; safe from any thread."""
        loop = self._loop
        if loop is None or not self._waiters:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_local()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_local)

    def _wake_local(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ---- request log and faults ---------------------------------------------------------

    def record_request(self, endpoint: str) -> None:
        log = self.requests.get(endpoint)
        if log is None:
            log = self.requests.setdefault(endpoint, deque(maxlen=_REQUEST_LOG_MAX))
        log.append(time.time())

    def request_count(self, endpoint: str | None = None, since: float | None = None) -> int:
        """Agent requests seen (for ``endpoint``, or all), optionally at/after ``since``."""
        with self.lock:
            logs = [self.requests.get(endpoint, ())] if endpoint else list(self.requests.values())
            if since is None:
                return sum(len(log) for log in logs)
            return sum(1 for log in logs for t in log if t >= since)

    def request_times(self, endpoint: str) -> list[float]:
        with self.lock:
            return list(self.requests.get(endpoint, ()))

    def add_fault(self, **spec: Any) -> Fault:
        """Queue a fault, e.g. ``add_fault(status=503, count=10, endpoint="messages")``."""
        fault = parse_fault(spec)
        self.faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    # ---- views and waits for tests ------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What ``GET /_control/state`` answers."""
        with self.lock:
            return {
                "agents": {k: dict(v) for k, v in self.agents.items()},
                "sims": {k: dict(v) for k, v in self.sims.items()},
                "messages": len(self.messages),
                "duplicates": self.duplicates,
                "rejected": list(self.rejected),
                "commands": {k: c.as_dict() for k, c in self.commands.items()},
                "command_results": {k: dict(v) for k, v in self.command_results.items()},
                "requests": {k: len(v) for k, v in self.requests.items()},
                "faults": self.faults.pending(),
                "faults_injected": self.faults.injected,
                "activations": self.rentals.summary(),
            }

    # The waits below poll on purpose: a predicate may read anything, and it may be made true
    # from another thread; a 5 ms poll costs nothing in a test.  A ``timeout`` argument reads
    # better at the call site than a wrapping ``asyncio.timeout``.

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
        interval: float = 0.005,
    ) -> None:
        """Poll ``predicate`` until true; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(interval)

    async def wait_for_messages(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` distinct message ids have been accepted."""
        await self.wait_until(lambda: len(self.messages) >= n, timeout)

    async def wait_for_result(
        self,
        command_id: str,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Wait for the result of ``command_id`` and return it."""
        await self.wait_until(lambda: command_id in self.command_results, timeout)
        return self.command_results[command_id]

    async def wait_for_sim(
        self,
        sim_id: str,
        state: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Wait until ``sim_id`` is registered (in ``state`` if given) and return its record."""

        def ready() -> bool:
            sim = self.sims.get(sim_id)
            return sim is not None and (state is None or sim["state"] == state)

        await self.wait_until(ready, timeout)
        return self.sims[sim_id]
