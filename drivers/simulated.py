"""The simulated driver: a bank of SIMs on a simulated GSM network, selectable like real hardware.

``driver = "simulated"`` gives ``sims`` SIMs with deterministic ICCID / IMSI / number derived
from the device name and ``country``.  The *network* is a SQLite file (:class:`SimNetwork`) that
tests, the demo and the benchmark write SMS into, from this process or another one.  The file
plays two real-world roles:

* the SIM's message storage: an SMS stays in it until the agent acks it (the agent's ``ack``
  deletes it, as ``AT+CMGD`` does), so it survives a SIGKILLed agent exactly as a modem's SIM
  storage does, and a re-connect re-reads everything not yet deleted (the ``AT+CMGL`` sweep);
* the network's store-and-forward: an SMS for a SIM whose radio is off is held and delivered
  once the radio is back on, as a real SMSC retries (TS 23.040 3.2.5).

A simulated device can also be a SIM bank or an eSIM gateway (``slots``, ``esim_ports``): its
SIMs then sit ``slots`` to a port, one *selected* per port and the others standby (the network
holds their SMS, as it does for a SIM that is not in a radio module); ``select`` switches a
port's slot, and on eUICC ports ``esim_download`` / ``esim_delete`` add and remove profiles.

Faults on demand (``SimNetwork.set_fault``): a device goes down (connect fails, the event stream
ends), acks become slow, or connecting becomes slow (a modem pool still reading its SIM cards).
Multipart messages are sent as parts with concatenation info, in any order, optionally with
parts dropped; UCS2 text travels as UTF-16BE bytes so a surrogate pair can be split across
parts as phones do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from drivers.base import (
    Capability,
    CommandError,
    Concat,
    DeviceDown,
    DeviceUp,
    Driver,
    DriverConfig,
    DriverContext,
    DriverError,
    Encoding,
    Event,
    SimGone,
    SimInfo,
    SimKind,
    SimPresent,
    SmsPart,
)

#: ISO country → (MCC, MNC, calling code, operator name, UTC offset hours for SCTS).
COUNTRIES: dict[str, tuple[str, str, str, str, int]] = {
    "RU": ("250", "01", "7", "MTS", 3),
    "KZ": ("401", "02", "7", "Kcell", 5),
    "UA": ("255", "01", "380", "Vodafone UA", 2),
    "GB": ("234", "15", "44", "Vodafone UK", 0),
    "DE": ("262", "01", "49", "Telekom.de", 1),
    "US": ("310", "260", "1", "T-Mobile", -5),
    "ID": ("510", "10", "62", "Telkomsel", 7),
    "IN": ("404", "45", "91", "Airtel", 5),
    "BR": ("724", "05", "55", "Claro BR", -3),
    "PL": ("260", "02", "48", "T-Mobile.pl", 1),
}

#: The GSM 7-bit default alphabet and extension table (TS 23.038 6.2.1): text made only of
#: these travels as GSM-7 (153 characters a part), anything else as UCS2 (67 a part).
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sims (
    iccid TEXT PRIMARY KEY, device TEXT NOT NULL, idx INTEGER NOT NULL, imsi TEXT NOT NULL,
    number TEXT NOT NULL, country TEXT NOT NULL, radio_on INTEGER NOT NULL DEFAULT 1,
    forward_to TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sims_number ON sims (number);
CREATE TABLE IF NOT EXISTS banks (
    iccid TEXT PRIMARY KEY, port INTEGER NOT NULL, slot INTEGER NOT NULL,
    selected INTEGER NOT NULL, kind TEXT NOT NULL, eid TEXT
);
CREATE TABLE IF NOT EXISTS sms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, iccid TEXT NOT NULL,
    uid TEXT NOT NULL, sender TEXT NOT NULL, sent_at TEXT NOT NULL, encoding TEXT NOT NULL,
    text TEXT NOT NULL, data BLOB NOT NULL, ref_bits INTEGER, ref INTEGER, part INTEGER,
    total INTEGER, flash INTEGER NOT NULL DEFAULT 0, sent_mono REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sms_device ON sms (device, id);
CREATE TABLE IF NOT EXISTS faults (
    device TEXT PRIMARY KEY, down INTEGER NOT NULL DEFAULT 0, slow_ack_s REAL NOT NULL DEFAULT 0,
    slow_connect_s REAL NOT NULL DEFAULT 0
);
"""

