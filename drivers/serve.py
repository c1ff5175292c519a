"""uvicorn embedded in a running event loop: the one ASGI server class of the project.

The agent's admin listener, the reference hub, a gateway driver's push listener and the test
emulators all serve a Starlette app from inside a process that owns its own signals (the CLI
installs SIGTERM/SIGINT/SIGHUP handlers; tests drive shutdown with events).  uvicorn's
``Server`` would install its own handlers and poll ``should_exit`` ten times a second; this
subclass does neither: ``capture_signals`` is a no-op, and the main loop sleeps on
``exit_now`` (stopping is immediate, the loop otherwise idle; ``on_tick(0)`` still refreshes
the Date header once a second).  It lives beside the driver interface so drivers can use it
without importing the agent's core.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


def embedded_config(app: Any, **settings: Any) -> uvicorn.Config:
    """uvicorn's config for an app served inside the process: HTTP/1.1 only (h11), no
    websockets, no lifespan, no access log and no logging setup of uvicorn's own (the
    process's logging stays as configured), no ``Server`` header; ``settings`` add or override
    (limits, timeouts, a protocol class)."""
    return uvicorn.Config(
        app,
        **{
            "http": "h11",
            "ws": "none",
            "lifespan": "off",
            "access_log": False,
            "log_config": None,
            "server_header": False,
            **settings,
        },
    )


class EmbeddedServer(uvicorn.Server):
    """``await server.serve()`` in a task; ``server.exit_now.set()`` stops it at once.

    ``ready``, when given, is set once the server listens."""

    def __init__(self, config: uvicorn.Config, ready: asyncio.Event | None = None) -> None:
        super().__init__(config)
        self.exit_now = asyncio.Event()
        self._ready = ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_now.wait(), 1.0)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready is not None:
            self._ready.set()
