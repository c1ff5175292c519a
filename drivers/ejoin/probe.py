"""``probe(url, username, password)``: identify an Ejoin / Skyline box (for ``vsim-agent probe``).

One status read and one eSIM read, nothing written.  Raises :class:`DriverError` with a clear
reason (unreachable, wrong credentials, HTML, ...) and never includes the password.
"""

from __future__ import annotations

from typing import Any

from drivers.base import DriverError
from drivers.ejoin.client import EjoinClient, GatewayError
from drivers.ejoin.wire import WireError, parse_esims, parse_status


async def probe(url: str, username: str, password: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Model, firmware, MAC, ports, slots per port, eSIM ports and SIMs present."""
    client = EjoinClient(url.rstrip("/"), username, password, timeout_s)
    try:
        status = parse_status(
            await client.get("goip_get_status.html", version="1.1", ports="all", all_slots=1)
        )
        try:
            esims = parse_esims(await client.get("goip_get_esims.html", ports="all"))
        except GatewayError as exc:
            if exc.auth:
                raise
            esims = {}  # firmware without the eSIM API
        except WireError:
            esims = {}
    except (GatewayError, WireError) as exc:
        raise DriverError(str(exc)) from None
    finally:
        await client.aclose()
    ports = status.max_ports or len({s.port for s in status.slots})
    return {
        "driver": "ejoin",
        "model": status.model,
        "firmware": status.firmware,
        "mac": status.mac,
        "ports": ports,
        "slots": status.max_slots,
        "esim_ports": sorted(esims),
        "eids": {str(p): e.eid for p, e in sorted(esims.items()) if e.eid},
        "sims": sum(1 for s in status.slots if s.iccid),
        "selected": sum(1 for s in status.slots if s.iccid and s.active),
        "registered": sum(1 for s in status.slots if s.iccid and s.registered),
    }
