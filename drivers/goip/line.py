"""One GoIP line (one GSM channel = one SIM): its liveness and how its keepalive maps to SimInfo.

Owns the per-line facts learnt from keepalives (research/gateways.md section 2.2, A.2) and the
translation into :class:`drivers.base.SimInfo`; no sockets, no events.

Mapping decisions:

* One line is one SIM: ``port = "<device>/<line id>"``, no slot (the protocol has no SIM-bank
  control, section 2.5).
* The ICCID comes from the keepalive's ``iccid`` (newer firmware, section 2.2).  A keepalive
  without a usable ICCID (absent in the oldest firmware, or all zeros as a module without a
  SIM reports it) lists nothing: the inventory is keyed by ICCID and any stand-in identity
  would be wrong the moment the real one appears.  The driver says so once per line in the log
  and as a ``line_without_iccid`` DeviceStat.
* ``num`` is the SIM number as configured on the GoIP: kept if it starts with ``+`` (E.164);
  a number without ``+`` is kept as given, since the country it belongs to is unknown here
  (the core's config ``[[sims]]`` can override it); anything else is dropped.
* ``signal`` is the module's ``AT+CSQ`` RSSI, 0..31 (the public samples show 15, 25, 29 and an
  empty value): dBm = -113 + 2 * rssi (TS 27.007 8.5); 99 or empty is unknown.
* ``gsm_status`` ``LOGIN`` = registered to the GSM network.  ``pro`` (the provider name in
  every public sample: ``Tele2``, ``POL``, ``CHINA UNICOM GSM``) is the operator.  ``mcc_mnc``
  stays unknown: the keepalive has no network code and the IMSI alone does not tell a 2- from
  a 3-digit MNC.
* ``radio_on`` (module enabled): ``disable_status`` when the keepalive has it (``0`` beside
  ``LOGIN`` in every sample; research section 11 lists it as unverified), otherwise the last
  acknowledged ``module_ctl_i``, and ``LOGIN`` always proves the module is on.  Reporting what
  the line shows (not what we asked) lets the core re-apply a disable the GoIP lost.

Liveness: a line is offline when silent for 3 of its keepalive periods.  The period is
observed: the gap between keepalives divided by the step of their ``$count`` (so lost
keepalives do not stretch it, and duplicates or a reboot do not shrink it), the smallest of the
last few, 30 s (A.2) until two keepalives were seen.
"""

from __future__ import annotations

import collections
import hmac
from dataclasses import dataclass, field

from drivers.base import SimInfo

#: The vendor's keepalive interval (A.2), used until a line's own period is observed.
DEFAULT_PERIOD_S = 30.0
#: Bounds on an observed period: a flood of keepalives must not make a line time out in
#: milliseconds, and a long reboot gap must not keep a dead line "online" for an hour.
MIN_PERIOD_S, MAX_PERIOD_S = 0.05, 300.0
SILENT_PERIODS = 3


def signal_dbm(value: str | None) -> int | None:
    """GoIP ``signal`` (CSQ RSSI 0..31, 99 unknown) in dBm."""
    if value is None or not value.strip().isdigit():
        return None
    rssi = int(value.strip())
    return -113 + 2 * rssi if 0 <= rssi <= 31 else None


def clean_number(value: str | None) -> str | None:
    """``num`` as a phone number: ``+`` and digits, or digits alone (kept as given)."""
    if not value:
        return None
    v = value.strip()
    digits = v[1:] if v.startswith("+") else v
    if not (3 <= len(digits) <= 20 and digits.isascii() and digits.isdigit()):
        return None
    return v


def clean_iccid(value: str | None) -> str | None:
    """An ICCID (18-22 digits, hex F padding tolerated) that is not the all-zero placeholder."""
    if not value:
        return None
    v = value.strip().upper().rstrip("F")
    if not (18 <= len(v) <= 22 and v.isascii() and v.isdigit()) or not v.strip("0"):
        return None
    return v


def clean_digits(value: str | None, lo: int, hi: int) -> str | None:
    if not value:
        return None
    v = value.strip()
    if not (lo <= len(v) <= hi and v.isascii() and v.isdigit()) or not v.strip("0"):
        return None
    return v


@dataclass(slots=True)
class Line:
    """The state of one configured line (``[[devices]].lines`` entry)."""

    id: str
    password: str = field(repr=False)
    port: str
    #: Where the line's authenticated datagrams come from; commands go there (section 2.1).
    addr: tuple[str, int] | None = None
    last_seen: float | None = None  # monotonic time of the last valid keepalive
    last_count: int | None = None
    gaps: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=4))
    online: bool = False
    info: SimInfo | None = None  # what was last reported for the line
    iccid: str | None = None  # the SIM now in the line (from the last keepalive)
    #: Module enable state as last acknowledged to ``module_ctl_i`` (True until told).
    enabled: bool = True
    #: A refused datagram was logged and no valid one has arrived since (once per streak).
    refusing: bool = False
    refused_total: int = 0
    no_iccid_noted: bool = False

    def address(self) -> tuple[str, int] | None:
        """Where the line is now (it moves when a reboot picks a new source port)."""
        return self.addr

    def password_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.password.encode())

    def period(self) -> float:
        if not self.gaps:
            return DEFAULT_PERIOD_S
        return min(MAX_PERIOD_S, max(MIN_PERIOD_S, min(self.gaps)))

    def deadline(self) -> float | None:
        """When the line counts as offline if nothing arrives before."""
        if self.last_seen is None:
            return None
        return self.last_seen + SILENT_PERIODS * self.period()

    def heard(self, now: float, count: str) -> bool:
        """Note a valid keepalive; True if the line restarted (its count went back).

        ``$count`` grows by 1 per keepalive sent (A.2), so the gap divided by the count's
        step is one period even when keepalives in between were lost; a repeated count (a
        duplicated datagram) or a count that went back (a reboot) teaches nothing.
        """
        n = int(count)
        last, self.last_count = self.last_count, n
        if self.last_seen is not None and last is not None and n > last:
            self.gaps.append((now - self.last_seen) / (n - last))
        self.last_seen = now
        return last is not None and n < last

    def sim_info(self, fields: dict[str, str]) -> SimInfo | None:
        """The SimInfo a keepalive describes, or None without a usable ICCID."""
        iccid = clean_iccid(fields.get("iccid"))
        if iccid is None:
            return None
        disable = fields.get("disable_status", "").strip()
        logged_in = fields.get("gsm_status", "").strip().upper() == "LOGIN"
        # disable_status when present, else what module_ctl_i last set; LOGIN proves "on".
        known = disable in ("0", "1")
        radio_on = (disable == "0" if known else self.enabled) or logged_in
        number = clean_number(fields.get("num"))
        operator = (fields.get("pro") or "").strip()[:64] or None
        return SimInfo(
            port=self.port,
            iccid=iccid,
            imsi=clean_digits(fields.get("imsi"), 6, 15),
            number=number,
            number_source="gateway" if number else None,
            operator=operator,
            signal_dbm=signal_dbm(fields.get("signal")) if logged_in else None,
            registered=logged_in and radio_on,
            radio_on=radio_on,
        )
