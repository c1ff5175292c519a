"""The ASGI layer in front of the agent API: counts every request and plays injected faults.

Owns the wire side of :mod:`agent.hub.faults`.  It sees each ``/agent/v1/...`` request before
any handler, records it in ``HubState.requests`` under its endpoint name, and, when a fault is
queued for that endpoint, answers with the fault instead of calling the handler.

``reset`` needs the TCP transport, which ASGI does not expose.  uvicorn's h11 protocol (the one
:func:`agent.hub.run_hub` selects) hands the app bound methods of its request cycle, whose
``transport`` attribute is the connection; the fault sets ``SO_LINGER`` to zero and aborts it,
so the client sees a reset with no response.  Under another server the fault degrades to a
response that starts and is then cut off, which clients report as a broken connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from typing import Final

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.hub.faults import Fault
from agent.hub.runtime import AGENT_PREFIX, Runtime
from agent.hub.wire import ERR_BAD_KEY, error_response

_HTML: Final = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is unavailable.</p></body></html>"
)
_GARBAGE: Final = b'{"accepted": ["5f0c2a9e41d7b3c8a6e2f1d0\x00\xff garbage'


def endpoint_of(method: str, path: str) -> str:
    """The endpoint name of an agent request: sims, messages, commands, results or other."""
    rest = path[len(AGENT_PREFIX) :]
    if rest == "/sims" and method == "PUT":
        return "sims"
    if rest == "/messages" and method == "POST":
        return "messages"
    if rest == "/commands" and method == "GET":
        return "commands"
    if rest.startswith("/commands/") and rest.endswith("/result") and method == "POST":
        return "results"
    return "other"


class AgentGate:
    """ASGI middleware: request log and fault injection for the agent API."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(AGENT_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        state = self.runtime.state
        endpoint = endpoint_of(scope["method"], scope["path"])
        state.record_request(endpoint)
        fault = state.faults.take(endpoint)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.mode == "delay":
            await self.runtime.sleep(fault.delay_s)
            await self.app(scope, receive, send)
            return
        if fault.mode == "reset":
            await _reset(receive, send)
            return
        if fault.mode == "timeout":
            await self.runtime.sleep(fault.delay_s)
        await _fault_response(fault)(scope, receive, send)


def _fault_response(fault: Fault) -> Response:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        # RFC 9110 10.2.3: delay-seconds is a whole number; round up so a test's 1.5 s holds.
        headers["Retry-After"] = str(math.ceil(fault.retry_after))
    if fault.mode == "auth401":
        return error_response(ERR_BAD_KEY, "Api key is not valid", 401)
    if fault.mode == "auth202":
        return error_response(ERR_BAD_KEY, "Api key is not valid", 200)
    if fault.mode == "html":
        return Response(_HTML, fault.status or 200, headers, media_type="text/html")
    if fault.mode == "garbage_json":
        return Response(_GARBAGE, fault.status or 200, headers, media_type="application/json")
    if fault.mode == "timeout":
        status = fault.status or 504
    elif fault.mode == "retry_after":
        status = fault.status or 429
    else:
        status = fault.status or 503
    return error_response(status, "injected fault", status, headers)


async def _reset(receive: Receive, send: Send) -> None:
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if isinstance(transport, asyncio.Transport):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Let the server notice the lost connection, so it sends no 500 of its own.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while (await receive())["type"] != "http.disconnect":
                    pass
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]}
    )
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
    raise ConnectionResetError("injected reset")
