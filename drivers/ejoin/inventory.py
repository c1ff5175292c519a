"""dev-status + eSIM list -> the driver's SimInfo set, and the events that tell the core what
changed (pure).

Mapping (issue #7 and research/gateways.md sections 1.3 and 1.8):

* every ``port.slot`` with a SIM is a SIM keyed by ICCID; ``SimInfo.port`` is
  ``"<device>/<port>"`` (e.g. ``"gw1/3"``), ``SimInfo.slot`` is ``"3.02"`` (PROTOCOL.md
  section 3), or None on one-slot boxes;
* ``selected`` is the box's active slot (``active``); the others are standby;
* ``radio_on`` is False for a user-locked slot (``st`` 12 or ``slot_active`` 0): the core lists
  it ``disabled``;
* ``registered`` only for the active slot with ``st`` 3/4/5; while registering (2), after a
  reset or switch, the SIM is reported unregistered, which the core lists ``offline``;
* ``number`` from ``sn`` (source ``gateway``), else the store's cached number;
* ``balance`` from ``bal``; its ``checked_at`` only moves when the amount does, so a steady
  balance does not re-announce the SIM every poll;
* a slot listed by ``goip_get_esims`` is ``kind = esim`` with its port's EID.  A profile the
  eSIM list knows but the status does not (firmware that lists only the active slot) is still
  reported, as standby.
* ``signal_dbm`` of the selected SIM; a change under 6 dB alone is not re-announced;
* ``forward_to`` is what this driver last set (the box does not report it); unknown after a
  restart, so the core re-applies its desired forwarding once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from drivers.base import Balance, Event, SimGone, SimInfo, SimKind, SimPresent
from drivers.ejoin.wire import DevStatus, EsimPort, dot_port

#: A signal change smaller than this is not worth re-announcing a SIM (each announcement is a
#: store write at the core; boxes report ``sig`` jittering by a step or two every poll).
SIGNAL_STEP_DB = 6


def _only_signal_jitter(old: SimInfo, new: SimInfo) -> bool:
    if old.signal_dbm is None or new.signal_dbm is None:
        return False
    if abs(old.signal_dbm - new.signal_dbm) >= SIGNAL_STEP_DB:
        return False
    return replace(new, signal_dbm=old.signal_dbm) == old


@dataclass(slots=True)
class Located:
    """Where a SIM sits now, and whether the box reports it locked."""

    port: int
    slot: int
    locked: bool
    selected: bool


@dataclass
class Inventory:
    device: str
    cached_number: Callable[[str], str | None]
    sims: dict[str, SimInfo] = field(default_factory=dict)
    where: dict[str, Located] = field(default_factory=dict)
    by_slot: dict[tuple[int, int], str] = field(default_factory=dict)
    forward_to: dict[str, str | None] = field(default_factory=dict)
    _balances: dict[str, Balance] = field(default_factory=dict)

    def _balance(self, iccid: str, amount: float | None) -> Balance | None:
        if amount is None:
            return None
        old = self._balances.get(iccid)
        if old is None or old.amount != amount:
            old = Balance(amount, None, datetime.now(UTC))
            self._balances[iccid] = old
        return old

    def update(
        self, status: DevStatus, esims: dict[int, EsimPort], force: bool = False
    ) -> list[Event]:
        """Adopt a new status; returns SimPresent for new or changed SIMs (all with
        ``force``) and SimGone for SIMs that left their slot."""
        multi = status.max_slots > 1
        sims: dict[str, SimInfo] = {}
        where: dict[str, Located] = {}
        for s in status.slots:
            if s.iccid is None:
                continue
            ep = esims.get(s.port)
            esim = ep is not None and s.slot in ep.profiles
            number = s.number
            source = "gateway" if number else None
            if number is None and (cached := self.cached_number(s.iccid)):
                number, source = cached, "cache"
            sims[s.iccid] = SimInfo(
                port=f"{self.device}/{s.port}",
                iccid=s.iccid,
                imsi=s.imsi,
                number=number,
                number_source=source,
                operator=s.operator,
                mcc_mnc=s.mcc_mnc,
                signal_dbm=s.signal_dbm if s.active else None,
                registered=s.registered and not s.locked,
                radio_on=not s.locked,
                forward_to=self.forward_to.get(s.iccid),
                slot=dot_port(s.port, s.slot) if multi else None,
                selected=s.active,
                kind=SimKind.ESIM if esim else SimKind.SIM,
                eid=ep.eid if esim and ep is not None else None,
                balance=self._balance(s.iccid, s.balance),
            )
            where[s.iccid] = Located(s.port, s.slot, s.locked, s.active)
        for ep in esims.values():
            for prof in ep.profiles.values():
                if prof.iccid is None or prof.iccid in sims or prof.op != 0:
                    continue
                sims[prof.iccid] = SimInfo(
                    port=f"{self.device}/{ep.port}",
                    iccid=prof.iccid,
                    number=self.cached_number(prof.iccid),
                    number_source="cache" if self.cached_number(prof.iccid) else None,
                    forward_to=self.forward_to.get(prof.iccid),
                    slot=dot_port(ep.port, prof.slot),
                    selected=prof.enabled,
                    kind=SimKind.ESIM,
                    eid=ep.eid,
                )
                where[prof.iccid] = Located(ep.port, prof.slot, False, prof.enabled)
        events: list[Event] = []
        for iccid, left in self.sims.items():
            if iccid not in sims:
                events.append(SimGone(left.port, iccid))
                self._balances.pop(iccid, None)
        for iccid, info in sims.items():
            old = self.sims.get(iccid)
            if old is not None and _only_signal_jitter(old, info):
                sims[iccid] = info = old  # keep the announced value: no churn at the core
            if force or old != info:
                events.append(SimPresent(info))
        self.sims, self.where = sims, where
        self.by_slot = {(w.port, w.slot): iccid for iccid, w in where.items()}
        return events

    def set_forward(self, iccid: str, to: str | None) -> Event | None:
        """Record a forwarding this driver set; the updated SimInfo to announce, if known."""
        self.forward_to[iccid] = to
        info = self.sims.get(iccid)
        if info is None or info.forward_to == to:
            return None
        info = replace(info, forward_to=to)
        self.sims[iccid] = info
        return SimPresent(info)
