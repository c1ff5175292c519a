"""The listener for the box's ``recv-sms`` pushes: a hint that wakes the SMS poller, nothing more.

Owns one uvicorn + starlette server on ``push_listen``, run inside the driver's
``connect()``/``close()``.  Why only a hint: a push carries no message id (research/gateways.md
section 1.4) and its acknowledgement and retry behaviour are unknown (section 11), so the poll
with its cursor stays the only source of parts; a push just makes the next poll happen now.
Duplicate pushes therefore cost one extra poll at most.

Any path and method is accepted (some firmware appends its own path or query to the configured
URL, section 9.4), the body is read up to :data:`MAX_PUSH_BODY` and discarded (413 beyond), and
the answer is an immediate ``200 OK``: the box is never held waiting on us.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from drivers.base import split_host_port
from drivers.serve import EmbeddedServer, embedded_config

MAX_PUSH_BODY = 256 * 1024
_METHODS = ["GET", "POST", "PUT"]


class PushListener:
    """Serves until :meth:`stop`; ``on_push`` is called (synchronously) for every push."""

    def __init__(self, listen: str, on_push: Callable[[], None]) -> None:
        self._host, self._port = split_host_port(listen)
        self._on_push = on_push
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.pushes = 0

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else self._port

    async def _receive(self, request: Request) -> Response:
        self.pushes += 1
        self._on_push()  # even a malformed or oversized push is worth a poll
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_PUSH_BODY:
                return PlainTextResponse("too large", status_code=413)
        return PlainTextResponse("OK")

    async def start(self) -> None:
        """Bind and serve; raises OSError if the address is taken (nothing left behind)."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        app = Starlette(routes=[Route("/{path:path}", self._receive, methods=_METHODS)])
        config = embedded_config(
            app,
            timeout_graceful_shutdown=1,
            limit_concurrency=64,
        )
        self._sock = sock
        self._server = EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="ejoin:push")
        while not self._server.started:
            if self._task.done():
                await self.stop()
                raise OSError("push listener failed to start")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.exit_now.set()
        if self._task is not None:
            # wait() rather than await: uvicorn's shutdown ending its task by cancellation
            # must not look like a cancellation of the caller.
            await asyncio.wait([self._task])
        if self._sock is not None:
            self._sock.close()
        self._server = self._task = self._sock = None
