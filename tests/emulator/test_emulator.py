"""Tests of the AT modem emulator itself, spoken to in raw bytes over real ptys and TCP sockets.

The host side here is deliberately dumb (bytes, regexes, deadlines) so the emulator is checked
against the wire format the specifications give, not against our own driver.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.emulator import (
    EmulatedModem,
    ModemServer,
    SimCard,
    iccid_ef_hex,
    split_command_line,
    ucs2_hex,
    ussd_pack_hex,
    ussd_unpack_hex,
)
from tests.support.pdu_encoder import split_message

# research/at-modems.md §4: #2 GSM-7, #8 UCS2 "Привет, мир!", #9/#10 concatenated parts.
PDU_GSM7 = (
    "07915892000000F0040B915892214365F700007040213252242331493A283D0795C3F33C88FE06C9CB6132885E"
    "C6D341EDF27C1E3E97E7207B3A0C0A5241E377BB1D7693E72E"
)
PDU_UCS2 = (
    "07919730071111F1000B919746121611F100088111800212222318041F04400438043204350442002C0020043C"
    "043804400021"
)
PDU_PART1 = "07919730071111F1400B919746121611F10000100161916223230D0500032E020190E175DD1D06"
PDU_PART2 = "07919730071111F1400B919746121611F10000100161916233230E0500032E020240ED303D4C0F03"

FINAL = re.compile(rb"\r\n(OK|ERROR|\+CM[ES] ERROR: [^\r]*|COMMAND NOT SUPPORT)\r\n")
ROOT = Path(__file__).resolve().parents[2]


class Port:
    """The host's end of a line: raw bytes with deadlines, over a pty slave or a TCP socket."""

    def __init__(self, *, fd: int | None = None, sock: socket.socket | None = None) -> None:
        self.fd = fd
        self.sock = sock
        self.buf = b""

    @classmethod
    def pty(cls, path: str) -> Port:
        return cls(fd=os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))

    @classmethod
    def tcp(cls, port: int) -> Port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.setblocking(False)
        return cls(sock=sock)

    def fileno(self) -> int:
        return self.fd if self.fd is not None else self.sock.fileno()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if self.fd is not None:
            os.write(self.fd, data)
        else:
            assert self.sock is not None
            self.sock.sendall(data)

    def _read_some(self, timeout: float) -> bytes:
        """Bytes available within ``timeout`` (b"" if none); EOFError when the line is gone."""
        ready, _, _ = select.select([self.fileno()], [], [], max(timeout, 0))
        if not ready:
            return b""
        try:
            data = os.read(self.fd, 4096) if self.fd is not None else self.sock.recv(4096)  # type: ignore[union-attr]
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.ECONNRESET):
                raise EOFError(str(exc)) from exc
            raise
        if not data:
            raise EOFError("end of file")
        return data

    def read_until(self, pattern: bytes | re.Pattern[bytes], timeout: float = 2.0) -> bytes:
        """Everything up to and including the first match; the rest stays buffered."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.buf)
            if m:
                out, self.buf = self.buf[: m.end()], self.buf[m.end() :]
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {regex.pattern!r} in {self.buf!r}")
            self.buf += self._read_some(left)

    def drain(self, duration: float) -> bytes:
        """Everything that arrives within ``duration``."""
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self.buf += self._read_some(left)
        out, self.buf = self.buf, b""
        return out

    def command(self, line: str, timeout: float = 2.0) -> bytes:
        """Send a command line; return the bytes up to its final result code."""
        self.write(line.encode() + b"\r")
        return self.read_until(FINAL, timeout)

    def sync(self, timeout: float = 3.0) -> None:
        """Send AT until the modem answers, like a driver probing a port.

        A new pty opener is noticed within ~0.25 s, and a booting modem drops input.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.write(b"AT\r")
            try:
                self.read_until(FINAL, 0.2)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
                continue
            time.sleep(0.02)  # answers to repeated probes
            self.buf = b""
            self.drain(0.01)
            return

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Harness:
    def __init__(self) -> None:
        self.server = ModemServer(name="test-emulator")
        self.ports: list[Port] = []

    def pty(self, modem: EmulatedModem, link: Path | None = None) -> tuple[str, Port]:
        path = self.server.start_pty(modem, link=link)
        return path, self.open_pty(path)

    def open_pty(self, path: str | Path) -> Port:
        port = Port.pty(str(path))
        self.ports.append(port)
        return port

    def tcp(self, modem: EmulatedModem) -> tuple[int, Port]:
        number = self.server.start_tcp(modem)
        return number, self.connect(number)

    def connect(self, number: int) -> Port:
        port = Port.tcp(number)
        self.ports.append(port)
        return port

    def close(self) -> None:
        for port in self.ports:
            port.close()
        self.server.stop()


@pytest.fixture
def h() -> Iterator[Harness]:
    """A server plus host ports; proves no thread or fd outlives the test."""
    threads, fds = threading.active_count(), _open_fds()
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()
    assert threading.active_count() == threads
    assert _open_fds() == fds


