"""A hostile hub: answers that no hub should give, on the real ASGI stack (issue #12).

:class:`HostileFront` is an ASGI layer in front of the reference hub, served by uvicorn on
127.0.0.1 (``HubThread(wrap=front)`` in the end-to-end tests, :func:`serve` in unit tests).
For ``POST /messages`` and ``GET /commands`` it answers as the endpoint's mode says, with
Starlette responses:

* ``normal``: the reference hub answers.
* ``deep``: 100,000 nested ``[`` (once made ``json.loads`` raise ``RecursionError``).
* ``endless``: a chunked JSON-looking body that never ends.
* ``gzip_bomb``: about 1 MiB of gzip that inflates to 1 GiB of zeros.
* ``early_empty`` (``GET /commands``): ``{"commands": []}`` at once, ignoring ``wait``.
* ``no_settle`` (``POST /messages``): an ack that settles none of the batch.

In every hostile mode a ``POST /messages`` still reaches the reference hub, which stores the
batch; only its answer is replaced, as if mangled on the way back.  So the agent must send
those messages again, and the hub's per-id records show whether anything was delivered under
a second id.  A hostile ``GET /commands`` does not reach the hub (it would take its commands).
Every request to the two endpoints is timestamped (:meth:`HostileFront.count`), whatever the
mode, so a test can bound the request rate.  Modes change in-process (:meth:`HostileFront.set`),
since the hub runs on a thread of the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import uvicorn
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint = Literal["messages", "commands"]
Mode = Literal["normal", "deep", "endless", "gzip_bomb", "early_empty", "no_settle"]

PATHS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/agent/v1/messages"): "messages",
    ("GET", "/agent/v1/commands"): "commands",
}
DEEP = b"[" * 100_000
BOMB_INFLATED = 1 << 30
CHUNK = 64 * 1024


@functools.cache
def gzip_bomb() -> bytes:
    """A gzip file of about 1 MiB that inflates to 1 GiB of zeros, built in well under 1 s.

    One MiB of zeros is deflated once and ended with a full flush: the flush resets the
    history and byte-aligns the output, so that piece is a self-contained run of non-final
    deflate blocks that can be repeated 1,024 times.  An empty final block and the gzip
    trailer (CRC-32 and length of the inflated data, RFC 1952) close it.
    """
    zeros = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    crc = 0
    for _ in range(BOMB_INFLATED // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, any OS
    trailer = struct.pack("<II", crc, BOMB_INFLATED & 0xFFFFFFFF)
    return header + piece * (BOMB_INFLATED // len(zeros)) + final + trailer


async def _endless() -> AsyncIterator[bytes]:
    yield b'{"commands": ['
    filler = b"0," * (CHUNK // 2)
    while True:  # ends when the client goes away (StreamingResponse watches for disconnect)
        yield filler
        await asyncio.sleep(0)


def hostile_response(mode: Mode) -> Response:
    json = "application/json"
    if mode == "deep":
        return Response(DEEP, media_type=json)
    if mode == "endless":
        return StreamingResponse(_endless(), media_type=json)
    if mode == "gzip_bomb":
        return Response(gzip_bomb(), media_type=json, headers={"content-encoding": "gzip"})
    if mode == "early_empty":
        return Response(b'{"commands": []}', media_type=json)
    if mode == "no_settle":
        return Response(b'{"accepted": [], "rejected": []}', media_type=json)
    raise ValueError(f"no hostile answer for mode {mode!r}")


class HostileFront:
    """The hostile layer; ``front(app)`` wraps the reference hub's ASGI ``app``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modes: dict[Endpoint, Mode] = {"messages": "normal", "commands": "normal"}
        self._times: dict[Endpoint, list[float]] = {"messages": [], "commands": []}
        self._hostile_answers: dict[Endpoint, int] = {"messages": 0, "commands": 0}

    def set(self, *, messages: Mode | None = None, commands: Mode | None = None) -> None:
        with self._lock:
            if messages is not None:
                self._modes["messages"] = messages
            if commands is not None:
                self._modes["commands"] = commands

    def count(self, endpoint: Endpoint, since: float = 0.0, until: float = float("inf")) -> int:
        """Requests to ``endpoint`` that arrived in ``[since, until)`` (``time.time()``)."""
        with self._lock:
            return sum(1 for t in self._times[endpoint] if since <= t < until)

    def times(self, endpoint: Endpoint) -> list[float]:
        with self._lock:
            return list(self._times[endpoint])

    def hostile_answers(self, endpoint: Endpoint) -> int:
        """How many hostile answers ``endpoint`` has given so far."""
        with self._lock:
            return self._hostile_answers[endpoint]

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            endpoint = PATHS.get((scope.get("method", ""), scope.get("path", "")))
            if scope["type"] != "http" or endpoint is None:
                await app(scope, receive, send)
                return
            with self._lock:
                self._times[endpoint].append(time.time())
                mode = self._modes[endpoint]
                if mode != "normal":
                    self._hostile_answers[endpoint] += 1
            if mode == "normal":
                await app(scope, receive, send)
                return
            if endpoint == "messages":

                async def swallow(message: Message) -> None:
                    pass

                await app(scope, receive, swallow)  # the hub stores the batch
            await hostile_response(mode)(scope, receive, send)

        return asgi


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the test runner keeps Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in this event loop; yields the
    base URL.  For unit tests, which have no :class:`~tests.e2e.conftest.HubThread`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(
        app, http="h11", ws="none", lifespan="off", access_log=False, log_config=None
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