# In-process wake-ups: SimNetwork.send() in this process pokes drivers polling the same file,
# so the demo and the benchmark do not pay the poll interval.  Cross-process senders rely on
# the poll alone.
_WAKERS: dict[str, weakref.WeakSet[_Waker]] = {}
_WAKERS_LOCK = threading.Lock()


class _Waker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def poke(self) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed
            self.loop.call_soon_threadsafe(self.event.set)


def _luhn(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return str((10 - total % 10) % 10)


def sim_identity(device: str, index: int, country: str) -> tuple[str, str, str]:
    """Deterministic (ICCID, IMSI, E.164 number) of SIM ``index`` of a simulated device."""
    mcc, mnc, cc, _op, _tz = COUNTRIES[country]
    dev = int(hashlib.sha256(device.encode()).hexdigest()[:8], 16)
    body = f"89{cc[:2]:0>2}{mnc[:2]:0>2}{dev % 10**6:06d}{index:06d}"[:18]
    iccid = body + _luhn(body)
    imsi = f"{mcc}{mnc}{dev % 10**5:05d}{index:05d}"[:15]
    national = f"9{dev % 100:02d}{index:07d}"
    return iccid, imsi, f"+{cc}{national}"


def eid_of(device: str, port: int) -> str:
    """A deterministic 32-digit EID for the eUICC of a simulated port (GSMA SGP.29 layout:
    "89" + country + issuer + serial; the check digits are not modelled)."""
    digest = int(hashlib.sha256(f"{device}/{port}".encode()).hexdigest()[:16], 16)
    return f"8904903200{digest:022d}"[:32]


def signal_for(iccid: str) -> int:
    return -51 - int(iccid[-4:]) % 50


def is_gsm7(text: str) -> bool:
    return all(ch in _GSM7 for ch in text)


class SimNetwork:
    """The simulated network's file.  Usable from any process; every write is durable."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(Path(path).resolve())
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(faults)")}
            if "slow_connect_s" not in columns:  # a network file from an older version
                self._db.execute(
                    "ALTER TABLE faults ADD COLUMN slow_connect_s REAL NOT NULL DEFAULT 0"
                )
        self._ref = int.from_bytes(os.urandom(2), "big")

    def close(self) -> None:
        # Under the lock: a cancelled ``asyncio.to_thread`` call keeps running in its worker
        # thread, and closing the connection under a running query crashes the interpreter.
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        with self._lock:
            cur = self._db.execute(sql, params)
            return int(cur.lastrowid or 0)

    # -- SIMs ------------------------------------------------------------------------------

    def provision(
        self, device: str, count: int, country: str, *, slots: int = 1, esim_ports: int = 0
    ) -> list[sqlite3.Row]:
        """Create the device's SIMs if absent (radio state of existing SIMs is kept).

        With ``slots`` > 1 or ``esim_ports``, SIM ``i`` sits in port ``i // slots`` (0-based),
        slot ``i % slots + 1``; slot 1 starts selected.  The last ``esim_ports`` ports hold
        eSIM profiles on an eUICC."""
        ports = -(-count // slots)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(count):
                    iccid, imsi, number = sim_identity(device, i, country)
                    self._db.execute(
                        "INSERT OR IGNORE INTO sims (iccid, device, idx, imsi, number, country)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (iccid, device, i, imsi, number, country),
                    )
                    if slots > 1 or esim_ports:
                        port, slot = divmod(i, slots)
                        esim = port >= ports - esim_ports
                        self._db.execute(
                            "INSERT OR IGNORE INTO banks (iccid, port, slot, selected, kind, eid)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            (
                                iccid,
                                port,
                                slot + 1,
                                int(slot == 0),
                                "esim" if esim else "sim",
                                eid_of(device, port) if esim else None,
                            ),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.sims(device)

    _SIMS = (
        "SELECT sims.*, banks.port AS bank_port, banks.slot AS bank_slot,"
        " coalesce(banks.selected, 1) AS selected, coalesce(banks.kind, 'sim') AS kind,"
        " banks.eid AS eid FROM sims LEFT JOIN banks USING (iccid)"
    )

    def sims(self, device: str | None = None) -> list[sqlite3.Row]:
        with self._lock:
            if device is None:
                return self._db.execute(self._SIMS + " ORDER BY device, idx").fetchall()
            return self._db.execute(
                self._SIMS + " WHERE device = ? ORDER BY idx", (device,)
            ).fetchall()

    def sim(self, key: str) -> sqlite3.Row:
        """A SIM by number or ICCID."""
        with self._lock:
            row = self._db.execute(
                self._SIMS + " WHERE number = ? OR iccid = ?", (key, key)
            ).fetchone()
        if row is None:
            raise KeyError(f"no simulated SIM with number or ICCID {key!r}")
        return row  # type: ignore[no-any-return]

    def numbers(self) -> dict[str, str]:
        return {r["number"]: r["iccid"] for r in self.sims()}

    def set_sim(
        self,
        iccid: str,
        *,
        radio_on: bool | None = None,
        forward_to: str | None = None,
        set_forward: bool = False,
    ) -> None:
        if radio_on is not None:
            self._write("UPDATE sims SET radio_on = ? WHERE iccid = ?", (int(radio_on), iccid))
        if set_forward:
            self._write("UPDATE sims SET forward_to = ? WHERE iccid = ?", (forward_to, iccid))

    def select(self, iccid: str) -> list[str]:
        """Make ``iccid`` the selected SIM of its bank port; returns the ICCIDs that changed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT device, port FROM sims JOIN banks USING (iccid) WHERE iccid = ?",
                    (iccid,),
                ).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return []  # a one-slot SIM is always selected
                changed = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT iccid FROM sims JOIN banks USING (iccid)"
                        " WHERE device = ? AND port = ? AND (selected = 1) != (iccid = ?)",
                        (row["device"], row["port"], iccid),
                    )
                ]
                self._db.execute(
                    "UPDATE banks SET selected = (iccid = ?) WHERE iccid IN"
                    " (SELECT iccid FROM sims JOIN banks USING (iccid)"
                    "  WHERE device = ? AND port = ?)",
                    (iccid, row["device"], row["port"]),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed

    def add_profile(self, device: str, port: int, activation_code: str) -> sqlite3.Row:
        """Download an eSIM profile onto the eUICC of ``port`` (standby, like a new profile)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                bank = self._db.execute(
                    "SELECT eid, max(slot) AS last FROM sims JOIN banks USING (iccid)"
                    " WHERE device = ? AND port = ? AND kind = 'esim'",
                    (device, port),
                ).fetchone()
                country_row = self._db.execute(
                    "SELECT country, max(idx) AS idx FROM sims WHERE device = ?", (device,)
                ).fetchone()
                if bank is None or bank["eid"] is None:
                    raise ValueError(f"port {port} of {device} has no eUICC")
                # A profile has its own identity: derived from the activation code, so the
                # same download twice is the same profile (the box refuses a duplicate).
                seed = int(hashlib.sha256(activation_code.encode()).hexdigest()[:6], 16)
                idx = 100000 + seed % 800000
                iccid, imsi, number = sim_identity(device, idx, country_row["country"])
                if self._db.execute("SELECT 1 FROM sims WHERE iccid = ?", (iccid,)).fetchone():
                    raise ValueError("this profile is already on the eUICC")
                self._db.execute(
                    "INSERT INTO sims (iccid, device, idx, imsi, number, country)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (iccid, device, idx, imsi, number, country_row["country"]),
                )
                self._db.execute(
                    "INSERT INTO banks (iccid, port, slot, selected, kind, eid)"
                    " VALUES (?, ?, ?, 0, 'esim', ?)",
                    (iccid, port, (bank["last"] or 0) + 1, bank["eid"]),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.sim(iccid)

    def delete_profile(self, iccid: str) -> None:
        """Delete an eSIM profile and what the network held for it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM sms WHERE iccid = ?", (iccid,))
                self._db.execute("DELETE FROM banks WHERE iccid = ?", (iccid,))
                self._db.execute("DELETE FROM sims WHERE iccid = ?", (iccid,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- faults ----------------------------------------------------------------------------

    def set_fault(
        self,
        device: str,
        *,
        down: bool | None = None,
        slow_ack_s: float | None = None,
        slow_connect_s: float | None = None,
    ) -> None:
        self._write("INSERT OR IGNORE INTO faults (device) VALUES (?)", (device,))
        if slow_connect_s is not None:
            self._write(
                "UPDATE faults SET slow_connect_s = ? WHERE device = ?", (slow_connect_s, device)
            )
        if down is not None:
            self._write("UPDATE faults SET down = ? WHERE device = ?", (int(down), device))
        if slow_ack_s is not None:
            self._write("UPDATE faults SET slow_ack_s = ? WHERE device = ?", (slow_ack_s, device))

    def faults(self, device: str) -> tuple[bool, float]:
        with self._lock:
            row = self._db.execute(
                "SELECT down, slow_ack_s FROM faults WHERE device = ?", (device,)
            ).fetchone()
        return (False, 0.0) if row is None else (bool(row[0]), float(row[1]))

    def connect_delay(self, device: str) -> float:
        """Seconds a connect of ``device`` takes before its SIMs are known (0: at once)."""
        with self._lock:
            row = self._db.execute(
                "SELECT slow_connect_s FROM faults WHERE device = ?", (device,)
            ).fetchone()
        return 0.0 if row is None else float(row[0])

    # -- SMS -------------------------------------------------------------------------------

    def send(
        self,
        to: str,
        text: str,
        *,
        sender: str = "+79001112233",
        sent_at: datetime | None = None,
        encoding: Literal["auto", "gsm7", "ucs2"] = "auto",
        order: Sequence[int] | Literal["reverse", "shuffle"] | None = None,
        drop: Sequence[int] = (),
        ref_bits: int = 8,
        part_chars: int | None = None,
        flash: bool = False,
    ) -> list[int]:
        """Send an SMS to a SIM (by number or ICCID), split into parts like a phone does.

        ``order`` is the 1-based order in which parts reach the SIM (default in order), or
        ``"reverse"`` / ``"shuffle"``; parts in ``drop`` never arrive.  Returns the network
        ids of the parts stored.
        """
        sim = self.sim(to)
        country = COUNTRIES.get(sim["country"], COUNTRIES["RU"])
        if sent_at is None:
            tz = timezone(timedelta(hours=country[4]))
            sent_at = datetime.now(tz).replace(microsecond=0)
        enc = encoding if encoding != "auto" else ("gsm7" if is_gsm7(text) else "ucs2")
        if enc == "gsm7":
            size = part_chars or (160 if len(text) <= 160 else 153)
            chunks_t = [text[i : i + size] for i in range(0, len(text), size)] or [""]
            payloads: list[tuple[str, bytes]] = [(c, b"") for c in chunks_t]
        else:
            raw = text.encode("utf-16-be")
            size = (part_chars or (70 if len(raw) <= 140 else 67)) * 2
            payloads = [("", raw[i : i + size]) for i in range(0, len(raw), size)] or [("", b"")]
        total = len(payloads)
        self._ref = (self._ref + 1) % (1 << ref_bits)
        uid = os.urandom(8).hex()
        numbers = list(range(1, total + 1))
        if order == "reverse":
            numbers.reverse()
        elif order == "shuffle":
            random.shuffle(numbers)
        elif order is not None:
            numbers = list(order)
        if sorted(numbers) != list(range(1, total + 1)):
            raise ValueError(f"order {numbers} is not a permutation of parts 1..{total}")
        ids: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for n in numbers:
                    if n in drop:
                        continue
                    t, d = payloads[n - 1]
                    cur = self._db.execute(
                        "INSERT INTO sms (device, iccid, uid, sender, sent_at, encoding, text,"
                        " data, ref_bits, ref, part, total, flash, sent_mono)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            sim["device"],
                            sim["iccid"],
                            uid,
                            sender,
                            sent_at.isoformat(),
                            enc,
                            t,
                            d,
                            ref_bits if total > 1 else None,
                            self._ref if total > 1 else None,
                            n if total > 1 else None,
                            total if total > 1 else None,
                            int(flash),
                            time.time(),
                        ),
                    )
                    ids.append(int(cur.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        with _WAKERS_LOCK:
            wakers = list(_WAKERS.get(self.path, ()))
        for w in wakers:
            w.poke()
        return ids

    def stored(self, device: str | None = None) -> int:
        """SMS parts still on the SIMs or held by the network (not yet acked by the agent)."""
        with self._lock:
            if device is None:
                return int(self._db.execute("SELECT count(*) FROM sms").fetchone()[0])
            return int(
                self._db.execute("SELECT count(*) FROM sms WHERE device = ?", (device,)).fetchone()[
                    0
                ]
            )


class SimulatedConfig(DriverConfig):
    driver: Literal["simulated"] = "simulated"
    sims: int = Field(8, ge=1, le=20000)
    country: str = Field("RU", pattern=r"^[A-Z]{2}$")
    #: The simulated network's file; default ``<state_dir>/simnet.db`` (shared by devices).
    network: Path | None = None
    #: How often the network file is polled for SMS from other processes.
    poll_ms: float = Field(5.0, gt=0, le=5000)
    #: SIMs per port: more than 1 makes the device a SIM bank (one selected SIM per port).
    slots: int = Field(1, ge=1, le=16)
    #: The last ``esim_ports`` ports hold eSIM profiles on an eUICC instead of plastic SIMs.
    esim_ports: int = Field(0, ge=0, le=512)

    @field_validator("country")
    @classmethod
    def _country(cls, v: str) -> str:
        if v not in COUNTRIES:
            raise ValueError(f"country {v!r} is not simulated (have {', '.join(COUNTRIES)})")
        return v

    @model_validator(mode="after")
    def _bank(self) -> SimulatedConfig:
        if self.esim_ports * self.slots > self.sims:
            raise ValueError("esim_ports x slots is more than sims")
        return self


@dataclass(frozen=True, slots=True)
class _Token:
    row: int


class SimulatedDriver(Driver):
    """A bank of simulated SIMs.  See the module docstring."""

    config_model = SimulatedConfig
    config: SimulatedConfig
    capabilities = frozenset(
        {Capability.RADIO, Capability.FORWARDING, Capability.SELECT, Capability.ESIM}
    )

    def __init__(self, config: SimulatedConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self._net: SimNetwork | None = None
        self._changes: asyncio.Queue[Event] = asyncio.Queue()
        self._port_by_iccid: dict[str, str] = {}  # the SIMs of this device and their ports
        self._cursor = 0
        self._emitted: set[int] = set()
        self._rescan: set[str] = set()
        self._waker: _Waker | None = None
        self._acks: list[int] = []
        self._flusher: asyncio.Task[None] | None = None
        self._slow_ack = 0.0

    @property
    def network_path(self) -> Path:
        return self.config.network or self.context.state_dir / "simnet.db"

    def _where(self, row: sqlite3.Row) -> tuple[str, str | None]:
        """(port, slot) of a SIM: ``dev/<idx>`` for a one-slot SIM; on a bank, ports are
        numbered from 1 as gateways do, and the slot is ``"<port>.<slot:02>"`` (PROTOCOL §3)."""
        if row["bank_port"] is None:
            return f"{self.name}/{row['idx']}", None
        port = row["bank_port"] + 1
        return f"{self.name}/{port}", f"{port}.{row['bank_slot']:02d}"

    def _mine(self, rows: Sequence[sqlite3.Row]) -> list[sqlite3.Row]:
        """The configured SIMs, plus profiles downloaded since (their idx is beyond)."""
        return [r for r in rows if r["idx"] < self.config.sims or r["kind"] == "esim"]

    async def connect(self) -> None:
        try:
            net = await asyncio.to_thread(SimNetwork, self.network_path)
        except (sqlite3.Error, OSError) as exc:
            raise DriverError(f"cannot open simulated network {self.network_path}: {exc}") from exc
        try:
            down, _ = net.faults(self.name)
            if down:
                raise DriverError("simulated device is down (fault injected)")
            delay = net.connect_delay(self.name)
            if delay:
                await asyncio.sleep(delay)  # as a modem pool still reading its SIM cards
            rows = await asyncio.to_thread(
                functools.partial(
                    net.provision,
                    self.name,
                    self.config.sims,
                    self.config.country,
                    slots=self.config.slots,
                    esim_ports=self.config.esim_ports,
                )
            )
        except BaseException:
            net.close()
            raise
        self._net = net
        self._port_by_iccid = {r["iccid"]: self._where(r)[0] for r in self._mine(rows)}
        self._cursor = 0
        self._emitted.clear()
        self._waker = _Waker(asyncio.get_running_loop())
        with _WAKERS_LOCK:
            _WAKERS.setdefault(net.path, weakref.WeakSet()).add(self._waker)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        net, self._net = self._net, None
        if self._waker is not None:
            with _WAKERS_LOCK:
                _WAKERS.get(net.path if net else "", weakref.WeakSet()).discard(self._waker)
            self._waker = None
        if net is not None:
            net.close()

    def _info(self, row: sqlite3.Row) -> SimInfo:
        mcc, mnc, _cc, operator, _tz = COUNTRIES[row["country"]]
        selected = bool(row["selected"])
        on = bool(row["radio_on"])
        port, slot = self._where(row)
        return SimInfo(
            port=port,
            slot=slot,
            selected=selected,
            kind=SimKind(row["kind"]),
            eid=row["eid"],
            iccid=row["iccid"],
            imsi=row["imsi"],
            number=row["number"],
            number_source="gateway",
            operator=operator,
            mcc_mnc=mcc + mnc,
            signal_dbm=signal_for(row["iccid"]) if on and selected else None,
            registered=on and selected,
            radio_on=on,
            forward_to=row["forward_to"],
        )

    def _require(self) -> SimNetwork:
        if self._net is None:
            raise DriverError("not connected")
        return self._net

    async def events(self) -> AsyncIterator[Event]:
        net = self._require()
        rows = self._mine(await asyncio.to_thread(net.sims, self.name))
        yield DeviceUp(f"{len(rows)} simulated SIMs")
        for row in rows:
            yield SimPresent(self._info(row))
        poll = self.config.poll_ms / 1000
        last_fault_check = 0.0
        while True:
            while not self._changes.empty():
                yield self._changes.get_nowait()
            now = time.monotonic()
            if now - last_fault_check > 0.25:
                last_fault_check = now
                down, self._slow_ack = await asyncio.to_thread(net.faults, self.name)
                if down:
                    yield DeviceDown("simulated device down (fault injected)")
                    return
            for part in await asyncio.to_thread(self._fetch, net):
                yield part
            assert self._waker is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._waker.event.wait()
            self._waker.event.clear()

    def _fetch(self, net: SimNetwork) -> list[SmsPart]:
        """New SMS for SIMs whose radio is on (held ones stay in the network)."""
        rescan, self._rescan = self._rescan, set()
        with net._lock:
            rows = net._db.execute(
                "SELECT sms.*, sims.radio_on AND coalesce(banks.selected, 1) AS radio_on"
                " FROM sms JOIN sims USING (iccid) LEFT JOIN banks USING (iccid)"
                " WHERE sms.device = ? AND sms.id > ? ORDER BY sms.id LIMIT 2000",
                (self.name, self._cursor),
            ).fetchall()
            for iccid in rescan:
                rows += net._db.execute(
                    "SELECT sms.*, 1 AS radio_on FROM sms JOIN sims USING (iccid)"
                    " WHERE sms.iccid = ? AND sms.id <= ?",
                    (iccid, self._cursor),
                ).fetchall()
        out = []
        for r in rows:
            self._cursor = max(self._cursor, r["id"])
            if not r["radio_on"] or r["id"] in self._emitted:
                continue
            self._emitted.add(r["id"])
            out.append(self._part(r))
        return out

    def _part(self, r: sqlite3.Row) -> SmsPart:
        concat = Concat(r["ref"], r["part"], r["total"], r["ref_bits"]) if r["total"] else None
        enc = Encoding.GSM7 if r["encoding"] == "gsm7" else Encoding.UCS2
        # Canonical content for the message id (PROTOCOL.md section 4, drivers without PDUs):
        # sender, SMSC timestamp, concat position and payload, plus the network's per-SMS uid,
        # which stands in for what distinguishes two identical SMS on a real network.
        raw = (
            "\x1f".join(
                [r["sender"], r["sent_at"], r["uid"], f"{r['part'] or 1}/{r['total'] or 1}"]
            ).encode()
            + b"\x1f"
            + (r["text"].encode() if enc is Encoding.GSM7 else r["data"])
        )
        return SmsPart(
            port=self._port_of(r["iccid"]),
            iccid=r["iccid"],
            sender=r["sender"],
            sent_at=datetime.fromisoformat(r["sent_at"]),
            encoding=enc,
            raw=raw,
            ack_token=_Token(r["id"]),
            text=r["text"],
            data=r["data"],
            concat=concat,
            flash=bool(r["flash"]),
        )

    def _port_of(self, iccid: str) -> str:
        return self._port_by_iccid.get(iccid, f"{self.name}/?")

    async def ack(self, token: Hashable) -> None:
        """Queue the delete; a flusher deletes queued rows in one transaction (as a modem
        pool deletes index after index while the next ones are already queued)."""
        if not isinstance(token, _Token):
            raise TypeError(f"not a simulated ack token: {token!r}")
        self._require()
        self._acks.append(token.row)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"sim:{self.name}:acks")

    async def _flush(self) -> None:
        while self._acks:
            net = self._net
            if net is None:
                return
            try:  # one look per batch: a fault set a moment ago applies at once
                _down, self._slow_ack = await asyncio.to_thread(net.faults, self.name)
            except sqlite3.Error:
                return
            if self._slow_ack:
                await asyncio.sleep(self._slow_ack)
            rows, self._acks = self._acks, []
            marks = ",".join("?" * len(rows))
            try:
                await asyncio.to_thread(net._write, f"DELETE FROM sms WHERE id IN ({marks})", rows)
            except sqlite3.Error:
                return  # closed under us: the rows are read again after the reconnect
            self._emitted.difference_update(rows)

    def _iccid(self, sim: SimInfo) -> str:
        if sim.iccid not in self._port_by_iccid:
            raise CommandError(f"no SIM {sim.iccid} in {sim.port}")
        return sim.iccid

    async def _changed(self, iccid: str) -> None:
        net = self._require()
        row = await asyncio.to_thread(net.sim, iccid)
        self._changes.put_nowait(SimPresent(self._info(row)))
        if self._waker is not None:
            self._waker.event.set()

    async def set_radio(self, sim: SimInfo, on: bool) -> None:
        iccid = self._iccid(sim)
        await asyncio.to_thread(self._require().set_sim, iccid, radio_on=on)
        if on:
            self._rescan.add(iccid)  # deliver what the network held while the radio was off
        await self._changed(iccid)

    async def set_forwarding(self, sim: SimInfo, to: str | None) -> None:
        iccid = self._iccid(sim)
        await asyncio.to_thread(self._require().set_sim, iccid, forward_to=to, set_forward=True)
        await self._changed(iccid)

    async def select(self, sim: SimInfo) -> None:
        iccid = self._iccid(sim)
        for changed in await asyncio.to_thread(self._require().select, iccid):
            if changed == iccid:
                self._rescan.add(iccid)  # what the network held while it was standby
            await self._changed(changed)

    async def esim_download(
        self, port: str, activation_code: str, confirmation_code: str | None
    ) -> str:
        prefix = f"{self.name}/"
        number = port[len(prefix) :] if port.startswith(prefix) else ""
        if not number.isdigit():
            raise CommandError(f"no port {port!r} on {self.name}")
        try:
            row = await asyncio.to_thread(
                self._require().add_profile, self.name, int(number) - 1, activation_code
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self._port_by_iccid[row["iccid"]] = self._where(row)[0]
        await self._changed(row["iccid"])
        return str(row["iccid"])

    async def esim_delete(self, sim: SimInfo) -> None:
        iccid = self._iccid(sim)
        await asyncio.to_thread(self._require().delete_profile, iccid)
        port = self._port_by_iccid.pop(iccid)
        self._changes.put_nowait(SimGone(port, iccid))
        if self._waker is not None:
            self._waker.event.set()
