"""Executing a change on a SIM: the one owner of "persist, act, wait for the hardware".

Every state change a SIM can go through passes here, whether the hub asked for it (a command)
or the device supervisor converges a SIM that (re)appeared on its persisted desired state
(DESIGN.md invariant 6):

1. the desired state is persisted first, in the store and the inventory in one call, so a crash
   between this and the hardware still converges after the restart;
2. the driver is called only for a capability it declares (``drivers.base.Capability``); an
   undeclared one is refused with ``"<what> is not supported by <driver>"`` without a call;
3. the outcome is awaited as the driver reports it (an inventory event, not a poll), bounded by
   ``SETTLE_S``, so a result states the SIM as it is after the change.

One :class:`SimActions` belongs to each device supervisor; its per-SIM locks serialise a
command and a re-apply of the same SIM, and a re-apply checks under the lock that its target
is still the desired state (a command that ran first wins).  ``enable`` on a ``standby`` SIM
selects it first (bank slot switch, eSIM profile enable, PROTOCOL.md section 5); a SIM locked
on a gateway is unlocked by the same ``set_radio`` that switches a modem's radio on.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from agent.inventory import Sim
from drivers.base import Capability, CommandError, Driver, SimInfo, SimKind

if TYPE_CHECKING:
    from agent.devices import DeviceSupervisor

log = structlog.get_logger("agent.actions")

#: How long a change waits for the driver to report the new state before the result is sent
#: (the inventory follows anyway with the next report and ``PUT /sims``).
SETTLE_S = 5.0
#: eSIM downloads run an asynchronous operation on the box (minutes on a slow SM-DP+); the
#: command deadline of 60 s (PROTOCOL.md section 5) bounds it from outside.
NEW_PROFILE_WAIT_S = 20.0


class DeviceUnavailable(CommandError):
    """The SIM's device is down: the desired state is kept and applied on reconnect."""


