"""``probe`` against emulated modems, and its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.at.probe import format_probe, probe
from tests.emulator import EmulatedModem, ModemServer, SimCard

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("profile", ["ec25", "sim800", "e3372"])
async def test_probe_reports_modem_and_sim(server: ModemServer, fast: None, profile: str) -> None:
    sim = SimCard.generate(number="+79161234567")
    modem = EmulatedModem(profile, sim=sim)
    result = await probe(server.start_pty(modem))
    assert result["error"] is None
    assert result["iccid"] == sim.iccid
    assert result["imsi"] == sim.imsi
    assert result["imei"] == modem.imei
    assert result["maker"] == modem.profile.manufacturer
    assert result["operator"] == sim.operator
    assert result["mcc_mnc"] == sim.mcc_mnc
    assert result["signal_dbm"] == -113 + 2 * modem.signal
    assert result["registered"] == "yes"
    assert result["radio"] == 1
    assert (result["storage_used"], result["storage_total"]) == (0, sim.capacity)
    assert (result["number"], result["number_source"]) == ("+79161234567", "cnum")
    # probe reads nothing that marks or deletes SMS
    assert not any(c.startswith(("AT+CMGR", "AT+CMGL", "AT+CMGD")) for c in modem.commands())
    table = format_probe(result)
    assert f"ICCID         {sim.iccid}" in table
    assert "Error" not in table


async def test_probe_over_tcp_without_sim(server: ModemServer, fast: None) -> None:
    modem = EmulatedModem("ec25", sim=False)
    result = await probe(f"socket://127.0.0.1:{server.start_tcp(modem)}")
    assert result["sim"] == "absent"
    assert result["iccid"] is None
    assert result["model"] == "EC25"


async def test_probe_of_a_missing_port_says_why(tmp_path: Path) -> None:
    result = await probe(str(tmp_path / "ttyUSB9"))
    assert "ttyUSB9" in str(result["error"])
    assert "Error" in format_probe(result)


async def test_probe_of_a_mute_modem(server: ModemServer, fast: None) -> None:
    modem = EmulatedModem("ec25")
    modem.mute(True)
    result = await probe(server.start_pty(modem))
    assert "did not answer" in str(result["error"])


def test_format_probe_aligns_and_shows_unknowns() -> None:
    text = format_probe({"port": "/dev/ttyUSB2", "maker": "Quectel", "signal_dbm": -71})
    lines = text.splitlines()
    assert lines[0] == "Port          /dev/ttyUSB2"
    assert "Signal (dBm)  -71" in lines
    assert "IMSI          -" in lines
