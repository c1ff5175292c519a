"""The SIM card and the network-side state that follows the subscriber.

Owns what survives a modem reset, an agent crash and a SIM being moved to another modem:
the SMS storage on the SIM (``"SM"``, TS 31.102 EF_SMS), the memory-capacity-exceeded flag
(EF_SMSS), messages the network is holding for the subscriber, call forwarding registrations
(network state, TS 22.082), and identities (ICCID, IMSI, MSISDN).
Must not know about AT commands or transports: the modem reads and changes these objects.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

_serial = itertools.count(1)


def luhn_digit(digits: str) -> str:
    """The Luhn check digit for ``digits`` (used by ICCIDs, ITU-T E.118, and IMEIs)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def iccid_ef_hex(iccid: str) -> str:
    """EF_ICCID (2FE2) content as ``+CRSM`` prints it: BCD, nibble-swapped, F-padded to 10 octets.

    TS 31.102 4.1.1 / TS 102 221 13.2: "8970199..." is stored as "9807910...".
    """
    padded = iccid.upper().ljust(20, "F")
    return "".join(padded[i + 1] + padded[i] for i in range(0, 20, 2))


def tpdu_length(pdu_hex: str) -> int:
    """The ``<length>`` of ``+CMGR``/``+CMGL``/``+CMT``: TPDU octets, SMSC field not counted.

    TS 27.005 3.1 (<length> in PDU mode).  Raises ValueError on a malformed PDU.
    """
    if len(pdu_hex) % 2 or not pdu_hex:
        raise ValueError("PDU hex must have an even, non-zero length")
    raw = bytes.fromhex(pdu_hex)
    smsc_len = raw[0]
    tpdu = len(raw) - 1 - smsc_len
    if tpdu < 2:
        raise ValueError("PDU too short for its SMSC length")
    return tpdu


@dataclass(slots=True)
class StoredSms:
    stat: int  # TS 27.005 3.1 <stat>: 0 REC UNREAD, 1 REC READ, 2 STO UNSENT, 3 STO SENT
    pdu: str  # hex, with the SMSC field, as +CMGR prints it


class MessageStore:
    """One message memory (``"SM"`` on the SIM, ``"ME"`` in the modem), slots numbered from 0.

    The modem maps slots to the indexes it prints (some firmware counts from 1).
    """

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.name = name
        self.capacity = capacity
        self.slots: dict[int, StoredSms] = {}

    @property
    def used(self) -> int:
        return len(self.slots)

    def first_free(self) -> int | None:
        for slot in range(self.capacity):
            if slot not in self.slots:
                return slot
        return None

    def snapshot(self) -> dict[int, tuple[int, str]]:
        return {slot: (m.stat, m.pdu) for slot, m in sorted(self.slots.items())}


@dataclass(slots=True)
class Forwarding:
    """One call-forwarding registration (TS 27.007 7.11 +CCFC)."""

    number: str
    type: int  # 145 international, 129 national/unknown (TS 24.008 10.5.4.7)
    active: bool


@dataclass(eq=False)
class SimCard:
    """A SIM and its subscriber.  Keep the object to move it between modems or re-insert it.

    ``number`` is what the SIM stores in EF_MSISDN (shown by ``+CNUM`` and the ``"ON"``
    phonebook); many SIMs leave it empty.  ``msisdn`` is the number the network knows, which
    USSD scripts may reveal; it defaults to ``number``.
    """

    iccid: str
    imsi: str
    number: str | None = None
    msisdn: str | None = None
    operator: str = "MegaFon"
    operator_short: str = "MegaFon"
    pin: str | None = None
    puk: str = "12345678"
    capacity: int = 30
    smsc: str = "+79262909090"
    messages: MessageStore = field(init=False)
    forwarding: dict[int, Forwarding] = field(default_factory=dict)
    # Messages the network holds for this subscriber: radio off, not registered, or memory full.
    network_pending: deque[str] = field(default_factory=deque)
    # EF_SMSS "memory capacity exceeded": the network stops delivering until the ME sends
    # RP-SMMA after freeing space (TS 23.040 10.3 operation 'memory available', TS 24.011 7.3.2).
    memory_exceeded: bool = False
    pin_attempts: int = 3

    def __post_init__(self) -> None:
        self.messages = MessageStore("SM", self.capacity)
        if self.msisdn is None:
            self.msisdn = self.number

    @property
    def mcc_mnc(self) -> str:
        return self.imsi[:5]

    @classmethod
    def generate(cls, n: int | None = None, **overrides: object) -> SimCard:
        """A SIM with unique, well-formed test identities (20-digit ICCID with Luhn digit)."""
        k = next(_serial) if n is None else n
        body = f"897019{k:013d}"
        values: dict[str, object] = {
            "iccid": body + luhn_digit(body),
            "imsi": f"25002{k:010d}",
            "number": f"+7900{k:07d}",
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def generate_imei(n: int | None = None) -> str:
    k = next(_serial) if n is None else n
    body = f"86123400{k:06d}"
    return body + luhn_digit(body)
