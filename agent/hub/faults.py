"""Fault injection for the agent API: make the next N agent requests fail in a chosen way.

Owns the fault specs (:class:`Fault`, parsed from the JSON of ``POST /_control/faults`` or from
keyword arguments in a test) and the queue that hands them out (:class:`FaultBook`).  How a
fault is *played* on the wire lives in :mod:`agent.hub.middleware`.

A fault applies to the agent API only (``/agent/v1/...``), never to the customer or control
API, and it replaces the hub's handling: a faulted ``POST /messages`` stores nothing.

Modes (``mode``, or ``status`` alone meaning ``mode="status"``):

=============== ===========================================================================
``status``      answer ``status`` (e.g. 503) with a JSON error body; ``Retry-After`` if given
``retry_after`` answer ``status`` (default 429) with ``Retry-After: <retry_after>`` (default 1)
``timeout``     hold the request ``delay_s`` (default 30 s, longer than the agent's timeout),
                then answer 504 if the client is still there
``reset``       close the TCP connection with RST, no response at all
``html``        answer ``status`` (default 200) with an HTML page (a proxy or captive portal)
``auth401``     answer 401 with the platform error body, code 202
``auth202``     answer HTTP 200 with the platform error body, code 202 (the public API style)
``garbage_json`` answer 200 ``application/json`` with a body that is not JSON
``delay``       hold the request ``delay_s`` (default 1 s), then handle it normally
=============== ===========================================================================

``count`` (default 1) is how many requests the fault takes; ``-1`` means until cleared.
``endpoint`` limits it to one of ``sims``, ``messages``, ``commands``, ``results``; absent or
null means any agent endpoint.  Faults queue up: a request takes the first one that matches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

FAULT_MODES: Final = frozenset(
    {
        "status",
        "retry_after",
        "timeout",
        "reset",
        "html",
        "auth401",
        "auth202",
        "garbage_json",
        "delay",
    }
)
ENDPOINTS: Final = frozenset({"sims", "messages", "commands", "results"})

_DEFAULT_DELAY: Final = {"timeout": 30.0, "delay": 1.0}


@dataclass
class Fault:
    """One injected failure; ``count`` is what is left of it (-1: until cleared)."""

    mode: str
    count: int = 1
    endpoint: str | None = None
    status: int | None = None
    retry_after: float | None = None
    delay_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "count": self.count,
            "endpoint": self.endpoint,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay_s": self.delay_s,
        }


def parse_fault(spec: dict[str, Any]) -> Fault:
    """A :class:`Fault` from its JSON spec; ``ValueError`` with a reason when it is not one."""
    unknown = set(spec) - {"mode", "count", "endpoint", "status", "retry_after", "delay_s"}
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    status = spec.get("status")
    if status is not None and (
        not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
    ):
        raise ValueError("status must be an HTTP status code")
    mode = spec.get("mode")
    if mode is None:
        if status is None:
            raise ValueError("a fault needs a mode or a status")
        mode = "status"
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {', '.join(sorted(FAULT_MODES))}")
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        raise ValueError("count must be a positive integer or -1")
    endpoint = spec.get("endpoint")
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(sorted(ENDPOINTS))} or null")
    retry_after = spec.get("retry_after")
    if retry_after is not None and (
        not isinstance(retry_after, int | float) or isinstance(retry_after, bool) or retry_after < 0
    ):
        raise ValueError("retry_after must be a non-negative number")
    delay_s = spec.get("delay_s", _DEFAULT_DELAY.get(mode, 0.0))
    if not isinstance(delay_s, int | float) or isinstance(delay_s, bool) or delay_s < 0:
        raise ValueError("delay_s must be a non-negative number")
    if mode == "status" and status is None:
        raise ValueError("mode status needs a status")
    if mode == "retry_after" and retry_after is None:
        retry_after = 1
    return Fault(
        mode=mode,
        count=count,
        endpoint=endpoint,
        status=status,
        retry_after=retry_after,
        delay_s=float(delay_s),
    )


class FaultBook:
    """The queue of pending faults; safe to fill from a test thread while the hub serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.injected = 0  # requests answered by a fault since the last reset

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.injected = 0

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def take(self, endpoint: str) -> Fault | None:
        """The fault this request must suffer, if any, consuming one of its count."""
        if not self._faults:  # the hot path: no lock when nothing is queued
            return None
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.endpoint is None or fault.endpoint == endpoint:
                    if fault.count > 0:
                        fault.count -= 1
                        if fault.count == 0:
                            del self._faults[i]
                    self.injected += 1
                    return fault
        return None
