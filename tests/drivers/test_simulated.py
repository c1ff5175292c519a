"""The simulated driver and its network file: identities, holding, faults, acks, forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from drivers.base import DeviceDown, DriverContext, DriverError, SimPresent, SmsPart
from drivers.simulated import SimNetwork, SimulatedConfig, SimulatedDriver, _luhn, sim_identity


def test_identities_are_deterministic_valid_and_distinct() -> None:
    ids = [sim_identity("bank", i, "RU") for i in range(500)]
    assert ids == [sim_identity("bank", i, "RU") for i in range(500)]
    assert len({i[0] for i in ids}) == len({i[2] for i in ids}) == 500
    for iccid, imsi, number in ids[:20]:
        assert iccid.startswith("89") and iccid[-1] == _luhn(iccid[:-1])
        assert imsi.startswith("25001") and len(imsi) == 15
        assert number.startswith("+79") and len(number) == 12
    assert sim_identity("other", 0, "RU") != ids[0]


def driver(tmp_path: Path, sims: int = 3) -> SimulatedDriver:
    cfg = SimulatedConfig(name="bank", driver="simulated", sims=sims)
    return SimulatedDriver(cfg, DriverContext(device="bank", state_dir=tmp_path))


class Pump:
    """Reads a driver's events into a queue, so a test can wait with a timeout without
    cancelling (and so closing) the driver's async generator."""

    def __init__(self, d: SimulatedDriver) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self._gen = d.events()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for ev in self._gen:
            await self.queue.put(ev)

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def collect(pump: Pump, n: int, kind: type, timeout: float = 5.0) -> list:
    out: list = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            ev = await pump.queue.get()
            if isinstance(ev, kind):
                out.append(ev)
    return out


async def test_receive_ack_and_sweep_after_reconnect(tmp_path: Path) -> None:
    d = driver(tmp_path)
    await d.connect()
    events = Pump(d)
    present = await collect(events, 3, SimPresent)
    assert [p.info.port for p in present] == ["bank/0", "bank/1", "bank/2"]
    net = SimNetwork(tmp_path / "simnet.db")
    net.send(present[0].info.number or "", "hello 1234", sender="Svc")
    [part] = await collect(events, 1, SmsPart)
    assert part.text == "hello 1234" and part.iccid == present[0].info.iccid
    await events.aclose()
    await d.close()
    # Not acked: still "on the SIM", so a new connection reads it again, same raw bytes.
    d2 = driver(tmp_path)
    await d2.connect()
    events = Pump(d2)
    [again] = await collect(events, 1, SmsPart)
    assert again.raw == part.raw
    await d2.ack(again.ack_token)  # queued; deleted by the flusher moments later
    async with asyncio.timeout(5):
        while net.stored():
            await asyncio.sleep(0.01)
    await events.aclose()
    await d2.close()
    net.close()


async def test_radio_off_holds_sms_until_on(tmp_path: Path) -> None:
    d = driver(tmp_path, 1)
    await d.connect()
    events = Pump(d)
    [p] = await collect(events, 1, SimPresent)
    await d.set_radio(p.info, False)
    [off] = await collect(events, 1, SimPresent)
    assert off.info.radio_on is False and off.info.registered is False
    net = SimNetwork(tmp_path / "simnet.db")
    net.send(p.info.iccid, "held")
    with pytest.raises(TimeoutError):
        await collect(events, 1, SmsPart, timeout=0.5)
    await d.set_radio(p.info, True)
    [part] = await collect(events, 1, SmsPart)
    assert part.text == "held"
    await d.set_forwarding(p.info, "+79007777777")
    assert net.sim(p.info.iccid)["forward_to"] == "+79007777777"
    await events.aclose()
    await d.close()
    net.close()


async def test_fault_down_fails_connect_and_ends_events(tmp_path: Path) -> None:
    net = SimNetwork(tmp_path / "simnet.db")
    d = driver(tmp_path)
    await d.connect()
    events = Pump(d)
    await collect(events, 3, SimPresent)
    net.set_fault("bank", down=True)
    [down] = await collect(events, 1, DeviceDown)
    assert "down" in down.reason
    await events.aclose()
    await d.close()
    with pytest.raises(DriverError):
        await driver(tmp_path).connect()
    net.set_fault("bank", down=False)
    net.close()


def test_bad_order_is_refused(tmp_path: Path) -> None:
    net = SimNetwork(tmp_path / "n.db")
    net.provision("bank", 1, "RU")
    with pytest.raises(ValueError, match="permutation"):
        net.send(net.sims()[0]["number"], "x" * 400, order=[1, 1, 2])
    with pytest.raises(KeyError):
        net.send("+10000000000", "x")
    net.close()


async def test_fault_slow_connect_delays_the_sims(tmp_path: Path) -> None:
    net = SimNetwork(tmp_path / "simnet.db")
    net.set_fault("bank", slow_connect_s=0.5)
    d = driver(tmp_path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await d.connect()
    assert loop.time() - started >= 0.5
    net.set_fault("bank", slow_connect_s=0)
    started = loop.time()
    await d.close()
    await d.connect()
    assert loop.time() - started < 0.5
    await d.close()
    net.close()


def test_network_file_without_the_slow_connect_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE faults (device TEXT PRIMARY KEY, down INTEGER NOT NULL DEFAULT 0,"
        " slow_ack_s REAL NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO faults (device, down) VALUES ('bank', 1)")
    db.commit()
    db.close()
    net = SimNetwork(path)
    assert net.faults("bank") == (True, 0.0)
    assert net.connect_delay("bank") == 0.0
    net.set_fault("bank", slow_connect_s=2)
    assert net.connect_delay("bank") == 2.0
    net.close()
