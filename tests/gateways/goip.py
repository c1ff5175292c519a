"""GoIP gateway emulator: lines that speak the UDP "SMS server" protocol to a server.

Written from research/gateways.md section 2 and Appendix A (the vendor's "GOIP SMS Interface"),
independently of ``drivers/goip`` (it shares no code with the driver, so a misreading of the
protocol on one side shows up as a failure instead of cancelling out).

What one emulated line does (the GoIP is the UDP *client*, section 2.1):

* it has its own UDP socket (its own source port, as each GoIP channel has) connected to the
  server, and a deterministic SIM from ``seed``: ICCID, IMSI, IMEI and number (``+7 9xx``);
* every ``keepalive_s`` it sends the newer firmware's keepalive (section 2.2: ``req:$count;
  id;pass;num;signal;gsm_status;…;imei;imsi;iccid;pro;…;disable_status;…``), ``$count`` from 1
  after each boot; it notes ``reg:$count;status:200;`` answers;
* an SMS from the network is pushed ``RECEIVE:$recvid;id;password;srcnum;msg`` (odd line indexes
  write ``pass:`` as the vendor's own example does, A.4) and re-sent every ``retransmit_s``
  (vendor: 3 s) until ``RECEIVE $recvid OK`` (delivered) or ``RECEIVE $recvid ERROR …``
  (refused), at most ``max_retransmits`` times (vendor: 3; -1: until answered); after that the
  line gives up on it (``gave_up``), as the GoIP does;
* it answers commands sent to its port (A.5): ``module_ctl_i`` (1 enable / 2 disable ->
  ``module_ctl_i $sendid ok``), ``module_ctl`` (one digit per line of the box: 1 enable,
  0 disable, 2 unchanged), ``svr_reboot_module`` (ok, then a reboot), ``get_gsm_num``,
  ``get_gsm_state``, ``USSD`` (``*100#`` balance, ``*111#`` own number, anything else "unknown
  code"; ``USSDERROR`` while the module is disabled), ``USSDEXIT`` (no reply); a wrong password
  -> ``ERROR $sendid password error``; an unknown command -> ``ERROR $sendid unknown command``.

Network model: an SMS for a line whose module is disabled (or that is rebooting) is held by the
network and pushed when the module is enabled (booted) again; a disabled module reports
``gsm_status:LOGOUT;disable_status:1``.

Faults, per line (all deterministic; loss uses a ``random.Random`` seeded from ``seed`` and the
line index):

* ``loss`` (0..1): each datagram in either direction is lost with this probability;
* ``duplicate``: every datagram the line sends goes out twice;
* ``no_answer``: commands get no reply (timeouts); keepalives and SMS continue;
* ``wrong_password``: the line's configured password no longer matches the server's (it sends
  the wrong one and refuses the server's);
* ``no_iccid``: the oldest firmware's keepalive (no imei/imsi/iccid, A.2);
* ``reboot(silence_s)``: the line goes silent (sends nothing, answers nothing) for ``silence_s``,
  then comes back on a new source port with ``$count`` from 1 and a new recvid sequence.
  SMS still unacknowledged at the reboot are pushed again after it with their original recvid
  (assumption: the GoIP keeps a received SMS with its id; research section 11 leaves this open).

Standalone (the coordinator's end-to-end tests and benchmark)::

    python -m tests.gateways.goip --server 127.0.0.1:44444 --lines 64 --control 127.0.0.1:8791 \
        [--seed 1] [--id-prefix goip] [--password secret] [--keepalive 30] [--retransmit 3] \
        [--max-retransmits 3] [--loss 0.0] [--duplicate] [--reboot-s 5] [--bind 127.0.0.1]

Line ``i`` (0-based) has id ``<id-prefix><i+1:02d>`` (``goip01`` ...).  Once serving it prints one
JSON line to stdout, ``{"control": "http://HOST:PORT", "lines": [{"index", "id", "iccid",
"number", "port"}, ...]}`` (``--control HOST:0`` picks a free port), and runs until SIGINT or
SIGTERM.  The control API (HTTP, JSON bodies; ``line`` is an index or an id, omitted = all):

* ``GET  /lines`` -> every line's identity, state, counters and faults;
* ``POST /sms      {"line", "from", "text"}`` -> ``{"recvid": n | null, "held": bool}``;
* ``POST /enable   {"line", "enabled": bool}`` -> as if toggled in the GoIP's web UI;
* ``POST /reboot   {"line"?, "silence_s": 5}``;
* ``POST /faults   {"line"?, "loss"?, "duplicate"?, "no_answer"?, "wrong_password"?,
  "no_iccid"?}`` -> the line(s) after the change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.emulator.sim import luhn_digit

#: The vendor's example recvid (A.1); each boot of each line starts its own sequence above it.
RECVID_BASE = 1_270_197_307


def identity(seed: int, index: int) -> tuple[str, str, str, str]:
    """Deterministic (ICCID, IMSI, IMEI, number) of line ``index`` for ``seed``."""
    h = int(hashlib.sha256(f"goip:{seed}:{index}".encode()).hexdigest()[:15], 16)
    body = f"897010{h % 10**6:06d}{index:06d}"
    iccid = body + luhn_digit(body)
    imsi = f"25001{h % 10**4:04d}{index:06d}"
    imei_body = f"86{h % 10**6:06d}{index:06d}"
    imei = imei_body + luhn_digit(imei_body)
    number = f"+79{h % 100:02d}{index:07d}"
    return iccid, imsi, imei, number


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: bool = False
    no_answer: bool = False
    wrong_password: bool = False
    no_iccid: bool = False


@dataclass
class Sms:
    recvid: int
    srcnum: str
    text: str
    sends: int = 0  # how many times the RECEIVE went out (1 + retransmissions)


@dataclass
class Settings:
    server: tuple[str, int]
    seed: int = 1
    password: str = "secret"
    id_prefix: str = "goip"
    keepalive_s: float = 30.0
    retransmit_s: float = 3.0
    max_retransmits: int = 3
    bind: str = "127.0.0.1"
    reboot_s: float = 5.0  # silence after svr_reboot_module


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, line: EmulatedLine) -> None:
        self.line = line

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.line.received(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the server is down: UDP carries on regardless


@dataclass
class EmulatedLine:
    """One GoIP channel and its SIM."""

    index: int
    settings: Settings
    faults: Faults = field(default_factory=Faults)
    enabled: bool = True
    count: int = 0  # keepalives sent since boot
    boot: int = 0
    recvids: int = 0  # SMS pushed since boot
    pending: dict[int, Sms] = field(default_factory=dict)
    held: list[tuple[str, str]] = field(default_factory=list)
    delivered: list[Sms] = field(default_factory=list)
    refused: list[Sms] = field(default_factory=list)
    gave_up: list[Sms] = field(default_factory=list)
    keepalive_acks: int = 0
    commands: list[str] = field(default_factory=list)  # verbs answered, in order
    sent: int = 0
    lost: int = 0
    silent_until: float = 0.0
    transport: asyncio.DatagramTransport | None = None
    #: Called on every state change (the emulator wakes whoever waits for a condition).
    notify: Callable[[], None] = lambda: None
    #: Every line of the same GoIP (``module_ctl`` addresses them all at once, A.5).
    box: list[EmulatedLine] = field(default_factory=list, repr=False)
    _keepalive: asyncio.Task[None] | None = None
    _booting: asyncio.Task[None] | None = None
    _timers: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = f"{self.settings.id_prefix}{self.index + 1:02d}"
        self.iccid, self.imsi, self.imei, self.number = identity(self.settings.seed, self.index)
        self.rng = random.Random(self.settings.seed * 100_003 + self.index)

    # -- the wire --------------------------------------------------------------------------

    @property
    def password(self) -> str:
        return self.settings.password + ("-wrong" if self.faults.wrong_password else "")

    @property
    def rebooting(self) -> bool:
        return time.monotonic() < self.silent_until

    @property
    def local_port(self) -> int | None:
        if self.transport is None:
            return None
        return int(self.transport.get_extra_info("sockname")[1])

    def _send(self, text: str) -> None:
        if self.transport is None or self.rebooting:
            return
        for _ in range(2 if self.faults.duplicate else 1):
            self.sent += 1
            if self.faults.loss and self.rng.random() < self.faults.loss:
                self.lost += 1
                continue
            self.transport.sendto(text.encode())

    def _poke(self) -> None:
        self.notify()

    def keepalive_text(self) -> str:
        on = self.enabled
        signal_value = str(10 + int(self.iccid[-3:]) % 20) if on else "0"
        fields = [
            f"req:{self.count}",
            f"id:{self.id}",
            f"pass:{self.password}",
            f"num:{self.number}",
            f"signal:{signal_value}",
            f"gsm_status:{'LOGIN' if on else 'LOGOUT'}",
            "voip_status:LOGOUT",
            "voip_state:IDLE",
            "remain_time:-1",
        ]
        if not self.faults.no_iccid:
            fields += [f"imei:{self.imei}", f"imsi:{self.imsi}", f"iccid:{self.iccid}"]
        fields += [
            "pro:MTS",
            "idle:0",
            f"disable_status:{0 if on else 1}",
            "SMS_LOGIN:N",
            "SMB_LOGIN:",
            "CELLINFO:LAC:7E5,CELL ID:5E5B",
            "CGATT:Y",
        ]
        return ";".join(fields) + ";"

    def receive_text(self, sms: Sms) -> str:
        key = "pass" if self.index % 2 else "password"  # A.4: the vendor example's spelling
        return (
            f"RECEIVE:{sms.recvid};id:{self.id};{key}:{self.password};"
            f"srcnum:{sms.srcnum};msg:{sms.text}"
        )

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self),
            local_addr=(self.settings.bind, 0),
            remote_addr=self.settings.server,
        )
        self._keepalive = asyncio.create_task(self._keepalives())

    def close(self) -> None:
        for task in [self._keepalive, self._booting, *self._timers.values()]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._keepalive = self._booting = None
        self._timers.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def _keepalives(self) -> None:
        while True:
            self.count += 1
            self._send(self.keepalive_text())
            self._poke()
            await asyncio.sleep(self.settings.keepalive_s)

    def reboot(self, silence_s: float) -> None:
        """Silent for ``silence_s``, then back on a new port with new counters."""
        self.close()
        self.silent_until = time.monotonic() + silence_s
        self.boot += 1
        self.count = 0
        self.recvids = 0
        self._booting = asyncio.create_task(self._boot(silence_s))
        self._poke()

    async def _boot(self, silence_s: float) -> None:
        await asyncio.sleep(silence_s)
        self.silent_until = 0.0
        await self.open()
        self._booting = None
        for sms in list(self.pending.values()):
            self._push(sms)
        self._release_held()
        self._poke()

    # -- SMS -------------------------------------------------------------------------------

    def deliver(self, srcnum: str, text: str) -> int | None:
        """An SMS from the network: pushed now (its recvid), or held (None)."""
        if not self.enabled or self.rebooting or self.transport is None:
            self.held.append((srcnum, text))
            self._poke()
            return None
        self.recvids += 1
        recvid = RECVID_BASE + self.boot * 10_000_000 + self.recvids
        sms = Sms(recvid, srcnum, text)
        self.pending[recvid] = sms
        self._push(sms)
        return recvid

    def _push(self, sms: Sms) -> None:
        old = self._timers.pop(sms.recvid, None)
        if old is not None:
            old.cancel()
        sms.sends += 1
        self._send(self.receive_text(sms))
        self._timers[sms.recvid] = asyncio.create_task(self._retransmit(sms))
        self._poke()

    async def _retransmit(self, sms: Sms) -> None:
        limit, done = self.settings.max_retransmits, 0
        while True:
            await asyncio.sleep(self.settings.retransmit_s)
            if sms.recvid not in self.pending:
                return
            if 0 <= limit <= done:
                del self.pending[sms.recvid]
                self._timers.pop(sms.recvid, None)
                self.gave_up.append(sms)
                self._poke()
                return
            done += 1
            sms.sends += 1
            self._send(self.receive_text(sms))
            self._poke()

    def _release_held(self) -> None:
        held, self.held = self.held, []
        for srcnum, text in held:
            self.deliver(srcnum, text)

    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        if on:
            self._release_held()
        self._poke()

    # -- what the server sends -------------------------------------------------------------

    def received(self, data: bytes) -> None:
        if self.rebooting:
            return
        if self.faults.loss and self.rng.random() < self.faults.loss:
            self.lost += 1
            return
        text = data.decode("utf-8", "replace").strip()
        if text.startswith("reg:"):
            self.keepalive_acks += 1
            self._poke()
            return
        words = text.split(" ")
        if words[0] == "RECEIVE" and len(words) >= 3 and words[1].isdigit():
            self._answered(int(words[1]), ok=words[2] == "OK")
            return
        if self.faults.no_answer or len(words) < 2 or not words[1].isdigit():
            return
        self._command(words[0], words[1], words[2:])

    def _answered(self, recvid: int, *, ok: bool) -> None:
        sms = self.pending.pop(recvid, None)
        if sms is None:
            return  # an answer to a retransmission already answered
        timer = self._timers.pop(recvid, None)
        if timer is not None:
            timer.cancel()
        (self.delivered if ok else self.refused).append(sms)
        self._poke()

    def _command(self, verb: str, sendid: str, args: list[str]) -> None:
        """A.5 commands; the password is the last argument except for USSD (second)."""
        password = args[0] if verb in ("USSD", "USSDEXIT") and args else (args[-1:] or [""])[0]
        if password != self.password:
            self._send(f"ERROR {sendid} password error")
            return
        answer: str | None
        effect: Callable[[], None] | None = None  # after the answer, as a module comes up
        if verb == "module_ctl_i" and len(args) == 2 and args[0] in ("1", "2"):
            answer = f"module_ctl_i {sendid} ok"
            effect = functools.partial(self.set_enabled, args[0] == "1")
        elif verb == "module_ctl" and len(args) == 2 and set(args[0]) <= {"0", "1", "2"}:
            answer = f"module_ctl {sendid} ok"
            effect = functools.partial(self._module_ctl_all, args[0])
        elif verb == "svr_reboot_module":
            answer = f"svr_reboot_module {sendid} ok"
            effect = functools.partial(self.reboot, self.settings.reboot_s)
        elif verb == "get_gsm_num":
            answer = f"get_gsm_num {sendid} {self.number}"
        elif verb == "get_gsm_state":
            answer = f"get_gsm_state {sendid} IDLE"
        elif verb == "USSD" and len(args) >= 2:
            answer = self._ussd(sendid, " ".join(args[1:]))
        elif verb == "USSDEXIT":
            answer = None
        else:
            answer = f"ERROR {sendid} unknown command"
        self.commands.append(verb)
        if answer is not None:
            self._send(answer)
        if effect is not None:
            effect()
        self._poke()

    def _module_ctl_all(self, digits: str) -> None:
        """One digit per channel: 1 enable, 0 disable, 2 unchanged (A.5)."""
        for line, digit in zip(self.box, digits, strict=False):
            if digit != "2":
                line.set_enabled(digit == "1")

    def _ussd(self, sendid: str, code: str) -> str:
        if not self.enabled:
            return f"USSDERROR {sendid} module disabled"
        if code == "*100#":
            balance = int(self.iccid[-4:]) / 100
            return f"USSD {sendid} Balance: {balance:.2f} RUB; tariff Smart"
        if code == "*111#":
            return f"USSD {sendid} Your number is {self.number}"
        return f"USSD {sendid} Unknown code {code}"

    def view(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "iccid": self.iccid,
            "imsi": self.imsi,
            "imei": self.imei,
            "number": self.number,
            "port": self.local_port,
            "enabled": self.enabled,
            "rebooting": self.rebooting,
            "boot": self.boot,
            "keepalives": self.count,
            "keepalive_acks": self.keepalive_acks,
            "pending": sorted(self.pending),
            "held": len(self.held),
            "delivered": [s.recvid for s in self.delivered],
            "refused": [s.recvid for s in self.refused],
            "gave_up": [s.recvid for s in self.gave_up],
            "commands": list(self.commands),
            "sent": self.sent,
            "lost": self.lost,
            "faults": dict(vars(self.faults)),
        }


class GoipEmulator:
    """A GoIP with ``lines`` channels, all in one event loop (64 lines = 64 sockets, one
    keepalive task each, a timer only per SMS in flight)."""

    def __init__(self, settings: Settings, lines: int) -> None:
        self.settings = settings
        self.lines = [EmulatedLine(i, settings) for i in range(lines)]
        self._changed = asyncio.Event()
        for line in self.lines:
            line.notify = self._notify
            line.box = self.lines

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Until ``predicate()`` holds, re-checked on every state change of any line."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def start(self) -> None:
        try:
            for line in self.lines:
                await line.open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for line in self.lines:
            line.close()

    async def __aenter__(self) -> GoipEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def line(self, key: int | str) -> EmulatedLine:
        for line in self.lines:
            if key in (line.index, line.id):
                return line
        raise KeyError(f"no line {key!r}")

    def select(self, key: int | str | None) -> list[EmulatedLine]:
        return list(self.lines) if key is None else [self.line(key)]

    def set_faults(self, key: int | str | None = None, **changes: Any) -> None:
        for line in self.select(key):
            for name, value in changes.items():
                if not hasattr(line.faults, name):
                    raise KeyError(f"no fault {name!r}")
                setattr(line.faults, name, type(getattr(line.faults, name))(value))
            line._poke()


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:44444")
    return host.strip("[]"), int(port)


async def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tests.gateways.goip_control import control_app

    class _QuietServer(uvicorn.Server):
        """uvicorn without its own signal handling: SIGINT/SIGTERM stop the whole emulator."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    settings = Settings(
        server=args.server,
        seed=args.seed,
        password=args.password,
        id_prefix=args.id_prefix,
        keepalive_s=args.keepalive,
        retransmit_s=args.retransmit,
        max_retransmits=args.max_retransmits,
        bind=args.bind,
        reboot_s=args.reboot_s,
    )
    emulator = GoipEmulator(settings, args.lines)
    emulator.set_faults(None, loss=args.loss, duplicate=args.duplicate)
    config = uvicorn.Config(
        control_app(emulator),
        host=args.control[0],
        port=args.control[1],
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = _QuietServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emulator:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
                raise SystemExit("control API did not start")
            await asyncio.sleep(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        ready = {
            "control": f"http://{host}:{port}",
            "lines": [
                {k: line.view()[k] for k in ("index", "id", "iccid", "number", "port")}
                for line in emulator.lines
            ],
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.gateways.goip",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", type=_host_port, required=True, metavar="HOST:PORT")
    parser.add_argument("--lines", type=int, default=8)
    parser.add_argument("--control", type=_host_port, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--id-prefix", default="goip")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--keepalive", type=float, default=30.0, metavar="S")
    parser.add_argument("--retransmit", type=float, default=3.0, metavar="S")
    parser.add_argument("--max-retransmits", type=int, default=3, metavar="N")
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--duplicate", action="store_true")
    parser.add_argument("--reboot-s", type=float, default=5.0, metavar="S")
    parser.add_argument("--bind", default="127.0.0.1", help="local address of the lines' sockets")
    args = parser.parse_args(argv)
    if not 1 <= args.lines <= 1024:
        parser.error("--lines must be 1..1024")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
