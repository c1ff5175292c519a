"""The driver interface: what every kind of hardware offers the core, and nothing more.

A driver owns its hardware (serial ports, a gateway's HTTP API, a simulated network) and
nothing else: it never touches SQL or the hub. It reports what happens as typed, frozen events
from :meth:`Driver.events` and executes the few actions the core asks for.

Contract (every driver, every test driver):

* ``connect()`` either succeeds or raises and leaves nothing behind (no open ports, no tasks).
* ``events()`` is one async iterator per connection.  It ends (or raises) when the device is
  lost; the core's supervisor then calls ``close()`` and reconnects with backoff.
* A :class:`SmsPart` stays on the hardware until the core calls ``ack(part.ack_token)``, which it
  does only after the part is committed with fsync.  A driver may emit the same part again (a
  sweep re-reads it, a delete failed): the core deduplicates by content id.
* Actions take the :class:`SimInfo` the driver last reported for the SIM (its port, slot and
  ICCID), never a bare port: on a SIM bank or an eUICC several SIMs share one port.  They raise
  :class:`CommandError` with a human-readable reason when the hardware refuses; any other
  exception is reported as an internal error.
* A driver declares its :attr:`Driver.capabilities`.  The core never calls an action outside
  them: it answers the command ``ok: false, "not supported by <driver>"`` itself.
* Several SIMs may share a port (bank slots, eSIM profiles): exactly one of them is
  ``selected`` (in use); the others are reported with ``selected=False`` and the core lists them
  ``standby`` for as long as the driver reports them (they are not "gone").
* Small durable state a driver needs across restarts (poll cursors, a gateway's boot id, the
  rotation order) goes through ``context.state`` (kept in the core's store), never a file of
  the driver's own.

Sims are identified by ICCID everywhere; ``port`` and ``slot`` are only where a SIM sits now.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class DriverError(Exception):
    """The device cannot be used right now (connect failed, port vanished, device hung)."""


class CommandError(Exception):
    """The hardware refused an action; ``str(exc)`` is the reason reported to the hub."""


class Encoding(enum.StrEnum):
    """How an SMS part's user data was coded (TS 23.038 clause 4 data coding scheme)."""

    GSM7 = "gsm7"  # decoded by the driver into ``text``
    UCS2 = "ucs2"  # raw UTF-16BE bytes in ``data``; joined across parts before decoding
    BINARY = "8bit"  # raw bytes in ``data``; forwarded as hex
    TEXT = "text"  # drivers without PDUs (gateways, simulation): ``text`` as delivered
    UNDECODABLE = "undecodable"  # malformed PDU: ``data`` holds the raw TPDU, forwarded as hex


class Capability(enum.StrEnum):
    """What a driver can do beyond reading SIMs and SMS (PROTOCOL.md section 5 commands)."""

    RADIO = "radio"  # set_radio: enable / disable (rental)
    FORWARDING = "forwarding"  # set_forwarding: forward / unforward
    SELECT = "select"  # select: make a standby SIM (bank slot, eSIM profile) the selected one
    ESIM = "esim"  # esim_download / esim_delete
    USSD = "ussd"  # ussd: run a USSD code on the SIM and return the network's reply
    CALLS = "calls"  # reports incoming calls


class SimKind(enum.StrEnum):
    SIM = "sim"  # a plastic SIM (or a SIM-bank slot)
    ESIM = "esim"  # a profile on an eUICC


