"""The live SIM inventory: what every device reports, merged with config and the store.

Owns the in-memory view keyed by ICCID (never by port), the ``state`` rule of PROTOCOL.md
section 3, and the ``PUT /sims`` snapshot body.  It does no I/O: the app persists what it
reports and the registrar sends the snapshots.  ``changed`` is set on every change that the hub
should see, so the registrar can send within a second.

State rule: ``disabled`` when the hub switched the SIM off (desired state, whatever the radio
does meanwhile); ``error`` when the last command or the device reported an error for it;
``standby`` when it is present in a bank slot or eSIM profile that is not the selected one on
its port (PROTOCOL.md section 3, v1.1: healthy, not usable now); ``online`` when its device is
up, its radio on and it is registered; ``offline`` otherwise.

A SIM's location is (port, slot): on a SIM bank or an eUICC several SIMs share a port, each in
its own slot; a standby SIM stays listed for as long as its driver reports it.

A SIM a driver reports gone stays listed ``offline`` for ``GONE_GRACE_S``: a USB hiccup, a
modem reset or a re-plug must not make the hub forget a rented number for a few seconds
(PROTOCOL.md section 3: offline is "present but … the modem is down").  It leaves the list after
the grace period, or at once when another SIM shows up in its port (a swap).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from agent import __version__
from agent.mcc import country_of
from agent.store import SimRow
from drivers.base import SimInfo

Location = tuple[str, str | None]  # (port, slot)

#: How long a SIM reported gone stays listed (offline) before it leaves the inventory.
GONE_GRACE_S = 600.0
#: PROTOCOL.md section 3 ``number_source`` values (besides null).
NUMBER_SOURCES = frozenset({"config", "cnum", "phonebook", "ussd", "gateway"})


@dataclass(slots=True)
class Sim:
    iccid: str
    device: str
    info: SimInfo
    number: str | None = None
    number_source: str | None = None
    desired_enabled: bool = True
    #: None: no request yet; "": forwarding cancelled on request; "+7…": forward there.
    desired_forward: str | None = None
    device_up: bool = True
    error: str | None = None
    gone_at: float | None = None  # monotonic time the driver reported it gone
    last_sms_at: str | None = None
    sms_count: int = 0
    applying: set[str] = field(default_factory=set)

    @property
    def state(self) -> str:
        if not self.desired_enabled:
            return "disabled"
        if self.error:
            return "error"
        if self.gone_at is None and self.device_up:
            if not self.info.selected:
                return "standby"
            if self.info.radio_on and self.info.registered:
                return "online"
        return "offline"

    @property
    def location(self) -> Location:
        return (self.info.port, self.info.slot)

    def record(self) -> dict[str, Any]:
        info = self.info
        balance = info.balance
        return {
            "sim_id": self.iccid,
            "imsi": info.imsi,
            "number": self.number,
            "number_source": (
                self.number_source if self.number and self.number_source in NUMBER_SOURCES else None
            ),
            "country": country_of(info.mcc_mnc or info.imsi),
            "mcc_mnc": info.mcc_mnc,
            "operator": info.operator,
            "device": self.device,
            "port": info.port,
            "state": self.state,
            "signal_dbm": info.signal_dbm,
            "forward_to": self.desired_forward or None,
            "last_sms_at": self.last_sms_at,
            "kind": info.kind.value,
            "eid": info.eid,
            "slot": info.slot,
            "selected": info.selected,
            "balance": None
            if balance is None
            else {
                "amount": balance.amount,
                "currency": balance.currency,
                "checked_at": balance.checked_at.isoformat(),
            },
        }


class Inventory:
    def __init__(self, agent_id: str, config_numbers: dict[str, str]) -> None:
        self.agent_id = agent_id
        self.hostname = socket.gethostname()
        self._config_numbers = config_numbers
        self._known: dict[str, SimRow] = {}
        self.sims: dict[str, Sim] = {}
        self._at: dict[Location, str] = {}  # (port, slot) → ICCID of the SIM listed there
        self.changed = asyncio.Event()
        #: Replaced and set on every report from a device: what :meth:`wait_for` waits on.
        self._reported = asyncio.Event()

    def load(self, rows: dict[str, SimRow]) -> None:
        """What the store remembers: cached numbers, desired state, last SMS."""
        self._known = dict(rows)

    def cached_number(self, iccid: str) -> str | None:
        if iccid in self._config_numbers:
            return self._config_numbers[iccid]
        row = self._known.get(iccid)
        return row.number if row else None

    def _touch(self) -> None:
        self.changed.set()
        reported, self._reported = self._reported, asyncio.Event()
        reported.set()

    async def wait_for(
        self, iccid: str, done: Callable[[Sim | None], bool], within_s: float
    ) -> bool:
        """Wait (bounded) until ``done(sim)`` holds for the SIM's record, woken by each device
        report rather than polling.  False when it did not within ``within_s``."""
        with suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while True:
                    reported = self._reported  # taken before the check: no lost wake-up
                    if done(self.sims.get(iccid)):
                        return True
                    await reported.wait()
        return False

    def forget(self, iccid: str) -> None:
        """Drop a SIM that no longer exists at all (an eSIM profile deleted on request)."""
        sim = self.sims.pop(iccid, None)
        if sim is not None:
            if self._at.get(sim.location) == iccid:
                del self._at[sim.location]
            self._touch()

    def present(self, device: str, info: SimInfo) -> Sim:
        """A device reports a SIM.  Returns the merged record (new or updated)."""
        # A SIM that moved (swap, re-plug under another device) leaves its old place.
        where = (info.port, info.slot)
        other = self._at.get(where)
        if other is not None and other != info.iccid:
            self.sims.pop(other, None)
        old = self.sims.get(info.iccid)
        if old is not None and old.location != where and self._at.get(old.location) == old.iccid:
            del self._at[old.location]
        self._at[where] = info.iccid
        sim = self.sims.get(info.iccid)
        if sim is None:
            row = self._known.get(info.iccid)
            sim = Sim(info.iccid, device, info)
            if row is not None:
                sim.desired_enabled = row.desired_enabled
                sim.desired_forward = row.desired_forward
                sim.last_sms_at = row.last_sms_at
                sim.sms_count = row.sms_count
                sim.number, sim.number_source = row.number, row.number_source
            self.sims[info.iccid] = sim
        sim.device, sim.info, sim.device_up, sim.gone_at = device, info, True, None
        if info.iccid in self._config_numbers:
            sim.number, sim.number_source = self._config_numbers[info.iccid], "config"
        elif info.number:
            source: str | None = info.number_source or "gateway"
            if source not in NUMBER_SOURCES:
                # e.g. the AT driver's "cache": the number came from our own store, so keep
                # the source it was first learnt by.
                source = sim.number_source if sim.number == info.number else None
            sim.number, sim.number_source = info.number, source
        self._touch()
        return sim

    def signal(self, port: str, dbm: int) -> None:
        """A signal reading for a one-slot port (the AT driver's small changes)."""
        sim = self.sims.get(self._at.get((port, None), ""))
        if sim is not None and sim.info.signal_dbm != dbm:
            sim.info = replace(sim.info, signal_dbm=dbm)

    def gone(self, port: str, iccid: str | None) -> None:
        if iccid is not None:
            sim = self.sims.get(iccid)
            if sim is not None and sim.info.port != port:
                sim = None  # it already moved elsewhere: the report is about the old place
        else:
            sim = self.sims.get(self._at.get((port, None), ""))
        if sim is not None and sim.gone_at is None:
            sim.gone_at = time.monotonic()
            self._touch()

    def _expire_gone(self) -> None:
        now = time.monotonic()
        for sim in list(self.sims.values()):
            if sim.gone_at is not None and now - sim.gone_at > GONE_GRACE_S:
                del self.sims[sim.iccid]
                if self._at.get(sim.location) == sim.iccid:
                    del self._at[sim.location]

    def device_down(self, device: str) -> None:
        for sim in self.sims.values():
            if sim.device == device and sim.device_up:
                sim.device_up = False
                self._touch()

    def sms_received(self, iccid: str, at: str, count: int) -> None:
        sim = self.sims.get(iccid)
        if sim is not None:
            sim.last_sms_at = at
            sim.sms_count += count

    def set_desired(
        self,
        iccid: str,
        *,
        enabled: bool | None = None,
        forward: str | None = None,
        set_forward: bool = False,
    ) -> None:
        sim = self.sims.get(iccid)
        row = self._known.get(iccid)
        if enabled is not None:
            if sim is not None:
                sim.desired_enabled = enabled
            if row is not None:
                self._known[iccid] = replace(row, desired_enabled=enabled)
        if set_forward:
            if sim is not None:
                sim.desired_forward = forward
            if row is not None:
                self._known[iccid] = replace(self._known[iccid], desired_forward=forward)
        self._touch()

    def set_error(self, iccid: str, error: str | None) -> None:
        sim = self.sims.get(iccid)
        if sim is not None and sim.error != error:
            sim.error = error
            self._touch()

    def counts(self) -> tuple[int, int]:
        online = sum(1 for s in self.sims.values() if s.state == "online")
        return online, len(self.sims)

    def snapshot(self, seq: int) -> dict[str, Any]:
        self._expire_gone()
        return {
            "agent": {"id": self.agent_id, "version": __version__, "hostname": self.hostname},
            "seq": seq,
            "sims": [s.record() for s in sorted(self.sims.values(), key=_order)],
        }


def _order(sim: Sim) -> tuple[str, str]:
    return (sim.info.port, sim.info.slot or "")
