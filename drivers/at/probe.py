"""``vsim-agent probe PORT``: identify an AT modem and its SIM, read-only, in a few seconds.

Owns: one pass over the same session operations the driver uses (so what probe shows is what
the driver will see), collected into a flat dict, and its text table.  Must not: change modem
state beyond what every session init does (echo off, numeric errors, COPS format), delete or
read-mark anything (no CMGR/CMGL: reading marks SMS as read), or send USSD.
"""

from __future__ import annotations

import contextlib

from drivers.at import commands as c
from drivers.at.framing import AtCommandError, AtError, AtProtocol, AtTimeout, PortClosed
from drivers.at.session import Modem, SimState
from drivers.at.transport import close_transport, open_port

ProbeResult = dict[str, str | int | None]

#: Rows of the table, in order, with their labels.
FIELDS: tuple[tuple[str, str], ...] = (
    ("port", "Port"),
    ("maker", "Manufacturer"),
    ("model", "Model"),
    ("firmware", "Firmware"),
    ("imei", "IMEI"),
    ("quirks", "Quirks"),
    ("sim", "SIM"),
    ("iccid", "ICCID"),
    ("imsi", "IMSI"),
    ("operator", "Operator"),
    ("mcc_mnc", "MCC-MNC"),
    ("signal_dbm", "Signal (dBm)"),
    ("registered", "Registered"),
    ("radio", "Radio (CFUN)"),
    ("storage_used", "SMS stored"),
    ("storage_total", "SMS capacity"),
    ("number", "Own number"),
    ("number_source", "Number from"),
    ("error", "Error"),
)


async def probe(port: str, baudrate: int = 115200) -> dict[str, str | int | None]:
    """Everything the driver would learn about the modem on ``port``; ``error`` says what failed.

    Never raises for modem trouble: a port that does not open or a modem that does not answer
    gives a result with ``error`` set and what was learned before.
    """
    result: ProbeResult = {key: None for key, _ in FIELDS}
    result["port"] = port
    try:
        transport, protocol = await open_port(
            port, baudrate, lambda: AtProtocol("probe", lambda _urc: None)
        )
    except PortClosed as exc:
        result["error"] = str(exc)
        return result
    try:
        await _collect(Modem(c.AtChannel(protocol)), result)
    except AtTimeout as exc:
        result["error"] = f"modem did not answer: {exc}"
    except (AtError, c.ParseError) as exc:
        result["error"] = str(exc)
    finally:
        await close_transport(transport)
    return result


async def _collect(modem: Modem, result: ProbeResult) -> None:
    await modem.init_link()
    identity = await modem.identify()
    result.update(
        maker=identity.maker,
        model=identity.model,
        firmware=identity.firmware,
        imei=identity.imei,
        quirks=modem.quirks.family,
    )
    result["radio"] = await modem.cfun()
    state = await modem.sim_state()
    result["sim"] = state.lower()
    if state != SimState.READY:
        return
    with contextlib.suppress(AtCommandError, c.ParseError):
        result["iccid"] = await modem.read_iccid()
    result["imsi"] = await modem.read_imsi()
    net = await modem.network()
    result.update(
        signal_dbm=net.signal_dbm,
        registered="yes" if net.registered else f"no (stat {net.stat})",
        mcc_mnc=net.mcc_mnc,
    )
    if net.registered:
        result["operator"] = await modem.operator_name()
    with contextlib.suppress(AtCommandError, c.ParseError):
        storage = await modem.run(c.CPMS_QUERY)
        result.update(storage_used=storage.used, storage_total=storage.total)
    number = await modem.cnum()
    source = "cnum" if number else None
    if number is None:
        number = await modem.phonebook_number()
        source = "phonebook" if number else None
    result.update(number=number, number_source=source)


def format_probe(result: dict[str, str | int | None]) -> str:
    """An aligned two-column table; unknown values show as "-"."""
    labels = dict(FIELDS)
    rows = [(labels.get(key, key), result.get(key)) for key, _ in FIELDS]
    rows += [(key, value) for key, value in result.items() if key not in labels]
    rows = [(label, value) for label, value in rows if not (label == "Error" and value is None)]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {'-' if v is None else v}" for label, v in rows)
