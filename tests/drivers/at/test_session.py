"""Session operations against emulated modems: SIM gate, ICCID fallbacks, optional commands."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.at import commands as c
from drivers.at.framing import AtProtocol
from drivers.at.session import Modem, SimState
from drivers.at.transport import close_transport, open_port
from tests.emulator import EmulatedModem, ModemServer, SimCard

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def connect(server: ModemServer, fast: None) -> AsyncIterator:  # type: ignore[type-arg]
    opened = []

    async def make(modem: EmulatedModem) -> Modem:
        transport, protocol = await open_port(
            server.start_pty(modem), 115200, lambda: AtProtocol("t/0", lambda _u: None)
        )
        opened.append(transport)
        m = Modem(c.AtChannel(protocol))
        await m.init_link()
        await m.identify()
        return m

    yield make
    for transport in opened:
        await close_transport(transport)


async def test_sim_busy_is_retried_a_bounded_number_of_times(connect) -> None:  # type: ignore[no-untyped-def]
    modem = EmulatedModem("ec25", sim_busy_tries=2)
    modem.insert_sim(SimCard.generate())  # SIM (re)initialising: CME 14 twice
    m = await connect(modem)
    assert await m.sim_state() == SimState.READY
    assert modem.commands().count("AT+CPIN?") == 3


async def test_sim_busy_forever_gives_absent_not_a_hang(connect) -> None:  # type: ignore[no-untyped-def]
    modem = EmulatedModem("ec25")
    m = await connect(modem)
    modem.cme_error("AT+CPIN", 14, times=100)
    assert await m.sim_state() == SimState.ABSENT
    assert modem.commands().count("AT+CPIN?") == 3  # 1 + len(SIM_BUSY_DELAYS_S) in tests


async def test_no_sim_and_locked_sim(connect) -> None:  # type: ignore[no-untyped-def]
    m = await connect(EmulatedModem("sim800", sim=False))
    assert await m.sim_state() == SimState.ABSENT
    m2 = await connect(EmulatedModem("ec25", sim=SimCard.generate(pin="1234")))
    assert await m2.sim_state() == SimState.LOCKED


async def test_iccid_falls_back_to_crsm(connect) -> None:  # type: ignore[no-untyped-def]
    modem = EmulatedModem("ec25")
    m = await connect(modem)
    modem.error("AT+QCCID")
    modem.error("AT+CCID")
    sim = modem.sim
    assert sim is not None
    assert await m.read_iccid() == sim.iccid
    assert "AT+CRSM=176,12258,0,0,10" in modem.commands()


async def test_cereg_is_dropped_when_the_modem_refuses_it(connect) -> None:  # type: ignore[no-untyped-def]
    modem = EmulatedModem("ec25")
    m = await connect(modem)
    modem.error("AT+CEREG")
    net = await m.network()
    assert net.registered  # CREG alone says so
    await m.network()
    assert modem.commands().count("AT+CEREG?") == 1


async def test_lost_registration(connect) -> None:  # type: ignore[no-untyped-def]
    modem = EmulatedModem("ec25")
    m = await connect(modem)
    assert (await m.network()).registered
    modem.set_network(3)  # denied
    net = await m.network()
    assert not net.registered and net.stat == 3 and net.mcc_mnc is None
    modem.set_network(5)  # roaming counts, once the modem has registered
    assert modem.wait_for(lambda: modem.registered, 2)
    assert (await m.network()).stat == 5
