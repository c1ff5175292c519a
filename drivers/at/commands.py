"""The AT commands the driver uses, declared as data: text, response prefixes, parser, timeout.

Owns: what each command looks like on the wire and how its answer is parsed into Python values
(TS 27.007 for identity, SIM, network and supplementary services; TS 27.005 for SMS storage).
The parsers are pure functions of a :class:`~drivers.at.framing.Response`, tested on their own.

Must not: hold state, sleep, retry, or decide what to do with a result.  Vendor differences
(which ICCID command, which CFUN value) are data in :mod:`drivers.at.quirks`; sequencing is in
:mod:`drivers.at.session`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from drivers.at.framing import AtCommandError, AtProtocol, Response

T = TypeVar("T")

#: Timeout classes in seconds; looked up at call time so tests can shrink them
#: (``monkeypatch.setitem(commands.TIMEOUTS, "network", 1.0)``).  "default" is overridden per
#: port by ``command_timeout_s``.
TIMEOUTS: dict[str, float] = {
    "quick": 2.0,  # AT, ATE0: answered by the TA itself
    "default": 5.0,
    "sim": 10.0,  # SIM file access (CPIN, ICCID, CPMS, CNUM, phonebook) is slow on old SIMs
    "list": 30.0,  # CMGL of a full SIM: 50 PDUs at 115200 baud plus SIM reads
    "network": 40.0,  # round trips to the network (CCFC, CFUN attach); < 60 s command budget
}


class ParseError(ValueError):
    """A response did not have the expected shape."""


@dataclass(frozen=True, slots=True)
class Command(Generic[T]):
    """One command of the catalog."""

    template: str  # "AT+CMGR={index}"
    parse: Callable[[Response], T]
    prefixes: tuple[str, ...] = ()  # response lines this command owns (vs. URCs)
    data_after: tuple[str, ...] = ()  # headers followed by one data line (+CMGR:, +CMGL:)
    timeout: str = "default"

    def render(self, args: Mapping[str, Any]) -> str:
        return self.template.format(**args)


class AtChannel:
    """Runs catalog commands on one port with that port's default timeout."""

    def __init__(self, protocol: AtProtocol, *, default_timeout_s: float | None = None) -> None:
        self.protocol = protocol
        self.default_timeout_s = default_timeout_s

    def timeout_for(self, cls: str) -> float:
        if cls == "default" and self.default_timeout_s is not None:
            return self.default_timeout_s
        return TIMEOUTS[cls]

    async def run(self, cmd: Command[T], *, timeout_s: float | None = None, **args: Any) -> T:
        text = cmd.render(args)
        response = await self.protocol.command(
            text,
            timeout_s=timeout_s if timeout_s is not None else self.timeout_for(cmd.timeout),
            prefixes=cmd.prefixes,
            data_after=cmd.data_after,
        )
        try:
            return cmd.parse(response)
        except (ValueError, IndexError) as exc:
            raise ParseError(f"{text}: unexpected answer {list(response.lines)!r}: {exc}") from exc


# --------------------------------------------------------------------------- field helpers


def split_fields(text: str) -> list[str]:
    """Split ``1,"a,b",3`` into ``['1', 'a,b', '3']``: quotes removed, commas inside kept,
    blanks around unquoted fields dropped (TS 27.007 4.1 parameter lists)."""
    fields: list[str] = []
    current: list[str] = []
    in_quotes = quoted = False
    for ch in text.strip():
        if ch == '"':
            in_quotes = not in_quotes
            quoted = True
        elif ch == "," and not in_quotes:
            value = "".join(current)
            fields.append(value if quoted else value.strip())
            current, quoted = [], False
        elif in_quotes or not quoted:
            current.append(ch)
    value = "".join(current)
    fields.append(value if quoted else value.strip())
    return fields


def _first(response: Response, prefix: str) -> str:
    values = response.prefixed(prefix)
    if not values:
        raise ParseError(f"no {prefix} line")
    return values[0]


def _none(_response: Response) -> None:
    return None


def _text(response: Response, *strip_prefixes: str) -> str:
    """The first non-empty line, without a label such as ``+CGMI:`` or ``Revision:``."""
    for line in response.lines:
        for prefix in strip_prefixes:
            if line.upper().startswith(prefix.upper()):
                line = line[len(prefix) :].strip()
                break
        line = line.strip().strip('"')
        if line:
            return line
    raise ParseError("empty answer")


