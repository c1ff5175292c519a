"""Port transports: epoll reads past fd 1024, asyncio TCP, the thread fallback, port loss."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import pytest

from drivers.at.framing import AtProtocol, PortClosed, Urc
from drivers.at.transport import FdTransport, ThreadTransport, close_transport, open_port
from tests.emulator import EmulatedModem, ModemServer, raise_fd_limit

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Push the next fd number past 1024, where select() stops working."""
    if raise_fd_limit(4096) < 1200:
        pytest.skip("cannot raise RLIMIT_NOFILE above 1200")
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)


async def test_tty_above_fd_1024_is_read_with_epoll(server: ModemServer, many_fds: None) -> None:
    urcs: list[Urc] = []
    transport, protocol = await open_port(
        server.start_pty(EmulatedModem("ec25")), 115200, lambda: AtProtocol("t/0", urcs.append)
    )
    try:
        assert isinstance(transport, FdTransport)
        assert transport.get_extra_info("fd") > 1024
        response = await protocol.command("AT+CGMI", timeout_s=2)
        assert response.lines == ("Quectel",)
    finally:
        await close_transport(transport)


async def test_socket_port_is_asyncios_own_connection_and_reports_eof(
    server: ModemServer,
) -> None:
    modem = EmulatedModem("sim800")
    url = f"socket://127.0.0.1:{server.start_tcp(modem)}"
    lost: list[Exception | None] = []
    transport, protocol = await open_port(
        url, 115200, lambda: AtProtocol("t/0", lambda _u: None, on_lost=lost.append)
    )
    try:
        assert isinstance(transport, asyncio.Transport)
        assert not isinstance(transport, FdTransport | ThreadTransport)
        assert (await protocol.command("AT", timeout_s=2)).final == "OK"
        modem.unplug()
        await asyncio.wait_for(protocol.wait_closed(), 2)
        assert lost
        with pytest.raises(PortClosed):
            await protocol.command("AT", timeout_s=1)
    finally:
        await close_transport(transport)


async def test_pty_unplug_is_seen_as_port_loss(server: ModemServer) -> None:
    modem = EmulatedModem("ec25")
    transport, protocol = await open_port(
        server.start_pty(modem), 115200, lambda: AtProtocol("t/0", lambda _u: None)
    )
    try:
        assert (await protocol.command("AT", timeout_s=2)).final == "OK"
        modem.unplug()
        await asyncio.wait_for(protocol.wait_closed(), 2)
    finally:
        await close_transport(transport)


async def test_other_urls_go_through_one_io_thread() -> None:
    # loop:// echoes what is written: enough to see bytes make the round trip.
    urcs: list[Urc] = []
    transport, protocol = await open_port("loop://", 115200, lambda: AtProtocol("t/0", urcs.append))
    try:
        assert isinstance(transport, ThreadTransport)
        transport.write(b'\r\n+CMTI: "SM",4\r\n')
        async with asyncio.timeout(2):
            while not urcs:
                await asyncio.sleep(0.01)
        assert urcs == [Urc('+CMTI: "SM",4')]
    finally:
        await close_transport(transport)
    assert protocol.is_closed


@pytest.mark.parametrize("url", ["/nonexistent/ttyUSB0", "socket://127.0.0.1:1", "socket://nohost"])
async def test_open_failures_are_port_closed(url: str) -> None:
    with pytest.raises(PortClosed):
        await open_port(url, 115200, lambda: AtProtocol("t/0", lambda _u: None))


async def test_second_opener_is_refused_by_the_exclusive_lock(server: ModemServer) -> None:
    path = server.start_pty(EmulatedModem("ec25"))
    transport, _ = await open_port(path, 115200, lambda: AtProtocol("t/0", lambda _u: None))
    try:
        with pytest.raises(PortClosed, match="lock"):
            await open_port(path, 115200, lambda: AtProtocol("t/1", lambda _u: None))
    finally:
        with contextlib.suppress(Exception):
            await close_transport(transport)