def wait(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.005)


# ---------------------------------------------------------------------- parsing, sans-IO


def test_command_line_parsing() -> None:
    cmds = split_command_line('ATE0V1+CMEE=2;+CPMS="SM","sm";^ICCID?;+CMGL=?')
    assert cmds is not None
    assert [(c.name, c.form, c.args) for c in cmds] == [
        ("E", "set", ("0",)),
        ("V", "set", ("1",)),
        ("+CMEE", "set", ("2",)),
        ("+CPMS", "set", ("SM", "sm")),
        ("^ICCID", "read", ()),
        ("+CMGL", "test", ()),
    ]
    assert split_command_line("hello") is None
    assert split_command_line("\x1bAT")[0].text == ""  # type: ignore[index]
    assert ussd_pack_hex("*100#") == "AA180C3602"  # TS 23.038 packing, as Huawei wants it
    assert ussd_unpack_hex(ussd_pack_hex("*111*0887#")) == "*111*0887#"
    assert iccid_ef_hex("8970199123456789012") == "980791193254769810F2"


def test_sansio_byte_by_byte_equals_whole_writes() -> None:
    script = b"AT\rATE0\r\nAT+CSQ;+CPIN?\rAT+CMGF=0\r"
    whole, single = EmulatedModem("ec25"), EmulatedModem("ec25")
    whole.feed(script)
    out_whole = whole.poll()
    out_single = b""
    for i in range(len(script)):
        single.feed(script[i : i + 1])
        out_single += single.poll()
    assert out_whole == out_single
    assert out_whole == (
        b"AT\r\r\nOK\r\n"
        b"ATE0\r\r\nOK\r\n"  # the LF of CR LF is swallowed, not echoed
        b"\r\n+CSQ: 21,99\r\n\r\n+CPIN: READY\r\n\r\nOK\r\n"
        b"\r\nOK\r\n"
    )


def test_sansio_delay_with_fake_clock() -> None:
    now = [100.0]
    modem = EmulatedModem("sim800", clock=lambda: now[0])
    modem.feed(b"ATE0\r")
    modem.poll()
    modem.set_delay("AT+CSQ", 2.0, times=1)
    modem.feed(b"AT+CSQ\rAT\r")  # the second line queues behind the slow one
    assert modem.poll() == b""
    assert modem.next_deadline() == 102.0
    now[0] = 102.0
    assert modem.poll() == b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n\r\nOK\r\n"


# ---------------------------------------------------------------------- init sequences


