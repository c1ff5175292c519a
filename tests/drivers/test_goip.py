"""The goip driver against the GoIP emulator over real UDP on 127.0.0.1.

Each test binds the driver to port 0 and points an in-process :class:`GoipEmulator` at it.
Negative checks wait for a later event that proves progress (a later keepalive, a later SMS),
never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from drivers import resolve
from drivers.base import (
    Capability,
    CommandError,
    DeviceDown,
    DeviceStat,
    DeviceUp,
    DriverContext,
    DriverState,
    Encoding,
    Event,
    SimGone,
    SimPresent,
    SmsPart,
)
from drivers.goip.config import GoipConfig
from drivers.goip.driver import GoipDriver
from drivers.goip.line import Line, signal_dbm
from tests.gateways.goip import GoipEmulator, Settings


class Pump:
    """The driver's events in a queue, so a test can wait with a timeout without cancelling
    (and so closing) the driver's async generator."""

    def __init__(self, driver: GoipDriver) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []  # every event, including those next() skipped
        self._task = asyncio.create_task(self._run(driver.events()))

    async def _run(self, events: AsyncIterator[Event]) -> None:
        async for ev in events:
            self.seen.append(ev)
            await self.queue.put(ev)

    async def next(self, kind: type, where: Any = None, timeout: float = 5.0) -> Any:
        """The next event of ``kind`` (matching ``where``); others are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.queue.get()
                if isinstance(ev, kind) and (where is None or where(ev)):
                    return ev

    async def ever(self, kind: type, where: Any = None, timeout: float = 5.0) -> Any:
        """The first event of ``kind`` (matching ``where``) seen so far, or the next one."""
        for ev in self.seen:
            if isinstance(ev, kind) and (where is None or where(ev)):
                return ev
        return await self.next(kind, where, timeout)

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Rig:
    driver: GoipDriver
    events: Pump
    emu: GoipEmulator

    def port(self, index: int) -> str:
        return f"goip1/{self.emu.lines[index].id}"

    async def present(self, index: int, **want: Any) -> SimPresent:
        port = self.port(index)

        def match(ev: SimPresent) -> bool:
            info = ev.info
            return info.port == port and all(getattr(info, k) == v for k, v in want.items())

        return await self.events.next(SimPresent, match)  # type: ignore[no-any-return]


def config(lines: int, **kw: Any) -> GoipConfig:
    return GoipConfig(
        name="goip1",
        driver="goip",
        listen="127.0.0.1:0",
        lines=[{"id": f"goip{i + 1:02d}", "password": "secret"} for i in range(lines)],
        **kw,
    )


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    lines: int = 2,
    *,
    state: DriverState | None = None,
    listen: str = "127.0.0.1:0",
    faults: dict[str, Any] | None = None,
    driver_kw: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Rig]:
    cfg = config(lines, **(driver_kw or {})).model_copy(update={"listen": listen})
    ctx = DriverContext(device="goip1", state_dir=tmp_path, state=state or DriverState())
    driver = GoipDriver(cfg, ctx)
    await driver.connect()
    events = Pump(driver)
    assert driver.bound is not None
    emu = GoipEmulator(Settings(server=driver.bound, **settings), lines)
    for key, changes in (faults or {}).items():
        emu.set_faults(key, **changes)
    try:
        await emu.start()
        yield Rig(driver, events, emu)
    finally:
        emu.close()
        await events.aclose()
        await driver.close()


async def test_registry_config_and_capabilities() -> None:
    assert resolve("goip") is GoipDriver
    caps = GoipDriver.capabilities
    assert Capability.RADIO in caps and Capability.USSD in caps
    assert Capability.FORWARDING not in caps and Capability.SELECT not in caps
    cfg = config(2)
    assert "secret" not in repr(cfg) and "secret" not in str(cfg.model_dump())
    for bad in (
        {"lines": [{"id": "a", "password": "x"}, {"id": "a", "password": "y"}]},
        {"lines": [{"id": "a b", "password": "x"}]},
        {"lines": [{"id": "a", "password": "x y"}]},
        {"lines": [{"id": "a", "password": "x;y"}]},
        {"lines": []},
        {"listen": "44444"},
        {"lines": [{"id": "a", "password": "x"}], "port": 1},
    ):
        with pytest.raises(ValidationError):
            GoipConfig.model_validate({"name": "g", "driver": "goip", "lines": [], **bad})


def test_signal_scale() -> None:
    # CSQ RSSI 0..31 -> -113 + 2 * rssi dBm (TS 27.007 8.5); 99 / empty / garbage unknown.
    assert [signal_dbm(v) for v in ("0", "15", "31", "99", "", "x", None)] == [
        -113,
        -83,
        -51,
        None,
        None,
        None,
        None,
    ]


async def test_inventory_from_keepalives(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=3, keepalive_s=0.2) as r:
        up = await r.events.next(DeviceUp)
        assert "3 lines" in up.detail
        for i, line in enumerate(r.emu.lines):
            info = (await r.present(i)).info
            rssi = 10 + int(line.iccid[-3:]) % 20
            assert (info.iccid, info.imsi, info.number) == (line.iccid, line.imsi, line.number)
            assert info.number_source == "gateway" and info.operator == "MTS"
            assert info.signal_dbm == -113 + 2 * rssi
            assert info.registered and info.radio_on and info.slot is None
        # The driver answered ``reg:$count;status:200;`` (A.2).
        await r.emu.wait_for(lambda: all(line.keepalive_acks >= 2 for line in r.emu.lines))


async def test_offline_after_silence_and_back_after_reboot(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=2, keepalive_s=0.2) as r:
        await r.present(0, registered=True)
        before = r.emu.lines[0].local_port
        # Two keepalives teach the driver the 0.2 s period; then 1.5 s of silence (> 3 periods).
        await r.emu.wait_for(lambda: r.emu.lines[0].keepalive_acks >= 2)
        r.emu.lines[0].reboot(1.5)
        off = await r.events.next(
            SimPresent, lambda e: e.info.port == r.port(0) and not e.info.registered, timeout=3
        )
        assert off.info.signal_dbm is None and r.emu.lines[0].rebooting
        back = await r.present(0, registered=True)
        assert back.info.iccid == off.info.iccid
        # Back from a new source port, and commands follow it there.
        assert r.emu.lines[0].local_port != before
        await r.driver.set_radio(back.info, False)
        assert not r.emu.lines[0].enabled


async def test_wrong_password_refused_logged_once_never_stored(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with rig(
            tmp_path,
            lines=2,
            keepalive_s=0.05,
            retransmit_s=0.05,
            faults={1: {"wrong_password": True}},
        ) as r:
            bad = r.emu.lines[1]
            await r.present(0)
            await r.emu.wait_for(lambda: bad.count >= 4)
            refused = bad.deliver("+7900", "not for us")
            # A RECEIVE with a wrong password gets the error acknowledgement (A.4).
            await r.emu.wait_for(lambda: [s.recvid for s in bad.refused] == [refused])
            assert bad.keepalive_acks == 0
            # Barrier: a later SMS on the good line arrives; nothing came from the bad one.
            r.emu.lines[0].deliver("+7900", "for us")
            part = await r.events.next(SmsPart)
            assert part.text == "for us" and part.port == r.port(0)
            seen = r.events.seen
            assert not [
                e for e in seen if isinstance(e, (SimPresent, SmsPart)) and "goip02" in str(e)
            ]
            # One streak of refusals: one stat, one log line.
            stats = [e for e in seen if isinstance(e, DeviceStat) and e.name == "auth_refused"]
            assert [e.port for e in stats] == [r.port(1)]
    refusals = [e for e in logs if e["event"] == "goip line refused: wrong password"]
    assert len(refusals) == 1 and refusals[0]["port"] == "goip1/goip02"
    assert refusals[0]["peer"].startswith("127.0.0.1:")
    assert "secret" not in str(logs)


async def test_receive_acked_only_after_ack(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=2, retransmit_s=0.05, max_retransmits=-1) as r:
        await r.present(1)
        line = r.emu.lines[1]
        recvid = line.deliver("+79001234567", "Code 4711; valid: 5 min")
        first = await r.events.next(SmsPart)
        assert first.iccid == line.iccid and first.port == r.port(1)
        assert first.text == "Code 4711; valid: 5 min" and first.sender == "+79001234567"
        assert first.encoding is Encoding.TEXT and first.concat is None and first.sent_at is None
        # Not acked: the line keeps retransmitting and each copy is the same message.
        again = [await r.events.next(SmsPart) for _ in range(3)]
        assert {p.raw for p in again} == {first.raw}
        assert line.pending and recvid in line.pending and line.pending[recvid].sends >= 4
        await r.driver.ack(first.ack_token)
        await r.emu.wait_for(lambda: [s.recvid for s in line.delivered] == [recvid])
        # A different SMS with the same text is a different message.
        line.deliver("+79001234567", "Code 4711; valid: 5 min")
        other = await r.events.next(SmsPart, lambda p: p.raw != first.raw)
        assert other.text == first.text


async def test_packet_loss_recovered_by_retransmission(tmp_path: Path) -> None:
    async with rig(
        tmp_path,
        lines=2,
        keepalive_s=0.1,
        retransmit_s=0.05,
        max_retransmits=-1,
        seed=11,
    ) as r:
        await r.present(0)
        await r.present(1)
        r.emu.set_faults(None, loss=0.3)
        texts = {f"message {i}" for i in range(12)}
        for i, text in enumerate(sorted(texts)):
            r.emu.lines[i % 2].deliver("+7900", text)
        seen: dict[bytes, str] = {}
        done = asyncio.create_task(
            r.emu.wait_for(
                lambda: sum(len(line.delivered) for line in r.emu.lines) == 12, timeout=10
            )
        )
        while not done.done():
            with contextlib.suppress(TimeoutError):
                part = await r.events.next(SmsPart, timeout=0.2)
                seen[part.raw] = part.text
                await r.driver.ack(part.ack_token)  # as the core does after its commit
        await done
        assert set(seen.values()) == texts and len(seen) == 12
        assert sum(line.lost for line in r.emu.lines) > 0


async def test_enable_disable_through_module_control(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=2, keepalive_s=0.1) as r:
        info = (await r.present(0)).info
        line = r.emu.lines[0]
        await r.driver.set_radio(info, False)
        assert not line.enabled and line.commands == ["module_ctl_i"]
        off = await r.present(0, radio_on=False)
        assert not off.info.registered
        assert line.deliver("+7900", "while disabled") is None  # held by the network
        await r.driver.set_radio(off.info, True)
        assert line.enabled
        part = await r.events.next(SmsPart)
        assert part.text == "while disabled"
        await r.present(0, radio_on=True, registered=True)


async def test_forwarding_refused(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=1) as r:
        info = (await r.present(0)).info
        with pytest.raises(CommandError, match="call forwarding is not supported"):
            await r.driver.set_forwarding(info, "+79001112233")
        assert r.emu.lines[0].commands == []


async def test_command_timeout_and_refusal(tmp_path: Path) -> None:
    async with rig(
        tmp_path, lines=1, driver_kw={"command_timeout_s": 0.2, "command_tries": 2}
    ) as r:
        info = (await r.present(0)).info
        r.emu.set_faults(0, no_answer=True)
        with pytest.raises(CommandError, match="no answer to module_ctl_i after 2 tries"):
            await r.driver.set_radio(info, False)
        r.emu.set_faults(0, no_answer=False, wrong_password=True)
        with pytest.raises(CommandError, match="refused module_ctl_i: password error"):
            await r.driver.set_radio(info, False)
        assert r.emu.lines[0].enabled


async def test_ussd(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=1) as r:
        info = (await r.present(0)).info
        reply = await r.driver.ussd(info, "*100#")
        assert reply.startswith("Balance: ") and reply.endswith("RUB; tariff Smart")
        await r.emu.wait_for(lambda: r.emu.lines[0].commands == ["USSD", "USSDEXIT"])
        with pytest.raises(CommandError, match="not a USSD code"):
            await r.driver.ussd(info, "*100#; rm")
        await r.driver.set_radio(info, False)
        with pytest.raises(CommandError, match="module disabled"):
            await r.driver.ussd(info, "*100#")


async def test_line_without_iccid_is_not_listed(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=2, keepalive_s=0.05, faults={1: {"no_iccid": True}}) as r:
        stat = await r.events.ever(DeviceStat, lambda e: e.name == "line_without_iccid")
        assert stat.port == r.port(1)
        await r.emu.wait_for(lambda: r.emu.lines[1].keepalive_acks >= 3)
        r.emu.lines[0].deliver("+7900", "barrier")
        await r.events.next(SmsPart)
        assert not [
            e for e in r.events.seen if isinstance(e, SimPresent) and e.info.port == r.port(1)
        ]
        # The SIM shows up once the keepalive carries its ICCID.
        r.emu.set_faults(1, no_iccid=False)
        await r.present(1)


async def test_garbage_flood_never_stalls(tmp_path: Path) -> None:
    # The flood may overflow the socket's buffer and cost the SMS its first copy: the
    # retransmission (0.2 s here, 3 s on a GoIP) brings it.
    async with rig(tmp_path, lines=1, retransmit_s=0.2, max_retransmits=-1) as r:
        await r.present(0)
        assert r.driver.bound is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            junk = [
                b"\xff\xfe" * 10,
                b"req:x;id:goip01;pass:secret;",
                b"RECEIVE:1;id:nobody;password:x;srcnum:1;msg:hi",
                b"RECEIVE:1;id:goip01;password:secret;srcnum:1",  # no msg
                b"module_ctl_i 99 ok",  # a reply to nothing of ours
                b"x" * 60000,
                b"",
                b";;;:::",
            ]
            for i in range(3000):
                sock.sendto(junk[i % len(junk)], r.driver.bound)
                if i % 200 == 0:
                    await asyncio.sleep(0)
        finally:
            sock.close()
        r.emu.lines[0].deliver("+7900", "still here")
        part = await r.events.next(SmsPart)
        assert part.text == "still here"
        stat = await r.events.ever(DeviceStat, lambda e: e.name == "datagrams_dropped")
        assert stat.value > 0


async def test_sim_swap_and_remembered_iccid_after_restart(tmp_path: Path) -> None:
    state = DriverState()
    async with rig(tmp_path, lines=1, state=state) as r:
        first = (await r.present(0)).info
        assert r.driver.bound is not None
        listen = f"127.0.0.1:{r.driver.bound[1]}"
        # A new SIM in the line: the old one is reported gone, then the new one present.
        line = r.emu.lines[0]
        line.iccid = "8970199999999999990"
        line.count = 0
        line.close()
        await line.open()
        gone = await r.events.next(SimGone)
        assert gone.iccid == first.iccid
        assert (await r.present(0)).info.iccid == line.iccid
        emu_settings = r.emu.settings
    # A restarted driver on the same port gets an SMS before the line's next keepalive
    # (30 s away): attributed from the ICCID remembered in the driver state.
    ctx = DriverContext(device="goip1", state_dir=tmp_path, state=state)
    driver = GoipDriver(config(1).model_copy(update={"listen": listen}), ctx)
    await driver.connect()
    events = Pump(driver)
    emu = GoipEmulator(Settings(server=emu_settings.server), 1)
    try:
        await emu.start()
        await events.next(SimPresent)  # the emulator's first keepalive at start
        await driver.close()
        await events.aclose()
        driver = GoipDriver(config(1).model_copy(update={"listen": listen}), ctx)
        await driver.connect()
        events = Pump(driver)
        emu.lines[0].deliver("+7900", "before any keepalive")
        part = await events.next(SmsPart)
        assert part.iccid == emu.lines[0].iccid
    finally:
        emu.close()
        await events.aclose()
        await driver.close()


def test_agent_config_accepts_the_example_section(tmp_path: Path) -> None:
    """The commented example in config.example.toml, uncommented, is a valid agent config."""
    example = (Path(__file__).parents[2] / "config.example.toml").read_text()
    start = example.index('# name = "goip1"')
    block = example[start : example.index("\n\n", start)]
    device = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    toml = f'[upstream]\napi_key = "k"\n[agent]\nstate_dir = "{tmp_path}"\n[[devices]]\n{device}\n'
    (tmp_path / "c.toml").write_text(toml)
    from agent.config import load_config

    cfg = load_config(tmp_path / "c.toml")
    [dev] = cfg.devices
    assert isinstance(dev.config, GoipConfig) and dev.driver_cls is GoipDriver
    assert [line.id for line in dev.config.lines] == ["goip1-1", "goip1-2"]
    assert "secret" not in repr(dev.config)


async def test_duplicated_datagrams_are_one_message_and_keep_the_period(tmp_path: Path) -> None:
    async with rig(
        tmp_path, lines=1, keepalive_s=0.2, faults={0: {"duplicate": True}}, max_retransmits=0
    ) as r:
        await r.present(0)
        line = r.emu.lines[0]
        line.deliver("+7900", "once")
        a = await r.events.next(SmsPart)
        b = await r.events.next(SmsPart)
        assert a.raw == b.raw
        # Duplicated keepalives (same $count) must not shrink the observed period: the line
        # stays online across many periods.
        await r.emu.wait_for(lambda: line.count >= 6)
        assert r.driver._lines["goip01"].period() >= 0.19
        assert not [e for e in r.events.seen if isinstance(e, SimPresent) and not e.info.registered]


async def test_device_down_when_every_line_is_silent(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=2, keepalive_s=0.1) as r:
        await r.present(0)
        await r.present(1)
        await r.emu.wait_for(lambda: all(line.keepalive_acks >= 2 for line in r.emu.lines))
        for line in r.emu.lines:
            line.reboot(1.0)
        down = await r.events.next(DeviceDown, timeout=3)
        assert "no keepalive from any line" in down.reason
        up = await r.events.next(DeviceUp, timeout=3)
        assert "is back" in up.detail


async def test_sixty_four_lines_in_one_emulator(tmp_path: Path) -> None:
    async with rig(tmp_path, lines=64) as r:
        ports = set()
        while len(ports) < 64:
            ports.add((await r.events.next(SimPresent)).info.port)
        assert ports == {r.port(i) for i in range(64)}
        r.emu.lines[63].deliver("+7900", "to the last line")
        part = await r.events.next(SmsPart)
        assert part.port == "goip1/goip64" and part.iccid == r.emu.lines[63].iccid


async def test_reused_recvid_with_new_content_reaches_the_core(tmp_path: Path) -> None:
    # A GoIP whose recvid counter restarts at boot reuses an id already acked: the new SMS
    # must still be emitted (only identical bytes are a retransmission).
    async with rig(tmp_path, lines=1, retransmit_s=0.05, max_retransmits=-1) as r:
        await r.present(0)
        line = r.emu.lines[0]
        recvid = line.deliver("+7900", "first text")
        first = await r.events.next(SmsPart)
        await r.driver.ack(first.ack_token)
        await r.emu.wait_for(lambda: [s.recvid for s in line.delivered] == [recvid])
        line.recvids -= 1  # the counter restarted: the next SMS gets the same recvid
        assert line.deliver("+7900", "second text") == recvid
        second = await r.events.next(SmsPart, lambda p: p.text == "second text")
        assert second.raw != first.raw


def test_line_password_not_in_repr() -> None:
    line = Line(id="goip01", password="s3cret-pw", port="goip1/goip01")
    assert "s3cret-pw" not in repr(line) and "goip01" in repr(line)
