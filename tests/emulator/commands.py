"""What each AT command does to the emulated modem (V.250, TS 27.007, TS 27.005).

Owns command semantics only: one handler per command name, taking the modem and a parsed
:class:`~.atparse.Command` and returning a :class:`~.modem.Reply`.  Handlers run with the
modem's lock held, read and change its state directly, and never do I/O; the modem frames and
sends what they return.  Model differences come from the profile, never from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .atparse import Command, ParseError
from .charsets import from_ucs2_hex, ucs2_hex, ussd_pack_hex, ussd_unpack_hex
from .protocol import CELL, ERROR, LAC, RESET_GRACE, TAC, Reply, Result, UssdReply, cme, cms
from .sim import Forwarding, MessageStore, iccid_ef_hex, tpdu_length

if TYPE_CHECKING:
    from .modem import EmulatedModem
    from .profiles import Profile

Handler = Callable[["EmulatedModem", Command], Reply]

ON_CAPACITY = 4  # records of EF_MSISDN, the "ON" phonebook (TS 31.102 4.2.26)
SM_PHONEBOOK_CAPACITY = 250
_ICCID_COMMANDS = ("+CCID", "+QCCID", "^ICCID")
_CHARSETS = ("GSM", "IRA", "UCS2")


def dispatch(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.name == "":
        return Reply()  # a bare "AT"
    handler = _handler_for(m.profile, cmd.name)
    if handler is not None:
        return handler(m, cmd)
    if cmd.name in m.profile.accepted:
        return _accepted(m, cmd)
    return Reply(result=unknown_result(m.profile))


def unknown_result(p: Profile) -> Result:
    return ERROR if p.unknown_reply == "ERROR" else Result("raw", text=p.unknown_reply)


def _handler_for(p: Profile, name: str) -> Handler | None:
    if name.startswith("S") and name[1:].isdigit():
        return _sreg
    if name in _ICCID_COMMANDS and name != p.iccid_command:
        return None
    if name == "+CEREG" and not p.cereg:
        return None
    if name == "^CURC" and not p.noise_urcs:
        return None
    return HANDLERS.get(name)


def supported_commands(p: Profile) -> list[str]:
    names = [n for n in HANDLERS if n[0] in "+^" and _handler_for(p, n) is not None]
    return sorted(set(names) | set(p.accepted))


# ---------------------------------------------------------------------- helpers


def _flag(cmd: Command, values: tuple[int, ...], default: int = 0) -> int:
    """The single numeric value of a basic command (E0) or a set form (+CMEE=2)."""
    value = cmd.int_arg(0, default)
    assert value is not None
    if value not in values:
        raise ParseError(f"{cmd.name}: {value} out of range")
    return value


def _te_string(m: EmulatedModem, text: str) -> str:
    """A string parameter in the TE character set (TS 27.007 5.5 +CSCS)."""
    return ucs2_hex(text) if m._cscs == "UCS2" else text


def _number_type(number: str) -> int:
    # TS 24.008 10.5.4.7: 145 = international (leading "+"), 129 = unknown/national.
    return 145 if number.startswith("+") else 129


def _sms_store(m: EmulatedModem, which: int) -> MessageStore | Result:
    """The memory <mem1..3> names, or the error a command on it gets (no SIM, SIM busy...)."""
    err = m._sim_error(sms=True) if m._cpms[which] == "SM" else None
    if err is not None:
        return err
    store = m._store(m._cpms[which])
    return cms(310) if store is None else store


# ---------------------------------------------------------------------- V.250 basic


def _echo(m: EmulatedModem, cmd: Command) -> Reply:
    m._echo = _flag(cmd, (0, 1)) == 1
    return Reply()


def _verbose(m: EmulatedModem, cmd: Command) -> Reply:
    m._verbose = _flag(cmd, (0, 1)) == 1
    return Reply()


def _quiet(m: EmulatedModem, cmd: Command) -> Reply:
    m._quiet = _flag(cmd, (0, 1)) == 1
    return Reply()


def _info(m: EmulatedModem, cmd: Command) -> Reply:
    return Reply([line.format(imei=m.imei) for line in m.profile.ati])


def _factory(m: EmulatedModem, cmd: Command) -> Reply:
    # ATZ / AT&F: V.250 6.1.1 / 6.1.2 restore the profile, echo on again.
    m._echo, m._verbose, m._quiet = True, True, False
    m._cmee = m.profile.cmee_default
    return Reply()


def _ok(m: EmulatedModem, cmd: Command) -> Reply:
    return Reply()


def _sreg(m: EmulatedModem, cmd: Command) -> Reply:
    reg = int(cmd.name[1:])
    if cmd.form == "read":
        return Reply([f"{m._sregs.get(reg, 0):03d}"])
    value = cmd.int_arg(0, 0)
    assert value is not None
    if not 0 <= value <= 255:
        raise ParseError("S-register value out of range")
    m._sregs[reg] = value
    return Reply()


# ---------------------------------------------------------------------- identification


def _identity(value: Callable[[EmulatedModem], str]) -> Handler:
    def handler(m: EmulatedModem, cmd: Command) -> Reply:
        if cmd.form == "test":
            return Reply()
        return Reply([value(m)])

    return handler


def _cmee(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "read":
        return Reply([f"+CMEE: {m._cmee}"])
    if cmd.form == "test":
        return Reply(["+CMEE: (0-2)"])
    m._cmee = _flag(cmd, (0, 1, 2))
    return Reply()


def _clac(m: EmulatedModem, cmd: Command) -> Reply:
    return Reply(supported_commands(m.profile))


def _accepted(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "read":
        canned = m.profile.accepted.get(cmd.name)
        return Reply([canned] if canned else [])
    if cmd.form == "set":
        m._settings[cmd.name] = list(cmd.args)
    return Reply()


# ---------------------------------------------------------------------- SIM


def _cpin(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "test":
        return Reply()
    if cmd.form == "read":
        err = m._sim_error(sms=False, pin_ok=True)
        if err is not None:
            return Reply(result=err)
        return Reply([f"+CPIN: {m._cpin}"])
    if cmd.form != "set":
        return Reply(result=ERROR)
    sim = m._sim
    if sim is None:
        return Reply(result=cme(10))
    code = cmd.arg(0)
    if m._cpin == "READY":
        return Reply(result=cme(3))
    if m._cpin == "SIM PIN" and code == sim.pin:
        sim.pin_attempts = 3
    elif m._cpin == "SIM PUK" and code == sim.puk and cmd.arg(1):
        sim.pin, sim.pin_attempts = cmd.arg(1), 3
    else:
        if m._cpin == "SIM PIN":
            sim.pin_attempts -= 1
            if sim.pin_attempts <= 0:
                m._cpin = "SIM PUK"
        return Reply(result=cme(16))
    m._cpin = "READY"

    def ready() -> None:  # the SIM reports in after the OK
        m._announce_sim()
        m._refresh_registration()

    return Reply(after=ready)


def _iccid(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "test":
        return Reply()
    err = m._sim_error(sms=False, pin_ok=True)  # readable before the PIN, like EF_ICCID
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    p = m.profile
    value = iccid_ef_hex(m._sim.iccid) if p.iccid_swapped else m._sim.iccid
    if p.iccid_quoted:
        value = f'"{value}"'
    if cmd.name == "+CCID":
        return Reply([value])  # SIM800 prints the bare digits
    return Reply([f"{cmd.name}: {value}"])


def _crsm(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 8.18 restricted SIM access; only READ BINARY (176) of EF_ICCID (0x2FE2) has data.
    if cmd.form == "test":
        return Reply()
    if cmd.form != "set":
        return Reply(result=ERROR)
    err = m._sim_error(sms=False)
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    command, fileid, length = cmd.int_arg(0), cmd.int_arg(1), cmd.int_arg(4, 0)
    if command == 176 and fileid == 12258:
        data = iccid_ef_hex(m._sim.iccid)
        if length:
            data = data[: 2 * length]
        return Reply([f'+CRSM: 144,0,"{data}"'])
    return Reply(["+CRSM: 106,130"])  # SW 6A82: file not found


def _cimi(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "test":
        return Reply()
    err = m._sim_error(sms=False)
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    return Reply([m._sim.imsi])


def _cnum(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 7.1: one line per MSISDN record; none when EF_MSISDN is empty.
    if cmd.form == "test":
        return Reply()
    err = m._sim_error(sms=False)
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    number = m._sim.number
    if not number:
        return Reply()
    return Reply([f'+CNUM: "{_te_string(m, "")}","{_te_string(m, number)}",{_number_type(number)}'])


def _pb_capacity(storage: str) -> int:
    return ON_CAPACITY if storage == "ON" else SM_PHONEBOOK_CAPACITY


def _cpbs(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "test":
        return Reply(['+CPBS: ("SM","ON")'])
    err = m._sim_error(sms=False)
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    if cmd.form == "read":
        used = 1 if m._pbs == "ON" and m._sim.number else 0
        return Reply([f'+CPBS: "{m._pbs}",{used},{_pb_capacity(m._pbs)}'])
    storage = (cmd.arg(0) or "").upper()
    if storage not in ("SM", "ON"):
        return Reply(result=cme(3))
    m._pbs = storage
    return Reply()


def _cpbr(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 8.12: +CPBR: <index>,<number>,<type>,<text>
    total = _pb_capacity(m._pbs)
    if cmd.form == "test":
        return Reply([f"+CPBR: (1-{total}),40,18"])
    if cmd.form != "set":
        return Reply(result=ERROR)
    err = m._sim_error(sms=False)
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    first = cmd.int_arg(0)
    last = cmd.int_arg(1, first)
    assert first is not None and last is not None
    if not (1 <= first <= total and first <= last <= total):
        return Reply(result=cme(21))
    lines: list[str] = []
    number = m._sim.number
    if m._pbs == "ON" and number and first <= 1 <= last:
        lines.append(f'+CPBR: 1,"{_te_string(m, number)}",{_number_type(number)},""')
    return Reply(lines)


# ---------------------------------------------------------------------- network


def _cops(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 7.3
    sim = m._sim
    if cmd.form == "test":
        if sim is None or m._fun != 1:
            return Reply(["+COPS: ,,(0-4),(0-2)"])
        act = f",{m.profile.act}" if m.profile.act is not None else ""
        entry = f'(2,"{sim.operator}","{sim.operator_short}","{sim.mcc_mnc}"{act})'
        return Reply([f"+COPS: {entry},,(0-4),(0-2)"])
    if cmd.form == "read":
        if not m.registered or sim is None:
            return Reply([f"+COPS: {m._cops_mode}"])
        oper = (sim.operator, sim.operator_short, sim.mcc_mnc)[m._cops_format]
        act = f",{m.profile.act}" if m.profile.act is not None else ""
        return Reply([f'+COPS: {m._cops_mode},{m._cops_format},"{oper}"{act}'])
    if cmd.form != "set":
        return Reply(result=ERROR)
    mode = cmd.int_arg(0)
    fmt = cmd.int_arg(1)
    if mode not in (0, 1, 2, 3, 4) or fmt not in (None, 0, 1, 2):
        return Reply(result=ERROR)
    if fmt is not None:
        m._cops_format = fmt
    if mode == 3:
        if fmt is None:
            return Reply(result=ERROR)
        return Reply()
    m._cops_mode = 2 if mode == 2 else 0
    return Reply(after=m._refresh_registration)  # +CREG URCs follow the OK


def _csq(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 8.5: rssi 0..31 (-113 + 2*rssi dBm), 99 = unknown; ber 99 = unknown.
    if cmd.form == "test":
        return Reply(["+CSQ: (0-31,99),(0-7,99)"])
    rssi = m.signal if m._fun == 1 else 99  # measured with or without a SIM
    return Reply([f"+CSQ: {rssi},99"])


def _registration(attr: str, prefix: str, area: str) -> Handler:
    # TS 27.007 7.2 +CREG, 10.1.20 +CGREG, 10.1.22 +CEREG share one shape.
    def handler(m: EmulatedModem, cmd: Command) -> Reply:
        if cmd.form == "test":
            return Reply([f"{prefix}: (0-2)"])
        if cmd.form == "read":
            n = getattr(m, attr)
            stat = m._reg_stat
            return Reply([f"{prefix}: {n},{m._reg_fields(stat, n, area, CELL)}"])
        setattr(m, attr, _flag(cmd, (0, 1, 2)))
        return Reply()

    return handler


def _cfun(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 8.2: 1 full, 0 minimum, 4 RF off; <rst>=1 resets the MT first.
    if cmd.form == "test":
        return Reply(["+CFUN: (0,1,4),(0-1)"])
    if cmd.form == "read":
        return Reply([f"+CFUN: {m._fun}"])
    fun = cmd.int_arg(0)
    rst = cmd.int_arg(1, 0)
    if fun not in (0, 1, 4) or rst not in (0, 1):
        return Reply(result=ERROR)
    if rst == 1:
        # OK first, then the module goes dark (and re-enumerates when reset_drops_line).
        def reset() -> None:
            m._after(RESET_GRACE, lambda: m._reset_now(m.reset_drops_line))

        return Reply(after=reset)
    m._fun = fun
    return Reply(after=m._refresh_registration)  # +CREG URCs follow the OK


# ---------------------------------------------------------------------- SMS (TS 27.005)


def _cmgf(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "read":
        return Reply([f"+CMGF: {m._cmgf}"])
    if cmd.form == "test":
        return Reply(["+CMGF: (0,1)"])
    m._cmgf = _flag(cmd, (0, 1))
    return Reply()


def _cscs(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "read":
        return Reply([f'+CSCS: "{m._cscs}"'])
    if cmd.form == "test":
        return Reply(["+CSCS: (" + ",".join(f'"{c}"' for c in _CHARSETS) + ")"])
    charset = (cmd.arg(0) or "").upper()
    if charset not in _CHARSETS:
        return Reply(result=ERROR)
    m._cscs = charset
    return Reply()


def _cpms_counts(m: EmulatedModem) -> list[str]:
    parts: list[str] = []
    for mem in m._cpms:
        store = m._store(mem)
        parts += [str(store.used if store else 0), str(store.capacity if store else 0)]
    return parts


def _cpms(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.005 3.2.2: <mem1> read/delete, <mem2> write/send, <mem3> receive.
    mems = m.profile.memories
    if cmd.form == "test":
        one = "(" + ",".join(f'"{x}"' for x in mems) + ")"
        return Reply([f"+CPMS: {one},{one},{one}"])
    if cmd.form == "read":
        counts = _cpms_counts(m)
        fields = [f'"{mem}",{counts[2 * i]},{counts[2 * i + 1]}' for i, mem in enumerate(m._cpms)]
        return Reply(["+CPMS: " + ",".join(fields)])
    if cmd.form != "set" or not cmd.args or len(cmd.args) > 3:
        return Reply(result=ERROR)
    wanted = [(a or "").upper() for a in cmd.args]
    for mem in wanted:
        if mem not in mems:
            return Reply(result=cms(302))
        if mem == "SM":
            err = m._sim_error(sms=True)
            if err is not None:
                return Reply(result=err)
    for i, mem in enumerate(wanted):
        m._cpms[i] = mem
    return Reply(["+CPMS: " + ",".join(_cpms_counts(m))])


def _cnmi(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.005 3.4.1
    if cmd.form == "read":
        return Reply(["+CNMI: " + ",".join(map(str, m._cnmi))])
    if cmd.form == "test":
        return Reply(["+CNMI: (0-3),(0-3),(0-3),(0-2),(0,1)"])
    if cmd.form != "set" or len(cmd.args) > 5:
        return Reply(result=ERROR)
    limits = (3, 3, 3, 2, 1)
    values = [cmd.int_arg(i, 0) or 0 for i in range(5)]
    if any(not 0 <= v <= hi for v, hi in zip(values, limits, strict=True)):
        return Reply(result=cms(303))
    m._cnmi = values
    if values[0] == 0:
        return Reply()
    buffered, m._ta_buffer = m._ta_buffer, []

    def flush() -> None:
        # "OK response shall be given before flushing the codes" (TS 27.005 3.4.1 <bfr>=0).
        if values[4] == 0:
            for text in buffered:
                m._urc(text)

    return Reply(after=flush)


def _pdu_mode(m: EmulatedModem) -> Result | None:
    # Only PDU mode is emulated: stored messages are opaque PDUs; text mode would need a decoder.
    return cms(303) if m._cmgf != 0 else None


def _cmgr(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.005 3.4.3; SIMCom's optional <mode>=1 reads without marking as read.
    if cmd.form == "test":
        return Reply()
    if cmd.form != "set":
        return Reply(result=ERROR)
    index, mode = cmd.int_arg(0), cmd.int_arg(1, 0)
    if index is None:
        return Reply(result=ERROR)
    store = _sms_store(m, 0)
    if isinstance(store, Result):
        return Reply(result=store)
    err = _pdu_mode(m)
    if err is not None:
        return Reply(result=err)
    slot = index - m.profile.first_index
    if not 0 <= slot < store.capacity:
        return Reply(result=cms(321))
    msg = store.slots.get(slot)
    if msg is None:
        return Reply(result=cms(321)) if m.profile.cmgr_empty == "error" else Reply()
    line = f"+CMGR: {msg.stat},{m.profile.pdu_alpha},{tpdu_length(msg.pdu)}"
    if msg.stat == 0 and mode == 0:
        msg.stat = 1
        m._event("read", index=index, mem=store.name, pdu=msg.pdu)
    return Reply([line, msg.pdu])


def _cmgl(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.005 3.4.2: PDU mode takes a number (a quoted "ALL" is an error there).
    if cmd.form == "test":
        return Reply(["+CMGL: (0-4)"])
    if cmd.form == "read":
        return Reply(result=ERROR)
    stat = cmd.int_arg(0, 0)
    mode = cmd.int_arg(1, 0)
    if stat not in (0, 1, 2, 3, 4):
        return Reply(result=ERROR)
    store = _sms_store(m, 0)
    if isinstance(store, Result):
        return Reply(result=store)
    err = _pdu_mode(m)
    if err is not None:
        return Reply(result=err)
    lines: list[str] = []
    base = m.profile.first_index
    for slot, msg in sorted(store.slots.items()):
        if stat != 4 and msg.stat != stat:
            continue
        alpha = m.profile.pdu_alpha
        lines.append(f"+CMGL: {slot + base},{msg.stat},{alpha},{tpdu_length(msg.pdu)}")
        lines.append(msg.pdu)
        if msg.stat == 0 and mode == 0:
            msg.stat = 1
            m._event("read", index=slot + base, mem=store.name, pdu=msg.pdu)
    return Reply(lines)


_DELFLAG_STATS = {1: (1,), 2: (1, 3), 3: (1, 2, 3), 4: (0, 1, 2, 3)}


def _cmgd(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.005 3.5.4: <delflag> 0 the index; 1 read; 2 read+sent; 3 read+sent+unsent; 4 all.
    if cmd.form == "test":
        return Reply(["+CMGD: (list of indexes),(0-4)"])
    if cmd.form != "set":
        return Reply(result=ERROR)
    index, flag = cmd.int_arg(0), cmd.int_arg(1, 0)
    if index is None or flag not in (0, 1, 2, 3, 4):
        return Reply(result=ERROR)
    store = _sms_store(m, 0)
    if isinstance(store, Result):
        return Reply(result=store)
    if m._cmgd_failures > 0:
        m._cmgd_failures -= 1
        m._event("delete_failed", index=index, mem=store.name, detail=f"cms {m._cmgd_failure_code}")
        return Reply(result=cms(m._cmgd_failure_code))
    base = m.profile.first_index
    if flag == 0:
        slot = index - base
        if not 0 <= slot < store.capacity:
            return Reply(result=cms(321))
        victims = [slot] if slot in store.slots else []
    else:
        stats = _DELFLAG_STATS[flag]
        victims = [s for s, msg in sorted(store.slots.items()) if msg.stat in stats]
    iccid = m._sim.iccid if m._sim and store is m._sim.messages else None
    for slot in victims:
        msg = store.slots.pop(slot)
        m._event("deleted", index=slot + base, mem=store.name, iccid=iccid, pdu=msg.pdu)
    if victims:
        m._memory_freed()
    return Reply()


def _csca(m: EmulatedModem, cmd: Command) -> Reply:
    if cmd.form == "test":
        return Reply()
    err = m._sim_error(sms=True)
    if err is not None:
        return Reply(result=err)
    assert m._sim is not None
    if cmd.form == "read":
        smsc = m._sim.smsc
        return Reply([f'+CSCA: "{_te_string(m, smsc)}",{_number_type(smsc)}'])
    if cmd.form == "set" and cmd.arg(0):
        m._sim.smsc = cmd.arg(0) or ""
        return Reply()
    return Reply(result=ERROR)


# ---------------------------------------------------------------------- supplementary services


def _dcs_is_ucs2(dcs: int) -> bool:
    # TS 23.038 5 (CBS data coding): 0x11 UCS2 with language; 01xx group with bits 3-2 = 10.
    return dcs == 0x11 or (dcs & 0xC0 == 0x40 and dcs & 0x0C == 0x08)


def _ussd_text(m: EmulatedModem, text: str, dcs: int) -> str:
    if _dcs_is_ucs2(dcs):
        return ucs2_hex(text)
    if m.profile.ussd_packed:
        return ussd_pack_hex(text)
    return _te_string(m, text).replace('"', "'")


def _ussd_answer(m: EmulatedModem, script: UssdReply | None) -> None:
    m._ussd_busy = False
    if m._cusd_n == 0:
        return  # TS 27.007 7.15 <n>=0: result code presentation disabled
    if script is None:
        m._urc("+CUSD: 4")
    elif script.text is None:
        m._urc(f"+CUSD: {script.status}")
    else:
        body = _ussd_text(m, script.text, script.dcs)
        m._urc(f'+CUSD: {script.status},"{body}",{script.dcs}')


def _cusd(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 7.15: AT+CUSD=<n>[,<str>[,<dcs>]]; the network's answer comes later as a URC.
    if cmd.form == "read":
        return Reply([f"+CUSD: {m._cusd_n}"])
    if cmd.form == "test":
        return Reply(["+CUSD: (0-2)"])
    n = cmd.int_arg(0, 0) if cmd.form == "set" else 0
    if n not in (0, 1, 2):
        return Reply(result=ERROR)
    if n == 2:
        m._ussd_busy = False  # cancel the session
        return Reply()
    m._cusd_n = n
    raw = cmd.arg(1)
    if raw is None:
        return Reply()
    if m._sim_error(sms=False) is not None or not m.registered:
        return Reply(result=cme(30))
    if m._ussd_busy:
        return Reply(result=cme(3))
    try:
        if m.profile.ussd_packed:
            code = ussd_unpack_hex(raw)  # Huawei: the string must be packed GSM-7 hex
        elif m._cscs == "UCS2":
            code = from_ucs2_hex(raw)
        else:
            code = raw
    except ValueError:
        return Reply(result=ERROR)
    m._ussd_busy = True
    script = m._ussd_scripts.get(code)
    if script is not None and script.silent:
        return Reply()
    delay = script.delay if script is not None and script.delay is not None else m.ussd_delay
    m._after(delay, lambda: _ussd_answer(m, script))
    return Reply()


def _ccfc(m: EmulatedModem, cmd: Command) -> Reply:
    # TS 27.007 7.11: <reason> 0 unconditional, 1 busy, 2 no reply, 3 not reachable, 4 all,
    # 5 all conditional; <mode> 0 disable, 1 enable, 2 query, 3 registration, 4 erasure.
    if cmd.form == "test":
        return Reply(["+CCFC: (0-5)"])
    if cmd.form != "set":
        return Reply(result=ERROR)
    reason, mode = cmd.int_arg(0), cmd.int_arg(1)
    if reason not in (0, 1, 2, 3, 4, 5) or mode not in (0, 1, 2, 3, 4):
        return Reply(result=ERROR)
    err = m._sim_error(sms=False)
    if err is not None:
        return Reply(result=err)
    if not m.registered:
        return Reply(result=cme(30))
    assert m._sim is not None
    fwd = m._sim.forwarding
    reasons = [reason] if reason < 4 else ([0, 1, 2, 3] if reason == 4 else [1, 2, 3])
    number = cmd.arg(2)
    if mode == 2:
        entry = fwd.get(reasons[0])
        if entry is not None and entry.active:
            return Reply([f'+CCFC: 1,1,"{entry.number}",{entry.type}'])
        return Reply([f"+CCFC: 0,{m.profile.ccfc_inactive_class}"])
    if mode == 3:
        if not number:
            return Reply(result=ERROR)
        ntype = cmd.int_arg(3, _number_type(number))
        assert ntype is not None
        for r in reasons:
            fwd[r] = Forwarding(number, ntype, True)
    elif mode == 1:
        for r in reasons:
            if r in fwd:
                fwd[r].active = True
            elif number:
                fwd[r] = Forwarding(number, _number_type(number), True)
            else:
                return Reply(result=cme(100))
    elif mode == 0:
        for r in reasons:
            if r in fwd:
                fwd[r].active = False
    else:
        for r in reasons:
            fwd.pop(r, None)
    return Reply()


def _curc(m: EmulatedModem, cmd: Command) -> Reply:
    # Huawei ^CURC: 0 stops the periodic ^RSSI/^HCSQ/^MODE reports.
    if cmd.form == "read":
        return Reply([f"^CURC: {int(m._curc)}"])
    if cmd.form == "test":
        return Reply(["^CURC: (0-1)"])
    m._curc = _flag(cmd, (0, 1)) == 1
    return Reply()


def _cpas(m: EmulatedModem, cmd: Command) -> Reply:
    return Reply() if cmd.form == "test" else Reply(["+CPAS: 0"])


HANDLERS: dict[str, Handler] = {
    "E": _echo,
    "V": _verbose,
    "Q": _quiet,
    "I": _info,
    "Z": _factory,
    "&F": _factory,
    "&W": _ok,
    "&C": _ok,
    "&D": _ok,
    "X": _ok,
    "H": _ok,
    "+CMEE": _cmee,
    "+CGMI": _identity(lambda m: m.profile.manufacturer),
    "+GMI": _identity(lambda m: m.profile.manufacturer),
    "+CGMM": _identity(lambda m: m.profile.model),
    "+GMM": _identity(lambda m: m.profile.model),
    "+CGMR": _identity(lambda m: m.profile.revision),
    "+GMR": _identity(lambda m: m.profile.revision),
    "+CGSN": _identity(lambda m: m.imei),
    "+GSN": _identity(lambda m: m.imei),
    "+GCAP": _identity(lambda m: "+GCAP: +CGSM"),
    "+CLAC": _clac,
    "+CPAS": _cpas,
    "+CPIN": _cpin,
    "+CCID": _iccid,
    "+QCCID": _iccid,
    "^ICCID": _iccid,
    "+CRSM": _crsm,
    "+CIMI": _cimi,
    "+CNUM": _cnum,
    "+CPBS": _cpbs,
    "+CPBR": _cpbr,
    "+COPS": _cops,
    "+CSQ": _csq,
    "+CREG": _registration("_creg_n", "+CREG", LAC),
    "+CGREG": _registration("_cgreg_n", "+CGREG", LAC),
    "+CEREG": _registration("_cereg_n", "+CEREG", TAC),
    "+CFUN": _cfun,
    "+CMGF": _cmgf,
    "+CSCS": _cscs,
    "+CPMS": _cpms,
    "+CNMI": _cnmi,
    "+CMGR": _cmgr,
    "+CMGL": _cmgl,
    "+CMGD": _cmgd,
    "+CSCA": _csca,
    "+CUSD": _cusd,
    "+CCFC": _ccfc,
    "^CURC": _curc,
}
