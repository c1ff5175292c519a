"""The emulated modem: a transport-independent (sans-IO) AT command state machine.

Owns everything a real modem owns between its serial port and the radio network: the V.250
line discipline (echo, CR-terminated command lines, result framing), command execution in
order with scriptable delays, unsolicited result codes, power and reset, the SIM slot, message
memories, registration, USSD sessions and the network that holds messages it cannot deliver.
Also owns the fault-injection API and the transcript tests assert on.

It does no I/O and starts no threads: bytes go in with :meth:`EmulatedModem.feed`, bytes come out
of :meth:`EmulatedModem.poll`, and time passes through an injectable clock (timers run from
``poll``).  ``transport.py`` drives it from an event loop; tests may drive it directly, byte by
byte.  Every public method is thread-safe (one re-entrant lock per modem); a listener callback
tells the driving transport that output or a timer is pending.

AT command semantics live in ``commands.py``; model differences in ``profiles.py``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .atparse import Command, ParseError, normalize_prefix, split_command_line
from .commands import dispatch
from .profiles import Profile, get_profile
from .protocol import (
    CELL,
    CME_TEXT,
    CMS_TEXT,
    ERROR,
    LAC,
    OK,
    TAC,
    Reply,
    Result,
    UssdReply,
    cme,
    cms,
)
from .sim import MessageStore, SimCard, StoredSms, generate_imei, tpdu_length

Where = Literal["after_echo", "mid_line", "before_ok", "after_ok"]
_WHERE = ("after_echo", "mid_line", "before_ok", "after_ok")

MAX_LINE = 560  # characters; a longer command line is answered with ERROR (V.250 leaves it open)
MAX_OUTPUT = 1 << 20  # undrained output kept when nobody polls; the oldest bytes are dropped


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the transcript: a command line received or a line sent.

    ``kind``: "command" (a line with an AT prefix), "ignored" (a line without one), "muted"
    (received while muted, not executed), "response" (information text), "final" (result
    code), "urc", "garbage", "dropped" (output suppressed: muted, off, or line down).
    """

    seq: int
    t: float
    direction: Literal["rx", "tx"]
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class ModemEvent:
    """Something that happened to state tests care about, in the same sequence as the log.

    ``action``: "stored", "read", "deleted", "delete_failed", "held" (kept by the network),
    "memory_full", "memory_available", "routed" (+CMT, not stored), "power_off", "power_on",
    "line_down", "line_up", "sim_removed", "sim_inserted", "registered", "unregistered".
    ``index`` is as the modem prints it (profile ``first_index`` applied).
    """

    seq: int
    t: float
    action: str
    index: int | None = None
    mem: str | None = None
    iccid: str | None = None
    pdu: str | None = None
    detail: str = ""


@dataclass(slots=True)
class _Injection:
    prefix: str
    where: Where
    remaining: int
    make: Callable[[], list[str]]


@dataclass(slots=True)
class _Rule:
    prefix: str
    remaining: int | None  # None: until removed
    value: float | Result


@dataclass(slots=True)
class _Job:
    """One command line being executed."""

    line: str
    commands: list[Command] | None  # None: syntax error
    next: int = 0
    waited: bool = False  # the delay of commands[next] has been served
    blocks: list[list[str]] = field(default_factory=list)
    result: Result = OK
    after: list[Callable[[], None]] = field(default_factory=list)
    inject: dict[str, list[str]] = field(default_factory=lambda: {w: [] for w in _WHERE})


@dataclass(order=True, slots=True)
class _Timer:
    due: float
    seq: int
    epoch: int = field(compare=False)
    fn: Callable[[], None] = field(compare=False)


_NO_SIM: Literal[False] = False