class SimActions:
    def __init__(self, supervisor: DeviceSupervisor) -> None:
        self.sup = supervisor
        self.core = supervisor.core
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- helpers ------------------------------------------------------------------------

    @property
    def driver_name(self) -> str:
        return self.sup.spec.config.driver

    def supports(self, capability: Capability) -> bool:
        return capability in self.sup.spec.driver_cls.capabilities

    def require(self, capability: Capability, what: str) -> None:
        if not self.supports(capability):
            raise CommandError(f"{what} is not supported by {self.driver_name}")

    def _driver(self) -> Driver:
        driver = self.sup.driver
        if driver is None:
            raise DeviceUnavailable(
                f"device {self.sup.name} is down; the state will be applied when it reconnects"
            )
        return driver

    async def persist(
        self, sim: Sim, *, enabled: bool | None = None, forward: str | None = None
    ) -> None:
        """Desired state, durable first and then in memory.  ``forward`` "" cancels."""
        core = self.core
        await core.store.call(
            core.store.store.set_desired,
            sim.iccid,
            enabled=enabled,
            forward=forward,
            set_forward=forward is not None,
            now=time.time(),
        )
        core.inventory.set_desired(
            sim.iccid, enabled=enabled, forward=forward, set_forward=forward is not None
        )

    def _still_wanted(self, iccid: str, wanted: Callable[[Sim], bool]) -> bool:
        """A re-apply chose its target before taking the SIM's lock; a command may have
        changed the desired state meanwhile (and done the work): then the re-apply must not
        undo it."""
        sim = self.core.inventory.sims.get(iccid)
        return sim is not None and wanted(sim)

    # -- the changes --------------------------------------------------------------------

    async def set_enabled(
        self, sim: Sim, enabled: bool, *, persist: bool = True, select: bool = True
    ) -> None:
        """``enable`` / ``disable``.  Enabling a standby SIM selects it first (``select``;
        convergence never selects: which slot is in use is the hub's or rotation's call)."""
        self.require(Capability.RADIO, "enable/disable")
        if select and enabled and not sim.info.selected:
            self.require(Capability.SELECT, "selecting a standby SIM")
        # An enable from the hub (a rental) selects even a SIM that is selected already: on a
        # gateway that rotates its bank, select() also pins the SIM so rotation leaves it.
        select = select and enabled and self.supports(Capability.SELECT)
        async with self.locks[sim.iccid]:
            if persist:
                await self.persist(sim, enabled=enabled)
            elif not self._still_wanted(sim.iccid, lambda s: s.desired_enabled == enabled):
                return
            driver = self._driver()
            inv = self.core.inventory
            if select:
                await driver.select(sim.info)
                await inv.wait_for(sim.iccid, lambda s: s is None or s.info.selected, SETTLE_S)
            info = _current(inv.sims.get(sim.iccid), sim.info)
            if info.radio_on != enabled:
                await driver.set_radio(info, enabled)
            await inv.wait_for(
                sim.iccid,
                lambda s: (
                    s is None
                    or (
                        s.info.radio_on == enabled
                        and (s.info.registered or not enabled or not s.info.selected)
                    )
                ),
                SETTLE_S,
            )

    async def set_forwarding(self, sim: Sim, to: str | None, *, persist: bool = True) -> None:
        """``forward`` (``to`` E.164) / ``unforward`` (None)."""
        self.require(Capability.FORWARDING, "call forwarding")
        async with self.locks[sim.iccid]:
            if persist:
                await self.persist(sim, forward=to or "")
            elif not self._still_wanted(sim.iccid, lambda s: (s.desired_forward or None) == to):
                return
            driver = self._driver()
            await driver.set_forwarding(
                _current(self.core.inventory.sims.get(sim.iccid), sim.info), to
            )

    async def ussd(self, sim: Sim, code: str) -> str:
        self.require(Capability.USSD, "USSD")
        if not sim.info.selected:
            raise CommandError("the SIM is standby: enable it first to run USSD on it")
        async with self.locks[sim.iccid]:
            return await self._driver().ussd(sim.info, code)

    async def esim_download(
        self, port: str | None, activation_code: str, confirmation_code: str | None
    ) -> str:
        """Download a profile; returns its ICCID once the inventory lists it."""
        self.require(Capability.ESIM, "eSIM download")
        target = port or self._an_esim_port()
        if target is None:
            raise CommandError(
                f"no eSIM port known on device {self.sup.name}: name the port ('port')"
            )
        iccid = await self._driver().esim_download(target, activation_code, confirmation_code)
        await self.core.inventory.wait_for(iccid, lambda s: s is not None, NEW_PROFILE_WAIT_S)
        return iccid

    async def esim_delete(self, sim: Sim) -> None:
        self.require(Capability.ESIM, "eSIM delete")
        if sim.info.kind is not SimKind.ESIM:
            raise CommandError("not an eSIM profile: a plastic SIM cannot be deleted")
        if sim.info.selected:
            raise CommandError("the profile is selected (in use): select another one first")
        if sim.desired_enabled:
            raise CommandError("the profile is enabled (rented): disable it first")
        async with self.locks[sim.iccid]:
            await self._driver().esim_delete(sim.info)
        self.core.inventory.forget(sim.iccid)

    def _an_esim_port(self) -> str | None:
        ports = sorted(
            s.info.port
            for s in self.core.inventory.sims.values()
            if s.device == self.sup.name and s.info.kind is SimKind.ESIM
        )
        return ports[0] if ports else None

    # -- convergence (invariant 6) ------------------------------------------------------

    def _radio_diverges(self, sim: Sim) -> bool:
        return self.supports(Capability.RADIO) and sim.desired_enabled != sim.info.radio_on

    def _forward_diverges(self, sim: Sim) -> bool:
        want = sim.desired_forward
        return (
            self.supports(Capability.FORWARDING)
            and sim.info.selected  # forwarding is a network setting of the SIM in use
            and want is not None
            and (want or None) != sim.info.forward_to
        )

    def diverges(self, sim: Sim) -> bool:
        """Whether the hardware differs from the desired state (cheap: every report asks)."""
        return self._radio_diverges(sim) or self._forward_diverges(sim)

    async def converge(self, iccid: str) -> None:
        """Bring the hardware to the persisted desired state (no new persistence)."""
        sim = self.core.inventory.sims.get(iccid)
        if sim is None or self.sup.driver is None:
            return
        if self._radio_diverges(sim):
            await self.set_enabled(sim, sim.desired_enabled, persist=False, select=False)
            log.info("re-applied desired state", device=self.sup.name, sim_id=iccid, what="radio")
        if self._forward_diverges(sim):
            await self.set_forwarding(sim, sim.desired_forward or None, persist=False)
            log.info("re-applied desired state", device=self.sup.name, sim_id=iccid, what="fwd")


def _current(sim: Sim | None, fallback: SimInfo) -> SimInfo:
    return sim.info if sim is not None else fallback
