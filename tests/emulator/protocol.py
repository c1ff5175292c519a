"""Shared vocabulary of the emulator: final result codes, command replies, fixed cell data.

Owns the types that both the modem core (``modem.py``) and the command handlers
(``commands.py``) speak, so neither imports the other at run time.  No behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# TS 27.007 9.2: +CME ERROR codes and the verbose texts printed with AT+CMEE=2.
CME_TEXT = {
    0: "phone failure",
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    30: "no network service",
    31: "network timeout",
    50: "incorrect parameters",
    100: "unknown",
}
# TS 27.005 3.2.5: +CMS ERROR codes.
CMS_TEXT = {
    300: "ME failure",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    316: "SIM PUK required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    500: "unknown error",
}

# The one cell every emulated modem camps on (TS 27.007 7.2 <lac>/<ci>, 10.1.22 <tac>).
LAC, CELL, TAC = "1A2B", "01C3D4E5", "3C4D"
RESET_GRACE = 0.05  # s between the OK to AT+CFUN=1,1 and the module going dark


@dataclass(frozen=True, slots=True)
class Result:
    """A final result code (V.250 5.7.1, TS 27.007 9.2, TS 27.005 3.2.5)."""

    kind: Literal["ok", "error", "cme", "cms", "raw"]
    code: int = 0
    text: str = ""


OK = Result("ok")
ERROR = Result("error")


def cme(code: int) -> Result:
    return Result("cme", code)


def cms(code: int) -> Result:
    return Result("cms", code)


@dataclass(slots=True)
class Reply:
    """What one command produced: information text lines, and a final result if it failed."""

    lines: list[str] = field(default_factory=list)
    result: Result | None = None  # None: success, the command line goes on
    after: Callable[[], None] | None = None  # runs once the line's final result is out


@dataclass(slots=True)
class UssdReply:
    """The network's scripted answer to one USSD string."""

    text: str | None  # None: "+CUSD: <status>" without a string
    dcs: int = 15  # TS 23.038 5: 15 = GSM 7-bit, 72 (0x48) = UCS2
    status: int = 0  # TS 27.007 7.15 <m>: 0 done, 1 further action, 2 terminated, 4 unsupported
    delay: float | None = None
    silent: bool = False  # never answer (a network timeout)
