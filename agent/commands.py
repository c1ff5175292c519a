"""Hub commands: the long-poll (``GET /commands``), execution, and result reporting.

PROTOCOL.md section 5, as the agent side:

* One long-poll is open at all times; errors reconnect with backoff.  A hub that answers at
  once with nothing, ignoring ``wait``, is polled at most once a second (``POLL_FLOOR_S``).
* A command id is executed at most once per outcome: its row is written (``running``) before
  execution and its result (``done``) after, both durable.  A repeated id with a stored result
  only re-sends the result.  A ``running`` row found at start-up (the agent died mid-command)
  is executed again when its type sets an absolute state (enable, disable, forward, unforward,
  esim_delete); a ``ussd`` (a code may transfer money) or an ``esim_download`` (its activation
  code is single-use) is not repeated: it is answered ``ok: false`` "interrupted by a restart;
  outcome unknown", and the hub decides.
* The desired state (enabled, forwarding) is persisted *before* touching the hardware, so a
  crash in between still converges: the device supervisor re-applies desired state whenever a
  SIM (re)appears.
* Bad commands (not an object, no id, unknown type, unknown SIM, bad number) get
  ``{"ok": false, "error": …}``, never a crash; every command finishes within 60 s.
* A command for a SIM no device has reported yet waits until the devices have settled (at
  most ``UNKNOWN_SIM_HOLD_S``) before it is answered ``unknown sim``: after a restart the
  hub's pending commands arrive before the modems have found their SIMs.
* Results are reported by a separate loop until the hub takes them (durable ``reported`` flag).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from contextlib import suppress
from typing import Any
from urllib.parse import quote

import structlog

from agent.backoff import Backoff
from agent.config import E164
from agent.core import Core
from agent.hubclient import Ok, Outcome, Permanent, Retry
from agent.store import iso
from agent.uplink import _pause
from drivers.base import CommandError

log = structlog.get_logger("agent.commands")

COMMAND_TIMEOUT_S = 60.0
TYPES = ("enable", "disable", "forward", "unforward", "ussd", "esim_download", "esim_delete")
#: Interrupted by a crash, these are not run again: their effect is not an absolute state.
NOT_REPEATED = frozenset({"ussd", "esim_download"})
#: A USSD code as TS 22.030 clause 6.5 writes them: digits, * and #, ending in #.
USSD_CODE = re.compile(r"[*#][0-9*#]{1,40}#")
#: How long a command for a SIM not seen yet waits for the devices to report their SIMs
#: (after a restart the long-poll answers long before a modem has read its SIM cards).
UNKNOWN_SIM_HOLD_S = 30.0
HOLD_POLL_S = 0.05
POLL = "GET /commands"
RESULT = "POST /commands/{id}/result"
#: Start-to-start floor between polls that come back early and empty.  PROTOCOL.md section 5
#: has the hub hold an empty poll for ``wait`` seconds; a hub that answers at once instead
#: was polled as fast as the loop turns (17,059 requests in 10 s, issue #12).  One second is
#: the rate PROTOCOL.md section 2 allows a down hub (at most 1 request/s from one agent), and
#: delays a command by at most a second when the hub misbehaves.  Answers with commands are
#: never delayed: a hub hands over what it has at once.
POLL_FLOOR_S = 1.0
#: A poll the hub still holds after this long was accepted: the hub authenticates before it
#: waits, and refusals, errors and early answers come back at once.  So the endpoint's error
#: in /status clears once a long-poll is open again, not only when it ends ``wait`` s later.
POLL_HELD_S = 2.0


class Commands:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.poll_backoff = Backoff(1.0, core.config.upstream.backoff_max_s)
        self.report_backoff = Backoff(1.0, core.config.upstream.backoff_max_s)

    # -- poll -----------------------------------------------------------------------------

    async def resume(self) -> None:
        """Re-run commands interrupted by a crash where that is safe (see the module
        docstring); answer the others as interrupted."""
        store = self.core.store
        for row in await store.call(store.store.commands_running):
            if row.type in NOT_REPEATED:
                log.warning("command interrupted by a restart; not repeated", command_id=row.id)
                result = {
                    "ok": False,
                    "state": None,
                    "error": "interrupted by a restart; outcome unknown",
                    "finished_at": iso(time.time()),
                }
                await store.call(store.store.command_finish, row.id, result, now=time.time())
                continue
            log.warning("re-running a command interrupted by a restart", command_id=row.id)
            self._spawn(row.body)
        self.core.results_wake.set()

    async def poll(self) -> None:
        core = self.core
        wait = core.config.upstream.poll_wait_s
        early = 0  # polls answered early and empty in a row
        while True:
            core.beat("poller")
            started = time.monotonic()
            outcome = await self._poll_once(wait)
            if not isinstance(outcome, Ok):
                await _pause(core, outcome, self.poll_backoff, POLL, "poller")
                continue
            commands = outcome.data.get("commands") if isinstance(outcome.data, dict) else None
            if not isinstance(commands, list):
                await _pause(
                    core,
                    Retry("GET /commands answered without a commands list"),
                    self.poll_backoff,
                    POLL,
                    "poller",
                )
                continue
            self.poll_backoff.reset()
            took = time.monotonic() - started
            early = early + 1 if not commands and took < POLL_FLOOR_S / 2 else 0
            if early >= 2:
                # Not a transport failure (the backoff stays reset), but the hub is not doing
                # what the protocol says: tell the operator, once per streak in the log.  One
                # early answer alone is normal: a hub that shuts down ends its open polls.
                if early == 2:
                    log.warning(
                        "hub answers GET /commands at once, ignoring wait; "
                        "polling at most once a second",
                        wait_s=wait,
                    )
                core.health.error(POLL, f"hub answers at once, ignoring wait={wait}")
            else:
                core.health.ok(POLL)
            for body in commands:
                await self.submit(body)
            if not commands and took < POLL_FLOOR_S:
                await core.idle("poller", POLL_FLOOR_S - took)

    async def _poll_once(self, wait: int) -> Outcome:
        """One long-poll.  While the hub holds it past ``POLL_HELD_S`` the endpoint counts as
        healthy (see there)."""
        core = self.core
        request = asyncio.ensure_future(
            core.hub.request(
                "GET",
                "/commands",
                params={"wait": str(wait)},
                endpoint="commands",
                timeout=wait + core.config.upstream.timeout_s,
            )
        )
        try:
            done, _ = await asyncio.wait({request}, timeout=POLL_HELD_S)
            if not done:
                core.health.ok(POLL)
            return await request
        finally:
            request.cancel()  # a no-op once it is done; at shutdown it ends the open poll

    async def submit(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str | int):
            log.error("hub sent a command without an id; ignored", command=_short(body))
            return
        body = {**body, "id": str(body["id"])}
        cid = body["id"]
        if cid in self._active:
            return
        store = self.core.store
        row = await store.read(store.reader.command, cid)
        try:
            if row is not None and row.state == "done":
                # Seen before: never executed twice; its stored result is re-sent.
                log.info("command repeated", command_id=cid)
                await store.attempt(
                    store.store.command_finish, cid, row.result or {}, now=time.time()
                )
                self.core.results_wake.set()
                return
            if row is None:
                await store.attempt(store.store.command_start, body, now=time.time())
        except sqlite3.Error as exc:
            # The store cannot write (a full disk): a command that is not recorded is not run
            # (it could not be known as executed after a crash), and the poller does not wait
            # for the disk.  The hub delivers it again, since it got no result.
            log.warning(
                "command not recorded; left for the hub to redeliver",
                command_id=cid,
                reason=str(exc)[:200],
            )
            return
        self._spawn(body)

    def _spawn(self, body: dict[str, Any]) -> None:
        self._active.add(body["id"])
        task = asyncio.create_task(self._run(body), name=f"command:{body['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Cancel commands still running (shutdown): their rows stay ``running``."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError, Exception):
                await task

    # -- execute --------------------------------------------------------------------------

    async def _run(self, body: dict[str, Any]) -> None:
        cid, ctype = body["id"], body.get("type")
        sim_id = body.get("sim_id")
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                result = await self._execute(body)
        except TimeoutError:
            result = {"ok": False, "error": f"timed out after {COMMAND_TIMEOUT_S:.0f} s"}
        except CommandError as exc:
            result = {"ok": False, "error": str(exc)[:300] or "refused by the hardware"}
        except Exception as exc:
            log.exception("command failed unexpectedly", command_id=cid)
            result = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        sim = self.core.inventory.sims.get(sim_id) if isinstance(sim_id, str) else None
        result.setdefault("state", sim.state if sim else None)
        result.setdefault("error", None)
        result["finished_at"] = iso(time.time())
        await self.core.store.call(
            self.core.store.store.command_finish, cid, result, now=time.time()
        )
        self._active.discard(cid)
        self.core.metrics.commands.labels(
            str(ctype) if ctype in TYPES else "unknown", "ok" if result["ok"] else "error"
        ).inc()
        (log.info if result["ok"] else log.warning)(
            "command executed",
            command_id=cid,
            type=ctype,
            sim_id=sim_id,
            ok=result["ok"],
            error=result["error"],
        )
        self.core.results_wake.set()

    async def _execute(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check the command, then hand it to its device's :class:`SimActions` (the one owner
        of persisting, acting and waiting for the hardware)."""
        core = self.core
        ctype, sim_id = body.get("type"), body.get("sim_id")
        if ctype not in TYPES:
            return {"ok": False, "error": f"unsupported command type {ctype!r}"}
        if ctype == "esim_download":
            return await self._esim_download(body)
        if not isinstance(sim_id, str) or not await self._await_sim(sim_id):
            return {"ok": False, "error": f"unknown sim {sim_id!r}"}
        to, code = body.get("to"), body.get("code")
        if ctype == "forward" and not (isinstance(to, str) and E164.match(to)):
            return {"ok": False, "error": f"forward needs 'to' as E.164 (+…), got {to!r}"}
        if ctype == "ussd" and not (isinstance(code, str) and USSD_CODE.fullmatch(code)):
            return {"ok": False, "error": f"ussd needs 'code' like *100#, got {_short(code)}"}
        sim = core.inventory.sims[sim_id]
        sup = core.devices.get(sim.device)
        if sup is None:
            return {"ok": False, "error": f"device {sim.device} is not configured here"}
        result: dict[str, Any] = {"ok": True}
        if ctype in ("enable", "disable"):
            await sup.actions.set_enabled(sim, ctype == "enable")
        elif ctype in ("forward", "unforward"):
            await sup.actions.set_forwarding(sim, to if ctype == "forward" else None)
        elif ctype == "ussd":
            result["reply"] = await sup.actions.ussd(sim, str(code))
        else:  # esim_delete
            await sup.actions.esim_delete(sim)
            result["state"] = None
            return result
        core.inventory.set_error(sim_id, None)
        now = core.inventory.sims.get(sim_id)
        result["state"] = now.state if now is not None else None
        return result

    async def _await_sim(self, sim_id: str) -> bool:
        """Whether ``sim_id`` is in the inventory, holding (bounded) until the devices settle.

        A SIM the devices have not reported yet is not necessarily unknown: after a restart
        the hub's pending commands arrive before the modems have found their SIMs.  The hold
        ends as soon as the SIM appears, or once every device has settled (the signal the
        first ``PUT /sims`` waits for) with all of them up, since then every present SIM has
        been reported.  A device seen down meanwhile may still bring the SIM back when it
        reconnects (its SIMs follow its DeviceUp), so then the hold lasts the full
        ``UNKNOWN_SIM_HOLD_S``.
        """
        sims, devices = self.core.inventory.sims, self.core.devices.values()
        deadline = time.monotonic() + UNKNOWN_SIM_HOLD_S
        down_seen = logged = False
        while sim_id not in sims:
            # A device counts as down once it has tried (before that it is still connecting).
            down_seen = down_seen or any(s.first_attempt.is_set() and not s.up for s in devices)
            if all(s.first_attempt.is_set() for s in devices) and not down_seen:
                return False
            if time.monotonic() >= deadline:
                return False
            if not logged:
                logged = True
                log.info("command waits for the devices to report their SIMs", sim_id=sim_id)
            await asyncio.sleep(HOLD_POLL_S)
        return True

    async def _esim_download(self, body: dict[str, Any]) -> dict[str, Any]:
        device, port = body.get("device"), body.get("port")
        code, confirm = body.get("activation_code"), body.get("confirmation_code")
        sup = self.core.devices.get(device) if isinstance(device, str) else None
        if sup is None:
            return {"ok": False, "error": f"esim_download: unknown device {_short(device)}"}
        if not (isinstance(code, str) and code.startswith("LPA:") and len(code) <= 512):
            return {"ok": False, "error": "esim_download needs activation_code 'LPA:1$…'"}
        if port is not None and not (isinstance(port, str) and port.startswith(f"{device}/")):
            return {"ok": False, "error": f"esim_download: port must be '{device}/<n>'"}
        if confirm is not None and not isinstance(confirm, str):
            return {"ok": False, "error": "esim_download: confirmation_code must be a string"}
        iccid = await sup.actions.esim_download(port, code, confirm)
        sim = self.core.inventory.sims.get(iccid)
        return {"ok": True, "sim_id": iccid, "state": sim.state if sim is not None else None}

    # -- report ---------------------------------------------------------------------------

    async def report(self) -> None:
        core = self.core
        while True:
            core.beat("reporter")
            rows = await core.store.call(core.store.store.commands_unreported)
            if not rows:
                core.results_wake.clear()
                await core.idle("reporter", 5.0, core.results_wake)
                continue
            for row in rows:
                body = json.dumps(row.result or {}).encode()
                # The id is the hub's, any string: quoted, so one that cannot stand in a URL
                # (a newline, a space) cannot fail every attempt and hold up the results after it.
                path = f"/commands/{quote(row.id, safe='')}/result"
                outcome = await core.hub.request("POST", path, body=body, endpoint="command_result")
                if isinstance(outcome, Ok | Permanent):
                    # Either way the hub took the key: no error stands for this endpoint.
                    core.health.ok(RESULT)
                    if isinstance(outcome, Permanent):
                        log.error(
                            "hub refused a command result", command_id=row.id, reason=outcome.reason
                        )
                    await core.store.call(core.store.store.command_reported, row.id)
                    self.report_backoff.reset()
                    continue
                await _pause(core, outcome, self.report_backoff, RESULT, "reporter")
                break


def _short(body: Any) -> str:
    return json.dumps(body, default=str)[:200]
