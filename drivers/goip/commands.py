"""Server -> GoIP commands: sendid allocation, one command in flight per line, retries, replies.

Owns the request/response state machine of research/gateways.md section 2.5 and A.5: a command
``$verb $sendid …`` goes to the line's address; the GoIP echoes ``$sendid`` in its reply
(``$verb $sendid …`` on success, ``ERROR $sendid $errmsg`` or a verb-specific error such as
``USSDERROR`` on refusal).  UDP loses packets and the vendor asks the server to resend on
silence (A.5), so a command is re-sent with the SAME sendid until a reply or the last try: a
late reply to any copy then completes it, and the commands used here are idempotent
(``module_ctl_i`` sets a state; USSD is re-sent once, as A.5 prescribes).

States of one command: sent -> (reply) done | (ERROR) refused | (silence x tries) timed out |
(driver closed) abandoned.  Replies are matched by sendid AND source address, so a reply from
anywhere else is ignored; replies carry no password (A.5), the address is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from drivers.base import CommandError
from drivers.goip import wire
from drivers.goip.line import Line

log = structlog.get_logger(__name__)

Send = Callable[[bytes, tuple[str, int]], None]


@dataclass(slots=True)
class _Pending:
    line: str
    verb: str
    ok_verbs: frozenset[str]
    error_verbs: frozenset[str]
    addr: tuple[str, int]
    future: asyncio.Future[wire.Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Commands:
    """Every command in flight on one driver's socket."""

    def __init__(self, send: Send) -> None:
        self._send = send
        # Start from the clock so a late reply to a previous run's command (same GoIP, same
        # line) cannot match a new one; incremented by 1 per command as A.1 describes.
        self._next = time.time_ns() // 1_000_000 % 1_000_000_000
        self._pending: dict[int, _Pending] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    def new_sendid(self) -> int:
        self._next += 1
        return self._next

    async def run(
        self,
        line: Line,
        verb: str,
        args: tuple[str, ...],
        *,
        timeout_s: float,
        tries: int,
        ok_verbs: frozenset[str] | None = None,
        error_verbs: frozenset[str] = frozenset({"ERROR"}),
    ) -> wire.Reply:
        """Send ``verb sendid args…`` to ``line`` and return its reply; CommandError on a
        refusal, after ``tries`` unanswered sends, or when the driver closes."""
        lock = self._locks.setdefault(line.id, asyncio.Lock())
        async with lock:  # one command per line: a GoIP channel is a single module
            if self._closed:
                raise CommandError("the GoIP driver is closed")
            if line.addr is None:
                raise CommandError(f"line {line.id} has not registered yet (no keepalive seen)")
            sendid = self.new_sendid()
            packet = wire.command(verb, sendid, *args)
            pending = _Pending(
                line.id, verb, ok_verbs or frozenset({verb}), error_verbs | {"ERROR"}, line.addr
            )
            self._pending[sendid] = pending
            try:
                for _attempt in range(tries):
                    # The line may have moved (a reboot picks a new source port): follow it.
                    pending.addr = line.address() or pending.addr
                    self._send(packet, pending.addr)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout_s):
                            return await asyncio.shield(pending.future)
                raise CommandError(
                    f"line {line.id}: no answer to {verb} after {tries} tries"
                    f" ({tries * timeout_s:g} s)"
                )
            finally:
                del self._pending[sendid]

    def send_once(self, line: Line, verb: str, args: tuple[str, ...]) -> None:
        """A command that has no reply (``USSDEXIT``, A.5): sent once, best effort."""
        if line.addr is not None and not self._closed:
            self._send(wire.command(verb, self.new_sendid(), *args), line.addr)

    def reply(self, reply: wire.Reply, addr: tuple[str, int]) -> bool:
        """Complete the command this reply answers; False if it answers nothing of ours."""
        pending = self._pending.get(reply.sendid)
        if pending is None or pending.addr != addr or pending.future.done():
            return False
        if reply.verb in pending.error_verbs:
            reason = wire.readable(reply.rest).strip()[:200] or "no reason given"
            pending.future.set_exception(
                CommandError(f"line {pending.line} refused {pending.verb}: {reason}")
            )
        elif reply.verb in pending.ok_verbs:
            pending.future.set_result(reply)
        else:
            return False
        return True

    def close(self) -> None:
        self._closed = True
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(CommandError("the GoIP driver closed"))