@dataclass(frozen=True, slots=True)
class Balance:
    """A SIM's balance as last read (gateway ``bal``, or a USSD recipe)."""

    amount: float
    currency: str | None
    checked_at: datetime


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenation info from the UDH (TS 23.040 9.2.3.24.1 IEI 0x00, 9.2.3.24.8 IEI 0x08)."""

    ref: int
    part: int  # 1-based
    total: int
    ref_bits: int = 8  # 8 or 16: part of the reassembly key, since refs of both sizes coexist


@dataclass(frozen=True, slots=True)
class SimInfo:
    """What the hardware knows about one SIM right now."""

    port: str  # "<device>/<slot>", stable for the device, e.g. "pool1/3"
    iccid: str
    imsi: str | None = None
    number: str | None = None  # E.164 with "+", if the hardware knows it
    #: "cnum", "phonebook", "ussd", "gateway" (PROTOCOL.md section 3), or "cache": the number
    #: came from ``DriverContext.cached_number``; the core then keeps the source it stored when
    #: the number was first learnt (a "cache" never reaches the hub).
    number_source: str | None = None
    operator: str | None = None
    mcc_mnc: str | None = None
    signal_dbm: int | None = None
    registered: bool = False
    radio_on: bool = True
    forward_to: str | None = None  # as last set or read back; None when off or unknown
    #: Position inside the port (PROTOCOL.md section 3): "3.02" is port 3, slot 2; None for a
    #: one-slot port.
    slot: str | None = None
    #: The SIM in use on its radio module.  False: present and healthy but another slot or
    #: profile of the same port is selected (the inventory's ``standby``).
    selected: bool = True
    kind: SimKind = SimKind.SIM
    eid: str | None = None  # the eUICC's id, for an eSIM profile
    balance: Balance | None = None


@dataclass(frozen=True, slots=True)
class SimPresent:
    """A SIM is present (first seen, or anything in its :class:`SimInfo` changed)."""

    info: SimInfo


@dataclass(frozen=True, slots=True)
class SimGone:
    """The SIM that sat in ``port`` is no longer there (removed, swapped, modem gone)."""

    port: str
    iccid: str | None = None


@dataclass(frozen=True, slots=True)
class SmsPart:
    """One received SMS part, still stored on the hardware until acknowledged.

    ``raw`` is what the message id is computed from (PROTOCOL.md section 4): the TPDU bytes for
    PDU drivers, or a canonical encoding of sender, SMSC timestamp and text for others.  Two
    different SMS must never share ``raw``; the same SMS read twice must always have the same.
    """

    port: str
    iccid: str
    sender: str
    sent_at: datetime | None  # SMSC timestamp (SCTS), timezone-aware
    encoding: Encoding
    raw: bytes
    ack_token: Hashable
    text: str = ""  # GSM7 / TEXT
    data: bytes = b""  # UCS2 / BINARY / UNDECODABLE
    concat: Concat | None = None
    flash: bool = False  # class 0 (TS 23.038 clause 4)
    #: What was wrong with a PDU decoded anyway (e.g. user data longer than TP-UDL, decoded
    #: as announced); ``raw`` still holds every byte.  Forwarded as the message's
    #: ``malformed`` field with the raw bytes (README, decisions).
    malformed: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceUp:
    """The device is connected and working (after connect or after a recovery)."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeviceDown:
    """The device stopped working; the driver is recovering or the supervisor will reconnect."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeviceStat:
    """A counter or gauge the driver wants exported (storage use, hang-ladder steps, errors)."""

    name: str  # e.g. "storage_used", "storage_total", "hang_step", "cme_error", "cms_error"
    value: float
    port: str | None = None
    labels: tuple[tuple[str, str], ...] = ()


Event = SimPresent | SimGone | SmsPart | DeviceUp | DeviceDown | DeviceStat


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` / ``"[::1]:9108"`` → host and port; ValueError otherwise (the
    value cut to 80 characters: it may be anything an operator typed)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        shown = value if len(value) <= 80 else value[:80] + "…"
        raise ValueError(f"expected HOST:PORT, got {shown!r}")
    return host.strip("[]"), int(port)


class EventStream:
    """The usual shape of :meth:`Driver.events`: events put by a driver's callbacks and
    tasks, in order, one stream per connection.  ``end()`` (from ``close()``, idempotent)
    ends the iterator of the current connection; ``open()`` (from ``connect()``) starts a
    new one after an end, while the old iterator keeps its own queue and end marker."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.ended = False

    def open(self) -> None:
        if self.ended:
            self._queue = asyncio.Queue()
            self.ended = False

    def put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[Event]:
        queue = self._queue
        while (item := await queue.get()) is not None:
            yield item


