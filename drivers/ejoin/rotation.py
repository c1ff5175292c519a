"""SIM-bank rotation and rental pins (decisions only; the driver executes the switches).

Owns which slot each port *should* have selected.  A SIM in a standby bank slot is not on the
network, so SMS sent to it are held by the operator's SMSC until it registers (TS 23.040 3.2.5).
With ``rotate_s > 0`` the standby SIMs of a port take turns as the selected one for
``rotate_s`` seconds each, so their held SMS get delivered.

* **Fair order**: the next SIM is the one selected least recently (ties by ICCID); the time
  each SIM was last seen selected is persisted, so the order survives restarts and a new SIM
  (never selected) goes first.
* **Pins**: the core tells the driver which SIMs are rented only through actions:
  ``select(sim)`` and ``set_radio(sim, True)`` pin a SIM, ``set_radio(sim, False)`` unpins it.
  A pinned SIM is never rotated away; if it is standby (after a restart, or the box switched),
  the port is switched back to it.  Pins are persisted.
* User-locked (disabled) SIMs are not rotated to; a port whose selected SIM is locked moves on
  at once.

State: ``rotation`` in ``context.state``, JSON ``{"pins": [iccid...], "last": {iccid: epoch}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from drivers.base import DriverState

_KEY = "rotation"


@dataclass(frozen=True, slots=True)
class Candidate:
    slot: int
    iccid: str
    selected: bool
    locked: bool


class Rotation:
    def __init__(
        self,
        state: DriverState,
        rotate_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self.rotate_s = rotate_s
        self._clock = clock
        self._monotonic = monotonic
        self.pins: set[str] = set()
        self.last: dict[str, float] = {}
        self._since: dict[int, tuple[str, float]] = {}  # port -> (selected ICCID, since)

    async def load(self) -> None:
        raw = await self._state.get(_KEY)
        try:
            doc = json.loads(raw) if raw else {}
            self.pins = {str(i) for i in doc.get("pins", [])}
            self.last = {str(k): float(v) for k, v in doc.get("last", {}).items()}
        except (ValueError, TypeError, AttributeError):
            self.pins, self.last = set(), {}  # unreadable: start fresh, nothing is lost

    async def save(self, present: Iterable[str] | None = None) -> None:
        if present is not None:  # forget SIMs that left the box, so the state stays small
            keep = set(present) | self.pins
            self.last = {k: v for k, v in self.last.items() if k in keep}
        doc = {"pins": sorted(self.pins), "last": self.last}
        await self._state.set(_KEY, json.dumps(doc, separators=(",", ":"), sort_keys=True))

    async def pin(self, iccid: str) -> None:
        if iccid not in self.pins:
            self.pins.add(iccid)
            await self.save()

    async def unpin(self, iccid: str) -> None:
        if iccid in self.pins:
            self.pins.discard(iccid)
            await self.save()

    def observe(self, port: int, selected_iccid: str | None) -> bool:
        """Note which SIM a port has selected now; True if that changed (worth saving)."""
        if selected_iccid is None:
            return False
        self.last[selected_iccid] = self._clock()
        prev = self._since.get(port)
        if prev is None or prev[0] != selected_iccid:
            self._since[port] = (selected_iccid, self._monotonic())
            return True
        return False

    def target(self, port: int, sims: list[Candidate]) -> Candidate | None:
        """The SIM this port should switch to now, or None to stay."""
        usable = [s for s in sims if not s.locked]
        current = next((s for s in sims if s.selected), None)
        pinned = [s for s in usable if s.iccid in self.pins]
        if pinned:
            if current is not None and current.iccid in self.pins:
                return None
            return min(pinned, key=lambda s: (self.last.get(s.iccid, 0.0), s.iccid))
        if self.rotate_s <= 0:
            return None
        others = [s for s in usable if current is None or s.iccid != current.iccid]
        if not others:
            return None
        if current is not None and not current.locked:
            since = self._since.get(port)
            if since is not None and since[0] == current.iccid:
                if self._monotonic() - since[1] < self.rotate_s:
                    return None
            elif since is None or since[0] != current.iccid:
                return None  # not observed yet: its dwell starts at the next observation
        return min(others, key=lambda s: (self.last.get(s.iccid, 0.0), s.iccid))
