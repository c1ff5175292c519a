"""The loops that talk to the hub: sender (``POST /messages``), registrar (``PUT /sims``).

Each loop is one coroutine run in the app's TaskGroup.  All share the rules of PROTOCOL.md
section 2 through :class:`agent.hubclient.Outcome`: transient errors back off (capped,
full jitter, ``Retry-After`` honoured), auth failures pause everything for
``upstream.auth_retry_s`` with everything kept queued, permanent errors never loop.

The sender's delivery rule (DESIGN.md invariant 3): rows are claimed in arrival order (so
per-SIM order holds), and a row leaves the outbox only when the hub names its id as accepted or
rejected.  A batch refused as a whole with a permanent error is retried one message at a time,
so only the message the hub really refuses goes to the dead letters.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from typing import Any

import structlog

from agent.backoff import Backoff
from agent.core import Core
from agent.hubclient import AuthFailed, Ok, Outcome, Permanent, Retry
from agent.store import OutboxRow

log = structlog.get_logger("agent.uplink")

IDLE_POLL_S = 1.0  # the outbox is re-checked this often even without a wake-up (CLI resends)
REGISTRAR_DEBOUNCE_S = 0.3


async def _pause(core: Core, outcome: Outcome, backoff: Backoff, what: str, loop: str) -> None:
    """Sleep as the outcome demands; log the first failure of a streak at WARNING."""
    if isinstance(outcome, AuthFailed):
        core.health.auth(outcome.reason, core.config.upstream.auth_retry_s)
        await core.idle(loop, core.config.upstream.auth_retry_s)
        return
    reason = outcome.reason if isinstance(outcome, Retry | Permanent) else "bad response"
    delay = backoff.next(outcome.after if isinstance(outcome, Retry) else None)
    core.health.error(f"{what}: {reason}")
    if backoff.failures == 1:
        log.warning(
            "hub request failed; retrying", what=what, reason=reason, retry_in_s=round(delay, 2)
        )
    else:
        log.debug(
            "hub request failed again",
            what=what,
            reason=reason,
            failures=backoff.failures,
            retry_in_s=round(delay, 2),
        )
    await core.idle(loop, delay)


def _parse_ack(data: Any, ids: set[str]) -> tuple[set[str], dict[str, str]] | None:
    """``{"accepted": [...], "rejected": [{"id", "reason"}]}`` or None when malformed."""
    if not isinstance(data, dict):
        return None
    acc, rej = data.get("accepted", []), data.get("rejected", [])
    if not isinstance(acc, list) or not isinstance(rej, list):
        return None
    accepted = {a for a in acc if isinstance(a, str) and a in ids}
    rejected: dict[str, str] = {}
    for r in rej:
        if isinstance(r, dict) and isinstance(r.get("id"), str) and r["id"] in ids:
            rejected[r["id"]] = str(r.get("reason") or "rejected by hub")[:500]
    return accepted, rejected


class Sender:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._isolate = 0  # messages still to send one by one after a whole-batch refusal
        self._asked: set[str] = set()  # unregistered SIMs the registrar was already poked for
        self.backoff = Backoff(1.0, core.config.upstream.backoff_max_s)

    async def run(self) -> None:
        core = self.core
        while True:
            core.beat("sender")
            limit = 1 if self._isolate else core.config.upstream.batch_max
            rows = await core.store.call(core.store.store.claim, limit)
            if not rows:
                core.outbox_wake.clear()
                await core.idle("sender", IDLE_POLL_S, core.outbox_wake)
                continue
            held = next((i for i, r in enumerate(rows) if r.iccid not in core.registered), None)
            if held is not None:
                held_iccid = rows[held].iccid
                # A SIM the hub has not been told about yet (start-up, hot-plug): send what
                # precedes it, keep the rest (order preserved) until the registrar has run.
                await core.store.call(core.store.store.release, rows[held:])
                rows = rows[:held]
                if not rows:
                    if held_iccid not in self._asked:
                        self._asked.add(held_iccid)
                        core.inventory.changed.set()
                    core.registered_wake.clear()
                    await core.idle("sender", IDLE_POLL_S, core.registered_wake)
                    continue
            try:
                outcome = await self._send(rows)
            except BaseException:
                # Cancelled (shutdown) or a bug: nothing stays in flight.
                await asyncio.shield(core.store.call(core.store.store.release, rows))
                raise
            if outcome is not None:
                await core.store.call(core.store.store.release, rows)
                core.metrics.retries.inc()
                await _pause(core, outcome, self.backoff, "POST /messages", "sender")

    async def _send(self, rows: list[OutboxRow]) -> Outcome | None:
        """Send one batch; None when it was settled, else the outcome to back off on."""
        core = self.core
        body = ('{"messages":[' + ",".join(r.body for r in rows) + "]}").encode()
        outcome = await core.hub.request("POST", "/messages", body=body, endpoint="messages")
        if isinstance(outcome, Ok):
            parsed = _parse_ack(outcome.data, {r.id for r in rows})
            if parsed is None:
                return Retry("POST /messages answered JSON without accepted/rejected lists")
            accepted, rejected = parsed
            settled = await core.store.call(
                core.store.store.settle, rows, accepted, rejected, now=time.time()
            )
            self._after_settle(rows, settled.delivered, settled.dead, settled.latencies)
            self._log_delivered(rows, accepted, time.time())
            for msg_id, reason in rejected.items():
                log.error(
                    "hub rejected a message; kept in dead letters", msg_id=msg_id, reason=reason
                )
            if settled.delivered + settled.dead < len(rows):
                # The hub left some ids out: they stay queued; do not hammer it.
                return Retry("hub did not answer for every message of the batch")
            return None
        if isinstance(outcome, Permanent):
            if len(rows) > 1:
                log.warning(
                    "hub refused a whole batch; isolating the bad message",
                    reason=outcome.reason,
                    batch=len(rows),
                )
                await core.store.call(core.store.store.release, rows)
                self._isolate = len(rows)
                return None
            await core.store.call(
                core.store.store.dead_letter_all, rows, outcome.reason, now=time.time()
            )
            log.error(
                "hub refused a message; kept in dead letters",
                msg_id=rows[0].id,
                reason=outcome.reason,
            )
            self._after_settle(rows, 0, 1, ())
            return None
        return outcome

    def _after_settle(
        self, rows: list[OutboxRow], delivered: int, dead: int, latencies: tuple[float, ...]
    ) -> None:
        core = self.core
        core.health.ok()
        self.backoff.reset()
        if self._isolate:
            self._isolate = max(0, self._isolate - len(rows))
        core.metrics.delivered.inc(delivered)
        core.metrics.dead_lettered.inc(dead)
        for lat in latencies:
            core.metrics.latency.observe(lat)

    def _log_delivered(self, rows: list[OutboxRow], accepted: set[str], now: float) -> None:
        # One line per forwarded SMS (DESIGN.md, logs): id, SIM, latency; never the text.
        for row in rows:
            if row.id in accepted:
                log.info(
                    "forwarded",
                    msg_id=row.id,
                    sim_id=row.iccid,
                    latency_ms=round((now - row.stored_at) * 1000, 1),
                )


class Registrar:
    """``PUT /sims``: at start-up, within a second of any change, and every heartbeat."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.backoff = Backoff(1.0, core.config.upstream.backoff_max_s)
        self.sent = 0

    async def run(self, ready: asyncio.Event) -> None:
        core = self.core
        # The first snapshot waits (bounded) for devices to report, so the hub is not told
        # at every restart that the host has no SIMs.
        with suppress(TimeoutError):
            async with asyncio.timeout(10):
                await ready.wait()
        heartbeat = core.config.upstream.heartbeat_s
        while True:
            core.beat("registrar")
            core.inventory.changed.clear()
            if not await self._send_until_done():
                # Refused for good (a 4xx): changes do not make it acceptable; try again at
                # the next heartbeat instead of at every change (PROTOCOL.md section 2).
                await core.idle("registrar", heartbeat)
                continue
            if await core.idle("registrar", heartbeat, core.inventory.changed):
                await asyncio.sleep(REGISTRAR_DEBOUNCE_S)

    async def _send_until_done(self) -> bool:
        """Send one snapshot, retrying transient failures.  False when the hub refused it."""
        core = self.core
        while True:
            core.beat("registrar")
            seq = await core.store.call(core.store.store.next_seq)
            snapshot = core.inventory.snapshot(seq)
            body = json.dumps(snapshot, ensure_ascii=False).encode()
            outcome = await core.hub.request("PUT", "/sims", body=body, endpoint="sims")
            if isinstance(outcome, Ok):
                core.registered.update(s["sim_id"] for s in snapshot["sims"])
                core.registered_wake.set()
                core.health.ok()
                self.backoff.reset()
                self.sent += 1
                return True
            if isinstance(outcome, Permanent):
                log.error(
                    "hub refused the SIM inventory; retrying at the next heartbeat",
                    reason=outcome.reason,
                )
                core.health.error(f"PUT /sims refused: {outcome.reason}")
                return False
            await _pause(core, outcome, self.backoff, "PUT /sims", "registrar")