# --------------------------------------------------------------------------- identity


def parse_maker(r: Response) -> str:
    return _text(r, "+CGMI:", "Manufacturer:")


def parse_model(r: Response) -> str:
    return _text(r, "+CGMM:", "Model:")


def parse_firmware(r: Response) -> str:
    return _text(r, "+CGMR:", "Revision:")


def parse_imei(r: Response) -> str:
    value = _text(r, "+CGSN:", "IMEI:")
    if not re.fullmatch(r"\d{14,17}", value):
        raise ParseError(f"not an IMEI: {value!r}")
    return value


def parse_ati(r: Response) -> dict[str, str]:
    """``ATI`` (V.250 6.1.3) free text: Quectel prints maker/model/Revision:, Huawei labels."""
    out: dict[str, str] = {}
    bare: list[str] = []
    for line in r.lines:
        key, sep, value = line.partition(":")
        label = key.strip().lower()
        if sep and label in {"manufacturer", "model", "revision", "imei"}:
            out[{"manufacturer": "maker", "revision": "firmware"}.get(label, label)] = value.strip()
        elif not line.startswith("+"):
            bare.append(line.strip())
    if bare and "maker" not in out:
        out["maker"] = bare[0]
    if len(bare) > 1 and "model" not in out:
        out["model"] = bare[1]
    return out


# --------------------------------------------------------------------------- SIM identity

_ICCID = re.compile(r"^89\d{15,20}$")


def swap_nibbles(text: str) -> str:
    """``"98101440"`` -> ``"89014104"``: BCD digits stored low nibble first (TS 31.102 4.2.2)."""
    if len(text) % 2:
        text += "F"
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))


def normalize_iccid(raw: str, *, swapped: bool | None = None) -> str:
    """An ICCID as printed on the card: digits only, "F" padding dropped.

    ``swapped=None`` decides by the first two digits: every ICCID starts with the ISO/IEC 7812
    telecom MII "89", so "98" means the modem printed EF_ICCID's raw nibble order (Qualcomm
    based Huawei sticks such as the E160/E397 do this for ``^ICCID``, others do not; the
    ModemManager huawei plugin decides the same way).
    """
    value = raw.strip().strip('"').strip().upper()
    if swapped is None:
        swapped = value.startswith("98")
    if swapped:
        value = swap_nibbles(value)
    value = value.rstrip("F")
    if not _ICCID.match(value):
        raise ParseError(f"not an ICCID: {raw!r}")
    return value


_BARE_ICCID = re.compile(r'"?[0-9A-Fa-f]{18,22}"?')  # SIM800 answers AT+CCID with bare digits


def _iccid_from(prefix: str) -> Callable[[Response], str]:
    def parse(r: Response) -> str:
        values = r.prefixed(prefix) or [ln for ln in r.lines if _BARE_ICCID.fullmatch(ln)]
        if not values:
            raise ParseError(f"no {prefix} line")
        return normalize_iccid(values[0])

    return parse


def parse_crsm_iccid(r: Response) -> str:
    """``+CRSM: 144,0,"98..."``: READ BINARY of EF_ICCID (2FE2 = 12258), TS 27.007 8.18."""
    sw1, sw2, data = [*split_fields(_first(r, "+CRSM:")), "", "", ""][:3]
    if sw1 not in {"144", "145"}:  # 0x90 0x00 normal end (0x91 on some SIMs)
        raise ParseError(f"SIM status {sw1},{sw2}")
    return normalize_iccid(data, swapped=True)


def parse_imsi(r: Response) -> str:
    for line in r.lines:
        value = line.removeprefix("+CIMI:").strip().strip('"')
        if re.fullmatch(r"\d{6,15}", value):
            return value
    raise ParseError("no IMSI")


def parse_cpin(r: Response) -> str:
    """``+CPIN: READY`` / ``SIM PIN`` / ``SIM PUK`` ... (TS 27.007 8.3)."""
    return _first(r, "+CPIN:").strip('"').upper()


# --------------------------------------------------------------------------- network


def csq_to_dbm(rssi: int) -> int | None:
    """TS 27.007 8.5: 0 -> -113 dBm or less, 1 -> -111, 2..30 -> -109..-53, 31 -> -51 or more,
    99 unknown.  (100..199 are the TD-SCDMA range some modems put here: not a GSM RSSI.)"""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    return None


