"""Admin HTTP: ``/metrics`` (Prometheus), ``/healthz``, ``/status`` (JSON), GET and HEAD.

Owns the admin listener: a Starlette app served by uvicorn inside the agent's event loop (run
:meth:`AdminServer.serve` in the agent's TaskGroup).  It listens on ``127.0.0.1:9108`` by
default and nothing it serves contains a secret.  Signals stay with the CLI: uvicorn's own
handlers are never installed.

The listener shares a process with delivery, so a flood of requests must not starve delivery of
file descriptors or of event-loop time.  It is bounded at three places:

* accept: a short listen queue (:data:`BACKLOG`); asyncio also accepts at most that many
  connections per wake-up, so a burst can never outrun the checks below;
* connections: at most :data:`MAX_CONNECTIONS` open, and a new one is dropped at once while
  fewer than :data:`FD_RESERVE` descriptors would remain under ``RLIMIT_NOFILE``: the sender,
  the store and the drivers keep theirs; a connection that sends no request within
  :data:`HEAD_TIMEOUT_S` is closed;
* requests: once :data:`LIMIT_CONCURRENCY` connections are open (uvicorn counts connections,
  idle keep-alive ones included, not requests in progress) it answers 503 without running a
  handler; idle connections are closed after :data:`HEAD_TIMEOUT_S`, so a scrape is refused
  only during a flood, never for long.

The handlers themselves read only memory and cached figures (see :mod:`agent.outboxstats`).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from drivers.serve import EmbeddedServer, embedded_config

log = structlog.get_logger("agent.admin")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]

BACKLOG = 32
MAX_CONNECTIONS = 64
LIMIT_CONCURRENCY = 32
FD_RESERVE = 128
HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5


def fd_headroom(fd: int) -> int:
    """How many descriptors remain above ``fd`` under the soft ``RLIMIT_NOFILE``.

    The kernel hands out the lowest free descriptor, so a freshly opened ``fd`` means every
    number below it is in use: at most this many are still free."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return int(soft) - fd - 1


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 connection, refused at once when the listener is at its bound."""

    _refused = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if len(self.server_state.connections) >= MAX_CONNECTIONS or fd_headroom(fd) < FD_RESERVE:
            # A reset, not a 503: writing an answer would hold the descriptor longer.
            self._refused = True
            transport.abort()
            return
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_deadline)

    def _head_deadline(self) -> None:
        self._head_timer = None
        cycle: object | None = self.cycle  # uvicorn types it non-optional; None until a request
        if cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


async def _not_found(_request: Request, _exc: Exception) -> Response:
    return PlainTextResponse("not found\n", 404)


async def _not_allowed(_request: Request, exc: Exception) -> Response:
    headers = getattr(exc, "headers", None)
    return PlainTextResponse("method not allowed\n", 405, headers=headers)


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(_request: Request) -> Response:
        status, ctype, body = await handler()
        return Response(body, status, media_type=ctype)

    return endpoint


def create_app(routes: dict[str, Handler]) -> Starlette:
    return Starlette(
        routes=[Route(path, _endpoint(h), methods=["GET", "HEAD"]) for path, h in routes.items()],
        exception_handlers={404: _not_found, 405: _not_allowed},
    )


class AdminServer:
    """``await start()`` binds (so ``port`` is known and a busy port fails start-up), then
    ``serve()`` runs until ``close()``."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.host, self.port = host, port
        self.routes = routes
        self._sock: socket.socket | None = None
        self._serving = False
        self._server = EmbeddedServer(
            embedded_config(
                create_app(routes),
                http=BoundedH11Protocol,
                backlog=BACKLOG,
                limit_concurrency=LIMIT_CONCURRENCY,
                timeout_keep_alive=KEEP_ALIVE_S,
                timeout_graceful_shutdown=1,
            )
        )

    @property
    def connections(self) -> int:
        """Connections open now (refused ones never count)."""
        return len(self._server.server_state.connections)

    async def start(self) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]

    async def serve(self) -> None:
        if self._server.should_exit:
            return
        if self._sock is None:
            await self.start()
        assert self._sock is not None
        self._serving = True
        await self._server.serve(sockets=[self._sock])

    def close(self) -> None:
        """Stop serving: ``serve()`` returns after at most a second of grace for requests in
        flight.  Closes the socket itself if ``serve()`` never ran."""
        self._server.should_exit = True
        self._server.exit_now.set()
        if self._sock is not None and not self._serving:
            self._sock.close()


def json_response(data: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(data, ensure_ascii=False, indent=1).encode()
