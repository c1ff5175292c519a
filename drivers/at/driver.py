"""The ``at`` driver: one ``[[devices]]`` entry = one modem port, or a pool of ports.

Owns: the config model, the mapping of port names (``"<device>/<i>"``, ``i`` the position in
``ports``) to per-port supervisors, the one event queue the core reads, and device-level
DeviceUp/DeviceDown (down only when every port of the device is down).

Must not: do per-port work (that is :mod:`drivers.at.port`), or touch the store or the hub.

Life cycle: ``connect()`` opens every port once; it fails, leaving nothing open, only if none
opens.  Then each port has its own supervisor task that re-opens, re-inits and recovers it;
one port's trouble never stalls another, and ``events()`` ends only at ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Literal

import structlog
from pydantic import Field, model_validator

from drivers.at.framing import PortClosed
from drivers.at.port import PortSettings, PortSupervisor
from drivers.at.port_base import PortBase
from drivers.at.sms import AckToken
from drivers.base import (
    CommandError,
    DeviceDown,
    DeviceUp,
    Driver,
    DriverConfig,
    DriverContext,
    DriverError,
    Event,
    EventStream,
    SimInfo,
)

log = structlog.get_logger(__name__)


class AtConfig(DriverConfig):
    """``[[devices]]`` with ``driver = "at"``."""

    driver: Literal["at"] = "at"
    #: One modem: a device path (``/dev/serial/by-id/...`` is best), ``socket://host:port``
    #: (ser2net raw TCP) or ``rfc2217://host:port``.
    port: str | None = None
    #: A pool: one entry per modem, each its own session; port names are "<name>/<i>".
    ports: tuple[str, ...] = ()
    baudrate: int = Field(115200, gt=0)
    #: SMS storage for reading, writing and receiving (TS 27.005 3.2.2): "SM" SIM, "ME" modem,
    #: "MT" both.  SM keeps unread SMS with the SIM if it is moved.
    storage: Literal["SM", "ME", "MT"] = "SM"
    poll_s: float = Field(30.0, gt=0)  # signal/registration/operator/ICCID check
    sweep_s: float = Field(60.0, gt=0)  # AT+CMGL=4 for SMS whose +CMTI was lost
    command_timeout_s: float = Field(5.0, gt=0)  # ordinary commands; slow ones have their own
    #: +CFUN value for "radio off"; None = the model's default (4; Huawei 0).
    radio_off_cfun: int | None = Field(None, ge=0, le=127)
    #: Last rung of the hang ladder: a shell command that power-cycles the modem (uhubctl...).
    #: ``{port}``, ``{index}`` and ``{device}`` are substituted (shell-quoted).
    reset_command: str | None = None
    reset_timeout_s: float = Field(60.0, gt=0)
    #: Cap on AT+CFUN=1,1 and reset_command runs per port and hour.
    max_resets_per_hour: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _one_port_setting(self) -> AtConfig:
        if (self.port is None) == (not self.ports):
            raise ValueError("set exactly one of 'port' (one modem) or 'ports' (a pool)")
        if len(set(self.ports)) != len(self.ports):
            raise ValueError("'ports' lists a port twice")
        return self

    @property
    def port_list(self) -> tuple[str, ...]:
        return (self.port,) if self.port is not None else self.ports


class AtDriver(Driver):
    config_model = AtConfig

    def __init__(self, config: AtConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.config: AtConfig = config
        self._stream = EventStream()
        self._ports: dict[str, PortSupervisor] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._device_up = False

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        self._stream.open()
        cfg = self.config
        supervisors = [
            PortSupervisor(
                PortSettings(
                    device=self.name,
                    index=i,
                    url=url,
                    baudrate=cfg.baudrate,
                    storage=cfg.storage,
                    poll_s=cfg.poll_s,
                    sweep_s=cfg.sweep_s,
                    command_timeout_s=cfg.command_timeout_s,
                    radio_off_cfun=cfg.radio_off_cfun,
                    reset_command=cfg.reset_command,
                    reset_timeout_s=cfg.reset_timeout_s,
                    max_resets_per_hour=cfg.max_resets_per_hour,
                ),
                self.context,
                self._emit,
            )
            for i, url in enumerate(cfg.port_list)
        ]
        results = await asyncio.gather(*(s.open() for s in supervisors), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(supervisors):
            await asyncio.gather(*(s.shutdown() for s in supervisors), return_exceptions=True)
            reason = "; ".join(f"{s.name}: {e}" for s, e in zip(supervisors, results, strict=True))
            raise DriverError(f"no port of {self.name} could be opened: {reason}")
        for err in errors:
            if not isinstance(err, PortClosed):
                await asyncio.gather(*(s.shutdown() for s in supervisors), return_exceptions=True)
                raise DriverError(f"{self.name}: {err!r}") from err
        for supervisor, result in zip(supervisors, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("at.port_open_failed", port=supervisor.name, error=str(result))
            supervisor.on_up_change = self._port_up_changed
            self._ports[supervisor.name] = supervisor
            task = asyncio.create_task(supervisor.run(), name=f"device:{supervisor.name}:port")
            self._tasks.add(task)
        opened = len(supervisors) - len(errors)
        self._device_up = True
        self._emit(DeviceUp(f"{opened} of {len(supervisors)} ports open"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        ports, self._ports = self._ports, {}
        for supervisor in ports.values():
            with contextlib.suppress(Exception):
                await supervisor.shutdown()
        self._stream.end()

    def events(self) -> AsyncIterator[Event]:
        return self._stream.events()

    def _emit(self, event: Event) -> None:
        self._stream.put(event)

    def _port_up_changed(self, _supervisor: PortBase) -> None:
        any_up = any(s.up for s in self._ports.values())
        if any_up and not self._device_up:
            self._device_up = True
            self._emit(DeviceUp("a port is back"))
        elif not any_up and self._device_up:
            self._device_up = False
            self._emit(DeviceDown(f"all {len(self._ports)} ports of {self.name} are down"))

    # ------------------------------------------------------------------ actions

    def _port(self, port: str) -> PortSupervisor:
        try:
            return self._ports[port]
        except KeyError:
            raise CommandError(f"no such port: {port}") from None

    async def ack(self, token: Hashable) -> None:
        if not isinstance(token, AckToken):
            return  # a part that was never stored (+CMT): nothing to delete
        supervisor = self._ports.get(token.port)
        if supervisor is not None:
            await supervisor.ack(token)

    async def set_radio(self, sim: SimInfo, on: bool) -> None:
        await self._port(sim.port).set_radio(on)

    async def set_forwarding(self, sim: SimInfo, to: str | None) -> None:
        await self._port(sim.port).set_forwarding(to)
