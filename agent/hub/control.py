"""Test control endpoints of the reference hub, under ``/_control/`` (``HubConfig.control``).

Owns the HTTP face of what tests in the same process reach through
:class:`~agent.hub.state.HubState` directly.  No authentication: a hub with ``control=True``
must only listen where the tests are.

* ``GET  /_control/state``: :meth:`HubState.summary` (agents, SIMs, message count, duplicates,
  rejected, commands, results, request counts, pending faults, activations).
* ``GET  /_control/messages?sim_id=&limit=``: the newest stored messages, newest first.
* ``GET  /_control/requests?endpoint=&since=``: ``{"count": n, "times": [...]}``.
* ``POST /_control/faults``: a fault spec (:mod:`agent.hub.faults`), a list of them, or
  ``{"clear": true}``; answers the pending faults.
* ``POST /_control/send``: ``{"type": "disable", "sim_id": "8970…", "to": null}`` →
  ``{"id": "c-…"}``.
* ``POST /_control/reset``: forget everything (SIMs, messages, commands, faults, rentals).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.hub.faults import parse_fault
from agent.hub.runtime import Runtime
from agent.hub.wire import json_response

PREFIX = "/_control"


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _bad(reason: str) -> Response:
    return json_response({"error": reason}, 400)


async def _json(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


async def state(request: Request) -> Response:
    return json_response(_runtime(request).state.summary())


async def messages(request: Request) -> Response:
    hub = _runtime(request).state
    sim_id = request.query_params.get("sim_id")
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        return _bad("limit must be an integer")
    with hub.lock:
        records = list(hub.messages.values())
    if sim_id:
        records = [r for r in records if r["body"]["sim_id"] == sim_id]
    return json_response(records[::-1][: max(limit, 0)])


async def requests(request: Request) -> Response:
    hub = _runtime(request).state
    endpoint = request.query_params.get("endpoint") or None
    try:
        since = float(request.query_params["since"]) if "since" in request.query_params else None
    except ValueError:
        return _bad("since must be a Unix time")
    times = hub.request_times(endpoint) if endpoint else []
    if since is not None:
        times = [t for t in times if t >= since]
    return json_response({"count": hub.request_count(endpoint, since), "times": times})


async def faults(request: Request) -> Response:
    hub = _runtime(request).state
    try:
        spec = await _json(request)
    except ValueError:
        return _bad("body is not JSON")
    if isinstance(spec, dict) and spec.get("clear") is True:
        hub.clear_faults()
        return json_response({"faults": []})
    specs = spec if isinstance(spec, list) else [spec]
    try:
        parsed = [parse_fault(s) for s in specs if isinstance(s, dict)]
    except ValueError as exc:
        return _bad(str(exc))
    if len(parsed) != len(specs):
        return _bad("a fault spec is a JSON object")
    for fault in parsed:
        hub.faults.add(fault)
    return json_response({"faults": hub.faults.pending()})


async def send(request: Request) -> Response:
    hub = _runtime(request).state
    try:
        spec = await _json(request)
    except ValueError:
        return _bad("body is not JSON")
    if not isinstance(spec, dict):
        return _bad("body must be an object")
    kind, sim_id, to = spec.pop("type", None), spec.pop("sim_id", None), spec.pop("to", None)
    agent_id = spec.pop("agent_id", None)
    if not isinstance(kind, str) or not isinstance(sim_id, str | None):
        return _bad("type must be a string, sim_id a string or null")
    if not all(isinstance(v, str | None) for v in (to, agent_id, *spec.values())):
        return _bad("to, agent_id and the command's parameters must be strings or null")
    try:
        command_id = hub.enqueue_command(kind, sim_id, to, agent_id=agent_id, **spec)
    except ValueError as exc:
        return _bad(str(exc))
    return json_response({"id": command_id})


async def reset(request: Request) -> Response:
    _runtime(request).state.reset()
    return json_response({"ok": True})


routes = [
    Route(PREFIX + "/state", state, methods=["GET"]),
    Route(PREFIX + "/messages", messages, methods=["GET"]),
    Route(PREFIX + "/requests", requests, methods=["GET"]),
    Route(PREFIX + "/faults", faults, methods=["POST"]),
    Route(PREFIX + "/send", send, methods=["POST"]),
    Route(PREFIX + "/reset", reset, methods=["POST"]),
]
