"""The Ejoin/Skyline box as state: ports, bank slots, eSIM profiles, the SMS store and the network.

Owns everything the box *knows*, independent of HTTP (:mod:`tests.gateways.ejoin.app` renders
it on the ``goip_*.html`` wire).  It is a model of the box described in
``research/gateways.md`` section 1, not of our driver:

* ``ports`` radio modules, each with ``slots`` SIM holders (a SIM bank); exactly one slot per
  port is *active* (selected).  The active SIM registers ``register_s`` after a switch, unlock,
  reset or boot (``st`` 2 "registering", then 3 "registered"; section 1.3).  A user lock
  (``op=lock``) shows ``st`` 12 and ``slot_active`` 0.
* ``esim_ports`` of the ports (the last ones) carry an eUICC with an EID instead of plastic
  SIMs: each profile is a "slot" of the port (section 1.8), written and deleted asynchronously
  (``op`` 1 writing / 2 deleting, ``status`` 1 submitted -> 2 in progress -> done or 3 error).
* The *network*: an SMS for a SIM that is not receiving right now (standby, locked, still
  registering, box rebooting) is held, as an SMSC holds it (TS 23.040 3.2.5), and delivered
  when the SIM is active, unlocked and registered.
* The SMS store: rows ``[is_report, port, epoch, sender, recipient, base64]`` numbered from 1
  in arrival order (the ``goip_get_sms.html`` cursor, section 1.4).  A reboot draws a new
  ``ssrc`` and rebuilds the store from per-port storage: rows re-sorted by port and time and
  delivery reports dropped, so positions change while contents do not (the renumbering the
  driver must survive).  The box never deletes a row unless asked (``sms_del``) or full.
* The dev-status carries the firmware as ``ver`` (captured example, section 1.3) and a
  ``model`` field for ``probe`` (not in the captured example: some firmware [U]; a driver must
  cope without it).
* Identities are deterministic from ``seed``: RU-like (+79..., MCC 250) SIMs on odd ports,
  KZ-like (+77..., MCC 401) on even ones.

Time comes from ``clock`` (wall clock by default); :meth:`Box.tick` applies everything due.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.emulator.sim import luhn_digit

#: st codes (research section 1.3) and their texts, for firmware that answers "3 Registered".
ST_TEXT: dict[int, str] = {
    0: "No SIM",
    1: "Idle SIM",
    2: "Registering",
    3: "Registered",
    6: "Register Failed",
    12: "User Locked",
}

#: GSM-7 / UCS2 lengths of a single SMS and of one part of a long one (TS 23.040 9.2.3.24.1).
_GSM7_CHARS = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€")

COUNTRIES: dict[str, tuple[str, str, str, str]] = {
    # ISO: (MCC+MNC, calling code + national prefix, operator, ICCID issuer digits)
    "RU": ("25001", "79", "MTS", "8970101"),
    "KZ": ("40102", "77", "Kcell", "8999702"),
}


def _h(*parts: object) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def split_long(text: str) -> list[str]:
    """A long SMS cut the way a phone cuts it: 153 GSM-7 septets (extension characters count
    two) or 67 UCS2 code units per part; a text that fits one SMS (160 / 70) is not cut."""
    gsm = all(c in _GSM7_CHARS or c in _GSM7_EXT for c in text)
    if gsm:
        size = sum(2 if c in _GSM7_EXT else 1 for c in text)
        if size <= 160:
            return [text]
        parts, cur, n = [], "", 0
        for c in text:
            w = 2 if c in _GSM7_EXT else 1
            if n + w > 153:
                parts.append(cur)
                cur, n = "", 0
            cur, n = cur + c, n + w
        return [*parts, cur]
    units = len(text.encode("utf-16-be")) // 2
    if units <= 70:
        return [text]
    parts, cur, n = [], "", 0
    for c in text:
        w = len(c.encode("utf-16-be")) // 2
        if n + w > 67:
            parts.append(cur)
            cur, n = "", 0
        cur, n = cur + c, n + w
    return [*parts, cur]


@dataclass
class Sim:
    iccid: str
    imsi: str
    number: str
    mcc_mnc: str
    operator: str
    balance: float
    forward_to: str | None = None


@dataclass
class Slot:
    sim: Sim | None
    locked: bool = False
    #: eSIM profile bookkeeping (eSIM ports only): activation / confirmation code, provider.
    ac: str = ""
    cc: str = ""
    provider: str = ""


@dataclass
class EsimOp:
    kind: Literal["write", "delete"]
    slot: int
    started: float
    ac: str = ""
    cc: str = ""
    fail: str | None = None  # the reason this op ends with (status 3)
    failed: bool = False


@dataclass
class Port:
    number: int
    imei: str
    slots: dict[int, Slot]
    active: int = 1
    ready_at: float = 0.0  # the active SIM is registered from then on
    eid: str | None = None
    op: EsimOp | None = None


@dataclass
class Row:
    is_report: int
    port: int
    slot: int
    epoch: int
    sender: str
    recipient: str
    content: str  # base64 of UTF-8 for an SMS, "code scts" for a report


@dataclass
class Faults:
    delay_s: float = 0.0  # every gateway request answers this late
    html: bool = False  # answer an HTML page instead of JSON
    auth: Literal["json", "401"] | None = None  # credentials rejected in this style
    push_dup: bool = False  # every push is sent twice
    esim_fail: str | None = None  # the next eSIM operation fails with this reason
    at_error: str | None = None  # the next AT pass-through answers this instead of OK

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Box:
    """The gateway's whole state.  Not thread-safe: one event loop owns it."""

    seed: int = 1
    ports: int = 8
    slots: int = 4
    esim_ports: int = 0
    esim_profiles: int = 1  # profiles present at start on each eSIM port
    username: str = "root"
    password: str = "admin"
    model: str = "SK-32-4"
    firmware: str = "608-520-840-841-100-0F0"
    max_slot_key: Literal["max-slot", "max-slots"] = "max-slot"
    st_style: Literal["int", "text"] = "int"
    port_style: Literal["dot", "letter"] = "dot"
    register_s: float = 0.2
    esim_step_s: float = 0.2
    store_max: int = 5000
    clock: Callable[[], float] = time.time
    port_table: dict[int, Port] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    base_id: int = 1  # id of rows[0]
    boots: int = 0
    booting_until: float = 0.0
    held: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    log: list[dict[str, Any]] = field(default_factory=list)  # commands received, in order
    hits: dict[str, int] = field(default_factory=dict)  # gateway requests served, per path
    push_queue: list[Row] = field(default_factory=list)  # stored rows not yet pushed
    _registering: set[int] = field(default_factory=set)
    _esim_counter: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.ports <= 64 and 1 <= self.slots <= 32):
            raise ValueError("ports must be 1..64 and slots 1..32")
        if not 0 <= self.esim_ports <= self.ports:
            raise ValueError("esim_ports must be 0..ports")
        first_esim = self.ports - self.esim_ports + 1
        for p in range(1, self.ports + 1):
            imei = f"86203204{_h(self.seed, 'imei', p) % 10**6:06d}"
            imei += luhn_digit(imei)
            slots: dict[int, Slot] = {}
            esim = p >= first_esim
            for s in range(1, self.slots + 1):
                if esim:
                    sim = self.identity(p, s, esim=True) if s <= self.esim_profiles else None
                    slots[s] = Slot(sim, ac=f"LPA:1$smdp.example${p}-{s}" if sim else "")
                else:
                    slots[s] = Slot(self.identity(p, s))
            eid = f"890490320000{_h(self.seed, 'eid', p) % 10**20:020d}" if esim else None
            self.port_table[p] = Port(p, imei, slots, eid=eid)
        self.mac = "00-30-f1-" + "-".join(
            f"{b:02x}" for b in (_h(self.seed, "mac") % 2**24).to_bytes(3, "big")
        )
        self._boot(self.clock())

    # ------------------------------------------------------------------ identities

    def country(self, port: int) -> str:
        return "RU" if port % 2 else "KZ"

    def identity(self, port: int, slot: int, esim: bool = False, salt: str = "") -> Sim:
        mcc_mnc, prefix, operator, issuer = COUNTRIES[self.country(port)]
        n = _h(self.seed, port, slot, esim, salt)
        body = f"{issuer}{n % 10**11:011d}"
        return Sim(
            iccid=body + luhn_digit(body),
            imsi=f"{mcc_mnc}{n % 10**10:010d}",
            number=f"+{prefix}{n % 10**9:09d}",
            mcc_mnc=mcc_mnc,
            operator=operator,
            balance=round((n % 5000) / 100, 2),
        )

    @property
    def ssrc(self) -> str:
        return hashlib.sha256(f"{self.seed}|boot|{self.boots}".encode()).hexdigest()[:16]

    def sims(self) -> dict[str, tuple[int, int]]:
        """Every SIM and profile: ICCID -> (port, slot)."""
        return {
            s.sim.iccid: (p.number, n)
            for p in self.port_table.values()
            for n, s in p.slots.items()
            if s.sim is not None
        }

    def find(self, who: str) -> tuple[int, int] | None:
        """A SIM by ICCID or number."""
        for p in self.port_table.values():
            for n, s in p.slots.items():
                if s.sim is not None and who in (s.sim.iccid, s.sim.number):
                    return p.number, n
        return None

    def port_name(self, port: int, slot: int) -> str:
        if self.port_style == "letter":
            return f"{port}{chr(64 + slot)}"
        return f"{port}.{slot:02d}"

    # ------------------------------------------------------------------ time

    def _boot(self, now: float) -> None:
        for p in self.port_table.values():
            p.ready_at = max(now, self.booting_until) + self.register_s
            self._registering.add(p.number)

    def receiving(self, port: int, slot: int, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        p = self.port_table[port]
        s = p.slots[slot]
        return (
            s.sim is not None
            and p.active == slot
            and not s.locked
            and now >= p.ready_at
            and now >= self.booting_until
        )

    def tick(self) -> None:
        """Apply what is due: registrations complete (held SMS delivered), eSIM ops advance."""
        now = self.clock()
        for number in list(self._registering):
            p = self.port_table[number]
            if now >= p.ready_at and now >= self.booting_until:
                self._registering.discard(number)
                sim = p.slots[p.active].sim
                if sim is not None and not p.slots[p.active].locked:
                    for sender, text, epoch in self.held.pop(sim.iccid, []):
                        self._store(number, p.active, sender, text, epoch)
        for p in self.port_table.values():
            if p.op is not None:
                self._advance_op(p, now)

    def _restart_registration(self, p: Port) -> None:
        p.ready_at = max(self.clock(), self.booting_until) + self.register_s
        self._registering.add(p.number)

    # ------------------------------------------------------------------ network and store

    def send_sms(
        self, to: str, sender: str, text: str, at: int | None = None, split: bool = True
    ) -> tuple[str, str]:
        """The network delivers an SMS to the SIM with ICCID or number ``to``.  Returns
        ("stored" | "held", iccid); raises KeyError for an unknown SIM."""
        where = self.find(to)
        if where is None:
            raise KeyError(to)
        port, slot = where
        sim = self.port_table[port].slots[slot].sim
        assert sim is not None
        epoch = int(self.clock()) if at is None else at
        parts = split_long(text) if split else [text]
        if self.receiving(port, slot):
            for part in parts:
                self._store(port, slot, sender, part, epoch)
            return "stored", sim.iccid
        self.held.setdefault(sim.iccid, []).extend((sender, part, epoch) for part in parts)
        return "held", sim.iccid

    def _store(self, port: int, slot: int, sender: str, text: str, epoch: int) -> None:
        sim = self.port_table[port].slots[slot].sim
        content = base64.b64encode(text.encode()).decode()
        self._append(Row(0, port, slot, epoch, sender, sim.number if sim else "", content))

    def store_report(self, port: int, slot: int, recipient: str, code: int = 0) -> None:
        """A delivery report for an SMS this SIM sent (research 1.4: content "code scts")."""
        now = int(self.clock())
        scts = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        self._append(Row(1, port, slot, now, "+79000000000", recipient, f"{code} {scts}"))

    def _append(self, row: Row) -> None:
        self.rows.append(row)
        self.push_queue.append(row)
        if len(self.rows) > self.store_max:  # full: the oldest row goes, ids stay absolute
            del self.rows[0]
            self.base_id += 1

    def read_rows(self, start: int, count: int) -> tuple[list[tuple[int, Row]], int]:
        """Rows with id >= start (at most ``count``, 0 = all) and the next cursor."""
        first = max(start, self.base_id) - self.base_id
        chosen = self.rows[first:] if count <= 0 else self.rows[first : first + count]
        ids = [(self.base_id + first + i, r) for i, r in enumerate(chosen)]
        nxt = ids[-1][0] + 1 if ids else max(start, self.base_id)
        return ids, nxt

    def delete_rows(self, ids: list[int]) -> None:
        keep = set(range(len(self.rows))) - {i - self.base_id for i in ids}
        self.rows = [r for i, r in enumerate(self.rows) if i in keep]

    def reboot(self, down_s: float) -> None:
        """Power-cycle: a new ssrc, the store rebuilt (renumbered), every port re-registers."""
        now = self.clock()
        self.boots += 1
        self.booting_until = now + down_s
        self.rows = sorted(
            (r for r in self.rows if not r.is_report), key=lambda r: (r.port, r.slot, r.epoch)
        )
        self.base_id = 1
        self.push_queue.clear()
        self._boot(now)
        self.log.append({"op": "reboot", "at": now})

    # ------------------------------------------------------------------ commands

    def parse_ports(self, spec: str) -> list[tuple[int, int | None]]:
        """Port lists as the box reads them (section 1.2): "1A,2B", "4-32", "1.02", "3",
        "all" / "*".  Raises ValueError on anything else or on a port/slot out of range."""
        out: list[tuple[int, int | None]] = []
        spec = spec.strip()
        if spec in ("all", "*"):
            return [(p, None) for p in self.port_table]
        for item in filter(None, (x.strip() for x in spec.split(","))):
            if "-" in item:
                lo, _, hi = item.partition("-")
                out += [(p, None) for p in range(int(lo), int(hi) + 1)]
            elif "." in item:
                port_text, _, slot_text = item.partition(".")
                out.append((int(port_text), int(slot_text)))
            elif item[-1].isalpha():
                out.append((int(item[:-1]), ord(item[-1].upper()) - 64))
            else:
                out.append((int(item), None))
        for port, slot in out:
            if port not in self.port_table or (
                slot is not None and slot not in self.port_table[port].slots
            ):
                raise ValueError(spec)
        return out

    def command(self, op: str, ports: str) -> None:
        """lock / unlock / switch / reset / save; raises ValueError("2 Invalid Port") etc."""
        self.log.append({"op": op, "ports": ports, "at": self.clock()})
        if op == "save":
            return
        try:
            targets = self.parse_ports(ports)
        except ValueError:
            raise ValueError("2 Invalid Port") from None
        for port, slot in targets:
            p = self.port_table[port]
            if op in ("lock", "unlock"):
                for n in [slot] if slot is not None else list(p.slots):
                    p.slots[n].locked = op == "lock"
                    if op == "unlock" and n == p.active:
                        self._restart_registration(p)
            elif op == "switch":
                if slot is None or p.slots[slot].sim is None:
                    raise ValueError("2 Invalid Port")
                p.active = slot
                self._restart_registration(p)
            elif op == "reset":
                self._restart_registration(p)
            else:
                raise ValueError(f"3 Invalid Operation {op}")

    def at_command(self, port: int, at: str) -> dict[str, Any]:
        """The AT pass-through (section 1.5): the module of ``port`` answers for its active
        SIM.  A locked or unregistered port cannot reach the network (field note 1.5)."""
        self.log.append({"op": "at", "port": port, "at": at})
        p = self.port_table.get(port)
        if p is None:
            return {"code": 2, "reason": "2 Invalid Port"}
        slot = p.slots[p.active]
        if slot.locked:
            return {"code": 12, "reason": "12 User Locked"}
        if self.faults.at_error is not None:
            resp, self.faults.at_error = self.faults.at_error, None
            return {"code": 0, "resp": f"\r\n{resp}\r\n"}
        sim = slot.sim
        cmd = at.strip().upper()
        if sim is None or not self.receiving(port, p.active):
            return {"code": 0, "resp": "\r\n+CME ERROR: 30\r\n"}  # no network service
        if cmd.startswith("AT+CCFC=0,3,"):
            number = at.split(",")[2].strip().strip('"')
            sim.forward_to = number
            return {"code": 0, "resp": "\r\nOK\r\n"}
        if cmd == "AT+CCFC=0,4":
            sim.forward_to = None
            return {"code": 0, "resp": "\r\nOK\r\n"}
        if cmd == "AT+CCFC=0,2":
            if sim.forward_to:
                return {"code": 0, "resp": f'\r\n+CCFC: 1,1,"{sim.forward_to}",145\r\n\r\nOK\r\n'}
            return {"code": 0, "resp": "\r\n+CCFC: 0,1\r\n\r\nOK\r\n"}
        if cmd.startswith("AT+CUSD=1,"):
            code = at.split(",")[1].strip().strip('"')
            if code in ("*100#", "*102#"):
                text = f"Balance: {sim.balance:.2f}"
            elif code in ("*111*0887#", "*160#"):
                text = f"Your number {sim.number}"
            else:
                return {"code": 0, "resp": "\r\nOK\r\n\r\n+CUSD: 4\r\n"}
            return {"code": 0, "resp": f'\r\nOK\r\n\r\n+CUSD: 0,"{text}",15\r\n'}
        return {"code": 0, "resp": "\r\nERROR\r\n"}

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The ``dev-status`` document of ``goip_get_status.html?all_slots=1``."""
        now = self.clock()
        rows: list[dict[str, Any]] = []
        for p in self.port_table.values():
            for n, s in p.slots.items():
                rows.append(self._slot_status(p, n, s, now))
        return {
            "type": "dev-status",
            "seq": self.boots,
            "expires": -1,
            "mac": self.mac,
            "ip": "127.0.0.1",
            "ver": self.firmware,
            "model": self.model,
            "max-ports": self.ports,
            self.max_slot_key: self.slots,
            "status": rows,
        }

    def _slot_status(self, p: Port, n: int, s: Slot, now: float) -> dict[str, Any]:
        sim = s.sim
        active = p.active == n
        if sim is None:
            st = 0
        elif s.locked:
            st = 12
        elif not active:
            st = 1
        elif now < p.ready_at or now < self.booting_until:
            st = 2
        else:
            st = 3
        registered = st == 3
        row: dict[str, Any] = {
            "port": self.port_name(p.number, n),
            "sim": "",
            "seq": self.boots,
            "st": st if self.st_style == "int" else f"{st} {ST_TEXT.get(st, '')}",
            "imei": p.imei,
            "active": int(active),
            "inserted": int(sim is not None),
            "slot_active": int(not s.locked),
            "led": int(registered),
        }
        if sim is not None:
            row |= {
                "iccid": sim.iccid,
                "imsi": sim.imsi,
                "sn": sim.number,
                "opr": f"{sim.mcc_mnc} {sim.operator}" if registered else "0 ",
                "bal": f"{sim.balance:.2f}",
                "sig": 10 + _h(sim.iccid) % 19 if registered else 0,
            }
        return row

    # ------------------------------------------------------------------ eSIM

    def esims(self) -> dict[str, Any]:
        ports = []
        for p in self.port_table.values():
            if p.eid is None:
                continue
            profiles = []
            for n, s in p.slots.items():
                op = p.op if p.op is not None and p.op.slot == n else None
                if s.sim is None and op is None:
                    continue
                status = 0
                if op is not None:
                    elapsed = self.clock() - op.started
                    status = 3 if op.failed else (1 if elapsed < self.esim_step_s else 2)
                profiles.append(
                    {
                        "slot": n,
                        "enabled": int(p.active == n and s.sim is not None),
                        "iccid": s.sim.iccid if s.sim else "",
                        "ac": s.ac,
                        "cc": s.cc,
                        "provider": s.provider or (s.sim.operator if s.sim else ""),
                        "exust": int(s.sim is not None),
                        "op": 0 if op is None else (1 if op.kind == "write" else 2),
                        "status": status,
                        "reason": (op.fail or "") if op is not None and op.failed else "",
                    }
                )
            ports.append({"port": p.number, "eid": p.eid, "esim_state": 1, "profiles": profiles})
        return {"code": 200, "ports": ports}

    def esim_start(
        self, kind: Literal["write", "delete"], port: int, slot: int, ac: str = "", cc: str = ""
    ) -> None:
        """Accept an asynchronous write/delete; raises ValueError(reason) when refused."""
        self.log.append({"op": f"esim_{kind}", "port": port, "slot": slot})
        p = self.port_table.get(port)
        if p is None or p.eid is None:
            raise ValueError(f"port {port} has no eUICC")
        if slot not in p.slots:
            raise ValueError(f"invalid slot {slot}")
        if p.op is not None and not p.op.failed:
            raise ValueError("busy: another eSIM operation is in progress")
        s = p.slots[slot]
        if kind == "write" and s.sim is not None:
            raise ValueError(f"slot {slot} already holds a profile")
        if kind == "delete":
            if s.sim is None:
                raise ValueError(f"slot {slot} holds no profile")
            if p.active == slot:
                raise ValueError("profile is enabled; switch to another profile first")
        fail, self.faults.esim_fail = self.faults.esim_fail, None
        if fail is None and kind == "write" and not ac.startswith("LPA:1$"):
            fail = "invalid activation code"
        p.op = EsimOp(kind, slot, self.clock(), ac, cc, fail)

    def _advance_op(self, p: Port, now: float) -> None:
        op = p.op
        assert op is not None
        if op.failed:
            if now - op.started > 60 * self.esim_step_s + 30:  # the error stays visible a while
                p.op = None
            return
        if now - op.started < 2 * self.esim_step_s:  # submitted, then in progress
            return
        if op.fail is not None:
            op.failed = True
            return
        s = p.slots[op.slot]
        if op.kind == "write":
            self._esim_counter += 1
            s.sim = self.identity(p.number, op.slot, esim=True, salt=op.ac)
            s.ac, s.cc, s.provider, s.locked = op.ac, op.cc, "SM-DP+ example", False
        else:
            s.sim, s.ac, s.cc, s.provider = None, "", "", ""
        p.op = None

    # ------------------------------------------------------------------ inventory changes

    def remove_sim(self, port: int, slot: int) -> None:
        self.port_table[port].slots[slot].sim = None

    def insert_sim(self, port: int, slot: int, salt: str = "new") -> str:
        sim = self.identity(port, slot, salt=salt)
        self.port_table[port].slots[slot].sim = sim
        if self.port_table[port].active == slot:
            self._restart_registration(self.port_table[port])
        return sim.iccid
