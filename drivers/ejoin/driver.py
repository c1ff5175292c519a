"""``EjoinDriver``: one Ejoin / Skyline gateway (every port, bank slot and eSIM profile).

Owns the life cycle and the three loops over one :class:`~drivers.ejoin.client.EjoinClient`:

* **status** (every ``status_s``; every 0.3 s for a few seconds after a command; faster when
  rotating): ``goip_get_status.html?all_slots=1`` and, on boxes with an eUICC,
  ``goip_get_esims.html`` -> SimPresent / SimGone (:mod:`.inventory`), then rotation and pins
  (:mod:`.rotation`);
* **SMS** (every ``poll_s``, or at once when a push arrives): ``goip_get_sms.html`` from the
  persisted cursor -> SmsParts (:mod:`.inbox`); acks advance the cursor;
* **push listener** (optional, :mod:`.push`): wakes the SMS loop.

Health: ``connect()`` fails (DriverError, nothing left open) unless the box answers a status
with the configured credentials.  Afterwards the status loop is the one judge of health: a
failed status read (unreachable, slow, rebooting, HTML, wrong credentials) emits one
``DeviceDown(reason)`` (the core shows the device offline with that reason in status, logs and
``vsim_device_up``) and is retried with capped exponential backoff and jitter (0.5 s .. 30 s).
A failed SMS poll asks the status loop to look at once and backs off on its own, so an SMS
endpoint that alone fails does not make the device flap; the SMS loop waits while the device
is down.  No loop spins and a slow box stalls only this device.  On recovery: ``DeviceUp``,
every SIM announced again, an immediate SMS poll.  A rebooted box has a new ``ssrc``: reading
restarts at row 1 and content ids drop what was already committed (no SMS lost or doubled).

Capabilities: RADIO (``lock``/``unlock``; the field lesson of section 1.5: only the gateway
lock holds, AT CFUN does not), FORWARDING and USSD (AT pass-through), SELECT (``switch``), ESIM.
``enable`` of a standby SIM is the core's ``select`` then ``set_radio(True)``: switch, then
unlock.  Rental pins (:mod:`.rotation`): ``select`` pins, ``set_radio(True)`` pins the selected
SIM, ``set_radio(False)`` unpins.
Not CALLS: the HTTP API has call *statistics* only (section 1.7), no per-call report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Hashable
from typing import Any

import structlog

from drivers.base import (
    Capability,
    CommandError,
    DeviceDown,
    DeviceUp,
    Driver,
    DriverContext,
    DriverError,
    Event,
    EventStream,
    SimInfo,
    SimKind,
    SimPresent,
)
from drivers.ejoin import actions
from drivers.ejoin.client import EjoinClient, GatewayError
from drivers.ejoin.config import EjoinConfig
from drivers.ejoin.inbox import MAX_UNACKED, AckToken, Inbox
from drivers.ejoin.inventory import Inventory, Located
from drivers.ejoin.push import PushListener
from drivers.ejoin.rotation import Candidate, Rotation
from drivers.ejoin.wire import (
    DevStatus,
    EsimPort,
    WireError,
    check_reply,
    dot_port,
    letter_port,
    parse_esims,
    parse_sms_page,
    parse_status,
)

log = structlog.get_logger(__name__)

SMS_PAGE = 100  # rows per goip_get_sms request
FAST_STATUS_S = 0.3  # status poll period right after a command (registration settles)
FAST_WINDOW_S = 5.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait for their end, cancelling again while any survives.

    A cancellation can be swallowed when it lands while httpcore's anyio cancel scope is
    cancelling its own connect attempts (anyio takes the CancelledError for its own), and the
    loop then goes on; repeating the cancel ends it.  Bounded: a task that still survives after
    ~5 s is left behind rather than hanging ``close()``.
    """
    pending = {t for t in tasks if not t.done()}
    for _ in range(50):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    log.error("ejoin.tasks_survived_cancel", tasks=[t.get_name() for t in pending])