def parse_csq(r: Response) -> int | None:
    return csq_to_dbm(int(split_fields(_first(r, "+CSQ:"))[0]))


#: TS 27.007 7.2 <stat>: 1 registered home, 5 registered roaming, 6/7 registered for "SMS only"
#: (home/roaming, E-UTRAN).  For a SIM farm that receives SMS, SMS-only counts as registered.
REGISTERED_STATS = frozenset({1, 5, 6, 7})


def _reg_parser(prefix: str) -> Callable[[Response], int]:
    def parse(r: Response) -> int:
        # The read form is "<n>,<stat>[,<lac>,<ci>[,<AcT>]]" (TS 27.007 7.2, 10.1.22).
        fields = split_fields(_first(r, prefix))
        return int(fields[1]) if len(fields) > 1 else int(fields[0])

    return parse


def parse_reg_urc(line: str) -> int | None:
    """The unsolicited form ``+CREG: <stat>[,<lac>,<ci>[,<AcT>]]``: stat is the first field."""
    _, _, rest = line.partition(":")
    fields = split_fields(rest)
    try:
        return int(fields[0])
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Operator:
    mode: int
    format: int | None = None
    value: str | None = None


def parse_cops(r: Response) -> Operator:
    """``+COPS: <mode>[,<format>,<oper>[,<AcT>]]`` (TS 27.007 7.3); no oper when unregistered."""
    fields = split_fields(_first(r, "+COPS:"))
    if len(fields) < 3 or not fields[2]:
        return Operator(int(fields[0]))
    return Operator(int(fields[0]), int(fields[1]), fields[2])


def parse_cfun(r: Response) -> int:
    """``+CFUN: 1`` (EC25 adds nothing; the python-gsmmodem wheel also saw ``+CFUN: 1,0``)."""
    return int(split_fields(_first(r, "+CFUN:"))[0])


# --------------------------------------------------------------------------- SMS storage


@dataclass(frozen=True, slots=True)
class Storage:
    used: int
    total: int


def parse_cpms(r: Response) -> Storage:
    """Set form ``+CPMS: <used1>,<total1>,...``; read form ``+CPMS: "SM",<used1>,<total1>,...``
    (TS 27.005 3.2.2).  The first memory is where we read and delete."""
    fields = split_fields(_first(r, "+CPMS:"))
    if fields and not fields[0].isdigit():
        fields = fields[1:]
    return Storage(int(fields[0]), int(fields[1]))


@dataclass(frozen=True, slots=True)
class StoredPdu:
    index: int
    stat: int  # TS 27.005 3.1 <stat> in PDU mode: 0 unread, 1 read, 2 unsent, 3 sent
    pdu: str  # hex, including the SMSC address field


def parse_cmgr(index: int) -> Callable[[Response], StoredPdu | None]:
    def parse(r: Response) -> StoredPdu | None:
        """``+CMGR: <stat>,[<alpha>],<length>`` then the PDU (TS 27.005 3.4.3); an empty index
        answers a bare ``OK`` on SIM800 and EC25."""
        for i, line in enumerate(r.lines):
            if line.startswith("+CMGR:") and i + 1 < len(r.lines):
                stat = split_fields(line[len("+CMGR:") :])[0]
                return StoredPdu(index, int(stat), r.lines[i + 1])
        return None

    return parse


def parse_cmgl(r: Response) -> list[StoredPdu]:
    """``+CMGL: <index>,<stat>,[<alpha>],<length>`` then the PDU, per message (TS 27.005 3.4.2)."""
    out: list[StoredPdu] = []
    lines = r.lines
    for i, line in enumerate(lines):
        if line.startswith("+CMGL:") and i + 1 < len(lines) and not lines[i + 1].startswith("+"):
            fields = split_fields(line[len("+CMGL:") :])
            out.append(StoredPdu(int(fields[0]), int(fields[1]), lines[i + 1]))
    return out


# --------------------------------------------------------------------------- numbers


def normalize_number(number: str, toa: int | None = None) -> str | None:
    """E.164 with "+" when the type of address says international (145, TS 24.008 10.5.4.7)
    or the digits carry a "+"; national numbers are returned as the SIM stores them."""
    digits = re.sub(r"[^\d+]", "", number)
    if not digits.strip("+"):
        return None
    if digits.startswith("+"):
        return "+" + digits.lstrip("+")
    if toa == 145:
        return "+" + digits
    return digits


