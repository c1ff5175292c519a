"""The reference hub's app factory and its programmatic server.

Owns the assembly of the three APIs into one Starlette app (:func:`create_app`) and running it
under uvicorn inside the caller's event loop (:func:`run_hub`).  It installs no signal handlers
and configures no logging: the CLI owns both and stops the hub by setting ``shutdown`` (or by
cancelling the task running :func:`run_hub`).

uvicorn runs with the pure-Python h11 protocol (the ``reset`` fault relies on it, and it is
always installed), lifespan off, no access log, keep-alive 75 s, and a short graceful-shutdown
window; open long-polls and held faulted requests are ended at once when the hub stops.
"""

from __future__ import annotations

import asyncio
import socket

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from agent.hub import agent_api, control, customer_api
from agent.hub.config import HubConfig
from agent.hub.middleware import AgentGate
from agent.hub.runtime import Runtime
from agent.hub.state import HubState
from agent.hub.wire import error_response
from drivers.serve import EmbeddedServer, embedded_config

log = structlog.get_logger(__name__)

# Longer than the agent's default heartbeat (60 s), so an agent's idle keep-alive connection is
# not closed under it between heartbeats (uvicorn's default is 5 s): fewer spurious
# "connection closed" retries on the agent side.
_KEEP_ALIVE_S = 75


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return error_response(status, detail, status)


def create_app(config: HubConfig, state: HubState | None = None) -> Starlette:
    """The hub as an ASGI app; ``app.state.hub`` is its :class:`HubState`."""
    hub = state if state is not None else HubState()
    runtime = Runtime(config=config, state=hub)
    routes = [*agent_api.routes, *customer_api.routes]
    if config.control:
        routes += control.routes
    app = Starlette(
        routes=routes,
        middleware=[Middleware(AgentGate, runtime=runtime)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.runtime = runtime
    app.state.hub = hub
    return app


def _bind(host: str, port: int) -> socket.socket:
    # The protocol number must be IPPROTO_TCP, not 0 as socket.create_server leaves it:
    # asyncio sets TCP_NODELAY only on sockets that say so, and without it every response
    # (headers and body are two writes) waits ~40 ms for the client's delayed ACK.
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


async def run_hub(
    config: HubConfig,
    host: str,
    port: int,
    *,
    state: HubState | None = None,
    ready: asyncio.Event | None = None,
    shutdown: asyncio.Event | None = None,
) -> None:
    """Serve the hub on ``host:port`` until ``shutdown`` is set or the task is cancelled.

    The socket is bound before serving starts, so a busy port raises ``OSError`` here.  With
    ``port=0`` the system picks a free port: pass your own ``state`` and read
    ``state.bound_port`` (or ``state.base_url``) once ``ready`` is set.
    """
    hub = state if state is not None else HubState()
    app = create_app(config, hub)
    runtime: Runtime = app.state.runtime
    sock = _bind(host, port)
    hub.bound_host = host
    hub.bound_port = sock.getsockname()[1]
    uv_config = embedded_config(
        app,
        timeout_keep_alive=_KEEP_ALIVE_S,
        timeout_graceful_shutdown=config.graceful_shutdown_s,
    )
    server = EmbeddedServer(uv_config, ready)
    serve = asyncio.create_task(server.serve(sockets=[sock]), name="hub:serve")
    stop = asyncio.create_task(shutdown.wait(), name="hub:shutdown") if shutdown else None
    log.info("hub listening", url=hub.base_url, control=config.control)
    try:
        await asyncio.wait(
            [t for t in (serve, stop) if t is not None], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if stop is not None:
            stop.cancel()
        runtime.stop()
        server.should_exit = True
        server.exit_now.set()
        await asyncio.wait([serve])
        sock.close()
        log.info("hub stopped", url=hub.base_url)
    serve.result()
