"""Activations (rentals) of the reference hub's customer API: who holds which number.

Owns the :class:`Activation` records and the choice of a SIM for ``getnumber``.  It reads SIMs
and messages from :class:`~agent.hub.state.HubState` and issues commands through it; the
customer API's wire format lives in :mod:`agent.hub.customer_api`.

Rules (the platform's documentation available to the project does not state them):

* A SIM is eligible for ``getnumber(service, country)`` when it is in some agent's current
  inventory, ``online``, of that ``country``, has a known number, and holds no active
  activation *for that service*; one SIM may serve several services at once.
* Among the eligible SIMs the one handed out least recently wins (ties by ICCID), which spreads
  activations over the farm.
* An activation sees the messages that reached its SIM after it started, by the hub's arrival
  order, never by the agent's or the SMSC's clock.
* Activations never expire in the reference hub; ``setstatus`` status 1 releases one.  Releasing
  an activation that set call forwarding also issues ``unforward``, so the next holder of the
  number does not have its calls sent to the previous one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.hub.state import HubState


@dataclass
class Activation:
    """One number handed to the customer for one service."""

    id: int
    service: str
    country: str
    sim_id: str
    number: str
    started: float  # time.time()
    start_seq: int  # HubState.message_seq when it started: later messages are its own
    released: float | None = None  # time.time() of setstatus 1
    forward_to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "country": self.country,
            "sim_id": self.sim_id,
            "number": self.number,
            "started": self.started,
            "released": self.released,
            "forward_to": self.forward_to,
        }


class Rentals:
    """The activations and the SIM picker; part of a :class:`HubState`."""

    def __init__(self, state: HubState) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._counter = 0
        self.activations: dict[int, Activation] = {}
        self._last_used: dict[str, float] = {}

    def clear(self) -> None:
        """Forget every activation; ids keep counting up."""
        with self._lock:
            self.activations.clear()
            self._last_used.clear()

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a.as_dict() for a in self.activations.values()]

    def active(self) -> list[Activation]:
        with self._lock:
            return [a for a in self.activations.values() if a.released is None]

    def get(self, activation_id: int) -> Activation | None:
        return self.activations.get(activation_id)

    def start(self, service: str, country: str) -> Activation | None:
        """A new activation on an eligible SIM, or ``None`` when there is none."""
        state = self._state
        with state.lock, self._lock:
            busy = {
                a.sim_id
                for a in self.activations.values()
                if a.released is None and a.service == service
            }
            candidates = [
                sim
                for sim in state.sims.values()
                if sim["state"] == "online"
                and sim.get("country") == country
                and sim.get("number")
                and sim["sim_id"] not in busy
            ]
            if not candidates:
                return None
            sim = min(
                candidates, key=lambda s: (self._last_used.get(s["sim_id"], 0.0), s["sim_id"])
            )
            now = time.time()
            self._counter += 1
            activation = Activation(
                id=self._counter,
                service=service,
                country=country,
                sim_id=sim["sim_id"],
                number=sim["number"],
                started=now,
                start_seq=state.message_seq,
            )
            self.activations[activation.id] = activation
            self._last_used[sim["sim_id"]] = time.monotonic()
        return activation

    def release(self, activation: Activation) -> None:
        """End an activation (idempotent); undo its call forwarding."""
        with self._lock:
            if activation.released is not None:
                return
            activation.released = time.time()
            forwarded = activation.forward_to is not None
        if forwarded:
            self._state.enqueue_command("unforward", activation.sim_id)

    def forward(self, activation: Activation, to: str) -> str:
        """Ask for unconditional call forwarding of the activation's SIM to ``to``."""
        with self._lock:
            activation.forward_to = to
        return self._state.enqueue_command("forward", activation.sim_id, to)
