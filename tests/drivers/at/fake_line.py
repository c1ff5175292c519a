"""An in-memory AT line for framing tests (bellows style): scripted replies, split byte by byte.

``FakeLine`` is the transport an :class:`AtProtocol` writes to.  Each command written is looked
up in ``script`` (exact text without CR); the reply bytes are fed back ``chunk`` bytes at a time,
each chunk in its own loop iteration, so every split point between bytes is exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from drivers.at.framing import AtProtocol, Urc

Reply = bytes | Callable[[str], bytes | None] | None


class FakeLine(asyncio.WriteTransport):
    def __init__(self, script: dict[str, Reply] | None = None, *, chunk: int = 1) -> None:
        super().__init__()
        self.script: dict[str, Reply] = dict(script or {})
        self.chunk = chunk
        self.written: list[bytes] = []
        self.commands: list[str] = []
        self.urcs: list[Urc] = []
        self.protocol = AtProtocol("test/0", self.urcs.append)
        self.protocol.connection_made(self)
        self._feeding: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._closed = False

    # -- transport API

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        self.written.append(data)
        if data.endswith(b"\r"):
            cmd = data[:-1].decode()
            self.commands.append(cmd)
            reply = self.script.get(cmd)
            if callable(reply):
                reply = reply(cmd)
            if reply:
                self.feed(reply)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self._closed

    # -- test helpers

    def feed(self, data: bytes) -> None:
        """Queue modem output; delivered in order, ``chunk`` bytes per loop iteration."""
        self._queue.put_nowait(data)
        if self._feeding is None or self._feeding.done():
            self._feeding = asyncio.get_running_loop().create_task(self._feed())

    async def _feed(self) -> None:
        while not self._queue.empty():
            data = self._queue.get_nowait()
            for i in range(0, len(data), self.chunk):
                if self._closed:
                    return
                self.protocol.data_received(data[i : i + self.chunk])
                await asyncio.sleep(0)

    async def settle(self) -> None:
        while self._feeding is not None and not self._feeding.done():
            await self._feeding
        for _ in range(3):
            await asyncio.sleep(0)
