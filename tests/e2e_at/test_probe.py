"""``vsim-agent probe PORT`` against emulated modems (issue item 8), as an operator runs it."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

import pytest

from tests.e2e.conftest import agent_env
from tests.e2e_at.conftest import VSIM_AGENT, Farm, Line
from tests.support.pdu_encoder import encode_deliver

pytestmark = pytest.mark.timeout(60)

LABELS = (
    "Port",
    "Manufacturer",
    "Model",
    "Firmware",
    "IMEI",
    "Quirks",
    "SIM",
    "ICCID",
    "IMSI",
    "Operator",
    "MCC-MNC",
    "Signal (dBm)",
    "Registered",
    "Radio (CFUN)",
    "SMS stored",
    "SMS capacity",
    "Own number",
    "Number from",
)


def probe(port: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VSIM_AGENT), "probe", port],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=30,
        check=False,
    )


def table(stdout: str) -> dict[str, str]:
    """The two-column table from its ``Port`` row on: label and value, split on 2+ spaces."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Port "))
    rows = {}
    for line in lines[start:]:
        label, _, value = line.partition("  ")
        rows[label.strip()] = value.strip()
    return rows


@pytest.mark.parametrize(
    ("profile", "maker", "model", "quirks"),
    [
        ("ec25", "Quectel", "EC25", "quectel"),
        ("sim800", "SIMCOM_Ltd", "SIMCOM_SIM800L", "simcom-2g"),
        ("e3372", "huawei", "E3372", "huawei"),
    ],
)
def test_probe_prints_the_modem_and_its_sim(
    farm: Farm, profile: str, maker: str, model: str, quirks: str
) -> None:
    """Over ser2net-style TCP, ``probe`` prints maker, model, IMEI, ICCID (normalised even
    where the E3372 prints it nibble-swapped), IMSI, operator, signal in dBm, storage use and
    capacity, and the own number, and exits 0.  It is read-only: the two SMS on the SIM stay
    there unread (no CMGR, CMGL or CMGD was sent)."""
    line: Line = farm.add(profile, "tcp")
    sim = line.modem.sim
    assert sim is not None
    for k in range(2):
        line.modem.deliver_pdu(
            encode_deliver("+79001234567", f"unread {k}", sent_at=datetime.now(UTC))
        )
    before = line.modem.stored()

    done = probe(line.url)
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert tuple(rows) == LABELS, rows  # no Error row
    assert rows["Port"] == line.url
    assert rows["Manufacturer"] == maker
    assert rows["Model"] == model
    assert rows["Quirks"] == quirks
    assert rows["IMEI"] == line.modem.imei
    assert rows["SIM"] == "ready"
    assert rows["ICCID"] == sim.iccid
    assert rows["IMSI"] == sim.imsi
    assert rows["Operator"] == sim.operator
    assert rows["MCC-MNC"] == sim.mcc_mnc
    assert rows["Signal (dBm)"] == str(-113 + 2 * line.modem.signal)
    assert rows["Registered"] == "yes"
    assert rows["Radio (CFUN)"] == "1"
    assert rows["SMS stored"] == "2"
    assert rows["SMS capacity"] == str(sim.capacity)
    assert rows["Own number"] == sim.number
    assert rows["Number from"] == "cnum"

    assert line.modem.stored() == before
    assert all(stat == 0 for stat, _pdu in before.values())  # still unread
    sent = line.modem.commands()
    assert not [c for c in sent if c.startswith(("AT+CMGR", "AT+CMGL", "AT+CMGD"))], sent


def test_probe_over_a_pty(farm: Farm) -> None:
    """The same through a pty (by its by-id style symlink), as for a USB modem."""
    line = farm.add("sim800", "pty")
    done = probe(line.url)
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert rows["ICCID"] == line.iccid
    assert rows["Model"] == "SIMCOM_SIM800L"


def test_probe_prints_only_the_table(farm: Farm) -> None:
    """stdout is the table and nothing else (so it can be read by people and scripts); the
    AT wire trace is debug output and stays off unless asked for.  (Regression: structlog's
    default configuration printed every ``at.tx``/``at.rx`` debug event to stdout; fixed in
    e60bcd4.)"""
    line = farm.add("ec25", "tcp")
    done = probe(line.url)
    assert done.returncode == 0
    first = [row.split("  ")[0] for row in done.stdout.splitlines()]
    assert first == list(LABELS), done.stdout[:500]


def test_probe_of_a_dead_port_says_so_and_fails() -> None:
    """Nothing listens on the port: the table ends with an ``Error`` row naming the port,
    and the exit status is 1 (agent/cli.py: "1 runtime failure"; regression: it was 0 before
    e60bcd4)."""
    done = probe("socket://127.0.0.1:1")
    rows = table(done.stdout)
    assert "127.0.0.1:1" in rows.get("Error", "")
    assert done.returncode == 1
