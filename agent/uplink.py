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
import os
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
MESSAGES = "POST /messages"
SIMS = "PUT /sims"


async def _pause(core: Core, outcome: Outcome, backoff: Backoff, what: str, loop: str) -> None:
    """Sleep as the outcome demands; log the first failure of a streak at WARNING.  ``what``
    is the endpoint (``"POST /messages"``): the error is kept for it alone in /status."""
    if isinstance(outcome, AuthFailed):
        core.health.auth(what, outcome.reason, core.config.upstream.auth_retry_s)
        await core.idle(loop, core.config.upstream.auth_retry_s)
        return
    reason = outcome.reason if isinstance(outcome, Retry | Permanent) else "bad response"
    delay = backoff.next(outcome.after if isinstance(outcome, Retry) else None)
    core.health.error(what, reason)
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
    """``POST /messages``: one batch in flight, oldest first, settled by id.

    The outbox is read after an in-memory cursor (the last ``seq`` sent and answered), on the
    store's read connection.  A settle (deleting accepted rows) runs on the writer while the
    next batch is already on its way; before the next settle the previous one is awaited, so
    at most one is pending and the cursor never passes a row still owed to the hub.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self._isolate = 0  # messages still to send one by one after a whole-batch refusal
        self._asked: set[str] = set()  # unregistered SIMs the registrar was already poked for
        self._unknown: dict[str, int] = {}  # message id → "unknown sim" answers so far
        self._cursor = 0
        self._settling: asyncio.Future[None] | None = None
        self.backoff = Backoff(1.0, core.config.upstream.backoff_max_s)

    async def run(self) -> None:
        core = self.core
        if os.environ.get("VSIM_DEBUG_WEDGE") == "sender":
            # Test seam: a sender stuck for good, to prove the systemd watchdog stops
            # pinging (tests/e2e/test_systemd_notify.py).  Nothing else reads it.
            log.warning("VSIM_DEBUG_WEDGE=sender: the sender loop is wedged on purpose")
            await asyncio.Event().wait()
        try:
            while True:
                core.beat("sender")
                limit = 1 if self._isolate else core.config.upstream.batch_max
                rows = await core.store.read(core.store.reader.peek, self._cursor, limit)
                if not rows:
                    core.outbox_wake.clear()
                    await core.idle("sender", IDLE_POLL_S, core.outbox_wake)
                    continue
                held = next((i for i, r in enumerate(rows) if r.iccid not in core.registered), None)
                if held is not None:
                    # A SIM the hub has not been told about yet (start-up, hot-plug): send
                    # what precedes it and hold the rest, in order, until the registrar ran.
                    held_iccid = rows[held].iccid
                    rows = rows[:held]
                    if not rows:
                        if held_iccid not in self._asked:
                            self._asked.add(held_iccid)
                            core.inventory.changed.set()
                        core.registered_wake.clear()
                        await core.idle("sender", IDLE_POLL_S, core.registered_wake)
                        continue
                outcome = await self._send(rows)
                if outcome is not None:
                    core.metrics.retries.inc()
                    await _pause(core, outcome, self.backoff, MESSAGES, "sender")
        finally:
            # Shutdown: let the pending settle finish (it is a short local commit).
            if self._settling is not None:
                with suppress(Exception):
                    await asyncio.shield(self._settling)

    async def _send(self, rows: list[OutboxRow]) -> Outcome | None:
        """Send one batch; None when the hub answered for it, else the outcome to back off on."""
        core = self.core
        body = ('{"messages":[' + ",".join(r.body for r in rows) + "]}").encode()
        outcome = await core.hub.request("POST", "/messages", body=body, endpoint="messages")
        if isinstance(outcome, Ok):
            parsed = _parse_ack(outcome.data, {r.id for r in rows})
            if parsed is None:
                return Retry("POST /messages answered JSON without accepted/rejected lists")
            accepted, rejected = parsed
            retry = self._unknown_sims(rows, rejected)
            answered = [r for r in rows if r.id in accepted or r.id in rejected]
            answered_ids = {r.id for r in answered}
            # The cursor moves past the answered prefix only: an id the hub left out (or an
            # unknown-sim retry) is sent again, with what follows it.
            first_open = next((r.seq for r in rows if r.id not in answered_ids), None)
            self._cursor = (first_open - 1) if first_open is not None else rows[-1].seq
            await self._settle(answered, accepted, rejected)
            if answered or retry:
                # Progress only: a 200 that settles none of the batch is a failure like any
                # other, so the backoff keeps growing instead of restarting at ~2 tries a second.
                self._after_answer()
            if first_open is not None and not retry:
                return Retry("hub did not answer for every message of the batch")
            return None
        if isinstance(outcome, Permanent):
            if len(rows) > 1:
                log.warning(
                    "hub refused a whole batch; isolating the bad message",
                    reason=outcome.reason,
                    batch=len(rows),
                )
                self._isolate = len(rows)
                return None
            self._cursor = rows[0].seq
            await self._settle(rows, set(), {rows[0].id: outcome.reason})
            self._after_answer()
            return None
        return outcome

    def _unknown_sims(self, rows: list[OutboxRow], rejected: dict[str, str]) -> bool:
        """An ``unknown sim`` rejection means the hub lost our inventory (e.g. it restarted):
        register again and retry, up to three times per message, before dead-lettering."""
        retry = False
        for row in rows:
            reason = rejected.get(row.id)
            if reason is None or "unknown sim" not in reason.lower():
                continue
            tries = self._unknown.get(row.id, 0) + 1
            if tries > 3:
                self._unknown.pop(row.id, None)
                continue
            self._unknown[row.id] = tries
            del rejected[row.id]
            self.core.registered.discard(row.iccid)
            self._asked.discard(row.iccid)
            retry = True
        if retry:
            self.core.inventory.changed.set()
        return retry

    async def _settle(
        self, rows: list[OutboxRow], accepted: set[str], rejected: dict[str, str]
    ) -> None:
        core = self.core
        if self._settling is not None:
            await self._settling
        if not rows:
            self._settling = None
            return
        for msg_id, reason in rejected.items():
            log.error("hub rejected a message; kept in dead letters", msg_id=msg_id, reason=reason)

        async def settle() -> None:
            try:
                settled = await core.store.call(
                    core.store.store.settle, rows, accepted, rejected, now=time.time()
                )
            except Exception:
                # Rows stay in the outbox and are re-sent after a restart (same ids).
                log.exception("could not settle delivered messages", count=len(rows))
                return
            core.metrics.delivered.inc(settled.delivered)
            core.metrics.dead_lettered.inc(settled.dead)
            for lat in settled.latencies:
                core.metrics.latency.observe(lat)
            self._log_delivered(rows, accepted, time.time())

        self._settling = asyncio.ensure_future(settle())

    def _after_answer(self) -> None:
        self.core.health.ok(MESSAGES)
        self.backoff.reset()
        if self._isolate:
            self._isolate -= 1

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
                core.health.ok(SIMS)
                self.backoff.reset()
                self.sent += 1
                return True
            if isinstance(outcome, Permanent):
                log.error(
                    "hub refused the SIM inventory; retrying at the next heartbeat",
                    reason=outcome.reason,
                )
                core.health.error(SIMS, f"refused: {outcome.reason}")
                return False
            await _pause(core, outcome, self.backoff, SIMS, "registrar")
