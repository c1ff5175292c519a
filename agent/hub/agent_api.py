"""The agent API of the reference hub: PROTOCOL.md §1 to §5, under ``/agent/v1``.

Owns authentication (Bearer key, ``X-Agent-Id``, optional HMAC signature), body parsing and
the four endpoints.  Shapes are checked by :mod:`agent.hub.validate`, state is kept by
:class:`~agent.hub.state.HubState`; faults and the request log are applied before these
handlers run (:mod:`agent.hub.middleware`).

Answers to a request that fails before its endpoint logic (codes in :mod:`agent.hub.wire`):
no or malformed ``Authorization`` → 401 code 201; an unknown key, or a key bound to another
agent id → 401 code 202; no ``X-Agent-Id`` → 400; a bad, missing or stale signature when
signing is on → 401 code 204; a body that is not JSON or not ``application/json`` → 400 / 415.

Decisions where PROTOCOL.md is silent:

* PUT /sims with a ``seq`` *equal* to the held one replaces it (a re-sent snapshot); only an
  older ``seq`` is ignored (still ``{"ok": true}``).
* GET /commands without ``wait`` answers at once; ``wait`` is capped at ``long_poll_max_s``.
  A poll ends early, with whatever is due, when a command is queued for one of the agent's
  SIMs or a delivered command falls due for redelivery; if the client disconnects while
  waiting, nothing is handed to it.
* POST /commands/{id}/result for an id the hub never issued → 404 (so an agent drops a result
  from before a hub restart instead of retrying it); a repeat → 200, the first result is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.hub.runtime import AGENT_PREFIX, Runtime
from agent.hub.validate import BodyError, parse_batch, parse_result, parse_snapshot
from agent.hub.wire import (
    ERR_BAD_KEY,
    ERR_BAD_SIGNATURE,
    ERR_NO_KEY,
    error_response,
    json_response,
)

_OK = json_response({"ok": True}).body


class _Refused(Exception):
    """The request is answered with ``response`` before reaching its endpoint logic."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _bad_request(reason: str, status: int = 400) -> _Refused:
    return _Refused(error_response(status, reason, status))


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _authenticate(request: Request, runtime: Runtime, body: bytes) -> str:
    """The agent id of an authenticated request, or :class:`_Refused`."""
    config = runtime.config
    auth = request.headers.get("authorization")
    if not auth or not auth.startswith("Bearer ") or not auth[7:].strip():
        raise _Refused(error_response(ERR_NO_KEY, "Api key is missing", 401))
    key = auth[7:].strip()
    if key not in config.agent_keys:
        raise _Refused(error_response(ERR_BAD_KEY, "Api key is not valid", 401))
    agent_id = request.headers.get("x-agent-id")
    if not agent_id:
        raise _bad_request("X-Agent-Id header is required")
    keys = config.agent_keys
    if isinstance(keys, dict) and keys[key] != agent_id:
        raise _Refused(error_response(ERR_BAD_KEY, "Api key is not valid for this agent", 401))
    if config.signing_secret is not None:
        _verify_signature(request, config.signing_secret, config.max_skew_s, body)
    return agent_id


def _verify_signature(request: Request, secret: str, max_skew_s: float, body: bytes) -> None:
    stamp = request.headers.get("x-timestamp")
    signature = request.headers.get("x-signature")
    if not stamp or not signature or not signature.startswith("v1="):
        raise _Refused(error_response(ERR_BAD_SIGNATURE, "Request signature is missing", 401))
    try:
        ts = float(stamp)
    except ValueError:
        ts = math.nan
    if not math.isfinite(ts) or abs(time.time() - ts) > max_skew_s:
        raise _Refused(error_response(ERR_BAD_SIGNATURE, "Request timestamp is out of range", 401))
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature[3:].strip().lower()):
        raise _Refused(error_response(ERR_BAD_SIGNATURE, "Request signature is not valid", 401))


async def _read_json(request: Request, runtime: Runtime) -> tuple[str, Any]:
    """``(agent_id, parsed body)`` of an authenticated JSON request, or :class:`_Refused`."""
    body = await request.body()
    agent_id = _authenticate(request, runtime, body)
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("application/json"):
        raise _bad_request("Content-Type must be application/json", 415)
    try:
        return agent_id, json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_request(f"body is not valid JSON: {exc}") from None


async def put_sims(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        agent_id, body = await _read_json(request, runtime)
        seq, agent, sims = parse_snapshot(body, agent_id)
    except _Refused as refused:
        return refused.response
    except BodyError as exc:
        return error_response(400, str(exc), 400)
    runtime.state.apply_snapshot(agent_id, seq, agent, sims)
    return Response(_OK, media_type="application/json")


async def post_messages(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        agent_id, body = await _read_json(request, runtime)
        batch = parse_batch(body)
    except _Refused as refused:
        return refused.response
    except BodyError as exc:
        return error_response(400, str(exc), 400)
    accepted, rejected = runtime.state.ingest(agent_id, batch)
    return json_response({"accepted": accepted, "rejected": rejected})


async def get_commands(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        agent_id = _authenticate(request, runtime, b"")
    except _Refused as refused:
        return refused.response
    raw_wait = request.query_params.get("wait", "0")
    try:
        wait = float(raw_wait)
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0:
        return error_response(400, "wait must be a non-negative number of seconds", 400)
    commands = await _long_poll(
        request, runtime, agent_id, min(wait, runtime.config.long_poll_max_s)
    )
    return json_response({"commands": commands})


async def _long_poll(
    request: Request, runtime: Runtime, agent_id: str, wait: float
) -> list[dict[str, Any]]:
    state = runtime.state
    redeliver = runtime.config.redeliver_after_s
    deadline = time.monotonic() + wait
    gone: asyncio.Task[None] | None = None
    try:
        while True:
            waiter = state.new_waiter()  # before looking, so no enqueue slips between
            try:
                if gone is not None and gone.done():
                    return []
                commands = state.take_commands(agent_id, redeliver)
                remaining = deadline - time.monotonic()
                if commands or remaining <= 0 or runtime.stopping:
                    return commands
                due = state.next_redelivery_in(agent_id, redeliver)
                timeout = remaining if due is None else min(remaining, due + 0.001)
                if gone is None:
                    gone = asyncio.create_task(_disconnected(request), name="hub:poll-watch")
                await asyncio.wait(
                    (waiter, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                state.drop_waiter(waiter)
    finally:
        if gone is not None:
            gone.cancel()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def post_result(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        agent_id, body = await _read_json(request, runtime)
        result = parse_result(body)
    except _Refused as refused:
        return refused.response
    except BodyError as exc:
        return error_response(400, str(exc), 400)
    command_id = request.path_params["command_id"]
    if not runtime.state.record_result(command_id, agent_id, result):
        return error_response(404, "unknown command", 404)
    return Response(_OK, media_type="application/json")


routes = [
    Route(AGENT_PREFIX + "/sims", put_sims, methods=["PUT"]),
    Route(AGENT_PREFIX + "/messages", post_messages, methods=["POST"]),
    Route(AGENT_PREFIX + "/commands", get_commands, methods=["GET"]),
    Route(AGENT_PREFIX + "/commands/{command_id}/result", post_result, methods=["POST"]),
]
