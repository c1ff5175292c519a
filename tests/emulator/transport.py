"""Serving emulated modems over real pseudo-terminals and TCP sockets.

Owns the file descriptors and the one background thread: a :class:`ModemServer` runs a private
asyncio event loop (epoll via ``loop.add_reader``; no thread per modem, no ``select()``) that
moves bytes between each :class:`~.modem.EmulatedModem` and its line, fires the modems' timers,
and follows their line state (unplug, re-enumeration after a reset).  Sync tests, async tests
and a separate agent process can all talk to these modems: nothing here touches the caller's
event loop.

Lines behave like the hardware they stand for:

* pty: like a USB serial port (``/dev/ttyUSB*``).  The slave is raw (no echo or line editing
  in the tty layer).  While no process has the slave open, the modem's output is discarded, as
  a closed USB serial port discards it; a new opener never reads stale bytes.  Unplug closes
  the master (the host's reads fail with EIO / hang-up); replug creates a *new* pty, so the
  path changes, and an optional stable symlink is repointed like ``/dev/serial/by-id``.
* TCP: like ser2net.  One client at a time; a new connection replaces the old one.  Output
  with no client connected is discarded.  Unplug closes the connection and the listening
  socket (connections are refused); replug listens again on the same port.

Must not interpret AT commands: that is the modem's job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import os
import resource
import select
import socket
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .modem import EmulatedModem

T = TypeVar("T")

MAX_BUFFER = 256 * 1024  # bytes queued for a slow reader; beyond that output is dropped (overrun)
# s between checks for a process opening an idle pty: a safety net behind inotify, the only
# way without it (then a first command may wait up to PROBE_MAX_POLLING before it is read).
PROBE_MIN, PROBE_MAX_INOTIFY, PROBE_MAX_POLLING = 0.01, 5.0, 0.25
IN_OPEN = 0x20  # <sys/inotify.h>
REBIND_RETRY = 0.05  # s between attempts to listen again after replug when the port is busy
CALL_TIMEOUT = 10.0


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE's soft limit toward ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class _OpenWatcher:
    """Learns at once that a process opened a pty slave: inotify IN_OPEN (Linux, via libc).

    Without it, idle ptys are polled for the hang-up condition clearing; with it, 512 unopened
    ptys cost no CPU.  Runs on the loop thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fd = -1
        self._lines: dict[int, _PtyLine] = {}
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        except (OSError, AttributeError):
            return
        if fd >= 0:
            self._libc = libc
            self.fd = fd
            loop.add_reader(fd, self._read)

    @property
    def active(self) -> bool:
        return self.fd >= 0

    def watch(self, path: str, line: _PtyLine) -> int | None:
        if self.fd < 0:
            return None
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN))
        if wd < 0:
            return None
        self._lines[wd] = line
        return wd

    def unwatch(self, wd: int) -> None:
        if self._lines.pop(wd, None) is not None and self.fd >= 0:
            self._libc.inotify_rm_watch(self.fd, wd)  # EINVAL if the node is gone: fine

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        offset = 0
        while offset + 16 <= len(data):
            wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            offset += 16 + length
            line = self._lines.get(wd)
            if line is not None and mask & IN_OPEN:
                line.opened()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        self._lines.clear()


class _Line:
    """Glue between one modem and one kind of line; every method runs on the loop thread."""

    def __init__(self, server: ModemServer, modem: EmulatedModem) -> None:
        self.server = server
        self.modem = modem
        self.loop = server.loop
        self._gen = -1
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._wake_pending = False
        self._closed = False
        self._out = bytearray()
        self._writer_fd: int | None = None
        self.dropped_bytes = 0

    # -- called by the server
    def start(self) -> None:
        up, gen = self.modem.line_state()
        self._gen = gen
        if up:
            self._open()
        self.modem.set_listener(self._wake)
        self._service()

    def close(self) -> None:
        self._closed = True
        self.modem.set_listener(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drop()

    # -- modem → line
    def _wake(self) -> None:
        """The modem's listener: may run on any thread, with the modem's lock held."""
        if self._wake_pending or self._closed:
            return
        self._wake_pending = True
        if threading.get_ident() == self.server.thread_id:
            self.loop.call_soon(self._service)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self._service)

    def _service(self) -> None:
        self._wake_pending = False
        if self._closed:
            return
        data, up, gen = self.modem.poll_state()
        if gen != self._gen:
            self._gen = gen
            self._drop()
            if up:
                self._open()
        if data:
            self._send(data)
        self._schedule()

    def _schedule(self) -> None:
        due = self.modem.next_deadline()
        if due == self._timer_due and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            delay = max(0.0, due - self.modem.now())
            self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self._service()

    # -- line → modem
    def _received(self, data: bytes) -> None:
        self.modem.feed(data)
        self._service()

    # -- buffered, non-blocking writes
    def _send(self, data: bytes) -> None:
        if not self._connected():
            return  # nobody listening: the bytes are lost, as on the hardware
        if len(self._out) + len(data) > MAX_BUFFER:
            self.dropped_bytes += len(data)
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = self._write(bytes(self._out))
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._out.clear()
                self._lost()
                return
            del self._out[:n]
            if n == 0:
                break
        fd = self._fd()
        if self._out and fd is not None and self._writer_fd is None:
            self._writer_fd = fd
            self.loop.add_writer(fd, self._flush)
        elif not self._out and self._writer_fd is not None:
            self.loop.remove_writer(self._writer_fd)
            self._writer_fd = None

    def _stop_writer(self) -> None:
        if self._writer_fd is not None:
            self.loop.remove_writer(self._writer_fd)
            self._writer_fd = None
        self._out.clear()

    # -- per kind of line
    def _open(self) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def _connected(self) -> bool:
        raise NotImplementedError

    def _fd(self) -> int | None:
        raise NotImplementedError

    def _write(self, data: bytes) -> int:
        raise NotImplementedError

    def _lost(self) -> None:
        """The peer went away (EOF, reset, hang-up)."""
        raise NotImplementedError


