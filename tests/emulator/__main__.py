"""Run emulated modems standalone, for manual use with a terminal or a locally run agent.

    python -m tests.emulator --tcp 127.0.0.1:7000 --count 4
    python -m tests.emulator --pty --link-dir /tmp/by-id --count 2 --profile sim800 --sms-every 5

Prints one line per modem (profile, ICCID, where it listens), then serves until SIGINT or
SIGTERM.  Only this module touches signals.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from .modem import EmulatedModem
from .profiles import PROFILES
from .transport import ModemServer

# research/at-modems.md §4 vector #2, used when the PDU encoder is not importable.
SAMPLE_PDU = (
    "07915892000000F0040B915892214365F700007040213252242331493A283D0795C3F33C88FE06C9CB6132885E"
    "C6D341EDF27C1E3E97E7207B3A0C0A5241E377BB1D7693E72E"
)


def _sample_pdu(n: int) -> str:
    try:
        from tests.support.pdu_encoder import encode_deliver
    except ImportError:
        return SAMPLE_PDU
    return encode_deliver("+79001112233", f"Test message {n}", sent_at=datetime.now(UTC))


def _parse_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:7000")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__)
    parser.add_argument(
        "--tcp",
        type=_parse_host_port,
        metavar="HOST:PORT",
        help="serve over TCP; modem i listens on PORT+i (PORT 0: any free port)",
    )
    parser.add_argument("--pty", action="store_true", help="serve on pseudo-terminals")
    parser.add_argument("--link-dir", type=Path, help="keep DIR/modem-<i> symlinks to the ptys")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument(
        "--profile", default="ec25", help=f"comma-separated, cycled: {', '.join(PROFILES)}"
    )
    parser.add_argument("--sms-every", type=float, metavar="S", help="deliver a test SMS every S s")
    parser.add_argument("--noise", type=float, metavar="S", help="vendor noise URCs every S s")
    args = parser.parse_args(argv)
    if args.tcp is None and not args.pty:
        parser.error("give --tcp HOST:PORT and/or --pty")
    profiles = itertools.cycle(p.strip() for p in args.profile.split(","))
    if args.link_dir is not None:
        args.link_dir.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    modems: list[EmulatedModem] = []
    with ModemServer(name="emulator-main") as server:
        for i in range(args.count):
            profile = next(profiles)
            if args.tcp is not None and args.pty:
                # One modem per line: a modem is served on exactly one port.
                kinds = ["tcp", "pty"]
            else:
                kinds = ["tcp"] if args.tcp is not None else ["pty"]
            for kind in kinds:
                modem = EmulatedModem(profile, noise_interval=args.noise)
                modems.append(modem)
                assert modem.sim is not None
                where: str
                if kind == "tcp":
                    host, base = args.tcp
                    port = server.start_tcp(modem, host, base + i if base else 0)
                    where = f"tcp {host}:{port}"
                else:
                    link = args.link_dir / f"modem-{i}" if args.link_dir is not None else None
                    where = f"pty {server.start_pty(modem, link=link)}"
                    if link is not None:
                        where += f" (link {link})"
                print(f"modem {i} {profile} iccid={modem.sim.iccid} {where}", flush=True)
        n = 0
        while not stop.wait(args.sms_every or 3600):
            if args.sms_every:
                modem = modems[n % len(modems)]
                index = modem.deliver_pdu(_sample_pdu(n))
                print(f"sms {n} -> {modem.name} index={index}", flush=True)
                n += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
