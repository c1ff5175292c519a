"""Benchmark: one AT driver process holding N emulated modems on real ptys (default 512).

Measures time and CPU until every port reported its SIM, then the time to read and delete one
SMS per port through +CMTI -> CMGR -> ack -> CMGD.  The emulator runs in the same process (its
own thread), so the figures are an upper bound for the driver alone.

    .venv/bin/python tests/bench/at_ports.py [N]
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.at.driver import AtConfig, AtDriver
from drivers.base import DriverContext, SimPresent, SmsPart
from tests.drivers.at.emu import sms
from tests.emulator import EmulatedModem, ModemServer, raise_fd_limit


async def run(n: int) -> None:
    raise_fd_limit(65536)
    with ModemServer(name="bench-modems") as server, tempfile.TemporaryDirectory() as tmp:
        modems = [EmulatedModem(("ec25", "sim800", "e3372")[i % 3]) for i in range(n)]
        ports = tuple(server.start_pty(m) for m in modems)
        config = AtConfig(name="bench", driver="at", ports=ports)
        driver = AtDriver(config, DriverContext(device="bench", state_dir=Path(tmp)))
        present: set[str] = set()
        acked = 0

        async def consume() -> None:
            nonlocal acked
            async for event in driver.events():
                if isinstance(event, SimPresent):
                    present.add(event.info.port)
                elif isinstance(event, SmsPart):
                    await driver.ack(event.ack_token)
                    acked += 1

        t0, cpu0 = time.monotonic(), time.process_time()
        await driver.connect()
        reader = asyncio.create_task(consume(), name="bench:events")
        while len(present) < n:
            await asyncio.sleep(0.02)
        t1, cpu1 = time.monotonic(), time.process_time()
        for modem in modems:
            modem.deliver_pdu(sms("bench"))
        while acked < n or any(m.stored() for m in modems):
            await asyncio.sleep(0.02)
        t2, cpu2 = time.monotonic(), time.process_time()
        fds = len(os.listdir("/proc/self/fd"))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        await driver.close()
        await reader
        print(f"ports                      {n}")
        print(f"connect+init, all SIMs     {t1 - t0:.2f} s wall, {cpu1 - cpu0:.2f} s CPU")
        print(f"1 SMS per port, acked      {t2 - t1:.2f} s wall, {cpu2 - cpu1:.2f} s CPU")
        print(f"fds (driver + emulator)    {fds}")
        print(f"max RSS (driver + emul.)   {rss:.0f} MB")


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 512))