@dataclass(frozen=True, slots=True)
class UssdRecipe:
    """Own-number discovery by USSD for one operator (config ``[[number_discovery]]``)."""

    mcc_mnc: str
    ussd: str
    regex: str  # the first group (or whole match) is the number


class DriverState:
    """A driver's small durable key-value (poll cursors, boot ids, rotation order).

    The core's implementation keeps it in its store, per device; this in-memory one serves
    tests and tools that run a driver without a store.  Values are short strings (a driver
    encodes anything richer as JSON).  A value ``set`` survives the agent's crash; a power cut
    may lose the latest ones (they are committed without fsync), so a driver must tolerate
    finding an older value: a poll cursor re-reads rows, which the core drops by id.
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self._values.get(key)

    async def set(self, key: str, value: str) -> None:
        self._values[key] = value


@dataclass(slots=True)
class DriverContext:
    """What the core hands a driver: its name, read-only help from the store and config, and a
    small durable key-value of its own."""

    device: str
    state_dir: Path
    #: The number the store has cached for an ICCID (config overrides included), or None.
    cached_number: Callable[[str], str | None] = lambda _iccid: None
    number_recipes: Sequence[UssdRecipe] = field(default_factory=tuple)
    state: DriverState = field(default_factory=DriverState)


class DriverConfig(BaseModel):
    """Base of every driver's ``[[devices]]`` table.  Unknown keys are errors."""

    # allow_inf_nan=False: ``poll_s = inf`` passes ``gt=0`` and would wedge a loop silently.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    driver: str


class Driver(abc.ABC):
    """One device (a modem pool, a gateway, a simulated bank) and the SIMs in it."""

    #: The pydantic model of this driver's ``[[devices]]`` table.
    config_model: ClassVar[type[DriverConfig]] = DriverConfig
    #: What the core may ask of this driver besides reading (see :class:`Capability`).
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.RADIO, Capability.FORWARDING}
    )

    def __init__(self, config: Any, context: DriverContext) -> None:
        self.config = config
        self.context = context

    @property
    def name(self) -> str:
        return self.context.device

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the device.  Raises :class:`DriverError` and leaves nothing behind on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything.  Idempotent; never raises."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[Event]:
        """Events of the current connection; ends or raises when the device is lost."""

    @abc.abstractmethod
    async def ack(self, token: Hashable) -> None:
        """The part with this token is committed: remove it from the hardware (retrying)."""

    def _unsupported(self, what: str) -> CommandError:
        return CommandError(f"{what} is not supported by {type(self).__name__}")

    # The actions.  The core calls one only when its capability is declared; the defaults
    # refuse, so a driver implements exactly what it declares.

    async def set_radio(self, sim: SimInfo, on: bool) -> None:
        """Switch ``sim`` on (registered, receiving) or off (rental ``disable``)."""
        raise self._unsupported("enable/disable")

    async def set_forwarding(self, sim: SimInfo, to: str | None) -> None:
        """Set unconditional call forwarding to ``to``, or cancel it with None."""
        raise self._unsupported("call forwarding")

    async def select(self, sim: SimInfo) -> None:
        """Make the standby ``sim`` the selected one on its port (bank slot switch, eSIM
        profile enable); the SIM selected before becomes standby."""
        raise self._unsupported("slot selection")

    async def esim_download(
        self, port: str, activation_code: str, confirmation_code: str | None
    ) -> str:
        """Download a profile onto the eUICC of ``port`` (the inventory's port string, e.g.
        ``"gw1/2"``); returns the new profile's ICCID once the hardware reports it."""
        raise self._unsupported("eSIM download")

    async def esim_delete(self, sim: SimInfo) -> None:
        """Delete the eSIM profile ``sim`` (the core refuses a selected or rented one first)."""
        raise self._unsupported("eSIM delete")

    async def ussd(self, sim: SimInfo, code: str) -> str:
        """Run a USSD code on ``sim``; returns the network's reply as text."""
        raise self._unsupported("USSD")
