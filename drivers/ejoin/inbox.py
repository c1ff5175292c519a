"""Received SMS rows -> SmsParts, and the persisted read cursor (pure bookkeeping, no I/O
except ``DriverState``).

Owns the three decisions research/gateways.md sections 1.4 and 10.3 leave to us:

**Identity is content, position is only the cursor.**  A row has no id (section 1.4); its
position ``(ssrc, sms_id)`` changes when the box reboots and rebuilds its store.  So a part's
``raw`` is a canonical encoding of (ICCID, sender, the box's epoch, text) (:func:`raw_of`): a
renumbered re-read yields the same message ids and the core drops the repeats, while two equal
texts received at different times stay two messages.  (Two equal texts from one sender in the
same second are indistinguishable on this wire and count as one.)

**The cursor.**  ``cursor:<MAC>`` in ``context.state`` holds ``"<ssrc> <sms_id>"``: every row
below ``sms_id`` of that boot was committed by the core (acked) or needs nothing (a delivery
report, a malformed row).  It advances only contiguously over finished rows, never past one
the core has not acked; an ack of a later row waits in memory.  When the box's ``ssrc`` is not
the stored one (a reboot), reading restarts at 1 and the re-read rows are recognised by id;
so it does when the same ssrc answers a ``next_sms`` below the cursor (inbox cleared, a
firmware that keeps its ssrc across a reboot).
Rows are never deleted from the box (``sms_del`` is never used, section 10.3).  Row ids are
``next_sms - len(data) + k`` when the box gives ``next_sms`` (robust to a box that dropped its
oldest rows) and that is not before ``sms_id``, else ``sms_id + k`` (research: "presumably",
[U]).

**Long SMS without UDH** (the box does not expose concatenation, section 1.4 [U]).  The joining
heuristic: rows are one long SMS when they are *consecutive rows of one SIM* (no other row of
that SIM between them), from the same sender, each within ``join_s`` of the previous one by
the box's clock, and every row but the last has exactly the length of a concatenated part
(153 or 152 GSM-7 septets, extension characters counting two, or 67 or 66 UCS2 code units:
TS 23.040 9.2.3.24 with an 8- or 16-bit reference).  A run is emitted as ONE joined part (no
``Concat``) once it is closed: its last row is shorter than a full part, or a later row of the
SIM does not continue it, or ``join_s`` has passed since its last row was read.  One part per
run keeps the message id stable on a re-read (the same rows always form the same run) and
loses nothing if the agent dies mid-run: no row of the run is acked until the joined part is
committed, so all of them are read again.  Its ``ack_token`` covers every row of the run.

A row whose slot holds no known SIM waits (not emitted, the cursor does not pass it) until the
inventory knows the slot's ICCID; later rows are still delivered meanwhile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from drivers.base import DriverState, Encoding, SmsPart
from drivers.ejoin.wire import SmsPage, SmsRow

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€")
_FULL_GSM7 = (153, 152)
_FULL_UCS2 = (67, 66)
#: Rows emitted but not yet acked, at most; reading pauses beyond it (back-pressure).
MAX_UNACKED = 2000
#: A ``next_sms`` that skips more rows than this past the request (10 pages of the driver's
#: 100) is garbage, not a store that dropped its oldest rows: it is ignored (rows are numbered
#: from the request), so no work or memory grows with the jump.
MAX_JUMP = 1000

log = structlog.get_logger(__name__)


def is_full_part(text: str) -> bool:
    """Does ``text`` fill a concatenated SMS part exactly (so another part may follow)?"""
    if all(c in _GSM7 or c in _GSM7_EXT for c in text):
        return sum(2 if c in _GSM7_EXT else 1 for c in text) in _FULL_GSM7
    return len(text.encode("utf-16-be")) // 2 in _FULL_UCS2


def raw_of(iccid: str, sender: str, epoch: int, text: str) -> bytes:
    """The canonical content of a received SMS (its identity; see the module docstring)."""
    return json.dumps(
        ["ejoin/1", iccid, sender, epoch, text], ensure_ascii=False, separators=(",", ":")
    ).encode()


def sent_at(epoch: int) -> datetime | None:
    """The box's epoch as a time, or None (unknown) outside 0 .. 2**32 (a box that counts
    milliseconds would otherwise raise); ``raw`` keeps the epoch as given, so ids are stable."""
    return datetime.fromtimestamp(epoch, UTC) if 0 <= epoch < 2**32 else None


@dataclass(frozen=True, slots=True)
class AckToken:
    """The rows (of boot ``ssrc``) one emitted part stands for."""

    ssrc: str
    ids: tuple[int, ...]
    gen: int = 0  # the numbering within the boot (a restart at 1 with the same ssrc: +1)


@dataclass(slots=True)
class _Waiting:
    row: SmsRow
    read_at: float


class Inbox:
    """One box's SMS cursor, joining and ack bookkeeping."""

    def __init__(
        self,
        state: DriverState,
        device: str,
        mac: str,
        join_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._device = device
        self._key = f"cursor:{mac}"
        self._join_s = join_s
        self._clock = clock
        self.ssrc: str | None = None
        self.cursor = 1  # persisted: rows below are finished
        self.read_next = 1  # next row to fetch in this connection
        self._finished: set[int] = set()  # ids >= cursor that are finished
        self._waiting: dict[int, _Waiting] = {}  # read, not yet emitted
        self._emitted: set[int] = set()  # emitted, not yet acked
        self._jump_logged = False
        self._gen = 0  # bumped when the numbering restarts at 1 within one ssrc
        self._saved: int | None = None  # the cursor value last persisted

    @property
    def unacked(self) -> int:
        return len(self._emitted) + len(self._waiting)

    def waiting_slots(self) -> set[tuple[int, int]]:
        return {(w.row.port, w.row.slot) for w in self._waiting.values()}

    async def load(self, ssrc: str) -> None:
        """Adopt the box's boot ``ssrc``: resume the stored cursor, or restart at 1."""
        stored = await self._state.get(self._key)
        cursor = 1
        if stored:
            old_ssrc, _, value = stored.partition(" ")
            if old_ssrc == ssrc and value.isdigit():
                cursor = max(1, int(value))
        self.ssrc, self.cursor, self.read_next = ssrc, cursor, cursor
        self._finished.clear()
        self._waiting.clear()
        self._emitted.clear()
        self._saved = cursor
        if stored is None or not stored.startswith(f"{ssrc} "):
            await self._state.set(self._key, f"{ssrc} {cursor}")

    def take(self, page: SmsPage, start: int, may_restart: bool = True) -> bool:
        """Record a page fetched with ``sms_id=start`` (the ssrc already adopted).

        Returns True (and records nothing) when the box's numbering is behind the cursor: a
        ``next_sms`` below ``start - 1`` with the same ssrc (its web inbox cleared, a firmware
        that keeps the ssrc across a reboot).  Like an ssrc change, reading then restarts at
        row 1 (content ids drop the repeats); the caller fetches again from ``read_next``.
        ``next_sms`` 0 or below counts as absent."""
        count = len(page.rows)
        if may_restart and page.next_sms is not None and 1 <= page.next_sms < start - 1:
            self._gen += 1  # acks of the old numbering no longer name these rows
            self.cursor = self.read_next = 1
            self._finished.clear()
            self._waiting.clear()
            self._emitted.clear()
            return True
        first = start
        if page.next_sms is not None and page.next_sms - count >= start:
            # Later than asked: the box dropped its oldest rows (store full).  A next_sms
            # that would put rows *before* the request is not trusted (firmware that means
            # "last id"): numbering from ``start`` then loses nothing.
            first = page.next_sms - count
            if first - start > MAX_JUMP:
                if not self._jump_logged:
                    self._jump_logged = True
                    log.warning(
                        "ejoin.next_sms_ignored",
                        device=self._device,
                        reason=f"next_sms {page.next_sms} jumps more than {MAX_JUMP} rows"
                        f" past the request at {start}: not trusted, rows numbered from {start}",
                    )
                first = start
        # Rows the box no longer has (dropped when its store was full) are finished for us.
        for gap in range(self.read_next, first):
            self._finished.add(gap)
        for k, row in enumerate(page.rows):
            sms_id = first + k
            if sms_id < self.read_next or sms_id < self.cursor:
                continue  # already handled in this connection
            if row is None or row.is_report:
                self._finished.add(sms_id)  # delivery reports are not forwarded (issue #7)
            else:
                self._waiting[sms_id] = _Waiting(row, self._clock())
        self.read_next = max(self.read_next, first + count)
        return False

    def parts(self, iccid_of: Callable[[int, int], str | None]) -> list[SmsPart]:
        """Parts ready to emit: single rows and closed runs, in the box's order."""
        now = self._clock()
        by_sim: dict[tuple[int, int], list[int]] = {}
        for sms_id in sorted(self._waiting):
            row = self._waiting[sms_id].row
            by_sim.setdefault((row.port, row.slot), []).append(sms_id)
        out: list[tuple[int, SmsPart]] = []
        for (port, slot), ids in by_sim.items():
            iccid = iccid_of(port, slot)
            if iccid is None:
                continue  # the slot's SIM is unknown: wait (module docstring)
            i = 0
            while i < len(ids):
                run = [ids[i]]
                while i + len(run) < len(ids) and self._continues(run[-1], ids[i + len(run)]):
                    run.append(ids[i + len(run)])
                last = self._waiting[run[-1]]
                closed = (
                    not is_full_part(last.row.text)
                    or i + len(run) < len(ids)
                    or now - last.read_at >= self._join_s
                )
                if not closed:
                    break  # later rows of this SIM wait behind the open run
                out.append((run[0], self._part(port, slot, iccid, run)))
                i += len(run)
        out.sort(key=lambda item: item[0])
        return [part for _, part in out]

    def _continues(self, prev_id: int, next_id: int) -> bool:
        a, b = self._waiting[prev_id].row, self._waiting[next_id].row
        return (
            a.sender == b.sender and 0 <= b.epoch - a.epoch <= self._join_s and is_full_part(a.text)
        )

    def _part(self, port: int, slot: int, iccid: str, run: list[int]) -> SmsPart:
        rows = [self._waiting.pop(i).row for i in run]
        self._emitted.update(run)
        first = rows[0]
        text = "".join(r.text for r in rows)
        assert self.ssrc is not None
        return SmsPart(
            port=f"{self._device}/{port}",
            iccid=iccid,
            sender=first.sender,
            sent_at=sent_at(first.epoch),
            encoding=Encoding.TEXT,
            raw=raw_of(iccid, first.sender, first.epoch, text),
            ack_token=AckToken(self.ssrc, tuple(run), self._gen),
            text=text,
        )

    async def acked(self, token: AckToken) -> None:
        """The core committed the part: finish its rows and advance the cursor if it can."""
        if token.ssrc != self.ssrc or token.gen != self._gen:
            return  # a part of an earlier boot or numbering: re-read by content
        for sms_id in token.ids:
            if sms_id in self._emitted:
                self._emitted.discard(sms_id)
                self._finished.add(sms_id)
        await self._advance()

    async def advance(self) -> None:
        await self._advance()

    async def _advance(self) -> None:
        cursor = self.cursor
        while cursor in self._finished:
            self._finished.discard(cursor)
            cursor += 1
        if cursor != self._saved:
            self.cursor = self._saved = cursor
            await self._state.set(self._key, f"{self.ssrc} {cursor}")