class _TcpLine(_Line):
    def __init__(self, server: ModemServer, modem: EmulatedModem, host: str, port: int) -> None:
        super().__init__(server, modem)
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._rebind: asyncio.TimerHandle | None = None

    def bind(self) -> int:
        self._listen()
        return self.port

    def _listen(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(8)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    def _open(self) -> None:
        try:
            self._listen()
        except OSError:
            self._rebind = self.loop.call_later(REBIND_RETRY, self._retry_listen)

    def _retry_listen(self) -> None:
        self._rebind = None
        if not self._closed and self.modem.line_state()[0]:
            self._open()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self._close_client()  # ser2net-style takeover: the newest client wins
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self.loop.add_reader(conn.fileno(), self._read)

    def _read(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_client()
            return
        if not data:
            self._close_client()
            return
        self._received(data)

    def _close_client(self) -> None:
        if self._client is not None:
            self._stop_writer()
            self.loop.remove_reader(self._client.fileno())
            self._client.close()
            self._client = None

    def _lost(self) -> None:
        self._close_client()

    def _drop(self) -> None:
        self._close_client()
        if self._rebind is not None:
            self._rebind.cancel()
            self._rebind = None
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _connected(self) -> bool:
        return self._client is not None

    def _fd(self) -> int | None:
        return self._client.fileno() if self._client is not None else None

    def _write(self, data: bytes) -> int:
        assert self._client is not None
        return self._client.send(data)


class _PtyLine(_Line):
    def __init__(self, server: ModemServer, modem: EmulatedModem, link: Path | None) -> None:
        super().__init__(server, modem)
        self.link = link
        self.path = ""
        self._master: int | None = None
        self._poller: select.poll | None = None
        self._present = False  # some process has the slave open
        self._probe: asyncio.TimerHandle | None = None
        self._probe_interval = PROBE_MIN
        self._wd: int | None = None
        watcher = server._open_watcher()
        self._watcher = watcher
        self._probe_max = PROBE_MAX_INOTIFY if watcher.active else PROBE_MAX_POLLING

    def _open(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line editing, no CR/LF mapping in the tty layer
            self.path = os.ttyname(slave)
        finally:
            # Not keeping the slave open is what makes a closed port discard output and
            # lets us see the host hang up (EIO / POLLHUP on the master).
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._poller = select.poll()
        self._poller.register(master, select.POLLIN)
        self._present = False
        self._wd = self._watcher.watch(self.path, self)
        self._start_probe()
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.path)
            tmp.replace(self.link)  # atomic repoint, as udev does

    def _start_probe(self, interval: float = PROBE_MIN) -> None:
        self._probe_interval = interval
        if self._probe is not None:
            self._probe.cancel()
        self._probe = self.loop.call_later(interval, self._check_open)

    def opened(self) -> None:
        """inotify saw an open of the slave (maybe our own stale-flush open: check)."""
        if self._master is not None and not self._present:
            self._check_open()

    def _check_open(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self._probe = None
        if self._master is None or self._poller is None:
            return
        events = self._poller.poll(0)
        if any(ev & select.POLLHUP for _, ev in events):
            self._start_probe(min(self._probe_interval * 2, self._probe_max))
            return
        self._present = True
        self.loop.add_reader(self._master, self._read)

    def _read(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._lost()
            return
        if not data:
            self._lost()
            return
        self._received(data)

    def _lost(self) -> None:
        """The host closed the port: stop reading, forget unsent bytes, wait for a re-open."""
        if self._master is None or not self._present:
            return
        self._present = False
        self._stop_writer()
        self.loop.remove_reader(self._master)
        # Bytes already written sit in the slave's input queue; a closed USB port would have
        # dropped them, so flush them before the next opener can read them.
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                termios.tcflush(fd, termios.TCIFLUSH)
            finally:
                os.close(fd)
        self._start_probe()

    def _drop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._wd is not None:
            self._watcher.unwatch(self._wd)
            self._wd = None
        if self._master is not None:
            self._stop_writer()
            if self._present:
                self.loop.remove_reader(self._master)
            os.close(self._master)  # the host's next read fails: the device is gone
            self._master = None
            self._poller = None
            self._present = False
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def _connected(self) -> bool:
        return self._present

    def _fd(self) -> int | None:
        return self._master

    def _write(self, data: bytes) -> int:
        assert self._master is not None
        return os.write(self._master, data)


class ModemServer:
    """Runs modems on ptys and TCP ports from one background event-loop thread.

    Use as a context manager or call :meth:`stop`.  All methods are blocking and thread-safe;
    they must not be called from a modem listener.
    """

    def __init__(self, *, name: str = "modem-server") -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread_id: int | None = None
        self._lines: dict[int, _Line] = {}
        self._watcher: _OpenWatcher | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        raise_fd_limit()
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        self.thread_id = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _call(self, fn: Callable[[], T]) -> T:
        if self._stopped:
            raise RuntimeError("ModemServer is stopped")
        if threading.get_ident() == self.thread_id:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=CALL_TIMEOUT)

    def _open_watcher(self) -> _OpenWatcher:
        """The server's inotify watcher (loop thread only; created on first use)."""
        if self._watcher is None:
            self._watcher = _OpenWatcher(self.loop)
        return self._watcher

    def _register(self, modem: EmulatedModem, line: _Line) -> None:
        if id(modem) in self._lines:
            raise ValueError(f"{modem.name} is already served")
        self._lines[id(modem)] = line

    def start_tcp(self, modem: EmulatedModem, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``modem`` on a TCP port (0: any free one); returns the port."""

        def start() -> int:
            line = _TcpLine(self, modem, host, port)
            bound = line.bind()
            self._register(modem, line)
            if not modem.line_state()[0]:
                line._drop()  # unplugged: refuse until replugged
            line.start()
            return bound

        return self._call(start)

    def start_pty(self, modem: EmulatedModem, *, link: str | os.PathLike[str] | None = None) -> str:
        """Serve ``modem`` on a new pty; returns the slave's path (e.g. /dev/pts/7).

        ``link``: a symlink kept pointing at the current pty (removed while unplugged).
        """
        link_path = Path(link) if link is not None else None

        def start() -> str:
            if not modem.line_state()[0]:
                raise RuntimeError(f"{modem.name} is unplugged")
            line = _PtyLine(self, modem, link_path)
            self._register(modem, line)
            line.start()
            return line.path

        return self._call(start)

    def pty_path(self, modem: EmulatedModem) -> str | None:
        """The modem's current pty path; None while unplugged."""

        def get() -> str | None:
            line = self._lines[id(modem)]
            assert isinstance(line, _PtyLine)
            return line.path if line._master is not None else None

        return self._call(get)

    def tcp_port(self, modem: EmulatedModem) -> int:
        def get() -> int:
            line = self._lines[id(modem)]
            assert isinstance(line, _TcpLine)
            return line.port

        return self._call(get)

    def wait_pty_path(
        self, modem: EmulatedModem, old: str | None = None, timeout: float = 5.0
    ) -> str:
        """Wait until the modem has a pty path different from ``old``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            path = self.pty_path(modem)
            if path is not None and path != old:
                return path
            if time.monotonic() > deadline:
                raise TimeoutError(f"{modem.name}: no new pty within {timeout} s")
            time.sleep(0.005)

    def stop_modem(self, modem: EmulatedModem) -> None:
        def stop() -> None:
            line = self._lines.pop(id(modem), None)
            if line is not None:
                line.close()

        self._call(stop)

    def stop(self) -> None:
        """Close every line and the loop thread; safe to call twice."""
        if self._stopped:
            return

        def close_all() -> None:
            for line in self._lines.values():
                line.close()
            self._lines.clear()
            if self._watcher is not None:
                self._watcher.close()

        try:
            self._call(close_all)
        finally:
            self._stopped = True
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=CALL_TIMEOUT)

    def __enter__(self) -> ModemServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
