"""``python -m tests.gateways.ejoin``: one emulated box as a process (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from tests.gateways.ejoin.model import Box
from tests.gateways.ejoin.server import EjoinEmulator


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.gateways.ejoin", description=__doc__)
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 8090))
    p.add_argument("--control", type=_hostport, default=("127.0.0.1", 8091))
    p.add_argument("--ports", type=int, default=8)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--esim-ports", type=int, default=0)
    p.add_argument("--esim-profiles", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--push-url", default=None)
    p.add_argument("--username", default="root")
    p.add_argument("--password", default="admin")
    p.add_argument("--model", default="SK-32-4")
    p.add_argument("--firmware", default="608-520-840-841-100-0F0")
    p.add_argument("--max-slot-key", choices=["max-slot", "max-slots"], default="max-slot")
    p.add_argument("--st-style", choices=["int", "text"], default="int")
    p.add_argument("--port-style", choices=["dot", "letter"], default="dot")
    p.add_argument("--register-s", type=float, default=0.2)
    p.add_argument("--esim-step-s", type=float, default=0.2)
    return p.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    box = Box(
        seed=a.seed,
        ports=a.ports,
        slots=a.slots,
        esim_ports=a.esim_ports,
        esim_profiles=a.esim_profiles,
        username=a.username,
        password=a.password,
        model=a.model,
        firmware=a.firmware,
        max_slot_key=a.max_slot_key,
        st_style=a.st_style,
        port_style=a.port_style,
        register_s=a.register_s,
        esim_step_s=a.esim_step_s,
    )
    emu = EjoinEmulator(box, a.listen[0], a.listen[1], a.control[1], a.push_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emu:
        line = {"url": emu.url, "control": emu.control_url, "mac": box.mac, "ssrc": box.ssrc}
        print(json.dumps(line), flush=True)
        await stop.wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
