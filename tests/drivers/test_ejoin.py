"""The ejoin driver against the emulated box over real loopback HTTP (no mocks), plus the pure
parts (wire parsing, the inbox cursor, rotation order) on their own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers import resolve
from drivers.base import (
    CommandError,
    DeviceDown,
    DeviceUp,
    DriverContext,
    DriverError,
    DriverState,
    Event,
    SimGone,
    SimInfo,
    SimKind,
    SimPresent,
    SmsPart,
)
from drivers.ejoin import probe
from drivers.ejoin.config import EjoinConfig
from drivers.ejoin.driver import EjoinDriver
from drivers.ejoin.inbox import AckToken, Inbox, is_full_part, raw_of, sent_at
from drivers.ejoin.rotation import Candidate, Rotation
from drivers.ejoin.wire import (
    SmsPage,
    SmsRow,
    WireError,
    check_reply,
    leading_int,
    parse_port,
    parse_sms_page,
    parse_status,
)
from tests.gateways.ejoin.model import Box
from tests.gateways.ejoin.server import EjoinEmulator

# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pump:
    """The driver's events in a queue, so tests wait with timeouts without closing the
    generator."""

    def __init__(self, driver: EjoinDriver) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.seen: list[Event] = []
        self._task = asyncio.create_task(self._run(driver.events()))

    async def _run(self, gen: AsyncIterator[Event]) -> None:
        async for ev in gen:
            self.seen.append(ev)
            await self.queue.put(ev)

    async def next(
        self, kind: type, pred: Callable[[Any], bool] = lambda _e: True, timeout: float = 5.0
    ) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.queue.get()
                if isinstance(ev, kind) and pred(ev):
                    return ev

    async def parts(self, n: int, timeout: float = 5.0) -> list[SmsPart]:
        return [await self.next(SmsPart, timeout=timeout) for _ in range(n)]

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Rig:
    emu: EjoinEmulator
    box: Box
    driver: EjoinDriver
    pump: Pump
    state: DriverState

    def sim(self, port: int, slot: int) -> SimInfo:
        iccid = self.box.port_table[port].slots[slot].sim.iccid  # type: ignore[union-attr]
        return self.driver._inv.sims[iccid]

    def iccid(self, port: int, slot: int) -> str:
        return self.box.port_table[port].slots[slot].sim.iccid  # type: ignore[union-attr]


def make_driver(url: str, tmp: Path, state: DriverState, **cfg: Any) -> EjoinDriver:
    config = EjoinConfig(
        name="gw1",
        driver="ejoin",
        url=url,
        username="root",
        password="admin",
        **{"poll_s": 0.1, "status_s": 0.3, "timeout_s": 2.0} | cfg,
    )
    return EjoinDriver(config, DriverContext(device="gw1", state_dir=tmp, state=state))


@contextlib.asynccontextmanager
async def rig(
    tmp: Path, box: Box, state: DriverState | None = None, push: bool = False, **cfg: Any
) -> AsyncIterator[Rig]:
    state = state or DriverState()
    push_port = free_port() if push else None
    push_url = f"http://127.0.0.1:{push_port}/any/path?x=1" if push else None
    async with EjoinEmulator(box, push_url=push_url) as emu:
        if push_port is not None:
            cfg["push_listen"] = f"127.0.0.1:{push_port}"
        driver = make_driver(emu.url, tmp, state, **cfg)
        await driver.connect()
        pump = Pump(driver)
        try:
            yield Rig(emu, box, driver, pump, state)
        finally:
            await driver.close()
            await pump.aclose()


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def registered(r: Rig, port: int = 1) -> None:
    await until(lambda: r.box.receiving(port, r.box.port_table[port].active))


# --------------------------------------------------------------------------- pure parts


def test_registry_and_config() -> None:
    assert resolve("ejoin") is EjoinDriver
    with pytest.raises(ValueError, match="exactly one"):
        EjoinConfig(name="g", driver="ejoin", url="http://h")
    with pytest.raises(ValueError, match="credentials"):
        EjoinConfig(name="g", driver="ejoin", url="http://u:p@h", password="x")
    with pytest.raises(ValueError, match="HOST:PORT"):
        EjoinConfig(name="g", driver="ejoin", url="http://h", password="x", push_listen="9111")


def test_wire_ports_states_and_hostile_status() -> None:
    assert parse_port("1.01") == (1, 1) and parse_port("32.04") == (32, 4)
    assert parse_port("1A") == (1, 1) and parse_port("2b") == (2, 2)
    assert parse_port("3") == (3, 1) and parse_port(3) == (3, 1)
    assert parse_port("x") is None and parse_port(None) is None and parse_port("0.01") is None
    assert leading_int("3 Registered") == 3 and leading_int(3) == 3 and leading_int("x") is None
    doc = {
        "max-slot": "2",
        "mac": "00-30-F1-00-B7-D5",
        "status": [
            {
                "port": "1.01",
                "st": "3 Registered",
                "iccid": "8970101",
                "active": 1,
                "opr": "25001 MTS",
                "sig": 20,
                "sn": "+79161234567",
                "bal": "12.50",
            },
            {
                "port": "1.02",
                "st": 12,
                "iccid": "8970102",
                "active": 0,
                "slot_active": 0,
                "opr": "0 ",
                "sn": "79160000000",
                "bal": "nan",
            },
            {"port": "5.01", "st": 0, "imei": "8620"},
            "garbage",
            {"port": None},
            {"port": "2A", "st": [], "iccid": {"x": 1}},
        ],
    }
    st = parse_status(doc)
    assert st.max_slots == 2 and st.mac == "00-30-f1-00-b7-d5" and st.skipped == 2
    a, b, empty, weird = st.slots
    assert (a.registered, a.mcc_mnc, a.operator, a.signal_dbm, a.number, a.balance) == (
        True,
        "25001",
        "MTS",
        -73,
        "+79161234567",
        12.5,
    )
    assert b.locked and not b.registered and b.number is None and b.operator is None
    assert b.balance is None and empty.iccid is None and weird.iccid is None
    assert parse_status({"max-slots": 4, "status": []}).max_slots == 4
    with pytest.raises(ValueError):
        parse_status("<html>")


def test_full_part_lengths() -> None:
    assert is_full_part("a" * 153) and is_full_part("a" * 152)
    assert not is_full_part("a" * 154) and not is_full_part("a" * 100)
    assert is_full_part("ж" * 67) and not is_full_part("ж" * 60)
    assert is_full_part("€" * 76 + "a")  # 153 septets


async def test_inbox_cursor_only_over_contiguous_acks() -> None:
    state = DriverState()
    inbox = Inbox(state, "gw1", "mac", join_s=30)
    await inbox.load("s1")
    rows: list[SmsRow | None] = [
        SmsRow(False, 1, 1, 100 + i, "+7900", "", f"text {i}") for i in range(3)
    ]
    inbox.take(SmsPage("s1", 4, rows), 1)
    parts = inbox.parts(lambda p, s: "8970")
    assert [p.text for p in parts] == ["text 0", "text 1", "text 2"]
    await inbox.acked(parts[2].ack_token)  # type: ignore[arg-type]
    assert await state.get("cursor:mac") == "s1 1"
    await inbox.acked(parts[0].ack_token)  # type: ignore[arg-type]
    assert await state.get("cursor:mac") == "s1 2"
    await inbox.acked(AckToken("old-boot", (2,)))  # another boot's token: ignored
    assert inbox.cursor == 2
    await inbox.acked(parts[1].ack_token)  # type: ignore[arg-type]
    assert await state.get("cursor:mac") == "s1 4"
    assert raw_of("i", "s", 1, "t") != raw_of("i", "s", 2, "t")


async def test_rotation_order_is_fair_and_survives_restart() -> None:
    clock = [1000.0]
    mono = [0.0]
    state = DriverState()
    rot = Rotation(state, 10, clock=lambda: clock[0], monotonic=lambda: mono[0])
    await rot.load()
    sims = ["a", "b", "c"]
    selected = "a"
    visited = []
    for _ in range(5):
        cands = [Candidate(i + 1, s, s == selected, False) for i, s in enumerate(sims)]
        rot.observe(1, selected)
        assert rot.target(1, cands) is None  # dwell not over
        clock[0] += 11
        mono[0] += 11
        target = rot.target(1, cands)
        assert target is not None
        selected = target.iccid
        visited.append(selected)
        rot.observe(1, selected)
        await rot.save()
    assert visited == ["b", "c", "a", "b", "c"]
    again = Rotation(state, 10, clock=lambda: clock[0], monotonic=lambda: mono[0])
    await again.load()
    cands = [Candidate(i + 1, s, s == "c", False) for i, s in enumerate(sims)]
    again.observe(1, "c")
    mono[0] += 11
    assert again.target(1, cands).iccid == "a"  # type: ignore[union-attr]
    await again.pin("b")
    assert again.target(1, cands).iccid == "b"  # type: ignore[union-attr]
    pinned = [Candidate(i + 1, s, s == "b", False) for i, s in enumerate(sims)]
    mono[0] += 100
    assert again.target(1, pinned) is None
    locked = [Candidate(1, "a", True, True), Candidate(2, "b", False, False)]
    await again.unpin("b")
    assert again.target(2, locked).iccid == "b"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- inventory


@pytest.mark.parametrize(
    ("key", "st", "style"),
    [("max-slot", "int", "dot"), ("max-slots", "text", "letter")],
)
async def test_inventory_shapes(tmp_path: Path, key: Any, st: Any, style: Any) -> None:
    box = Box(
        ports=3,
        slots=2,
        esim_ports=1,
        esim_profiles=2,
        max_slot_key=key,
        st_style=st,
        port_style=style,
        register_s=0.05,
    )
    async with rig(tmp_path, box) as r:
        await r.pump.next(DeviceUp)  # after the first inventory
        first = [e for e in r.pump.seen if isinstance(e, SimPresent)]
        assert len(first) == 6
        infos = {e.info.iccid: e.info for e in first}
        port1 = [i for i in infos.values() if i.port == "gw1/1"]
        assert sorted(i.slot for i in port1) == ["1.01", "1.02"]  # type: ignore[type-var]
        assert [i.selected for i in sorted(port1, key=lambda i: i.slot or "")] == [True, False]
        esims = [i for i in infos.values() if i.port == "gw1/3"]
        assert all(i.kind is SimKind.ESIM and i.eid for i in esims)
        assert all(i.kind is SimKind.SIM and i.eid is None for i in port1)
        sim = infos[r.iccid(1, 1)]
        assert sim.number == r.box.port_table[1].slots[1].sim.number  # type: ignore[union-attr]
        assert sim.number_source == "gateway" and sim.balance is not None
        # Registration completes: the selected SIM becomes registered, with operator data.
        await until(lambda: r.driver._inv.sims[sim.iccid].registered)
        info = r.driver._inv.sims[sim.iccid]
        assert info.mcc_mnc == "25001" and info.operator == "MTS" and info.signal_dbm
        # SMS rows name the port the same way ("1.01" or "1A"): the part finds its SIM.
        box.send_sms(sim.iccid, "+7900", f"row port style {style}")
        part = await r.pump.next(SmsPart)
        assert (part.port, part.iccid) == ("gw1/1", sim.iccid)
        # A slot emptied: SimGone for exactly that SIM.
        gone = r.iccid(2, 2)
        r.box.remove_sim(2, 2)
        ev = await r.pump.next(SimGone)
        assert (ev.port, ev.iccid) == ("gw1/2", gone)


# --------------------------------------------------------------------------- receiving


async def test_receive_by_poll_ack_and_cursor_resume(tmp_path: Path) -> None:
    box = Box(ports=2, slots=1, register_s=0)
    state = DriverState()
    async with rig(tmp_path, box, state) as r:
        await registered(r)
        for i in range(3):
            box.send_sms(r.iccid(1 + i % 2, 1), f"+7900{i}", f"code {i}", at=1000 + i)
        parts = await r.pump.parts(3)
        assert [p.text for p in parts] == ["code 0", "code 1", "code 2"]
        p0 = parts[0]
        assert (p0.port, p0.iccid, p0.sender) == ("gw1/1", r.iccid(1, 1), "+79000")
        assert p0.sent_at is not None and p0.sent_at.timestamp() == 1000
        await r.driver.ack(parts[0].ack_token)
        await r.driver.ack(parts[2].ack_token)  # part 1 not acked: the cursor stops before it
        assert (await state.get(f"cursor:{box.mac}")) == f"{box.ssrc} 2"
        raws = {p.raw for p in parts}
    # A new driver with the same state resumes at the cursor: re-reads 1 and 2, never 0.
    box2_new = "after restart"
    async with rig(tmp_path, box, state) as r2:
        box.send_sms(r2.iccid(1, 1), "+79009", box2_new, at=2000)
        again = await r2.pump.parts(3)
        assert [p.text for p in again] == ["code 1", "code 2", box2_new]
        assert {p.raw for p in again[:2]} <= raws
        for p in again:
            await r2.driver.ack(p.ack_token)
        assert (await state.get(f"cursor:{box.mac}")) == f"{box.ssrc} 5"


async def test_push_is_a_hint_that_triggers_a_poll(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box, push=True, poll_s=60) as r:
        await registered(r)
        # The first poll (at connect) is done when the cursor is stored.
        await until(lambda: box.hits.get("goip_get_sms.html", 0) >= 1)
        polls = box.hits["goip_get_sms.html"]
        box.faults.push_dup = True
        box.send_sms(r.iccid(1, 1), "+7900", "via push")
        part = await r.pump.next(SmsPart, timeout=5)
        assert part.text == "via push"
        assert box.hits["goip_get_sms.html"] > polls  # polled long before poll_s = 60
        await until(lambda: r.emu.pushes_sent == 2)
        assert r.driver._push is not None
        await until(lambda: r.driver._push.pushes == 2)  # type: ignore[union-attr]
        box.send_sms(r.iccid(1, 1), "+7900", "second")
        nxt = await r.pump.next(SmsPart)
        assert nxt.text == "second"  # the duplicate push produced no duplicate part


async def test_reboot_renumbers_rows_without_doubles(tmp_path: Path) -> None:
    box = Box(ports=2, slots=1, register_s=0)
    async with rig(tmp_path, box) as r:
        await registered(r, 1)
        await registered(r, 2)
        box.send_sms(r.iccid(2, 1), "+7901", "first on port 2", at=1000)
        box.send_sms(r.iccid(1, 1), "+7902", "then port 1", at=1001)
        box.store_report(1, 1, "+7999")
        before = await r.pump.parts(2)
        await r.driver.ack(before[0].ack_token)  # the second is left unacked
        old_ssrc = box.ssrc
        await r.emu.reboot(0.4)
        down = await r.pump.next(DeviceDown, timeout=10)
        assert "unreachable" in down.reason or "no answer" in down.reason
        await r.pump.next(DeviceUp, timeout=10)
        box.send_sms(r.iccid(1, 1), "+7903", "after reboot", at=3000)
        after: list[SmsPart] = []
        while not after or after[-1].text != "after reboot":
            after.append(await r.pump.next(SmsPart, timeout=10))
        old_raws = {p.raw for p in before}
        assert {p.raw for p in after[:-1]} <= old_raws  # re-reads are the same messages
        assert after[-1].raw not in old_raws
        assert len(after) <= 3
        for p in after:
            await r.driver.ack(p.ack_token)
        await r.driver.ack(before[1].ack_token)  # a token of the old boot: ignored
        assert box.ssrc != old_ssrc
        assert (await r.state.get(f"cursor:{box.mac}")) == f"{box.ssrc} 4"


async def test_identical_texts_at_different_times_are_two_messages(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box) as r:
        await registered(r)
        box.send_sms(r.iccid(1, 1), "+7900", "Your code 1234", at=5000)
        box.send_sms(r.iccid(1, 1), "+7900", "Your code 1234", at=5060)
        a, b = await r.pump.parts(2)
        assert a.text == b.text and a.raw != b.raw


async def test_long_sms_rows_joined_and_reports_ignored(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box, join_s=30) as r:
        await registered(r)
        long_gsm = "".join(f"{i:04d} " for i in range(80))  # 400 chars: 3 rows
        long_ucs2 = "Код подтверждения " * 10  # 180 UCS2 units: 3 rows
        box.store_report(1, 1, "+7999")
        box.send_sms(r.iccid(1, 1), "+7900", long_gsm, at=7000)
        box.send_sms(r.iccid(1, 1), "+7901", long_ucs2, at=7001)
        box.send_sms(r.iccid(1, 1), "+7901", "short one", at=7002)
        assert len(box.rows) == 8
        parts = await r.pump.parts(3)
        assert [p.text for p in parts] == [long_gsm, long_ucs2, "short one"]
        assert all(p.concat is None for p in parts)
        assert parts[0].ack_token.ids == (2, 3, 4)  # type: ignore[attr-defined]
        for p in parts:
            await r.driver.ack(p.ack_token)
        # Past the report (row 1) and every joined row.
        assert (await r.state.get(f"cursor:{box.mac}")) == f"{box.ssrc} 9"


async def test_full_length_last_row_waits_for_join_window(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box, join_s=0.5) as r:
        await registered(r)
        exact = "x" * 153  # looks like a part that may be followed
        box.send_sms(r.iccid(1, 1), "+7900", exact, at=8000, split=False)
        started = time.monotonic()
        part = await r.pump.next(SmsPart)
        assert part.text == exact and time.monotonic() - started >= 0.4


# --------------------------------------------------------------------------- commands


async def test_lock_unlock_switch_observed_in_the_box(tmp_path: Path) -> None:
    box = Box(ports=1, slots=3, register_s=0.05)
    async with rig(tmp_path, box) as r:
        await registered(r)
        await r.driver.set_radio(r.sim(1, 1), False)
        assert box.port_table[1].slots[1].locked
        ev = await r.pump.next(
            SimPresent, lambda e: e.info.iccid == r.iccid(1, 1) and not e.info.radio_on
        )
        assert not ev.info.registered
        # The core's enable of a standby SIM: select (switch), then set_radio (unlock).
        await r.driver.select(r.sim(1, 2))
        await r.driver.set_radio(r.sim(1, 2), True)
        # Enabling a locked standby SIM unlocks it and never switches (re-apply semantics).
        await r.driver.set_radio(r.sim(1, 1), True)
        assert [(e["op"], e["ports"]) for e in box.log] == [
            ("lock", "1A"),
            ("switch", "1.02"),
            ("unlock", "1B"),
            ("unlock", "1A"),
        ]
        assert box.port_table[1].active == 2 and not box.port_table[1].slots[1].locked
        ev = await r.pump.next(
            SimPresent, lambda e: e.info.iccid == r.iccid(1, 2) and e.info.registered
        )
        assert ev.info.selected and ev.info.slot == "1.02"
        await r.driver.select(r.sim(1, 3))
        assert box.port_table[1].active == 3 and box.log[-1]["ports"] == "1.03"
        # Offline box: the action is refused with the reason, nothing hangs.
        box.faults.html = True
        await r.pump.next(DeviceDown)
        with pytest.raises(CommandError, match="HTML"):
            await r.driver.set_radio(r.sim(1, 1), True)


async def test_forwarding_and_ussd_through_at(tmp_path: Path) -> None:
    box = Box(ports=1, slots=2, register_s=0)
    async with rig(tmp_path, box) as r:
        await registered(r)
        await r.pump.next(SimPresent, lambda e: e.info.registered)
        await r.driver.set_forwarding(r.sim(1, 1), "+79001112233")
        assert box.port_table[1].slots[1].sim.forward_to == "+79001112233"  # type: ignore[union-attr]
        ev = await r.pump.next(SimPresent, lambda e: e.info.forward_to == "+79001112233")
        assert ev.info.iccid == r.iccid(1, 1)
        box.faults.at_error = "+CME ERROR: 30"
        with pytest.raises(CommandError, match=r"refused by the gateway: \+CME ERROR: 30"):
            await r.driver.set_forwarding(r.sim(1, 1), None)
        await r.driver.set_forwarding(r.sim(1, 1), None)
        assert box.port_table[1].slots[1].sim.forward_to is None  # type: ignore[union-attr]
        with pytest.raises(CommandError, match="standby"):
            await r.driver.set_forwarding(r.sim(1, 2), "+79001112233")
        reply = await r.driver.ussd(r.sim(1, 1), "*100#")
        assert reply.startswith("Balance: ")
        with pytest.raises(CommandError, match=r"\+CUSD: 4"):
            await r.driver.ussd(r.sim(1, 1), "*999#")
        box.command("lock", "1A")
        with pytest.raises(CommandError, match="User Locked"):
            await r.driver.ussd(r.sim(1, 1), "*100#")


async def test_esim_download_and_delete(tmp_path: Path) -> None:
    box = Box(ports=2, slots=4, esim_ports=1, esim_profiles=1, esim_step_s=0.1, register_s=0)
    async with rig(tmp_path, box) as r:
        iccid = await r.driver.esim_download("gw1/2", "LPA:1$smdp.example$NEW", None)
        assert box.port_table[2].slots[2].sim.iccid == iccid  # type: ignore[union-attr]
        assert [e["op"] for e in box.log] == ["esim_write"]
        ev = await r.pump.next(SimPresent, lambda e: e.info.iccid == iccid)
        assert ev.info.kind is SimKind.ESIM and ev.info.eid == box.port_table[2].eid
        assert not ev.info.selected and ev.info.slot == "2.02"
        # The box's reason when the operation ends in error.
        box.faults.esim_fail = "8.1.1 Matching ID refused"
        with pytest.raises(CommandError, match="8.1.1 Matching ID refused"):
            await r.driver.esim_download("gw1/2", "LPA:1$smdp.example$BAD", "1234")
        # Busy: another operation runs on the port.
        box.esim_start("write", 2, 3, "LPA:1$smdp.example$OTHER")
        with pytest.raises(CommandError, match="busy"):
            await r.driver.esim_download("gw1/2", "LPA:1$smdp.example$X", None)
        with pytest.raises(CommandError, match="no eUICC"):
            await r.driver.esim_download("gw1/1", "LPA:1$x$y", None)
        await until(lambda: box.port_table[2].op is None)
        # Delete: refused for the selected profile and a rented one, done for a standby one.
        with pytest.raises(CommandError, match="selected"):
            await r.driver.esim_delete(r.sim(2, 1))
        await r.driver._refresh()
        await r.driver.select(r.sim(2, 3))
        await r.driver.select(r.sim(2, 1))  # pins 2.03 and 2.01 (select pins)
        with pytest.raises(CommandError, match="rented"):
            await r.driver.esim_delete(r.sim(2, 3))
        await r.driver.set_radio(r.sim(2, 3), False)  # unpinned by disable
        await r.driver.esim_delete(r.sim(2, 2))
        assert box.port_table[2].slots[2].sim is None
        gone = await r.pump.next(SimGone, lambda e: e.iccid == iccid)
        assert gone.port == "gw1/2"
        with pytest.raises(CommandError, match="plastic"):
            await r.driver.esim_delete(r.sim(1, 1))


# --------------------------------------------------------------------------- rotation


async def test_rotation_delivers_held_sms_and_pins_rented_sims(tmp_path: Path) -> None:
    box = Box(ports=1, slots=3, register_s=0.05)
    state = DriverState()
    async with rig(tmp_path, box, state, rotate_s=0.4) as r:
        standby = r.iccid(1, 3)
        assert box.send_sms(standby, "+7900", "held for slot 3")[0] == "held"
        part = await r.pump.next(SmsPart, timeout=10)
        assert part.iccid == standby and part.text == "held for slot 3"
        await r.driver.ack(part.ack_token)
        switches = [e["ports"] for e in box.log if e["op"] == "switch"]
        assert switches[:2] == ["1.02", "1.03"]  # fair order: least recently selected next
        # A rented SIM is pinned: never rotated away, and switched back to when the box
        # selected another slot behind our back (a reboot, the web UI).
        await r.driver.select(r.sim(1, 2))
        await until(lambda: box.port_table[1].active == 2)
        box.command("switch", "1.03")
        await until(lambda: box.port_table[1].active == 2)
        pinned_at = len(box.log)
        box.send_sms(r.iccid(1, 1), "+7900", "for slot 1")
        polls = box.hits["goip_get_status.html"]
        await until(lambda: box.hits["goip_get_status.html"] >= polls + 8, timeout=10)
        assert all(e["op"] != "switch" for e in box.log[pinned_at:])
        assert box.held.get(r.iccid(1, 1))  # still held: slot 1 is never selected now
        saved = await state.get("rotation")
        assert saved is not None and r.iccid(1, 2) in saved
        # Disable unpins: rotation resumes and slot 1 gets its SMS.
        await r.driver.set_radio(r.sim(1, 2), False)
        part = await r.pump.next(SmsPart, lambda p: p.text == "for slot 1", timeout=10)
        assert part.iccid == r.iccid(1, 1)


# --------------------------------------------------------------------------- faults


async def test_connect_failures_have_clear_reasons(tmp_path: Path) -> None:
    state = DriverState()
    dead = make_driver(f"http://127.0.0.1:{free_port()}", tmp_path, state)
    with pytest.raises(DriverError, match="unreachable"):
        await dead.connect()
    await dead.close()
    box = Box(ports=1, slots=1)
    async with EjoinEmulator(box) as emu:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"auth": "json"}, r"wrong credentials \(Invalid User\)"),
            ({"auth": "401"}, r"wrong credentials \(HTTP 401\)"),
            ({"html": True}, "answered HTML"),
            ({"delay_s": 1.0}, "no answer in time"),
        ]
        for fault, reason in cases:
            for k, v in fault.items():
                setattr(box.faults, k, v)
            d = make_driver(emu.url, tmp_path, state, timeout_s=0.3)
            with pytest.raises(DriverError, match=reason) as info:
                await d.connect()
            assert "admin" not in str(info.value)
            await d.close()
            box.faults = type(box.faults)()
        wrong = EjoinConfig(name="gw1", driver="ejoin", url=emu.url, password="secret-pw")
        d = EjoinDriver(wrong, DriverContext(device="gw1", state_dir=tmp_path))
        with pytest.raises(DriverError, match="Invalid User") as info:
            await d.connect()
        assert "secret-pw" not in str(info.value)
        await d.close()


async def test_faults_while_running_go_down_and_recover(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box, timeout_s=0.3) as r:
        await registered(r)
        await r.pump.next(DeviceUp)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"delay_s": 1.0}, "no answer in time"),
            ({"auth": "json"}, "wrong credentials"),
            ({"html": True}, "answered HTML"),
        ]
        for fault, reason in cases:
            for k, v in fault.items():
                setattr(box.faults, k, v)
            down = await r.pump.next(DeviceDown, timeout=10)
            assert reason in down.reason and "admin" not in down.reason
            box.send_sms(r.iccid(1, 1), "+7900", f"during {reason}")
            box.faults = type(box.faults)()
            await r.pump.next(DeviceUp, timeout=10)
            # Recovery re-announces the SIMs and delivers what arrived meanwhile.
            await r.pump.next(SimPresent)
            part = await r.pump.next(SmsPart, timeout=10)
            assert part.text == f"during {reason}"
            await r.driver.ack(part.ack_token)


async def test_probe(tmp_path: Path) -> None:
    box = Box(ports=4, slots=2, esim_ports=1, model="SK-4-2", firmware="fw-1")
    async with EjoinEmulator(box) as emu:
        info = await probe(emu.url, "root", "admin")
        assert info["model"] == "SK-4-2" and info["firmware"] == "fw-1"
        assert (info["ports"], info["slots"], info["esim_ports"]) == (4, 2, [4])
        assert info["mac"] == box.mac and info["sims"] == 7
        with pytest.raises(DriverError, match="Invalid User"):
            await probe(emu.url, "root", "nope")


def test_example_config_documents_every_key() -> None:
    """The commented ``driver = "ejoin"`` block of config.example.toml is a valid table and
    names every key of EjoinConfig."""
    import tomllib

    text = (Path(__file__).parents[2] / "config.example.toml").read_text()
    start = text.index('# name = "gw1"')
    end = text.index("\n\n", start)
    lines = [ln[2:] for ln in text[start:end].splitlines() if not ln.startswith("# #")]
    table = tomllib.loads("\n".join(lines))
    assert EjoinConfig(**table).driver == "ejoin"
    assert set(table) | {"password_file"} == set(EjoinConfig.model_fields)


def test_signal_jitter_is_not_reannounced() -> None:
    from drivers.ejoin.inventory import Inventory
    from drivers.ejoin.wire import parse_status

    def doc(sig: int) -> dict[str, Any]:
        row = {"port": "1.01", "st": 3, "iccid": "8970101", "active": 1, "sig": sig}
        return {"max-slot": 1, "status": [row]}

    inv = Inventory("gw1", lambda _i: None)
    assert len(inv.update(parse_status(doc(20)), {})) == 1
    assert inv.update(parse_status(doc(21)), {}) == []  # 2 dB: jitter
    assert inv.sims["8970101"].signal_dbm == -73
    (ev,) = inv.update(parse_status(doc(24)), {})  # 8 dB: announced
    assert isinstance(ev, SimPresent) and ev.info.signal_dbm == -65


async def test_push_listener_bounds_bodies_and_any_path() -> None:
    import httpx

    from drivers.ejoin.push import MAX_PUSH_BODY, PushListener

    woken: list[int] = []
    listener = PushListener("127.0.0.1:0", lambda: woken.append(1))
    await listener.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as http:
            assert (await http.post("/", content=b"{}")).status_code == 200
            assert (await http.post("/s/tok/gw/1?port=1A", json={})).text == "OK"
            big = await http.post("/x", content=b"0" * (MAX_PUSH_BODY + 10))
            assert big.status_code == 413
        assert len(woken) == 3  # even the oversized push wakes the poller
    finally:
        await listener.stop()


def test_credentials_redacted_from_httpx_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from drivers.ejoin.client import EjoinClient

    EjoinClient("http://127.0.0.1:1", "root", "s3cret", 1.0)  # installs the filter
    with caplog.at_level(logging.DEBUG, logger="httpx"):
        logging.getLogger("httpx").info(
            'HTTP Request: %s %s "%s"',
            "GET",
            "http://127.0.0.1/goip_get_sms.html?username=root&password=s3cret&sms_id=1",
            "200",
        )
    assert "s3cret" not in caplog.text and "password=***" in caplog.text


async def test_inbox_huge_next_sms_is_ignored_not_walked() -> None:
    # A garbage next_sms (1e6 here; 1e9 hung the loop) must not cost O(gap) work or memory,
    # nor move the cursor by the jump.
    state = DriverState()
    inbox = Inbox(state, "gw1", "mac", join_s=30)
    await inbox.load("s1")
    row = SmsRow(False, 1, 1, 100, "+7900", "", "hello")
    inbox.take(SmsPage("s1", 10**6, [row]), 1)
    assert len(inbox._finished) == 0
    assert inbox.read_next == 2
    [part] = inbox.parts(lambda p, s: "8970")
    await inbox.acked(part.ack_token)  # type: ignore[arg-type]
    assert inbox.cursor == 2 and await state.get("cursor:mac") == "s1 2"


async def test_inbox_numbering_behind_cursor_restarts_at_one() -> None:
    # Same ssrc, but the box's numbering is behind the stored cursor (web inbox cleared): the
    # rows now numbered 1..3 must be read, not skipped until the box reaches the old cursor.
    state = DriverState()
    await state.set("cursor:mac", "s1 50")
    inbox = Inbox(state, "gw1", "mac", join_s=30)
    await inbox.load("s1")
    rows: list[SmsRow | None] = [
        SmsRow(False, 1, 1, 100 + i, "+7900", "", f"text {i}") for i in range(3)
    ]
    assert inbox.take(SmsPage("s1", 4, []), 50) is True
    assert inbox.read_next == 1
    stale = AckToken("s1", (1, 2, 3))  # a part of the old numbering
    assert inbox.take(SmsPage("s1", 4, rows), inbox.read_next) is False
    parts = inbox.parts(lambda p, s: "8970")
    assert [p.text for p in parts] == ["text 0", "text 1", "text 2"]
    await inbox.acked(stale)
    assert inbox.cursor == 1
    for p in parts:
        await inbox.acked(p.ack_token)  # type: ignore[arg-type]
    assert await state.get("cursor:mac") == "s1 4"


def test_wire_hostile_numbers_never_raise_raw() -> None:
    # A 5000-digit st (int() raises ValueError), "bal": 10**400 (float() raises OverflowError).
    doc = {"status": [{"port": "1.01", "st": "9" * 5000, "bal": 10**400, "iccid": "8970"}]}
    status = parse_status(doc)
    assert status.slots[0].st is None and status.slots[0].balance is None
    assert leading_int("9" * 19) is None and leading_int(10**30) is None
    assert leading_int("123456789012345678 x") == 123456789012345678
    # Whatever else a parser cannot read is a WireError, never a raw exception.
    page = parse_sms_page({"code": 0, "ssrc": "s", "data": [[0, "1.01", 1, 10**5000, "", ""]]})
    assert page.rows == [None]  # a malformed row keeps its position

    class Evil(dict[str, Any]):
        def get(self, *_a: Any) -> Any:
            raise TypeError("unforeseen")

    with pytest.raises(WireError, match="malformed answer"):
        parse_status(Evil())
    assert sent_at(1466506477000) is None and sent_at(1466506477) is not None


async def test_millisecond_epoch_delivered_without_time(tmp_path: Path) -> None:
    # An epoch in milliseconds (year 48441) killed the SMS loop silently before.
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box) as r:
        await registered(r)
        box.send_sms(r.iccid(1, 1), "+7900", "ms epoch", at=1466506477000)
        part = await r.pump.next(SmsPart)
        assert part.text == "ms epoch" and part.sent_at is None
        assert raw_of(r.iccid(1, 1), "+7900", 1466506477000, "ms epoch") == part.raw
        await r.driver.ack(part.ack_token)
        box.send_sms(r.iccid(1, 1), "+7900", "next", at=2000)
        assert (await r.pump.next(SmsPart)).text == "next"


async def test_loop_dying_unexpectedly_ends_the_stream(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1, register_s=0)
    async with rig(tmp_path, box) as r:
        await registered(r)
        inbox = r.driver._inbox
        assert inbox is not None

        def boom(_iccid_of: Any) -> list[SmsPart]:
            raise RuntimeError("unforeseen")

        inbox.parts = boom  # type: ignore[method-assign]
        r.driver._wake.set()
        down = await r.pump.next(DeviceDown)
        assert "sms loop failed: RuntimeError: unforeseen" in down.reason
        await until(lambda: r.pump._task.done())  # the event stream ended (core reconnects)


async def test_connect_unforeseen_error_is_a_driver_error(tmp_path: Path) -> None:
    box = Box(ports=1, slots=1)
    async with EjoinEmulator(box) as emu:
        d = make_driver(emu.url, tmp_path, DriverState())

        async def broken() -> None:
            raise RuntimeError("rotation state unreadable")

        d._rotation.load = broken  # type: ignore[method-assign]
        with pytest.raises(DriverError, match="RuntimeError: rotation state unreadable"):
            await d.connect()
        await d.close()


async def test_box_reasons_scrubbed_and_bounded(tmp_path: Path) -> None:
    # A reason the box supplies reaches CommandError scrubbed of the password (the rig's is
    # "admin") and cut to 200 characters.
    box = Box(ports=2, slots=4, esim_ports=1, esim_profiles=1, esim_step_s=0.1, register_s=0)
    async with rig(tmp_path, box) as r:
        box.faults.esim_fail = "echo password=admin&x admin " + "y" * 5000
        with pytest.raises(CommandError) as info:
            await r.driver.esim_download("gw1/2", "LPA:1$smdp.example$BAD", None)
        msg = str(info.value)
        assert "admin" not in msg and "password=***" in msg and "y" * 150 in msg
        assert len(msg) < 300
    with pytest.raises(WireError) as refused:
        check_reply({"code": 5, "reason": "password=pw1 " + "z" * 1000}, "lock 1A")
    assert "pw1" not in str(refused.value) and len(str(refused.value)) < 260