class EmulatedModem:
    """An AT modem (TS 27.007 / TS 27.005) with a SIM, a network, and fault injection.

    A new modem is powered, booted and registered (its boot URCs are long gone), echo on.
    ``sim=None`` inserts a generated SIM; ``sim=False`` leaves the slot empty.
    """

    def __init__(
        self,
        profile: str | Profile = "ec25",
        *,
        sim: SimCard | Literal[False] | None = None,
        imei: str | None = None,
        name: str | None = None,
        boot_time: float = 0.05,
        reset_time: float = 0.2,
        register_delay: float = 0.02,
        ussd_delay: float = 0.05,
        network_retry: float = 0.05,
        sim_busy_tries: int = 0,
        reset_drops_line: bool = False,
        noise_interval: float | None = None,
        sim_init_time: float = 0.0,
        log_limit: int | None = 100_000,
        event_limit: int | None = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile: Profile = get_profile(profile)
        self.imei: str = imei or generate_imei()
        self.name = name or f"{self.profile.name}-{self.imei[-6:]}"
        self.boot_time = boot_time
        self.reset_time = reset_time
        self.register_delay = register_delay
        self.ussd_delay = ussd_delay
        self.network_retry = network_retry
        self.sim_busy_tries = sim_busy_tries
        self.sim_init_time = sim_init_time
        self.reset_drops_line = reset_drops_line
        self.noise_interval = noise_interval
        self.clock = clock

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._listener: Callable[[], None] | None = None
        self._seq = itertools.count(1)
        self._log: deque[LogEntry] = deque(maxlen=log_limit)
        self._events: deque[ModemEvent] = deque(maxlen=event_limit)

        self._out = bytearray()
        self._timers: list[_Timer] = []
        self._timer_seq = itertools.count()
        self._epoch = 0

        # Hardware and test-script state: survives resets.
        self._sim: SimCard | None = SimCard.generate() if sim is None else (sim or None)
        self._me = MessageStore("ME", self.profile.me_capacity)
        self._powered = True
        self._line_up = True
        self._line_gen = 0
        self._unplugged = False
        self._muted = False
        self._network_stat = 1  # what the network offers when we may register: 1 home, 5 roaming
        self.signal = 21  # +CSQ <rssi>
        self._injections: list[_Injection] = []
        self._delays: list[_Rule] = []
        self._errors: list[_Rule] = []
        self._cmgd_failures = 0
        self._cmgd_failure_code = 321
        self._ussd_scripts: dict[str, UssdReply] = {}
        self._noise_gen = 0
        self._noise_k = 0

        with self._lock:
            self._reset_settings()
            self._sim_attach(announce=False)
            self._refresh_registration(immediate=True)
            self._arm_noise()

    # ------------------------------------------------------------------ volatile state

    def _reset_settings(self) -> None:
        """Settings a power-on (or ATZ/AT&F for the V.250 ones) restores to defaults."""
        p = self.profile
        self._echo = True  # V.250 6.2.4: E1 is the factory default
        self._verbose = True
        self._quiet = False
        self._cmee = p.cmee_default
        self._cmgf = 0
        self._cscs = p.cscs_default
        self._cnmi = list(p.cnmi_default)
        self._cpms = ["SM", "SM", "SM"]
        self._creg_n = 0
        self._cereg_n = 0
        self._cgreg_n = 0
        self._cops_format = 0
        self._cops_mode = 0
        self._cusd_n = 0
        self._fun = 1
        self._curc = True
        self._pbs = "SM"
        self._settings: dict[str, list[str | None]] = {}
        self._sregs: dict[int, int] = {0: 0, 3: 13, 4: 10, 5: 8}
        self._reg_stat = 0
        self._cpin = "NOT INSERTED"
        self._sim_busy_left = 0
        self._ussd_busy = False
        self._ta_buffer: list[str] = []
        self._rx = bytearray()
        self._rx_overflow = False
        self._queue: deque[_Job] = deque()
        self._job: _Job | None = None

    # ------------------------------------------------------------------ sans-IO interface

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        """``listener()`` is called (from any thread, possibly with the lock held) whenever
        output or a new timer is pending.  It must only schedule a later :meth:`poll`."""
        with self._lock:
            self._listener = listener

    def now(self) -> float:
        return self.clock()

    def feed(self, data: bytes) -> None:
        """Bytes from the host (the DTE).  Any split is fine, down to one byte at a time."""
        with self._lock:
            if not self._live():
                if data:
                    self._log_line("rx", "dropped", data.decode("latin-1"))
                return
            start = 0
            while True:
                cr = data.find(b"\r", start)
                chunk = data[start:] if cr < 0 else data[start : cr + 1]
                self._take_chars(chunk)
                if cr < 0:
                    break
                self._complete_line()
                start = cr + 1
                if not self._live():
                    break
            self._notify()

    def _live(self) -> bool:
        """Powered and connected: input is read and output can go out."""
        return self._powered and self._line_up

    def poll(self) -> bytes:
        """Run due timers and return the bytes the modem sends now (possibly empty)."""
        return self.poll_state()[0]

    def poll_state(self) -> tuple[bytes, bool, int]:
        """:meth:`poll` plus the line state, read atomically: (output, line up, generation).

        A transport compares the generation with the one it serves; when it changed the line
        was dropped (and maybe re-created) since, and the output belongs to the new line.
        """
        with self._lock:
            self._run_timers()
            data = bytes(self._out)
            self._out.clear()
            return data, self._line_up, self._line_gen

    def next_deadline(self) -> float | None:
        """Clock time of the next timer, or None."""
        with self._lock:
            while self._timers and self._timers[0].epoch != self._epoch:
                heapq.heappop(self._timers)
            return self._timers[0].due if self._timers else None

    def line_state(self) -> tuple[bool, int]:
        with self._lock:
            return self._line_up, self._line_gen

    # ------------------------------------------------------------------ observation

    @property
    def sim(self) -> SimCard | None:
        return self._sim

    @property
    def echo(self) -> bool:
        return self._echo

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def radio_on(self) -> bool:
        return self._fun == 1

    @property
    def registered(self) -> bool:
        return self._reg_stat in (1, 5)

    @property
    def muted(self) -> bool:
        return self._muted

    def transcript(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def commands(self) -> list[str]:
        """Command lines received (with an AT prefix), in order, as sent."""
        with self._lock:
            return [e.text for e in self._log if e.kind in ("command", "muted")]

    def events(self, action: str | None = None) -> list[ModemEvent]:
        with self._lock:
            return [e for e in self._events if action is None or e.action == action]

    def stored(self, mem: str = "SM") -> dict[int, tuple[int, str]]:
        """Messages in a memory as {index: (stat, pdu_hex)}, indexes as the modem prints them."""
        with self._lock:
            store = self._store(mem)
            if store is None:
                return {}
            base = self.profile.first_index
            return {slot + base: v for slot, v in store.snapshot().items()}

    def pending(self) -> list[str]:
        """PDUs the network holds for the current SIM (not registered, radio off, memory full)."""
        with self._lock:
            return list(self._sim.network_pending) if self._sim else []

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` (evaluated under the lock) holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_for_command(
        self, prefix: str, timeout: float = 5.0, *, after_seq: int = 0
    ) -> LogEntry:
        """The first received command line starting with ``prefix`` (e.g. "AT+CMGD")."""
        want = normalize_prefix(prefix)
        found: list[LogEntry] = []

        def check() -> bool:
            for e in self._log:
                if e.seq > after_seq and e.kind == "command":
                    cmds = _safe_split(e.text)
                    if cmds and any(c.text.startswith(want) for c in cmds):
                        found.append(e)
                        return True
            return False

        if not self.wait_for(check, timeout):
            raise TimeoutError(f"{self.name}: no {prefix!r} within {timeout} s")
        return found[0]

    def wait_for_event(
        self, action: str, timeout: float = 5.0, *, index: int | None = None, after_seq: int = 0
    ) -> ModemEvent:
        found: list[ModemEvent] = []

        def check() -> bool:
            for e in self._events:
                if e.seq > after_seq and e.action == action and index in (None, e.index):
                    found.append(e)
                    return True
            return False

        if not self.wait_for(check, timeout):
            raise TimeoutError(f"{self.name}: no {action!r} event within {timeout} s")
        return found[0]

    def last_seq(self) -> int:
        """Sequence number of the newest log entry or event (use as ``after_seq``)."""
        with self._lock:
            last_log = self._log[-1].seq if self._log else 0
            last_event = self._events[-1].seq if self._events else 0
            return max(last_log, last_event)

    # ------------------------------------------------------------------ network side

    def deliver_pdu(
        self, pdu_hex: str, *, during: str | None = None, where: Where = "before_ok"
    ) -> int | None:
        """An SMS-DELIVER from the network (hex with the SMSC field, as +CMGR prints it).

        Returns the index it was stored at, or None when the network holds it: radio off, not
        registered, no SIM, memory full (delivered later, in order, when that changes), or
        when ``during`` is given: then it arrives while the next command starting with
        ``during`` executes and its +CMTI is placed at ``where`` in that command's response.
        """
        pdu = pdu_hex.strip().upper()
        tpdu_length(pdu)
        if where not in _WHERE:
            raise ValueError(f"where must be one of {_WHERE}")
        with self._lock:
            if during is not None:
                self._injections.append(
                    _Injection(normalize_prefix(during), where, 1, lambda: self._arrive(pdu))
                )
                return None
            if self._sim is None:
                raise RuntimeError(f"{self.name}: no SIM to deliver to")
            sim = self._sim
            sim.network_pending.append(pdu)
            ahead = len(sim.network_pending)
            handed = self._network_flush()
            self._notify()
            if len(handed) >= ahead:
                return handed[ahead - 1]
            self._event("held", pdu=pdu, detail=self._hold_reason())
            return None

    def _arrive(self, pdu: str) -> list[str]:
        """Deliver now and return the URC lines instead of sending them (for injection)."""
        if self._sim is None:
            return []
        self._sim.network_pending.append(pdu)
        urcs: list[str] = []
        self._network_flush(collect=urcs)
        if pdu in self._sim.network_pending:
            self._event("held", pdu=pdu, detail=self._hold_reason())
        return urcs

    def _hold_reason(self) -> str:
        if not self._powered:
            return "powered off"
        if self._fun != 1:
            return "radio off"
        if not self.registered:
            return "not registered"
        if self._sim is not None and self._sim.memory_exceeded:
            return "memory full"
        return "queued"

    def _can_receive(self) -> bool:
        return self._powered and self._fun == 1 and self.registered and self._sim_ready()

    def _network_flush(self, collect: list[str] | None = None) -> list[int | None]:
        """Hand held messages to the modem while it can take them (TS 23.040 delivery).

        Returns, per message handed over, the index it was stored at (None: routed as +CMT).
        """
        sim = self._sim
        stored: list[int | None] = []
        while sim is not None and sim.network_pending and self._can_receive():
            if sim.memory_exceeded:
                break
            pdu = sim.network_pending[0]
            mt = self._cnmi[1]
            if mt == 2:
                # TS 27.005 3.4.1 <mt>=2: routed to the TE as +CMT, not stored.
                sim.network_pending.popleft()
                stored.append(None)
                urc = f"+CMT: ,{tpdu_length(pdu)}\r\n{pdu}"
                self._event("routed", pdu=pdu, iccid=sim.iccid)
                self._urc_or_collect(urc, collect)
                continue
            store = self._store(self._cpms[2])
            assert store is not None
            slot = store.first_free()
            if slot is None:
                # The ME answers RP-ERROR "memory capacity exceeded" and sets the EF_SMSS flag;
                # the network keeps the message until RP-SMMA (TS 24.011 8.2.5.4, TS 23.040 10.3).
                sim.memory_exceeded = True
                self._event("memory_full", mem=store.name, iccid=sim.iccid)
                if self.profile.memory_full_urc:
                    self._urc(self.profile.memory_full_urc.format(mem=store.name))
                break
            sim.network_pending.popleft()
            store.slots[slot] = StoredSms(0, pdu)
            index = slot + self.profile.first_index
            stored.append(index)
            self._event("stored", index=index, mem=store.name, iccid=sim.iccid, pdu=pdu)
            if mt in (1, 3):
                self._urc_or_collect(f'+CMTI: "{store.name}",{index}', collect)
        return stored

    def _urc_or_collect(self, text: str, collect: list[str] | None) -> None:
        if collect is not None and self._cnmi[0] != 0:
            collect.append(text)
        else:
            self._sms_urc(text)

    def _sms_urc(self, text: str) -> None:
        # TS 27.005 3.4.1 <mode>=0: indications are buffered in the TA; flushed by a later
        # AT+CNMI with <mode> 1..3 and <bfr>=0.
        if self._cnmi[0] == 0:
            self._ta_buffer.append(text)
        else:
            self._urc(text)

    def _memory_freed(self) -> None:
        """After a delete: if the network was told the memory is full, send RP-SMMA."""
        sim = self._sim
        if sim is None or not sim.memory_exceeded:
            return
        store = self._store(self._cpms[2])
        if store is not None and store.first_free() is not None:
            sim.memory_exceeded = False
            self._event("memory_available", mem=store.name, iccid=sim.iccid)
            self._after(self.network_retry, self._flush_later)

    def _flush_later(self) -> None:
        self._network_flush()

    # ------------------------------------------------------------------ registration

    def set_network(self, stat: int = 1) -> None:
        """What the network offers: 1 home, 5 roaming, 2 no coverage (searching), 3 denied."""
        if stat not in (1, 2, 3, 5):
            raise ValueError("stat must be 1, 2, 3 or 5")
        with self._lock:
            self._network_stat = stat
            self._refresh_registration()
            self._notify()

    def set_signal(self, rssi: int) -> None:
        with self._lock:
            self.signal = rssi

    def _sim_ready(self) -> bool:
        return self._sim is not None and self._cpin == "READY"

    def _refresh_registration(self, *, immediate: bool = False) -> None:
        wanted = self._powered and self._fun == 1 and self._sim_ready() and self._cops_mode != 2
        if not wanted:
            self._set_reg(0)
        elif self._network_stat in (1, 5):
            if self._reg_stat in (1, 5) or immediate:
                self._set_reg(self._network_stat)
            elif self._reg_stat != 2:
                self._set_reg(2)
                self._after(self.register_delay, self._registered_now)
        else:
            self._set_reg(self._network_stat)

    def _registered_now(self) -> None:
        if self._reg_stat == 2:
            self._refresh_registration(immediate=True)

    def _set_reg(self, stat: int) -> None:
        if stat == self._reg_stat:
            return
        was = self.registered
        self._reg_stat = stat
        if self._creg_n:
            self._urc("+CREG: " + self._reg_fields(stat, self._creg_n, LAC, CELL))
        if self._cgreg_n:
            self._urc("+CGREG: " + self._reg_fields(stat, self._cgreg_n, LAC, CELL))
        if self._cereg_n and self.profile.cereg:
            self._urc("+CEREG: " + self._reg_fields(stat, self._cereg_n, TAC, CELL))
        if self.registered and not was:
            self._event("registered", detail=str(stat))
            self._network_flush()
        elif was and not self.registered:
            self._event("unregistered", detail=str(stat))

    def _reg_fields(self, stat: int, n: int, area: str, cell: str) -> str:
        """<stat>[,<lac>,<ci>[,<AcT>]] of TS 27.007 7.2 (location only with n=2 and service)."""
        if n == 2 and stat in (1, 5):
            tail = f',"{area}","{cell}"'
            if self.profile.act is not None:
                tail += f",{self.profile.act}"
            return f"{stat}{tail}"
        return str(stat)

    # ------------------------------------------------------------------ SIM slot

    def insert_sim(self, sim: SimCard | None, *, announce: bool = True) -> SimCard | None:
        """Put ``sim`` in the slot (None: leave it empty); returns the SIM taken out.

        The old SIM keeps its stored messages and held network messages.  With
        ``announce=False`` the swap happens behind the host's back: no +CPIN/vendor URCs and
        no registration change, like a SIM800 on a board without a SIM-detect pin.
        """
        with self._lock:
            old = self._sim
            if old is not None:
                self._event("sim_removed", iccid=old.iccid)
                self._sim = None
                self._cpin = "NOT INSERTED"
                if announce:
                    self._refresh_registration()
                    if self._powered and self.profile.cpin_urc:
                        self._urc("+CPIN: NOT READY")
                    for text in self.profile.sim_removed_urcs if self._powered else ():
                        self._urc(text)
            self._sim = sim
            if sim is not None:
                if not announce:
                    self._sim_attach(announce=False)
                elif self.sim_init_time > 0:
                    # The ME reads the new card for a while: SIM commands answer "SIM busy".
                    self._cpin = "INITIALIZING"
                    self._after(self.sim_init_time, lambda: self._sim_ready_after_insert(sim))
                else:
                    self._sim_ready_after_insert(sim)
            self._notify()
            return old

    def _sim_ready_after_insert(self, sim: SimCard) -> None:
        if self._sim is sim:
            self._sim_attach(announce=True)
            self._refresh_registration()

    def swap_sim(
        self,
        iccid: str,
        imsi: str,
        number: str | None = None,
        *,
        announce: bool = True,
        **kwargs: object,
    ) -> SimCard | None:
        """Replace the SIM with a new one (extra keywords go to :class:`SimCard`); returns the old."""
        new = SimCard(iccid=iccid, imsi=imsi, number=number, **kwargs)  # type: ignore[arg-type]
        return self.insert_sim(new, announce=announce)

    def _sim_attach(self, *, announce: bool, event: bool = True) -> None:
        sim = self._sim
        if sim is None:
            self._cpin = "NOT INSERTED"
            return
        if event:
            self._event("sim_inserted", iccid=sim.iccid)
        if sim.pin_attempts <= 0:
            self._cpin = "SIM PUK"
        elif sim.pin is not None:
            self._cpin = "SIM PIN"
        else:
            self._cpin = "READY"
        self._sim_busy_left = self.sim_busy_tries
        if announce and self._powered:
            self._announce_sim()

    def _announce_sim(self) -> None:
        if self.profile.cpin_urc:
            self._urc(f"+CPIN: {self._cpin}")
        if self._cpin == "READY":
            for text in self.profile.sim_ready_urcs:
                self._urc(text)

    def _sim_error(self, *, sms: bool, pin_ok: bool = False) -> Result | None:
        """The error a SIM-dependent command gets when the SIM is not usable (27.007 9.2)."""
        make = cms if sms else cme
        if self._sim is None:
            return make(310 if sms else 10)
        if self._cpin == "INITIALIZING":
            return make(314 if sms else 14)
        if self._sim_busy_left > 0:
            self._sim_busy_left -= 1
            return make(314 if sms else 14)
        if self._cpin == "SIM PIN" and not pin_ok:
            return make(311 if sms else 11)
        if self._cpin == "SIM PUK" and not pin_ok:
            return make(316 if sms else 12)
        return None

    def _store(self, mem: str) -> MessageStore | None:
        if mem == "SM":
            return self._sim.messages if self._sim else None
        if mem == "ME":
            return self._me
        return None

    # ------------------------------------------------------------------ power

    def unplug(self) -> None:
        """The USB cable is pulled: power lost, the port disappears (TCP: refused)."""
        with self._lock:
            self._unplugged = True
            self._power_off(drop_line=True, reason="unplug")
            self._notify()

    def replug(self) -> None:
        """Plugged back: the port reappears (a new pty path) and the modem boots."""
        with self._lock:
            if not self._unplugged:
                return
            self._unplugged = False
            self._power_on()
            self._notify()

    def reset(self, *, drop_line: bool | None = None) -> None:
        """A spontaneous reset, like AT+CFUN=1,1; ``drop_line`` defaults to ``reset_drops_line``."""
        with self._lock:
            self._reset_now(self.reset_drops_line if drop_line is None else drop_line)
            self._notify()

    def _reset_now(self, drop_line: bool) -> None:
        self._power_off(drop_line=drop_line, reason="reset")
        self._after(self.reset_time, self._power_on)

    def _power_off(self, *, drop_line: bool, reason: str) -> None:
        if self._powered or self._line_up:
            self._event("power_off", detail=reason)
        self._epoch += 1  # cancels every pending timer: delayed replies, USSD, registration
        self._powered = False
        self._set_reg(0)
        self._queue.clear()
        self._job = None
        self._rx.clear()
        if drop_line and self._line_up:
            self._line_up = False
            self._line_gen += 1
            self._out.clear()
            self._event("line_down")

    def _power_on(self) -> None:
        if self._unplugged:
            return
        if not self._line_up:
            self._line_up = True
            self._line_gen += 1
            self._event("line_up")
        self._epoch += 1
        self._after(self.boot_time, self._booted)

    def _booted(self) -> None:
        self._reset_settings()
        self._muted = False  # a power cycle is what cures a hung firmware
        self._powered = True
        self._event("power_on")
        for text in self.profile.boot_urcs:
            self._urc(text)
        self._sim_attach(announce=False, event=False)
        if self._sim is None:
            if self.profile.cpin_urc:
                self._urc("+CPIN: NOT INSERTED")
        else:
            self._announce_sim()
        self._refresh_registration()
        self._arm_noise()

    # ------------------------------------------------------------------ faults

    def inject_urc(self, text: str) -> None:
        """Send ``"\\r\\n<text>\\r\\n"`` now (even when muted: the test asked for it)."""
        with self._lock:
            self._emit_line_raw(text, "urc")
            self._notify()

    def inject_urc_during(
        self, command_prefix: str, text: str, where: Where = "before_ok", times: int = 1
    ) -> None:
        """Place a URC inside the response of the next ``times`` commands matching the prefix.

        ``after_echo``: right after the command's echo, before anything else; ``mid_line``: in
        the middle of the first response line (or of the result code when there is none);
        ``before_ok``: between the information text and the final result; ``after_ok``: right
        after the final result, in the same write.
        """
        if where not in _WHERE:
            raise ValueError(f"where must be one of {_WHERE}")
        with self._lock:
            self._injections.append(
                _Injection(normalize_prefix(command_prefix), where, times, lambda: [text])
            )

    def set_delay(self, command_prefix: str, seconds: float, times: int | None = None) -> None:
        """Answer matching commands only after ``seconds`` (0 removes the rule).

        The command takes effect when the answer is sent; later command lines queue behind it.
        """
        with self._lock:
            p = normalize_prefix(command_prefix)
            self._delays = [r for r in self._delays if r.prefix != p]
            if seconds > 0:
                self._delays.append(_Rule(p, times, seconds))

    def mute(self, on: bool = True) -> None:
        """A hung firmware: keeps reading (and logging) but executes and answers nothing,
        not even echo or URCs.  Incoming SMS are still stored.  A power cycle unmutes."""
        with self._lock:
            self._muted = on

    def garbage(self, data: bytes) -> None:
        """Send raw bytes now (line noise, a baud-rate mismatch, a firmware crash dump)."""
        with self._lock:
            if self._powered and self._line_up:
                self._out += data
                self._log_line("tx", "garbage", data.decode("latin-1"))
                self._notify()

    def fail_cmgd(self, n: int = 1, code: int = 321) -> None:
        """The next ``n`` AT+CMGD answer +CMS ERROR: ``code`` and delete nothing."""
        with self._lock:
            self._cmgd_failures = n
            self._cmgd_failure_code = code

    def cme_error(self, command_prefix: str, code: int, times: int = 1) -> None:
        """The next ``times`` matching commands fail with +CME ERROR: ``code`` (not executed)."""
        self._add_error(command_prefix, cme(code), times)

    def cms_error(self, command_prefix: str, code: int, times: int = 1) -> None:
        self._add_error(command_prefix, cms(code), times)

    def error(self, command_prefix: str, times: int = 1) -> None:
        """The next ``times`` matching commands fail with plain ERROR."""
        self._add_error(command_prefix, ERROR, times)

    def _add_error(self, prefix: str, result: Result, times: int) -> None:
        with self._lock:
            self._errors.append(_Rule(normalize_prefix(prefix), times, result))

    def storage_full(self, on: bool = True) -> None:
        """Set (or clear) the SIM's memory-capacity-exceeded flag (EF_SMSS).

        The network then holds new messages until a delete frees memory (RP-SMMA), exactly as
        after a real overflow.  CPMS keeps reporting the true counts.
        """
        with self._lock:
            if self._sim is None:
                raise RuntimeError(f"{self.name}: no SIM")
            self._sim.memory_exceeded = on
            if not on:
                self._after(0, self._flush_later)
            self._notify()

    def set_ussd_reply(
        self,
        code: str,
        text: str | None,
        *,
        dcs: int = 15,
        status: int = 0,
        delay: float | None = None,
        silent: bool = False,
    ) -> None:
        """Script the network's answer to a USSD request (e.g. "*111*0887#").

        ``dcs`` 15 sends GSM-7 text; 72 (0x48) sends UCS2.  Unscripted codes get
        "+CUSD: 4" (operation not supported).
        """
        with self._lock:
            self._ussd_scripts[code] = UssdReply(text, dcs, status, delay, silent)

    def set_noise(self, interval: float | None) -> None:
        """Periodic vendor URCs (the profile's ``noise_urcs``) every ``interval`` s; None: off."""
        with self._lock:
            self.noise_interval = interval
            self._arm_noise()
            self._notify()

    def clear_faults(self) -> None:
        with self._lock:
            self._injections.clear()
            self._delays.clear()
            self._errors.clear()
            self._cmgd_failures = 0
            self._muted = False

    def _arm_noise(self) -> None:
        self._noise_gen += 1
        gen = self._noise_gen
        if self.noise_interval and self.profile.noise_urcs:
            self._after(max(self.noise_interval, 0.001), lambda: self._noise(gen))

    def _noise(self, gen: int) -> None:
        interval = self.noise_interval
        if gen != self._noise_gen or not interval:
            return
        if self._curc and self._powered:
            urcs = self.profile.noise_urcs
            template = urcs[self._noise_k % len(urcs)]
            self._noise_k += 1
            self._urc(template.format(rssi=self.signal if self._fun == 1 else 99))
        self._after(max(interval, 0.001), lambda: self._noise(gen))

    def _take_delay(self, cmd: Command) -> float:
        for rule in self._delays:
            if cmd.text.startswith(rule.prefix):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._delays.remove(rule)
                assert isinstance(rule.value, float | int)
                return float(rule.value)
        return 0.0

    def _take_error(self, cmd: Command) -> Result | None:
        for rule in self._errors:
            if cmd.text.startswith(rule.prefix):
                assert rule.remaining is not None
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._errors.remove(rule)
                assert isinstance(rule.value, Result)
                return rule.value
        return None

    def _take_injections(self, cmd: Command, where: Iterable[str]) -> list[tuple[str, list[str]]]:
        taken: list[tuple[str, list[str]]] = []
        wanted = set(where)
        for inj in list(self._injections):
            if inj.where in wanted and cmd.text.startswith(inj.prefix):
                inj.remaining -= 1
                if inj.remaining <= 0:
                    self._injections.remove(inj)
                taken.append((inj.where, inj.make()))
        return taken

    # ------------------------------------------------------------------ line discipline

    def _take_chars(self, chunk: bytes) -> None:
        if self._muted:
            pass
        elif self._echo:
            # V.250 6.2.4: characters are echoed as received.  LF is not part of a command
            # line (S4 only formats responses), so we neither echo nor store it.
            echo = chunk.replace(b"\n", b"")
            if echo:
                self._out += echo
        for b in chunk:
            if b in (0x0A, 0x0D):
                continue
            if b == self._sregs.get(5, 8):  # S5 backspace edits the line
                if self._rx:
                    self._rx.pop()
            elif len(self._rx) < MAX_LINE:
                self._rx.append(b)
            else:
                self._rx_overflow = True

    def _complete_line(self) -> None:
        raw = self._rx.decode("latin-1")
        overflow = self._rx_overflow
        self._rx.clear()
        self._rx_overflow = False
        if not raw.strip():
            return  # an empty line is ignored (V.250 5.2.1)
        try:
            commands = split_command_line(raw)
        except ParseError:
            commands = []
        if commands is None:
            self._log_line("rx", "ignored", raw)
            return
        if self._muted:
            self._log_line("rx", "muted", raw)
            return
        self._log_line("rx", "command", raw)
        job = _Job(raw, None if overflow or not commands else commands)
        for cmd in job.commands or ():
            for _, lines in self._take_injections(cmd, ("after_echo",)):
                for text in lines:
                    self._urc(text)
        self._queue.append(job)
        self._pump()

    def _pump(self) -> None:
        while self._job is None and self._queue and self._powered:
            self._job = self._queue.popleft()
            self._advance()

    def _resume(self) -> None:
        if self._job is not None:
            self._advance()
        self._pump()

    def _advance(self) -> None:
        job = self._job
        assert job is not None
        if job.commands is None:
            job.result = ERROR
            self._finish(job)
            return
        while job.next < len(job.commands):
            cmd = job.commands[job.next]
            if not job.waited:
                delay = self._take_delay(cmd)
                if delay > 0:
                    job.waited = True
                    self._after(delay, self._resume)
                    return
            job.waited = False
            job.next += 1
            for where, lines in self._take_injections(cmd, ("mid_line", "before_ok", "after_ok")):
                job.inject[where].extend(lines)
            reply = self._execute(cmd)
            if not self._powered or self._job is not job:
                return  # the command reset the modem
            if reply.lines:
                job.blocks.append(reply.lines)
            if reply.after is not None:
                job.after.append(reply.after)
            if reply.result is not None and reply.result.kind != "ok":
                job.result = reply.result
                break
        self._finish(job)

    def _execute(self, cmd: Command) -> Reply:
        forced = self._take_error(cmd)
        if forced is not None:
            return Reply(result=forced)
        try:
            return dispatch(self, cmd)
        except ParseError:
            return Reply(result=ERROR)

    def _finish(self, job: _Job) -> None:
        self._job = None
        final = self._format_final(job.result)
        info = "".join(self._format_info(lines) for lines in job.blocks)
        mid = job.inject["mid_line"]
        if mid:
            target_is_info = bool(info)
            target = info if target_is_info else final
            start = len(target) - len(target.lstrip("\r\n"))
            end = target.find("\r", start)
            end = len(target) if end < 0 else end
            cut = start + max(1, (end - start) // 2)
            target = target[:cut] + self._frame_urcs(mid) + target[cut:]
            if target_is_info:
                info = target
            else:
                final = target
        text = info + self._frame_urcs(job.inject["before_ok"]) + final
        text += self._frame_urcs(job.inject["after_ok"])
        if self._muted or not self._live():
            self._log_line("tx", "dropped", text)
        else:
            self._out += text.encode("latin-1", "replace")
            for lines in job.blocks:
                for line in lines:
                    self._log_line("tx", "response", line)
            for where in ("mid_line", "before_ok", "after_ok"):
                for line in job.inject[where]:
                    self._log_line("tx", "urc", line)
            if final:
                self._log_line("tx", "final", final.strip())
            self._notify()
        for fn in job.after:
            fn()

    def _format_info(self, lines: list[str]) -> str:
        if not lines:
            return ""
        if self._verbose:
            return "\r\n" + "\r\n".join(lines) + "\r\n"
        return "".join(line + "\r\n" for line in lines)

    def _format_final(self, result: Result) -> str:
        """V.250 5.7.1 framing; +CMEE (27.007 9.1) decides how CME/CMS errors read."""
        if self._quiet:
            return ""
        if result.kind == "ok":
            text, numeric = "OK", "0"
        elif result.kind == "raw":
            text, numeric = result.text, "4"
        elif result.kind == "error" or self._cmee == 0:
            text, numeric = "ERROR", "4"
        else:
            table = CME_TEXT if result.kind == "cme" else CMS_TEXT
            value = str(result.code) if self._cmee == 1 else table.get(result.code, "unknown")
            text = f"+{result.kind.upper()} ERROR: {value}"
            numeric = ""
        if self._verbose:
            return f"\r\n{text}\r\n"
        return f"{numeric}\r" if numeric else f"{text}\r\n"

    def _frame_urcs(self, lines: list[str]) -> str:
        return "".join(f"\r\n{line}\r\n" for line in lines)

    def _urc(self, text: str) -> None:
        """An unsolicited result code generated by the modem itself."""
        if self._muted or not self._live():
            self._log_line("tx", "dropped", text)
            return
        self._emit_line_raw(text, "urc")

    def _emit_line_raw(self, text: str, kind: str) -> None:
        if not self._live():
            self._log_line("tx", "dropped", text)
            return
        self._out += f"\r\n{text}\r\n".encode("latin-1", "replace")
        if len(self._out) > MAX_OUTPUT:
            del self._out[: len(self._out) - MAX_OUTPUT]
        self._log_line("tx", kind, text)
        self._notify()

    # ------------------------------------------------------------------ timers and logs

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(
            self._timers, _Timer(self.clock() + delay, next(self._timer_seq), self._epoch, fn)
        )
        self._notify()

    def _run_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0].due <= now:
            timer = heapq.heappop(self._timers)
            if timer.epoch == self._epoch:
                timer.fn()

    def _notify(self) -> None:
        if self._listener is not None:
            self._listener()

    def _log_line(self, direction: Literal["rx", "tx"], kind: str, text: str) -> None:
        self._log.append(LogEntry(next(self._seq), self.clock(), direction, kind, text))
        self._cond.notify_all()

    def _event(self, action: str, **fields: object) -> None:
        self._events.append(
            ModemEvent(next(self._seq), self.clock(), action, **fields)  # type: ignore[arg-type]
        )
        self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<EmulatedModem {self.name} {self.profile.name}>"


def _safe_split(line: str) -> list[Command] | None:
    try:
        return split_command_line(line)
    except ParseError:
        return None
