"""A byte-level AT modem emulator (TS 27.007 / TS 27.005) for tests and benchmarks.

It behaves like a real modem on a real port: echo at power-up, CR-terminated commands,
``\\r\\n``-framed responses and URCs, message storage on a SIM that survives an agent crash,
resets that silence or drop the line, and scriptable faults (URCs inside responses, delays,
mute, garbage, CME/CMS errors, failed deletes, full memory, unplug, SIM swap).

Layers: ``atparse`` (V.250 syntax) → ``commands`` (what each command does) → ``modem`` (the
sans-IO state machine, faults, transcript) → ``transport`` (ptys and TCP on one event-loop
thread).  ``profiles`` holds model differences, ``sim`` the SIM and network-side state,
``charsets`` GSM-7/UCS2.  ``python -m tests.emulator`` runs modems standalone.

Typical use (the server runs its own event-loop thread; every modem method is thread-safe)::

    modem = EmulatedModem("ec25")                # or "sim800", "e3372", or a Profile
    with ModemServer() as server:
        path = server.start_pty(modem, link=tmp / "by-id" / "modem0")   # "/dev/pts/7"
        port = server.start_tcp(other_modem)     # 127.0.0.1:<port>, ser2net style
        modem.deliver_pdu(pdu_hex)               # stored at index 0, "+CMTI: \"SM\",0"
        modem.inject_urc_during("AT+CSQ", '+CMTI: "SM",3', "mid_line")
        modem.set_delay("AT+CMGD", 2.0, times=1)
        modem.fail_cmgd(1)                       # next AT+CMGD: +CMS ERROR: 321, kept
        modem.unplug(); modem.replug()           # new pty path, symlink repointed
        assert [e.index for e in modem.events("deleted")] == [0]
"""

from .atparse import Command, ParseError, split_command_line
from .charsets import ucs2_hex, ussd_pack_hex, ussd_unpack_hex
from .modem import EmulatedModem, LogEntry, ModemEvent, Where
from .profiles import E3372, EC25, PROFILES, SIM800, Profile, get_profile
from .protocol import CME_TEXT, CMS_TEXT, UssdReply
from .sim import Forwarding, MessageStore, SimCard, iccid_ef_hex, tpdu_length
from .transport import ModemServer, raise_fd_limit

__all__ = [
    "CME_TEXT",
    "CMS_TEXT",
    "E3372",
    "EC25",
    "PROFILES",
    "SIM800",
    "Command",
    "EmulatedModem",
    "Forwarding",
    "LogEntry",
    "MessageStore",
    "ModemEvent",
    "ModemServer",
    "ParseError",
    "Profile",
    "SimCard",
    "UssdReply",
    "Where",
    "get_profile",
    "iccid_ef_hex",
    "raise_fd_limit",
    "split_command_line",
    "tpdu_length",
    "ucs2_hex",
    "ussd_pack_hex",
    "ussd_unpack_hex",
]
