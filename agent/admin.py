"""Admin HTTP: ``/metrics`` (Prometheus), ``/healthz``, ``/status`` (JSON), GET only.

A deliberately small HTTP/1.1 server on asyncio streams: three read-only endpoints do not need
a framework, and staying off uvicorn here keeps signal handling in ``__main__`` alone (hypercorn
style).  It listens on ``127.0.0.1:9108`` by default; nothing it serves contains a secret.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import structlog

log = structlog.get_logger("agent.admin")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
MAX_REQUEST = 8192


class AdminServer:
    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.host, self.port = host, port
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST:
                raise ValueError("request too large")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _version = line.split(" ", 2)
            path = target.split("?", 1)[0]
            handler = self.routes.get(path)
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = await handler()
            reason = {
                200: "OK",
                404: "Not Found",
                405: "Method Not Allowed",
                503: "Service Unavailable",
            }.get(status, "OK")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method == "GET" else b"")
            )
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
        ):
            pass
        except Exception:
            log.exception("admin request failed")
        finally:
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()


def json_response(data: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(data, ensure_ascii=False, indent=1).encode()