def parse_cnum(r: Response) -> str | None:
    """``+CNUM: [<alpha>],<number>,<type>`` per line (TS 27.007 7.1); often empty on SIMs."""
    for value in r.prefixed("+CNUM:"):
        fields = split_fields(value)
        if len(fields) >= 2:
            toa = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None
            number = normalize_number(fields[1], toa)
            if number:
                return number
    return None


def parse_cpbr_range(r: Response) -> tuple[int, int]:
    """``+CPBR: (1-4),40,18`` (TS 27.007 8.12 test form)."""
    m = re.search(r"\((\d+)-(\d+)\)", _first(r, "+CPBR:"))
    if m is None:
        raise ParseError("no index range")
    return int(m.group(1)), int(m.group(2))


def parse_cpbr(r: Response) -> str | None:
    """``+CPBR: <index>,<number>,<type>,<text>`` per entry; the first non-empty number wins."""
    for value in r.prefixed("+CPBR:"):
        fields = split_fields(value)
        if len(fields) >= 3:
            toa = int(fields[2]) if fields[2].isdigit() else None
            number = normalize_number(fields[1], toa)
            if number:
                return number
    return None


@dataclass(frozen=True, slots=True)
class UssdReply:
    m: int  # 0 no further action, 1 further action required, 2 terminated by network, 4, 5
    text: str | None
    dcs: int | None


def parse_cusd(line: str) -> UssdReply:
    """``+CUSD: <m>[,<str>,<dcs>]`` (TS 27.007 7.15); the URC, not a command response."""
    _, _, rest = line.partition(":")
    fields = split_fields(rest)
    m = int(fields[0])
    text = fields[1] if len(fields) > 1 else None
    dcs = int(fields[2]) if len(fields) > 2 and fields[2].strip().isdigit() else None
    return UssdReply(m, text, dcs)


def parse_ccfc(r: Response) -> str | None:
    """``+CCFC: <status>,<class>[,<number>,<type>]`` per class (TS 27.007 7.11); the number of
    the first active forwarding that covers voice (class bit 1), else None."""
    for value in r.prefixed("+CCFC:"):
        fields = split_fields(value)
        if len(fields) >= 3 and fields[0] == "1" and int(fields[1] or "1") & 1:
            toa = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None
            return normalize_number(fields[2], toa)
    return None


# --------------------------------------------------------------------------- the catalog

AT = Command("AT", _none, timeout="quick")
ECHO_OFF = Command("ATE0", _none, timeout="quick")
CMEE = Command("AT+CMEE=1", _none)  # numeric +CME ERROR codes (TS 27.007 9.1)
ATI = Command("ATI", parse_ati)
CGMI = Command("AT+CGMI", parse_maker, ("+CGMI:",))
CGMM = Command("AT+CGMM", parse_model, ("+CGMM:",))
CGMR = Command("AT+CGMR", parse_firmware, ("+CGMR:",))
CGSN = Command("AT+CGSN", parse_imei, ("+CGSN:",))
CPIN = Command("AT+CPIN?", parse_cpin, ("+CPIN:",), timeout="sim")
CIMI = Command("AT+CIMI", parse_imsi, ("+CIMI:",), timeout="sim")

#: ICCID readers by name; the order to try them is a quirk.
ICCID_COMMANDS: dict[str, Command[str]] = {
    "qccid": Command("AT+QCCID", _iccid_from("+QCCID:"), ("+QCCID:",), timeout="sim"),  # Quectel
    "ccid": Command("AT+CCID", _iccid_from("+CCID:"), ("+CCID:",), timeout="sim"),  # SIMCom...
    "ciccid": Command("AT+CICCID", _iccid_from("+ICCID:"), ("+ICCID:",), timeout="sim"),
    "huawei": Command("AT^ICCID?", _iccid_from("^ICCID:"), ("^ICCID:",), timeout="sim"),
    # READ BINARY (176) of EF_ICCID (0x2FE2 = 12258), 10 bytes: works on any TS 27.007 modem.
    "crsm": Command("AT+CRSM=176,12258,0,0,10", parse_crsm_iccid, ("+CRSM:",), timeout="sim"),
}

