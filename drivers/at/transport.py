"""Port transports: open a modem port and feed its bytes to an :class:`AtProtocol`.

Owns: turning a configured port string into an asyncio transport, and noticing that the port is
gone (EOF, EIO, hang-up), which it reports as ``connection_lost``.  Must not: interpret bytes.

How a port is read
    * Local ttys (``/dev/ttyUSB2``, ``/dev/serial/by-id/...``, ``hwgrep://``, ``spy://``): pyserial
      opens and configures the tty (raw mode, baud rate, ``exclusive`` flock); we then read the
      non-blocking fd with ``loop.add_reader`` and ``os.read``.  pyserial's own ``read()`` calls
      ``select()``, which fails for fds >= 1024, and one process must hold 512 ports.
    * ``socket://host:port`` (ser2net raw mode): asyncio's own TCP connection.  pyserial's socket
      handler connects and closes with blocking calls (``create_connection`` with a 5 s timeout,
      ``close()`` sleeps 0.3 s) that would stall every other port; asyncio's epoll transport
      has neither problem and reports EOF itself.
    * Anything else (``rfc2217://``, ``loop://``): pyserial's object behind one reader thread,
      because its telnet negotiation already runs in a pyserial thread and has no usable fd.
      Rare in a SIM farm; it costs one thread per port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import serial

from drivers.at.framing import AtProtocol, PortClosed

#: Opening ``socket://`` ports.
CONNECT_TIMEOUT_S = 10.0
#: How long a cancelled open waits for pyserial's opener thread before leaving it behind.
OPEN_WAIT_S = 5.0


class FdTransport(asyncio.Transport):
    """A pyserial-configured tty read with ``add_reader`` on its non-blocking fd (epoll)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, port: Any, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._port = port
        self._fd: int = port.fileno()
        self._protocol = protocol
        self._out = bytearray()
        self._closing = False
        self._closed_fut: asyncio.Future[None] | None = None
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._read_ready)
        protocol.connection_made(self)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the USB device or the pty master is gone
            self._fatal(exc)
            return
        if not data:
            # pyserial's read(): "device reports readiness to read but returned no data".
            self._fatal(OSError(errno.EIO, "device disconnected (EOF)"))
            return
        self._protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            raise PortClosed("port closing")
        if not self._out:
            try:
                n = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                raise PortClosed(str(exc)) from exc
            data = data[n:]
            if not data:
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._out += data

    def _write_ready(self) -> None:
        try:
            n = os.write(self._fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _fatal(self, exc: Exception) -> None:
        self._shutdown(exc)

    def close(self) -> None:
        self._shutdown(None)

    def _shutdown(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._out.clear()
        # close() of a USB tty can block in the kernel (closing_wait): keep it off the loop.
        self._closed_fut = asyncio.ensure_future(asyncio.to_thread(self._port.close))
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def is_closing(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        if self._closed_fut is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closed_fut)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"serial": self._port, "fd": self._fd}.get(name, default)


class ThreadTransport(asyncio.Transport):
    """Any other pyserial object (``rfc2217://``, ``loop://``) behind one I/O thread."""

    POLL_S = 0.05

    def __init__(
        self, loop: asyncio.AbstractEventLoop, port: Any, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._port = port
        self._protocol = protocol
        self._out: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closing = False
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        port.timeout = self.POLL_S
        port.write_timeout = None  # blocking writes are fine on the I/O thread
        protocol.connection_made(self)
        self._thread = threading.Thread(target=self._run, name=f"at-io:{port.port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        exc: Exception | None = None
        try:
            while not self._stop.is_set():
                while not self._out.empty():
                    self._port.write(self._out.get_nowait())
                data = self._port.read(max(1, self._port.in_waiting))
                if data:
                    self._loop.call_soon_threadsafe(self._protocol.data_received, data)
        except Exception as e:
            exc = e
        finally:
            with contextlib.suppress(Exception):
                self._port.close()
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._finish, exc)

    def _finish(self, exc: Exception | None) -> None:
        self._closing = True
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        self._protocol.connection_lost(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            raise PortClosed("port closing")
        self._out.put(bytes(data))

    def close(self) -> None:
        self._closing = True
        self._stop.set()

    def is_closing(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)


# --------------------------------------------------------------------------- opening


async def open_port(
    url: str, baudrate: int, protocol_factory: Callable[[], AtProtocol]
) -> tuple[asyncio.BaseTransport, AtProtocol]:
    """Open ``url`` and connect a fresh protocol to it; raise :class:`PortClosed` on failure.

    A by-id symlink is resolved anew on every call, so a replugged modem that came back as
    another ``ttyUSBn`` is found again.
    """
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    if parts.scheme == "socket":
        if not parts.hostname or parts.port is None:
            raise PortClosed(f"bad socket URL {url!r}: expected socket://host:port")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                sock_transport, sock_protocol = await loop.create_connection(
                    protocol_factory, parts.hostname, parts.port
                )
        except (OSError, TimeoutError) as exc:
            raise PortClosed(f"cannot connect to {url}: {exc}") from exc
        return sock_transport, sock_protocol

    port = await _open_serial(url, baudrate)
    protocol = protocol_factory()
    transport: asyncio.Transport
    try:
        if isinstance(getattr(port, "fd", None), int):
            transport = FdTransport(loop, port, protocol)
        else:
            transport = ThreadTransport(loop, port, protocol)
    except Exception:
        await asyncio.to_thread(port.close)
        raise
    return transport, protocol


async def _open_serial(url: str, baudrate: int) -> Any:
    def opener() -> Any:
        # exclusive: flock(LOCK_EX), so a second agent (or ModemManager) cannot share the tty.
        return serial.serial_for_url(
            url, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True
        )

    task = asyncio.ensure_future(asyncio.to_thread(opener))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # The opener thread cannot be interrupted: wait for it (briefly) and close whatever it
        # opened, so a cancelled connect leaves no port and no task behind.
        done, _ = await asyncio.wait({task}, timeout=OPEN_WAIT_S)
        if done:
            _close_result(task)
        else:
            task.add_done_callback(_close_result)
        raise
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortClosed(f"cannot open {url}: {exc}") from exc


def _close_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        with contextlib.suppress(Exception):
            task.result().close()


async def close_transport(transport: asyncio.BaseTransport) -> None:
    """Close and wait until the fd is really released (so a reopen can take the flock)."""
    transport.close()
    wait = getattr(transport, "wait_closed", None)
    if wait is not None:
        await wait()