def test_init_sequence_over_pty_ec25(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    assert modem.sim is not None
    _, port = h.pty(modem)
    port.sync()
    # Echo is on at power-up: the command comes back before the response.
    assert port.command("AT") == b"AT\r\r\nOK\r\n"
    assert port.command("ATE0") == b"ATE0\r\r\nOK\r\n"
    assert port.command("AT") == b"\r\nOK\r\n"
    assert port.command("ATI") == b"\r\nQuectel\r\nEC25\r\nRevision: EC25EFAR06A06M4G\r\n\r\nOK\r\n"
    assert port.command("AT+CMEE=1") == b"\r\nOK\r\n"
    assert port.command("AT+CPIN?") == b"\r\n+CPIN: READY\r\n\r\nOK\r\n"
    iccid = modem.sim.iccid
    assert port.command("AT+QCCID") == f"\r\n+QCCID: {iccid}\r\n\r\nOK\r\n".encode()
    assert port.command("AT+CCID") == b"\r\nERROR\r\n"  # not a Quectel command
    ef = iccid_ef_hex(iccid)
    assert (
        port.command("AT+CRSM=176,12258,0,0,10")
        == f'\r\n+CRSM: 144,0,"{ef}"\r\n\r\nOK\r\n'.encode()
    )
    assert port.command("AT+CIMI") == f"\r\n{modem.sim.imsi}\r\n\r\nOK\r\n".encode()
    assert port.command("AT+COPS=3,0;+COPS?") == b'\r\n+COPS: 0,0,"MegaFon",7\r\n\r\nOK\r\n'
    assert port.command("AT+COPS=3,2;+COPS?") == b'\r\n+COPS: 0,2,"25002",7\r\n\r\nOK\r\n'
    assert port.command("AT+CSQ") == b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n"
    assert port.command("AT+CREG?") == b"\r\n+CREG: 0,1\r\n\r\nOK\r\n"
    assert (
        port.command("AT+CEREG=2;+CEREG?") == b'\r\n+CEREG: 2,1,"3C4D","01C3D4E5",7\r\n\r\nOK\r\n'
    )
    assert port.command("AT+CMGF=0") == b"\r\nOK\r\n"
    assert port.command('AT+CPMS="SM","SM","SM"') == b"\r\n+CPMS: 0,30,0,30,0,30\r\n\r\nOK\r\n"
    assert port.command("AT+CPMS?") == b'\r\n+CPMS: "SM",0,30,"SM",0,30,"SM",0,30\r\n\r\nOK\r\n'
    assert port.command("AT+CNMI=2,1,0,0,0") == b"\r\nOK\r\n"
    number = modem.sim.number
    assert port.command("AT+CNUM") == f'\r\n+CNUM: "","{number}",145\r\n\r\nOK\r\n'.encode()
    assert port.command("AT+CFUN?") == b"\r\n+CFUN: 1\r\n\r\nOK\r\n"
    assert port.command("AT+NOSUCH") == b"\r\nERROR\r\n"
    assert modem.commands()[:3] == ["AT", "AT", "ATE0"]


def test_init_sequence_over_tcp_sim800(h: Harness) -> None:
    modem = EmulatedModem("sim800", sim=SimCard.generate(iccid="8970199123456789012", number=None))
    _, port = h.tcp(modem)
    assert port.command("ATE0") == b"ATE0\r\r\nOK\r\n"
    assert port.command("ATI") == b"\r\nSIM800 R14.18\r\n\r\nOK\r\n"
    assert port.command("AT+CGMI;+CGMM") == b"\r\nSIMCOM_Ltd\r\n\r\nSIMCOM_SIM800L\r\n\r\nOK\r\n"
    assert port.command("AT+CCID") == b"\r\n8970199123456789012\r\n\r\nOK\r\n"
    assert port.command("AT+CEREG?") == b"\r\nERROR\r\n"  # GSM-only firmware
    assert port.command("AT+COPS?") == b'\r\n+COPS: 0,0,"MegaFon"\r\n\r\nOK\r\n'  # no <AcT>
    assert port.command("AT+CNUM") == b"\r\nOK\r\n"  # EF_MSISDN empty
    assert port.command('AT+CPBS="ON";+CPBR=1,4') == b"\r\nOK\r\n"
    assert port.command("AT+CMGL=4") == b"\r\nOK\r\n"
    assert port.command('AT+CMGL="ALL"') == b"\r\nERROR\r\n"  # text-mode syntax in PDU mode


def test_e3372_quirks_over_tcp(h: Harness) -> None:
    modem = EmulatedModem("e3372")
    assert modem.sim is not None
    _, port = h.tcp(modem)
    port.command("ATE0")
    swapped = iccid_ef_hex(modem.sim.iccid)
    assert port.command("AT^ICCID?") == f'\r\n^ICCID: "{swapped}"\r\n\r\nOK\r\n'.encode()
    assert port.command("AT+QCCID") == b"\r\nCOMMAND NOT SUPPORT\r\n"
    assert port.command("AT+CMGR=0") == b"\r\nERROR\r\n"  # empty location, CMEE=0
    assert port.command("AT+CMEE=1;+CMGR=0") == b"\r\n+CMS ERROR: 321\r\n"
    # Default +CNMI: 0,0,...: stored silently, only a sweep finds it.
    assert modem.deliver_pdu(PDU_GSM7) == 0
    assert port.drain(0.1) == b""
    assert port.command("AT+CMGL=4").startswith(b"\r\n+CMGL: 0,0,,62\r\n")
    # <mode>=0 buffers indications in the TA; <mode>=2 flushes them after the OK (27.005 3.4.1).
    port.command("AT+CNMI=0,1,0,0,0")
    assert modem.deliver_pdu(PDU_UCS2) == 1
    assert port.drain(0.1) == b""
    port.write(b"AT+CNMI=2,1,0,0,0\r")
    assert port.read_until(b'+CMTI: "SM",1\r\n') == b'\r\nOK\r\n\r\n+CMTI: "SM",1\r\n'
    modem.set_noise(0.02)
    noise = port.read_until(b"^MODE: 7,17\r\n", 1.0)
    assert b"\r\n^RSSI: 21\r\n" in noise and b'\r\n^HCSQ: "LTE",21,' in noise
    port.command("AT^CURC=0")
    port.drain(0.05)
    assert port.drain(0.1) == b""


def test_cme_error_formats_sim_states(h: Harness) -> None:
    modem = EmulatedModem("sim800", sim=False)
    _, port = h.tcp(modem)
    port.command("ATE0")
    assert port.command("AT+CPIN?") == b"\r\nERROR\r\n"  # CMEE=0: plain ERROR
    assert port.command("AT+CMEE=1;+CPIN?") == b"\r\n+CME ERROR: 10\r\n"
    assert port.command("AT+CMEE=2;+CPIN?") == b"\r\n+CME ERROR: SIM not inserted\r\n"
    assert port.command("AT+CMGL=4") == b"\r\n+CMS ERROR: SIM not inserted\r\n"
    modem.sim_busy_tries = 2
    modem.insert_sim(SimCard.generate(pin="1234"))
    assert port.read_until(b"+CPIN: SIM PIN\r\n") == b"\r\n+CPIN: SIM PIN\r\n"
    port.command("AT+CMEE=1")
    assert port.command("AT+CPIN?") == b"\r\n+CME ERROR: 14\r\n"
    assert port.command("AT+CPIN?") == b"\r\n+CME ERROR: 14\r\n"
    assert port.command("AT+CPIN?") == b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n"
    assert port.command("AT+CIMI") == b"\r\n+CME ERROR: 11\r\n"
    assert port.command('AT+CPIN="0000"') == b"\r\n+CME ERROR: 16\r\n"
    out = port.command('AT+CPIN="1234"') + port.read_until(b"SMS Ready\r\n")
    assert out == b"\r\nOK\r\n\r\n+CPIN: READY\r\n\r\nCall Ready\r\n\r\nSMS Ready\r\n"
    wait(lambda: modem.registered)
    modem.cme_error("AT+CSQ", 100, times=1)
    assert port.command("AT+CSQ") == b"\r\n+CME ERROR: 100\r\n"
    assert port.command("AT+CSQ") == b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n"


# ---------------------------------------------------------------------- SMS storage


def test_read_list_delete_and_events(h: Harness) -> None:
    modem = EmulatedModem("sim800")
    _, port = h.pty(modem)
    port.sync()
    port.command("ATE0")
    assert modem.deliver_pdu(PDU_GSM7) == 1  # SIMCom counts from 1
    assert modem.deliver_pdu(PDU_UCS2) == 2
    assert port.read_until(b'+CMTI: "SM",2\r\n') == b'\r\n+CMTI: "SM",1\r\n\r\n+CMTI: "SM",2\r\n'
    assert (
        port.command("AT+CMGL=4")
        == (
            f'\r\n+CMGL: 1,0,"",62\r\n{PDU_GSM7}\r\n+CMGL: 2,0,"",43\r\n{PDU_UCS2}\r\n\r\nOK\r\n'
        ).encode()
    )
    assert modem.stored() == {1: (1, PDU_GSM7), 2: (1, PDU_UCS2)}  # CMGL marks them read
    assert port.command("AT+CMGR=1") == f'\r\n+CMGR: 1,"",62\r\n{PDU_GSM7}\r\n\r\nOK\r\n'.encode()
    assert port.command("AT+CMGR=3") == b"\r\nOK\r\n"  # empty location on SIMCom
    assert port.command("AT+CMEE=1;+CMGR=31") == b"\r\n+CMS ERROR: 321\r\n"  # beyond capacity
    assert port.command("AT+CMGD=1") == b"\r\nOK\r\n"
    assert port.command("AT+CMGD=1") == b"\r\nOK\r\n"  # deleting an empty location is fine
    assert port.command("AT+CMGD=1,4") == b"\r\nOK\r\n"
    assert modem.stored() == {}
    actions = [(e.action, e.index) for e in modem.events() if e.index is not None]
    assert actions == [
        ("stored", 1),
        ("stored", 2),
        ("read", 1),
        ("read", 2),
        ("deleted", 1),
        ("deleted", 2),
    ]
    deleted = modem.events("deleted")
    assert deleted[0].t <= deleted[1].t and deleted[0].seq < deleted[1].seq
    assert deleted[0].iccid == modem.sim.iccid  # type: ignore[union-attr]


def test_cmgr_marks_read_and_zero_based_index(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.deliver_pdu(PDU_PART1)
    modem.deliver_pdu(PDU_PART2)
    port.read_until(b'+CMTI: "SM",1\r\n')
    assert port.command("AT+CMGR=0") == f"\r\n+CMGR: 0,,31\r\n{PDU_PART1}\r\n\r\nOK\r\n".encode()
    assert port.command("AT+CMGR=0") == f"\r\n+CMGR: 1,,31\r\n{PDU_PART1}\r\n\r\nOK\r\n".encode()
    assert port.command("AT+CMGL=0") == f"\r\n+CMGL: 1,0,,32\r\n{PDU_PART2}\r\n\r\nOK\r\n".encode()
    assert port.command("AT+CMGL=0") == b"\r\nOK\r\n"


def test_multipart_from_the_pdu_encoder(h: Harness) -> None:
    parts = split_message("+79001234567", "Привет, мир! " * 12, sent_at=datetime.now(UTC), ref=7)
    assert len(parts) == 3
    modem = EmulatedModem("e3372")
    _, port = h.tcp(modem)
    port.command("ATE0")
    assert [modem.deliver_pdu(p) for p in parts] == [0, 1, 2]
    listing = port.command("AT+CMGL=4").decode().split("\r\n")
    headers = [line for line in listing if line.startswith("+CMGL:")]
    pdus = [line for line in listing if line in parts]
    assert pdus == parts
    for header, pdu in zip(headers, pdus, strict=True):
        smsc_octets = int(pdu[:2], 16) + 1
        assert header.endswith(f",{len(pdu) // 2 - smsc_octets}")  # TPDU octets only


def test_storage_full_then_freeing(h: Harness) -> None:
    modem = EmulatedModem("ec25", sim=SimCard.generate(capacity=2), network_retry=0.02)
    _, port = h.tcp(modem)
    port.command("ATE0")
    assert modem.deliver_pdu(PDU_PART1) == 0
    assert modem.deliver_pdu(PDU_PART2) == 1
    assert modem.deliver_pdu(PDU_GSM7) is None  # full: the network keeps it
    assert modem.deliver_pdu(PDU_UCS2) is None
    out = port.read_until(b'"smsfull","SM"\r\n')
    assert out == b'\r\n+CMTI: "SM",0\r\n\r\n+CMTI: "SM",1\r\n\r\n+QIND: "smsfull","SM"\r\n'
    assert modem.pending() == [PDU_GSM7, PDU_UCS2]
    assert port.command("AT+CPMS?") == b'\r\n+CPMS: "SM",2,2,"SM",2,2,"SM",2,2\r\n\r\nOK\r\n'
    assert port.command("AT+CMGD=0") == b"\r\nOK\r\n"
    # RP-SMMA: the network retries; one slot frees one message, the next stays held.
    out = port.read_until(b'"smsfull","SM"\r\n', 1.0)
    assert out == b'\r\n+CMTI: "SM",0\r\n\r\n+QIND: "smsfull","SM"\r\n'
    assert modem.stored()[0] == (0, PDU_GSM7)
    assert modem.pending() == [PDU_UCS2]
    port.command("AT+CMGD=1")
    port.read_until(b'+CMTI: "SM",1\r\n')
    assert modem.pending() == []
    assert [e.action for e in modem.events() if e.action.startswith("memory")] == [
        "memory_full",
        "memory_available",
        "memory_full",
        "memory_available",
    ]


def test_storage_full_fault_holds_until_delete(h: Harness) -> None:
    modem = EmulatedModem("ec25", network_retry=0.01)
    _, port = h.tcp(modem)
    port.command("ATE0")
    assert modem.deliver_pdu(PDU_PART1) == 0
    port.read_until(b'+CMTI: "SM",0\r\n')
    modem.storage_full()
    assert modem.deliver_pdu(PDU_GSM7) is None
    assert modem.events("held")[-1].detail == "memory full"
    assert port.drain(0.1) == b""
    port.command("AT+CMGD=0")
    port.read_until(b'+CMTI: "SM",0\r\n')
    assert modem.stored() == {0: (0, PDU_GSM7)}


def test_radio_off_holds_messages_until_registered(h: Harness) -> None:
    modem = EmulatedModem("ec25", register_delay=0.05)
    _, port = h.tcp(modem)
    port.command("ATE0")
    port.command("AT+CREG=1")
    assert port.command("AT+CFUN=4") == b"\r\nOK\r\n"
    assert port.read_until(b"+CREG: 0\r\n") == b"\r\n+CREG: 0\r\n"  # after the OK
    assert port.command("AT+CSQ;+COPS?") == b"\r\n+CSQ: 99,99\r\n\r\n+COPS: 0\r\n\r\nOK\r\n"
    assert modem.deliver_pdu(PDU_GSM7) is None
    assert modem.events("held")[-1].detail == "radio off"
    assert port.command('AT+CUSD=1,"*100#",15') == b"\r\n+CME ERROR: 30\r\n"
    assert port.command("AT+CCFC=0,2") == b"\r\n+CME ERROR: 30\r\n"
    assert port.drain(0.1) == b""
    start = time.monotonic()
    port.command("AT+CFUN=1")
    out = port.read_until(b'+CMTI: "SM",0\r\n')
    assert out == b'\r\n+CREG: 2\r\n\r\n+CREG: 1\r\n\r\n+CMTI: "SM",0\r\n'
    assert time.monotonic() - start >= 0.04  # registration takes register_delay
    assert modem.pending() == []


# ---------------------------------------------------------------------- faults


def test_urc_inside_responses(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    _, port = h.pty(modem)
    port.sync()
    modem.inject_urc_during("AT+CSQ", '+CMTI: "SM",5', "after_echo")
    assert port.command("AT+CSQ") == b'AT+CSQ\r\r\n+CMTI: "SM",5\r\n\r\n+CSQ: 21,99\r\n\r\nOK\r\n'
    port.command("ATE0")
    modem.inject_urc_during("+CSQ", '+CMTI: "SM",6')  # before_ok
    assert port.command("AT+CSQ") == b'\r\n+CSQ: 21,99\r\n\r\n+CMTI: "SM",6\r\n\r\nOK\r\n'
    modem.inject_urc_during("+CSQ", "RING", "mid_line")
    assert port.command("AT+CSQ") == b"\r\n+CSQ:\r\nRING\r\n 21,99\r\n\r\nOK\r\n"
    modem.inject_urc_during("+CMGD", "^RSSI: 5", "mid_line")
    port.write(b"AT+CMGD=0\r")  # even the result code can be cut in two
    assert port.read_until(b"K\r\n") == b"\r\nO\r\n^RSSI: 5\r\nK\r\n"
    # A real message arriving while another command runs: stored, +CMTI inside the response.
    modem.deliver_pdu(PDU_GSM7, during="AT+CPMS?")
    assert modem.stored() == {}
    out = port.command("AT+CPMS?")
    assert out == b'\r\n+CPMS: "SM",1,30,"SM",1,30,"SM",1,30\r\n\r\n+CMTI: "SM",0\r\n\r\nOK\r\n'
    modem.inject_urc_during("AT", "+CREG: 5", "after_ok")  # "AT" matches every command
    assert port.command("AT+CMGF=0") + port.read_until(b"+CREG: 5\r\n") == (
        b"\r\nOK\r\n\r\n+CREG: 5\r\n"
    )
    modem.inject_urc("+CREG: 1")
    assert port.read_until(b"+CREG: 1\r\n") == b"\r\n+CREG: 1\r\n"
    kinds = [(e.kind, e.text) for e in modem.transcript() if e.kind == "urc"]
    assert ("urc", '+CMTI: "SM",0') in kinds and ("urc", "RING") in kinds


def test_delay_queues_following_commands(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.set_delay("AT+CMGD", 0.3, times=1)
    modem.deliver_pdu(PDU_GSM7)
    port.read_until(b'+CMTI: "SM",0\r\n')
    start = time.monotonic()
    port.write(b"AT+CMGD=0\rAT+CPMS?\r")
    assert port.read_until(FINAL) == b"\r\nOK\r\n"
    assert time.monotonic() - start >= 0.28
    assert port.read_until(FINAL).startswith(b'\r\n+CPMS: "SM",0,30')
    deleted = modem.events("deleted")[0]
    received = modem.wait_for_command("AT+CMGD")
    assert deleted.t - received.t >= 0.28  # the delete happens when the answer is sent


def test_mute_reads_but_never_answers(h: Harness) -> None:
    modem = EmulatedModem("sim800")
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.mute()
    port.write(b"AT\rAT+CSQ\r")
    modem.deliver_pdu(PDU_GSM7)  # still stored, but no +CMTI from a hung firmware
    assert port.drain(0.2) == b""
    assert modem.commands()[-2:] == ["AT", "AT+CSQ"]
    assert [e.kind for e in modem.transcript() if e.text in ("AT", "AT+CSQ")][-2:] == ["muted"] * 2
    assert modem.stored() == {1: (0, PDU_GSM7)}
    modem.mute(False)
    assert port.command("AT") == b"\r\nOK\r\n"


def test_garbage_bytes_are_sent_verbatim(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.garbage(b"\xff\xfe\x00\x9c")
    assert port.read_until(b"\x9c") == b"\xff\xfe\x00\x9c"
    port.write(b"\xff\x00garbage\r")  # no AT prefix: ignored, like a real modem
    assert port.command("AT") == b"\r\nOK\r\n"
    assert any(e.kind == "ignored" for e in modem.transcript())


def test_fail_cmgd_keeps_the_message(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.deliver_pdu(PDU_GSM7)
    port.read_until(b'+CMTI: "SM",0\r\n')
    modem.fail_cmgd(2, code=500)
    assert port.command("AT+CMGD=0") == b"\r\n+CMS ERROR: 500\r\n"  # Quectel: CMEE=1
    assert port.command("AT+CMEE=2;+CMGD=0") == b"\r\n+CMS ERROR: unknown error\r\n"
    assert modem.stored() == {0: (0, PDU_GSM7)}
    assert port.command("AT+CMGD=0") == b"\r\nOK\r\n"
    assert [e.action for e in modem.events() if "delete" in e.action] == [
        "delete_failed",
        "delete_failed",
        "deleted",
    ]


# ---------------------------------------------------------------------- lines, power, SIM


def test_pty_unplug_replug_repoints_symlink(h: Harness, tmp_path: Path) -> None:
    modem = EmulatedModem("ec25", boot_time=0.02)
    link = tmp_path / "usb-Quectel_EC25-if02-port0"
    path, port = h.pty(modem, link=link)
    assert os.readlink(link) == path
    port.sync()
    port.command("ATE0")
    modem.unplug()
    with pytest.raises(EOFError):
        port.read_until(b"never", 1.0)
    assert not link.exists()  # udev removes the by-id link with the device
    assert h.server.pty_path(modem) is None
    modem.replug()
    new_path = h.server.wait_pty_path(modem, path)
    assert os.readlink(link) == new_path
    again = h.open_pty(link)
    again.sync()
    assert again.command("AT") == b"AT\r\r\nOK\r\n"  # a fresh boot: echo on again
    assert [e.action for e in modem.events() if e.action.startswith(("line", "power"))] == [
        "power_off",
        "line_down",
        "line_up",
        "power_on",
    ]


def test_tcp_unplug_refuses_then_replug_accepts(h: Harness) -> None:
    modem = EmulatedModem("sim800", boot_time=0.02)
    number, port = h.tcp(modem)
    port.command("ATE0")
    modem.unplug()
    with pytest.raises(EOFError):
        port.read_until(b"never", 1.0)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", number), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait(refused)
    modem.replug()
    wait(lambda: not refused())
    again = h.connect(number)
    again.sync()
    assert again.command("AT") == b"AT\r\r\nOK\r\n"  # rebooted: echo on


def test_tcp_new_connection_replaces_old(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    number, first = h.tcp(modem)
    first.command("ATE0")
    second = h.connect(number)
    assert second.command("AT") == b"\r\nOK\r\n"  # modem state is kept: echo still off
    with pytest.raises(EOFError):
        first.read_until(b"never", 1.0)


def test_pty_reopen_sees_no_stale_output(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    path, port = h.pty(modem)
    port.sync()
    port.command("ATE0")
    port.close()
    time.sleep(0.05)  # the emulator notices the hang-up
    modem.deliver_pdu(PDU_GSM7)  # +CMTI goes nowhere: nobody has the port open
    modem.inject_urc("+CREG: 1")
    time.sleep(0.05)
    again = h.open_pty(path)
    assert again.drain(0.1) == b""
    again.sync()
    assert again.command("AT+CMGL=4").startswith(b"\r\n+CMGL: 0,0,,62\r\n")


def test_pty_open_is_noticed_at_once(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    path = h.server.start_pty(modem)
    time.sleep(0.6)  # long enough for the fallback probe to have backed off
    port = h.open_pty(path)
    start = time.monotonic()
    port.write(b"AT\r")
    port.read_until(FINAL)
    assert time.monotonic() - start < 0.15  # inotify IN_OPEN, not polling


def test_swap_sim_keeps_messages_with_the_old_sim(h: Harness) -> None:
    modem = EmulatedModem("sim800", register_delay=0.01)
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.deliver_pdu(PDU_GSM7)
    port.read_until(b"+CMTI")
    old = modem.swap_sim("89701990000000000017", "250990000000001", "+79005550001")
    assert old is not None and old.messages.used == 1
    out = port.read_until(b"SMS Ready\r\n")
    assert out.endswith(
        b"\r\n+CPIN: NOT READY\r\n\r\n+CPIN: READY\r\n\r\nCall Ready\r\n\r\nSMS Ready\r\n"
    )
    assert port.command("AT+CCID") == b"\r\n89701990000000000017\r\n\r\nOK\r\n"
    assert port.command("AT+CMGL=4") == b"\r\nOK\r\n"
    modem.sim_init_time = 0.1  # reading a card takes a while: SIM busy meanwhile
    modem.insert_sim(old)
    port.command("AT+CMEE=1")
    assert port.command("AT+CCID") == b"\r\n+CME ERROR: 14\r\n"
    port.read_until(b"SMS Ready\r\n")
    assert port.command("AT+CMGL=4").startswith(b'\r\n+CMGL: 1,0,"",62\r\n')
    assert [e.action for e in modem.events() if e.action.startswith("sim")] == [
        "sim_inserted",
        "sim_removed",
        "sim_inserted",
        "sim_removed",
        "sim_inserted",
    ]


def test_silent_sim_swap(h: Harness) -> None:
    modem = EmulatedModem("sim800")
    _, port = h.tcp(modem)
    port.command("ATE0")
    new = SimCard.generate()
    modem.insert_sim(new, announce=False)  # no SIM-detect pin: the host is not told
    assert port.drain(0.1) == b""
    assert port.command("AT+CCID") == f"\r\n{new.iccid}\r\n\r\nOK\r\n".encode()
    assert modem.registered


def test_cfun_reset_goes_silent_then_boots(h: Harness) -> None:
    modem = EmulatedModem("ec25", reset_time=0.2, boot_time=0.05)
    _, port = h.pty(modem)
    port.sync()
    port.command("ATE0")
    modem.deliver_pdu(PDU_GSM7)
    port.read_until(b"+CMTI")
    port.buf = b""
    start = time.monotonic()
    assert port.command("AT+CFUN=1,1") == b"\r\nOK\r\n"
    time.sleep(0.1)
    port.write(b"AT\r")  # swallowed: the module is resetting
    out = port.read_until(b"+QIND: PB DONE\r\n", 2.0)
    assert time.monotonic() - start >= 0.25
    assert out == (
        b"\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n\r\n+QUSIM: 1\r\n"
        b"\r\n+QIND: SMS DONE\r\n\r\n+QIND: PB DONE\r\n"
    )
    assert port.command("AT") == b"AT\r\r\nOK\r\n"  # echo is back on after a reset
    assert modem.stored() == {0: (0, PDU_GSM7)}  # the SIM keeps its messages
    assert any(e.kind == "dropped" and e.direction == "rx" for e in modem.transcript())


def test_cfun_reset_can_drop_the_line(h: Harness) -> None:
    modem = EmulatedModem("sim800", reset_time=0.1, boot_time=0.02, reset_drops_line=True)
    path, port = h.pty(modem)
    port.sync()
    assert port.command("AT+CFUN=1,1") == b"AT+CFUN=1,1\r\r\nOK\r\n"
    with pytest.raises(EOFError):
        port.read_until(b"never", 1.0)
    new_path = h.server.wait_pty_path(modem, path)
    again = h.open_pty(new_path)
    again.sync()
    assert again.command("AT+CPIN?") == b"AT+CPIN?\r\r\n+CPIN: READY\r\n\r\nOK\r\n"


# ---------------------------------------------------------------------- services


def test_ussd_replies(h: Harness) -> None:
    modem = EmulatedModem("ec25", ussd_delay=0.05)
    _, port = h.tcp(modem)
    port.command("ATE0")
    modem.set_ussd_reply("*111*0887#", "Vash nomer +79001234567")
    modem.set_ussd_reply("*100#", "Баланс 100 р.", dcs=72)
    assert port.command('AT+CUSD=1,"*111*0887#",15') == b"\r\nOK\r\n"
    assert port.read_until(b",15\r\n") == b'\r\n+CUSD: 0,"Vash nomer +79001234567",15\r\n'
    port.command('AT+CUSD=1,"*100#",15')
    hex_text = ucs2_hex("Баланс 100 р.").encode()
    assert port.read_until(b",72\r\n") == b'\r\n+CUSD: 0,"' + hex_text + b'",72\r\n'
    port.command('AT+CUSD=1,"*999#",15')
    assert port.read_until(b"+CUSD: 4\r\n") == b"\r\n+CUSD: 4\r\n"

    huawei = EmulatedModem("e3372", ussd_delay=0.01)
    _, hport = h.tcp(huawei)
    hport.command("ATE0")
    huawei.set_ussd_reply("*100#", "Balance 5 rub")
    assert hport.command('AT+CUSD=1,"*100#",15') == b"\r\nERROR\r\n"  # wants packed hex
    hport.command(f'AT+CUSD=1,"{ussd_pack_hex("*100#")}",15')
    packed = ussd_pack_hex("Balance 5 rub").encode()
    assert hport.read_until(b",15\r\n") == b'\r\n+CUSD: 0,"' + packed + b'",15\r\n'


def test_call_forwarding(h: Harness) -> None:
    modem = EmulatedModem("ec25")
    assert modem.sim is not None
    _, port = h.tcp(modem)
    port.command("ATE0")
    assert port.command("AT+CCFC=0,2") == b"\r\n+CCFC: 0,1\r\n\r\nOK\r\n"
    assert port.command('AT+CCFC=0,3,"+79161112233",145') == b"\r\nOK\r\n"
    assert port.command("AT+CCFC=0,2") == b'\r\n+CCFC: 1,1,"+79161112233",145\r\n\r\nOK\r\n'
    assert modem.sim.forwarding[0].number == "+79161112233"
    assert port.command("AT+CCFC=0,4") == b"\r\nOK\r\n"
    assert port.command("AT+CCFC=0,2") == b"\r\n+CCFC: 0,1\r\n\r\nOK\r\n"
    assert port.command("AT+CCFC=0,3") == b"\r\nERROR\r\n"  # registration needs a number


def test_own_number_phonebook(h: Harness) -> None:
    modem = EmulatedModem("ec25", sim=SimCard.generate(number="+79001234567"))
    _, port = h.tcp(modem)
    port.command("ATE0")
    assert port.command('AT+CPBS="ON";+CPBS?') == b'\r\n+CPBS: "ON",1,4\r\n\r\nOK\r\n'
    assert port.command("AT+CPBR=1,4") == b'\r\n+CPBR: 1,"+79001234567",145,""\r\n\r\nOK\r\n'
    out = port.command('AT+CSCS="UCS2";+CNUM')
    assert out == f'\r\n+CNUM: "","{ucs2_hex("+79001234567")}",145\r\n\r\nOK\r\n'.encode()


# ---------------------------------------------------------------------- scale and CLI


def test_many_modems_on_one_thread(h: Harness) -> None:
    modems = [EmulatedModem(("ec25", "sim800", "e3372")[i % 3]) for i in range(120)]
    threads = threading.active_count()
    ports = [h.tcp(m)[1] for m in modems[:60]] + [h.pty(m)[1] for m in modems[60:]]
    assert threading.active_count() == threads  # no thread per modem
    for port in ports:
        port.write(b"AT+CGSN\r")
    for modem, port in zip(modems, ports, strict=True):
        out = port.read_until(FINAL, 3.0)
        assert modem.imei.encode() in out


def test_standalone_cli(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator", "--tcp", "127.0.0.1:0", "--count", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        ports = [int(re.search(r"tcp 127\.0\.0\.1:(\d+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
        for number in ports:
            port = Port.tcp(number)
            try:
                assert port.command("AT") == b"AT\r\r\nOK\r\n"
            finally:
                port.close()
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        if proc.stdout is not None:
            proc.stdout.close()