COPS_FORMAT = Command("AT+COPS=3,{fmt}", _none)  # 0 long alphanumeric, 2 numeric MCC-MNC
COPS = Command("AT+COPS?", parse_cops, ("+COPS:",))
CSQ = Command("AT+CSQ", parse_csq, ("+CSQ:",))
CREG = Command("AT+CREG?", _reg_parser("+CREG:"), ("+CREG:",))
CEREG = Command("AT+CEREG?", _reg_parser("+CEREG:"), ("+CEREG:",))
CFUN_READ = Command("AT+CFUN?", parse_cfun, ("+CFUN:",))
CFUN_SET = Command("AT+CFUN={fun}", _none, timeout="network")
RESET = Command("{command}", _none, timeout="default")

CMGF_PDU = Command("AT+CMGF=0", _none)  # PDU mode (TS 27.005 3.2.3): no text-mode ambiguity
#: mem1 (read/delete), mem2 (write), mem3 (receive) all set to one storage (TS 27.005 3.2.2).
CPMS_SET = Command('AT+CPMS="{mem}","{mem}","{mem}"', parse_cpms, ("+CPMS:",), timeout="sim")
CPMS_READ_MEM = Command('AT+CPMS="{mem}"', parse_cpms, ("+CPMS:",), timeout="sim")
CPMS_QUERY = Command("AT+CPMS?", parse_cpms, ("+CPMS:",), timeout="sim")
#: TS 27.005 3.4.1: mode 2 (buffer URCs while the link is busy), mt 1 (store, then +CMTI),
#: bm 0, ds 0 (no status reports routed), bfr 0 (flush buffered URCs when set).
CNMI = Command("AT+CNMI=2,1,0,0,0", _none)
CMGL_ALL = Command(
    "AT+CMGL=4", parse_cmgl, ("+CMGL:",), ("+CMGL:",), timeout="list"
)  # 4 = all, PDU mode
CMGD = Command("AT+CMGD={index}", _none, timeout="sim")  # delflag 0: this index only


def cmgr(index: int) -> Command[StoredPdu | None]:
    return Command(f"AT+CMGR={index}", parse_cmgr(index), ("+CMGR:",), ("+CMGR:",), timeout="sim")


CNUM = Command("AT+CNUM", parse_cnum, ("+CNUM:",), timeout="sim")
CPBS_ON = Command('AT+CPBS="ON"', _none, timeout="sim")  # own-numbers phonebook (TS 27.007 8.11)
CPBR_TEST = Command("AT+CPBR=?", parse_cpbr_range, ("+CPBR:",), timeout="sim")
CPBR = Command("AT+CPBR={first},{last}", parse_cpbr, ("+CPBR:",), timeout="sim")
#: USSD request, result code presentation enabled (n=1); the answer is a +CUSD URC.
CUSD = Command('AT+CUSD=1,"{code}",15', _none, timeout="network")
CUSD_CANCEL = Command("AT+CUSD=2", _none)

#: TS 27.007 7.11: reason 0 unconditional; mode 3 registration, 4 erasure, 2 query.
CCFC_SET = Command('AT+CCFC=0,3,"{number}",{toa}', _none, timeout="network")
CCFC_ERASE = Command("AT+CCFC=0,4", _none, timeout="network")
CCFC_QUERY = Command("AT+CCFC=0,2", parse_ccfc, ("+CCFC:",), timeout="network")


# --------------------------------------------------------------------------- errors for people

#: TS 27.007 9.2 +CME ERROR codes worth a readable reason.
CME_ERRORS: dict[int, str] = {
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
    21: "invalid index",
    22: "not found",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    100: "unknown",
    257: "network rejected request",
    258: "retry operation",
    261: "SS not executed",
}
#: TS 27.005 3.2.5 +CMS ERROR codes.
CMS_ERRORS: dict[int, str] = {
    300: "ME failure",
    302: "operation not allowed",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    500: "unknown error",
}


def describe(exc: AtCommandError) -> str:
    """``"+CME ERROR: 30 (no network service)"`` for a CommandError reason."""
    table = CME_ERRORS if exc.kind == "CME" else CMS_ERRORS if exc.kind == "CMS" else {}
    meaning = table.get(exc.code) if exc.code is not None else None
    return f"{exc.result} ({meaning})" if meaning else exc.result