class EjoinDriver(Driver):
    config_model = EjoinConfig
    capabilities = frozenset(
        {
            Capability.RADIO,
            Capability.FORWARDING,
            Capability.SELECT,
            Capability.ESIM,
            Capability.USSD,
        }
    )

    def __init__(self, config: EjoinConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.config: EjoinConfig = config
        self._stream = EventStream()
        self._client: EjoinClient | None = None
        self._push: PushListener | None = None
        self._inbox: Inbox | None = None
        self._inv = Inventory(context.device, context.cached_number)
        self._rotation = Rotation(context.state, config.rotate_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()  # poll SMS now
        self._status_now = asyncio.Event()  # poll status now
        self._up = asyncio.Event()
        self._down_reason: str | None = None
        self._fast_until = 0.0
        self._refresh_lock = asyncio.Lock()
        self._has_esim = False
        self._status: DevStatus | None = None
        self.mac: str | None = None
        self.identity: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        self._stream.open()
        cfg = self.config
        client = EjoinClient(cfg.url, cfg.username, cfg.password_value(), cfg.timeout_s)
        push: PushListener | None = None
        try:
            status = parse_status(await self._status_doc(client))
            esims = await self._esims(client, probe=True)
            self.mac = status.mac or cfg.url
            await self._rotation.load()
            self._inbox = Inbox(self.context.state, self.name, self.mac, cfg.join_s)
            if cfg.push_listen:
                push = PushListener(cfg.push_listen, self._wake.set)
                await push.start()
        except BaseException as exc:
            # Nothing left behind (drivers/base.py contract), whatever ended the connect.
            if push is not None:
                await push.stop()
            await client.aclose()
            if isinstance(exc, GatewayError | WireError | OSError):
                raise DriverError(f"{self.name}: {exc}") from None
            if isinstance(exc, Exception):  # unforeseen: still the contract's DriverError
                log.error("ejoin.connect_failed", device=self.name, exc_info=exc)
                reason = client.reason(f"{type(exc).__name__}: {exc}")
                raise DriverError(f"{self.name}: {reason}") from None
            raise
        self._client, self._push, self._status = client, push, status
        self.identity = {
            "model": status.model,
            "firmware": status.firmware,
            "mac": status.mac,
            "ports": status.max_ports,
            "slots": status.max_slots,
            "esim_ports": sorted(esims),
        }
        for event in self._inv.update(status, esims, force=True):
            self._emit(event)
        self._up.set()
        self._down_reason = None
        self._emit(
            DeviceUp(
                f"{status.model or 'ejoin'} {status.firmware or ''}".strip()
                + f", {status.max_ports or '?'} ports x {status.max_slots} slots"
            )
        )
        self._wake.set()  # read everything not yet acked at once (a restart, a reconnect)
        self._spawn(self._status_loop(), "status")
        self._spawn(self._sms_loop(), "sms")

    async def close(self) -> None:
        await cancel_all(list(self._tasks))
        self._tasks = set()
        if self._push is not None:
            with contextlib.suppress(Exception):
                await self._push.stop()
            self._push = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None
        self._up.clear()
        self._stream.end()

    def events(self) -> AsyncIterator[Event]:
        return self._stream.events()

    def _emit(self, event: Event) -> None:
        self._stream.put(event)

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro, name=f"device:{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A loop ends only when cancelled; one that died of an unexpected exception must not
        leave the device looking alive: log it, report the device down and end the event
        stream, so the core's supervisor reconnects (close, then connect)."""
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None or self._stream.ended:
            return
        reason = f"{task.get_name()} loop failed: {type(exc).__name__}: {str(exc)[:200]}"
        log.error("ejoin.loop_failed", device=self.name, reason=reason, exc_info=exc)
        self._up.clear()
        self._down_reason = reason
        self._emit(DeviceDown(reason))
        self._stream.end()

    @property
    def push_port(self) -> int | None:
        return self._push.port if self._push is not None else None

    # ------------------------------------------------------------------ health

    def _mark_down(self, reason: str) -> None:
        if self._up.is_set():
            self._up.clear()
            self._down_reason = reason
            log.warning("ejoin.down", device=self.name, reason=reason)
            self._emit(DeviceDown(reason))
            self._status_now.set()  # the status loop is the one that probes for recovery

    def _mark_up(self) -> None:
        if not self._up.is_set():
            log.info("ejoin.up", device=self.name, after=self._down_reason)
            self._down_reason = None
            self._up.set()
            self._emit(DeviceUp("gateway answers again"))
            for info in self._inv.sims.values():  # the core marked them offline on DeviceDown
                self._emit(SimPresent(info))
            self._wake.set()

    # ------------------------------------------------------------------ status

    async def _status_doc(self, client: EjoinClient) -> Any:
        return await client.get("goip_get_status.html", version="1.1", ports="all", all_slots=1)

    async def _esims(self, client: EjoinClient, probe: bool = False) -> dict[int, EsimPort]:
        """The eUICC ports; a box without the eSIM API (older firmware: 404, an error code)
        simply has none.  Credential failures still count as failures."""
        if not probe and not self._has_esim:
            return {}
        try:
            esims = parse_esims(await client.get("goip_get_esims.html", ports="all"), client.reason)
        except GatewayError as exc:
            if exc.auth or not probe:
                raise
            esims = {}
        except WireError:
            if not probe:
                raise
            esims = {}
        if probe:
            self._has_esim = bool(esims)
        return esims

    async def _refresh(self) -> DevStatus:
        client = self._require_client()
        async with self._refresh_lock:
            status = parse_status(await self._status_doc(client))
            esims = await self._esims(client)
            self._status = status
            for event in self._inv.update(status, esims):
                self._emit(event)
            return status

    def _status_period(self) -> float:
        period = self.config.status_s
        if self.config.rotate_s > 0:
            period = min(period, max(0.2, self.config.rotate_s / 4))
        if time.monotonic() < self._fast_until:
            period = min(period, FAST_STATUS_S)
        return period

    async def _status_loop(self) -> None:
        failures = 0
        delay = self._status_period()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_now.wait(), delay)
            self._status_now.clear()
            try:
                await self._refresh()
                self._mark_up()
                await self._rotate()
                failures = 0
                delay = self._status_period()
            except (GatewayError, WireError) as exc:
                self._mark_down(str(exc))
                failures += 1
                # Capped exponential backoff with full jitter (invariant 5); growth 1.5 rather
                # than 2 so a box back from a reboot (~10-60 s) is noticed within seconds.
                cap = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 1.5 ** min(failures, 32))
                delay = max(BACKOFF_MIN_S, random.uniform(0, cap))

    # ------------------------------------------------------------------ rotation

    async def _rotate(self) -> None:
        by_port: dict[int, list[Candidate]] = {}
        for iccid, w in self._inv.where.items():
            by_port.setdefault(w.port, []).append(Candidate(w.slot, iccid, w.selected, w.locked))
        changed = False
        switched = False
        for port, cands in sorted(by_port.items()):
            selected = next((c.iccid for c in cands if c.selected), None)
            changed |= self._rotation.observe(port, selected)
            target = self._rotation.target(port, cands)
            if target is not None:
                log.info("ejoin.rotate", device=self.name, port=port, slot=target.slot)
                try:
                    await self._command("switch", dot_port(port, target.slot))
                except WireError as exc:  # refused for this port: not a device failure
                    log.warning("ejoin.rotate_refused", device=self.name, reason=str(exc))
                    continue
                switched = True
        if changed:
            await self._rotation.save(present=self._inv.where)
        if switched:
            self._fast()

    # ------------------------------------------------------------------ SMS

    async def _sms_loop(self) -> None:
        failures = 0
        delay = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay or self.config.poll_s)
            self._wake.clear()
            await self._up.wait()
            try:
                await self._poll_sms()
                failures, delay = 0, 0.0
            except (GatewayError, WireError) as exc:
                # Up/down is the status loop's call alone (one judge, no flapping when only
                # the SMS endpoint fails); it is asked to look now.  The poll backs off.
                failures += 1
                if failures == 1:
                    log.warning("ejoin.sms_poll_failed", device=self.name, reason=str(exc))
                self._status_now.set()
                cap = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 1.5 ** min(failures, 32))
                delay = max(self.config.poll_s, random.uniform(0, cap))

    async def _poll_sms(self) -> None:
        client, inbox = self._require_client(), self._inbox
        assert inbox is not None
        restarted = False
        for _ in range(1000):  # bounded: at most 100,000 rows per poll
            if inbox.unacked >= MAX_UNACKED:
                break  # back-pressure: let the core commit and ack first
            start = inbox.read_next
            page = parse_sms_page(
                await client.get("goip_get_sms.html", sms_id=start, sms_num=SMS_PAGE, sms_del=0),
                client.reason,
            )
            if page.ssrc != inbox.ssrc:
                old = inbox.ssrc
                await inbox.load(page.ssrc)
                if old is not None:
                    log.info("ejoin.reboot_seen", device=self.name, cursor=inbox.cursor)
                if inbox.read_next != start:
                    continue
            if inbox.take(page, start, may_restart=not restarted):
                restarted = True  # at most once per poll: a box that keeps doing it is read on
                log.warning(
                    "ejoin.numbering_reset",
                    device=self.name,
                    reason=f"next_sms {page.next_sms} is behind the cursor {start} with the"
                    " same ssrc (inbox cleared?): reading again from row 1",
                )
                continue
            if len(page.rows) < SMS_PAGE:
                break
        if any(self._inv.by_slot.get(k) is None for k in inbox.waiting_slots()):
            self._status_now.set()  # a row for a slot we do not know yet: look again
        for part in inbox.parts(lambda p, s: self._inv.by_slot.get((p, s))):
            self._emit(part)
        await inbox.advance()

    async def ack(self, token: Hashable) -> None:
        if isinstance(token, AckToken) and self._inbox is not None:
            await self._inbox.acked(token)

    # ------------------------------------------------------------------ commands

    def _require_client(self) -> EjoinClient:
        if self._client is None:
            raise GatewayError(f"{self.name} is not connected")
        return self._client

    def _fast(self) -> None:
        self._fast_until = time.monotonic() + FAST_WINDOW_S
        self._status_now.set()

    async def _command(self, op: str, ports: str) -> None:
        client = self._require_client()
        doc = await client.post("goip_send_cmd.html", {"type": "command", "op": op, "ports": ports})
        check_reply(doc, f"{op} {ports}", client.reason)

    async def _run(self, op: str, ports: str) -> None:
        """A command for an action: box failures become the command's reason."""
        if not self._up.is_set():
            raise CommandError(f"{self.name} is offline: {self._down_reason}")
        try:
            await self._command(op, ports)
        except (GatewayError, WireError) as exc:
            raise CommandError(str(exc)) from None

    def _locate(self, sim: SimInfo) -> Located:
        """Where ``sim`` is now: by ICCID from the last status, else from its SimInfo."""
        found = self._inv.where.get(sim.iccid)
        if found is not None:
            return found
        try:
            port = int(sim.port.rpartition("/")[2])
            slot = int(sim.slot.partition(".")[2]) if sim.slot else 1
        except ValueError:
            raise CommandError(f"unknown SIM location {sim.port} {sim.slot}") from None
        return Located(port, slot, not sim.radio_on, sim.selected)

    async def _settle(self) -> None:
        """Report the new state soon: one refresh now (best effort), then fast polling."""
        with contextlib.suppress(GatewayError, WireError):
            await self._refresh()
        self._fast()

    async def set_radio(self, sim: SimInfo, on: bool) -> None:
        """``enable`` -> ``unlock`` of the slot, ``disable`` -> ``lock`` (the only detach that
        holds on these boxes, research 1.5).  Enabling never switches slots: the core selects a
        standby SIM first (``select``) when the hub enables it, and its re-apply of a desired
        state must not pick the slot in use (agent/actions.py).  Enabling the *selected* SIM
        pins it (rented); disabling unpins."""
        where = self._locate(sim)
        if on:
            if where.selected:
                await self._rotation.pin(sim.iccid)
            await self._run("unlock", letter_port(where.port, where.slot))
        else:
            await self._rotation.unpin(sim.iccid)
            await self._run("lock", letter_port(where.port, where.slot))
        await self._settle()

    async def select(self, sim: SimInfo) -> None:
        """``switch`` to the SIM's slot, and pin it (pinned first, so rotation cannot switch
        away meanwhile).  On an already selected SIM it only pins: safe to call for every
        ``enable``."""
        where = self._locate(sim)
        await self._rotation.pin(sim.iccid)
        if not where.selected:
            await self._run("switch", dot_port(where.port, where.slot))
        await self._settle()

    def _selected_port(self, sim: SimInfo, what: str) -> int:
        where = self._locate(sim)
        if not self._up.is_set():
            raise CommandError(f"{self.name} is offline: {self._down_reason}")
        if not where.selected:
            raise CommandError(
                f"{what}: SIM is standby in slot {dot_port(where.port, where.slot)};"
                " only the selected SIM of a port reaches the network"
            )
        return where.port

    async def set_forwarding(self, sim: SimInfo, to: str | None) -> None:
        port = self._selected_port(sim, "call forwarding")
        await actions.set_forwarding(self._require_client(), port, to)
        event = self._inv.set_forward(sim.iccid, to)
        if event is not None:
            self._emit(event)

    async def ussd(self, sim: SimInfo, code: str) -> str:
        port = self._selected_port(sim, "USSD")
        return await actions.ussd(self._require_client(), port, code)

    # ------------------------------------------------------------------ eSIM

    async def _esim_port(self, port: int) -> EsimPort:
        try:
            client = self._require_client()
            esims = parse_esims(await client.get("goip_get_esims.html", ports="all"), client.reason)
        except (GatewayError, WireError) as exc:
            raise CommandError(f"eSIM: {exc}") from None
        ep = esims.get(port)
        if ep is None:
            raise CommandError(f"{self.name}/{port} has no eUICC")
        return ep

    async def esim_download(
        self, port: str, activation_code: str, confirmation_code: str | None
    ) -> str:
        device, _, number = port.rpartition("/")
        if device != self.name or not number.isdigit():
            raise CommandError(f"{port} is not a port of {self.name}")
        p = int(number)
        ep = await self._esim_port(p)
        slots = self._status.max_slots if self._status is not None else len(ep.profiles) + 1
        # A slot is free when it holds no profile (an entry left by a failed write is free).
        used = {s for s, prof in ep.profiles.items() if prof.iccid or prof.status != 3}
        free = [s for s in range(1, max(slots, 1) + 1) if s not in used]
        if not free:
            raise CommandError(f"no free profile slot on {port}")
        body = {"port": p, "slot": free[0], "ac": activation_code, "cc": confirmation_code or ""}
        iccid = await actions.esim_run(self._require_client(), "write", p, free[0], body)
        assert iccid is not None
        await self._settle()
        return iccid

    async def esim_delete(self, sim: SimInfo) -> None:
        if sim.kind is not SimKind.ESIM:
            raise CommandError(f"{sim.iccid} is a plastic SIM, not an eSIM profile")
        where = self._locate(sim)
        if where.selected:
            raise CommandError("the profile is selected; select another profile first")
        if sim.iccid in self._rotation.pins:
            raise CommandError("the profile is rented (enabled by the hub); disable it first")
        body = {"port": where.port, "slot": where.slot}
        await actions.esim_run(self._require_client(), "delete", where.port, where.slot, body)
        await self._settle()
