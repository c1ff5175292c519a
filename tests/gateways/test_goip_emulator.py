"""The GoIP emulator against a bare UDP server socket (real UDP on 127.0.0.1), and standalone.

The "server" here is a plain datagram endpoint that records what the lines send and answers
by hand, so these tests pin the emulator's side of the protocol (research/gateways.md section 2,
Appendix A) without the driver.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.emulator.sim import luhn_digit
from tests.gateways.goip import GoipEmulator, Settings, identity


class Server(asyncio.DatagramProtocol):
    """A bare UDP server: every datagram lands in ``inbox`` as (text, source address)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[str, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.inbox.put_nowait((data.decode(), (addr[0], addr[1])))

    def send(self, text: str, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(text.encode(), addr)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    async def next(self, prefix: str, timeout: float = 5.0) -> tuple[str, tuple[str, int]]:
        """The next datagram starting with ``prefix`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                text, addr = await self.inbox.get()
                if text.startswith(prefix):
                    return text, addr


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    proto.transport = transport
    yield proto
    transport.close()


def fields(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        key, _, value = part.partition(":")
        out.setdefault(key, value)
    return out


def emulator(server: Server, lines: int = 2, **kw: Any) -> GoipEmulator:
    return GoipEmulator(Settings(server=server.addr, **kw), lines)


def test_identities_are_deterministic_and_valid() -> None:
    ids = [identity(7, i) for i in range(64)]
    assert ids == [identity(7, i) for i in range(64)]
    assert len({i[0] for i in ids}) == len({i[3] for i in ids}) == 64
    for iccid, imsi, imei, number in ids:
        assert len(iccid) == 19 and iccid[-1] == luhn_digit(iccid[:-1])
        assert len(imei) == 15 and imei[-1] == luhn_digit(imei[:-1])
        assert imsi.startswith("25001") and len(imsi) == 15
        assert number.startswith("+79") and len(number) == 12
    assert identity(8, 0) != ids[0]


async def test_keepalive_per_line_from_its_own_port(server: Server) -> None:
    async with emulator(server, lines=3, keepalive_s=0.1) as emu:
        seen: dict[str, tuple[dict[str, str], tuple[str, int]]] = {}
        while len(seen) < 3:
            text, addr = await server.next("req:")
            f = fields(text)
            seen.setdefault(f["id"], (f, addr))
        assert len({addr for _f, addr in seen.values()}) == 3  # one source port per line
        f, addr = seen["goip02"]
        line = emu.line("goip02")
        assert f["pass"] == "secret" and f["iccid"] == line.iccid and f["imsi"] == line.imsi
        assert f["num"] == line.number and f["gsm_status"] == "LOGIN"
        assert f["disable_status"] == "0" and f["CELLINFO"] == "LAC:7E5,CELL ID:5E5B"
        assert 0 <= int(f["signal"]) <= 31
        server.send(f"reg:{f['req']};status:200;", addr)
        await emu.wait_for(lambda: line.keepalive_acks == 1)


async def test_receive_is_retransmitted_until_acknowledged(server: Server) -> None:
    async with emulator(server, lines=2, retransmit_s=0.05, max_retransmits=-1) as emu:
        line = emu.line(1)
        recvid = line.deliver("+79001234567", "code: 1234; bye")
        copies = [await server.next("RECEIVE:") for _ in range(3)]
        assert {text for text, _ in copies} == {
            f"RECEIVE:{recvid};id:goip02;pass:secret;srcnum:+79001234567;msg:code: 1234; bye"
        }  # odd lines spell the key "pass:" as the vendor's own example does (A.4)
        server.send(f"RECEIVE {recvid} OK", copies[0][1])
        await emu.wait_for(lambda: [s.recvid for s in line.delivered] == [recvid])
        assert not line.pending
        sends = line.delivered[0].sends
        assert sends >= 3
        # Barrier: the next SMS on the same line went out after the ack; no copy since.
        second = line.deliver("+7900", "x")
        text, _ = await server.next(f"RECEIVE:{second};")
        assert text.startswith(f"RECEIVE:{second};id:goip02;pass:secret;")
        assert line.delivered[0].sends == sends
        third = emu.line(0).deliver("+7900", "y")
        text, _ = await server.next(f"RECEIVE:{third};")
        assert text.startswith(f"RECEIVE:{third};id:goip01;password:secret;")


async def test_gives_up_after_the_vendor_retransmissions_and_error_ack(server: Server) -> None:
    async with emulator(server, lines=1, retransmit_s=0.02, max_retransmits=3) as emu:
        line = emu.line(0)
        lost = line.deliver("+7900", "nobody answers")
        await emu.wait_for(lambda: bool(line.gave_up))
        assert line.gave_up[0].recvid == lost and line.gave_up[0].sends == 4  # 1 + 3 (A.4)
        refused = line.deliver("+7900", "refused")
        _text, addr = await server.next(f"RECEIVE:{refused};")
        server.send(f"RECEIVE {refused} ERROR bad password", addr)
        await emu.wait_for(lambda: [s.recvid for s in line.refused] == [refused])


async def test_module_control_holds_and_releases_sms(server: Server) -> None:
    async with emulator(server, lines=1, keepalive_s=0.05) as emu:
        line = emu.line(0)
        _text, addr = await server.next("req:")
        server.send("module_ctl_i 41 2 secret", addr)
        assert (await server.next("module_ctl_i"))[0] == "module_ctl_i 41 ok"
        text, _ = await server.next("req:")
        assert fields(text)["gsm_status"] == "LOGOUT" and fields(text)["disable_status"] == "1"
        assert line.deliver("+7900", "held") is None and len(line.held) == 1
        server.send("USSD 42 secret *100#", addr)
        assert (await server.next("USSD"))[0] == "USSDERROR 42 module disabled"
        server.send("module_ctl_i 43 1 secret", addr)
        assert (await server.next("module_ctl_i"))[0] == "module_ctl_i 43 ok"
        text, _ = await server.next("RECEIVE:")
        assert text.endswith(";srcnum:+7900;msg:held") and not line.held
        server.send("module_ctl_i 44 2 wrong", addr)
        assert (await server.next("ERROR"))[0] == "ERROR 44 password error"
        server.send("USSD 45 secret *111#", addr)
        assert (await server.next("USSD"))[0] == f"USSD 45 Your number is {line.number}"
        server.send("frobnicate 46 secret", addr)
        assert (await server.next("ERROR"))[0] == "ERROR 46 unknown command"
        assert line.enabled
        server.send("module_ctl 47 0 secret", addr)
        assert (await server.next("module_ctl "))[0] == "module_ctl 47 ok"
        await emu.wait_for(lambda: not line.enabled)


async def test_no_answer_and_wrong_password_faults(server: Server) -> None:
    async with emulator(server, lines=1, keepalive_s=0.05) as emu:
        line = emu.line(0)
        _text, addr = await server.next("req:")
        emu.set_faults(0, no_answer=True)
        server.send("module_ctl_i 7 2 secret", addr)
        # The keepalive sent after the command proves the line went on without answering.
        count = line.count
        await emu.wait_for(lambda: line.count > count + 1)
        while not server.inbox.empty():
            assert server.inbox.get_nowait()[0].startswith("req:")
        assert line.enabled
        emu.set_faults(0, no_answer=False, wrong_password=True, no_iccid=True)
        text, _ = await server.next("req:")
        while fields(text)["pass"] == "secret":  # one may have left before the change
            text, _ = await server.next("req:")
        assert fields(text)["pass"] != "secret" and "iccid" not in fields(text)


async def test_duplicate_and_seeded_loss(server: Server) -> None:
    async with emulator(server, lines=1, max_retransmits=0) as emu:
        emu.set_faults(0, duplicate=True)
        recvid = emu.line(0).deliver("+7900", "twice")
        for _ in range(2):
            assert (await server.next("RECEIVE:"))[0].startswith(f"RECEIVE:{recvid};")

    async def run(seed: int) -> list[bool]:
        async with emulator(server, lines=1, max_retransmits=0, seed=seed) as emu:
            line = emu.line(0)
            emu.set_faults(0, loss=0.5)
            outcome = []
            for i in range(30):
                lost = line.lost
                line.deliver("+7900", f"m{i}")
                outcome.append(line.lost > lost)
            return outcome

    first, again, other = await run(3), await run(3), await run(4)
    assert first == again and first != other and 5 < sum(first) < 25


async def test_reboot_silence_new_port_and_sequences(server: Server) -> None:
    async with emulator(
        server, lines=1, keepalive_s=0.05, retransmit_s=0.05, max_retransmits=-1
    ) as emu:
        line = emu.line(0)
        text, before = await server.next("req:")
        unacked = line.deliver("+7900", "survives the reboot")
        await server.next(f"RECEIVE:{unacked};")
        line.reboot(0.3)
        assert line.rebooting and line.deliver("+7900", "during") is None
        text, after = await server.next("req:", timeout=3)
        while fields(text)["req"] != "1":  # a datagram sent before the reboot may trail
            text, after = await server.next("req:", timeout=3)
        assert after != before and not line.rebooting
        pushed = set()
        while len(pushed) < 2:
            text, _ = await server.next("RECEIVE:")
            pushed.add(int(text.split(";")[0].split(":")[1]))
        assert unacked in pushed  # same recvid after the reboot
        [new] = pushed - {unacked}
        assert new // 10_000_000 != unacked // 10_000_000  # a new sequence


async def test_standalone_process_with_control_api(server: Server) -> None:
    host, port = server.addr
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.gateways.goip", "--server", f"{host}:{port}"),
            *("--lines", "64", "--keepalive", "0.5", "--seed", "5"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        ready = json.loads(line)
        assert len(ready["lines"]) == 64 and ready["lines"][63]["id"] == "goip64"
        assert ready["lines"][0]["iccid"] == identity(5, 0)[0]
        ids = set()
        while len(ids) < 64:
            text, _ = await server.next("req:")
            ids.add(fields(text)["id"])
        async with httpx.AsyncClient(base_url=ready["control"], timeout=5) as client:
            r = await client.post("/sms", json={"line": "goip07", "from": "+7901", "text": "hi"})
            recvid = r.json()["recvid"]
            text, addr = await server.next("RECEIVE:")
            assert text == f"RECEIVE:{recvid};id:goip07;password:secret;srcnum:+7901;msg:hi"
            server.send(f"RECEIVE {recvid} OK", addr)
            r = await client.post("/faults", json={"line": 6, "loss": 0.25, "duplicate": True})
            assert r.json()[0]["faults"]["loss"] == 0.25
            assert (await client.post("/faults", json={"nope": 1})).status_code == 400
            assert (await client.post("/sms", content=b"[1]")).status_code == 400
            r = await client.post("/enable", json={"line": 1, "enabled": False})
            assert r.json()[0]["enabled"] is False
            r = await client.post("/reboot", json={"line": "goip03", "silence_s": 0.2})
            assert r.json()[0]["rebooting"] is True
            for _ in range(100):
                view = (await client.get("/lines")).json()
                if view[6]["delivered"] == [recvid] and not view[2]["rebooting"]:
                    break
                await asyncio.sleep(0.05)
            assert view[6]["delivered"] == [recvid] and view[2]["boot"] == 1
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
