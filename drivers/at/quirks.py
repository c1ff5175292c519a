"""Per-vendor/model differences, as data chosen by what ``AT+CGMI`` / ``AT+CGMM`` (or ``ATI``) say.

Owns: the table of modem families and what differs between them (how to read the ICCID, which
``+CFUN`` value turns the radio off without losing the SIM, how to reset, whether ``+CEREG``
exists, extra init commands, the URCs that announce SIM and storage changes, USSD coding).
Must not: send anything.  The session reads these fields; nothing else tests a vendor's name.

Sources: the vendors' AT manuals (Quectel EC25/EC21 AT Commands Manual, SIMCom SIM800 Series AT
Command Manual, SIMCom SIM7500/SIM7600 AT Command Manual, Huawei MU709/ME909 and E-series AT
Command Interface Specifications) and the ModemManager discussion of Huawei's ``^ICCID``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# TS 27.007 8.2: SIM state changes are also visible as "+CPIN: <code>" on most modems.
_CPIN_READY = ("+CPIN: READY",)
_CPIN_GONE = ("+CPIN: NOT INSERTED", "+CPIN: NOT READY")


@dataclass(frozen=True, slots=True)
class Quirks:
    family: str
    #: Keys of :data:`drivers.at.commands.ICCID_COMMANDS`, tried in order.  "crsm" (READ
    #: BINARY of EF_ICCID) is the standard fallback every family ends with.
    iccid_commands: tuple[str, ...] = ("ccid", "crsm")
    #: The +CFUN value for "radio off, SIM still readable" (TS 27.007 8.2 leaves 2..4 and the
    #: meaning of 0 for the SIM to the manufacturer).
    radio_off_cfun: int = 4
    #: TS 27.007 8.2 <rst>=1: reset the MT before setting <fun>=1.
    reset_command: str = "AT+CFUN=1,1"
    #: +CEREG (TS 27.007 10.1.22) exists on LTE firmware only.  Also switched off at run time
    #: when the modem rejects it.
    has_cereg: bool = True
    #: Sent after the standard init; a failure is logged, not fatal.
    extra_init: tuple[str, ...] = ()
    #: URCs after which the SIM must be checked again (inserted, re-read, swapped).
    sim_ready_urcs: tuple[str, ...] = _CPIN_READY
    sim_removed_urcs: tuple[str, ...] = _CPIN_GONE
    #: URC prefixes announcing that the SMS storage is full.
    memory_full_urcs: tuple[str, ...] = ()
    #: USSD strings in AT+CUSD are packed GSM 7 bit hex (TS 23.038 6.1.2.3), not +CSCS text.
    ussd_packed: bool = False
    #: Boot URCs: the modem restarted by itself and forgot CNMI/CMGF, so init runs again.
    boot_urcs: tuple[str, ...] = ("RDY",)


GENERIC = Quirks(family="generic", iccid_commands=("ccid", "qccid", "ciccid", "huawei", "crsm"))

# Quectel EC25/EC21/EG25/EC20 (LTE), BG96.  AT+QCCID prints "+QCCID: <iccid>".  CFUN=0 on EC2x
# is "minimum functionality", which also deactivates the (U)SIM, so the SIM would vanish from
# the inventory; CFUN=4 disables only RF transmit and receive.  "+QUSIM: 1" and
# "+QIND: SMS DONE" follow SIM initialisation; '+QIND: "smsfull",<mem>' is the storage-full
# report of AT+QINDCFG="smsfull".
QUECTEL = Quirks(
    family="quectel",
    iccid_commands=("qccid", "ccid", "crsm"),
    radio_off_cfun=4,
    sim_ready_urcs=(*_CPIN_READY, "+QUSIM: 1", "+QIND: SMS DONE"),
    memory_full_urcs=('+QIND: "smsfull"', "+QIND: smsfull"),
)
# Quectel 2G/3G modules (M35, M66, M95, MC60, UC15, UC20): no E-UTRAN, so no +CEREG.
QUECTEL_2G3G = dataclasses.replace(QUECTEL, family="quectel-2g3g", has_cereg=False)

# SIMCom SIM800/SIM800L/SIM800C/SIM900/SIM868 (GSM/GPRS).  AT+CCID prints the bare digits.
# SIM800 manual AT+CFUN: 0 minimum, 1 full, 4 "disable phone both transmit and receive RF
# circuits".  "Call Ready" / "SMS Ready" follow SIM initialisation; "RDY" and "+CFUN: 1"
# follow power-on.
SIMCOM_2G = Quirks(
    family="simcom-2g",
    iccid_commands=("ccid", "crsm"),
    radio_off_cfun=4,
    has_cereg=False,
    sim_ready_urcs=(*_CPIN_READY, "SMS Ready", "Call Ready"),
)
# SIMCom SIM7500/SIM7600/SIM7000/SIM7080/A7600 (LTE): AT+CICCID prints "+ICCID: <iccid>".
SIMCOM_LTE = Quirks(
    family="simcom-lte",
    iccid_commands=("ciccid", "ccid", "crsm"),
    radio_off_cfun=4,
    sim_ready_urcs=(*_CPIN_READY, "SMS DONE", "PB DONE"),
)

# Huawei E3372/E3276/E8372/ME909 (LTE), E173/E1550/E3131/MS2131 (3G, no +CEREG).
# * ^ICCID? prints the ICCID; Qualcomm-based models print it nibble-swapped ("98..."),
#   HiSilicon ones as on the card (modemmanager-devel, "huawei: fix ^ICCID parsing", 2013):
#   commands.normalize_iccid decides by the leading "98".  +CRSM fails before PIN entry.
# * Huawei's +CFUN: 0 "minimum functionality: RF off, SIM power kept", 4 "offline mode", and
#   fun=1 is refused when "previous mode must not be offline": leaving CFUN=4 needs a reset, so
#   radio off is CFUN=0.  AT+CFUN=1,1 restarts the MS.
# * Periodic ^RSSI/^HCSQ/^MODE/^SRVST/^DSFLOWRPT reports until AT^CURC=0 (noise that broke
#   python-gsmmodem's +CMGR parsing on an E171, babca#47).
# * ^SIMST: 1 / ^SIMST: 255 report SIM ready / removed (no +CPIN URCs); ^SMMEMFULL reports a
#   full message store.
# * USSD strings are packed 7-bit hex in both directions (^USSDMODE default, "transparent").
HUAWEI = Quirks(
    family="huawei",
    iccid_commands=("huawei", "crsm", "ccid"),
    radio_off_cfun=0,
    extra_init=("AT^CURC=0",),
    sim_ready_urcs=(*_CPIN_READY, "^SIMST: 1"),
    sim_removed_urcs=(*_CPIN_GONE, "^SIMST: 255", "^SIMST: 0"),
    memory_full_urcs=("^SMMEMFULL",),
    ussd_packed=True,
    boot_urcs=("RDY", "^BOOT", "^SYSSTART"),
)
HUAWEI_3G = dataclasses.replace(HUAWEI, family="huawei-3g", has_cereg=False)

_SIMCOM_LTE_MODELS = ("SIM7", "A76", "SIM82")  # SIM7xxx, A76xx, SIM82xx (5G); SIM800/808/868 are 2G
_QUECTEL_2G3G_MODELS = ("M35", "M66", "M95", "MC60", "UC15", "UC20", "M72")
_HUAWEI_3G_MODELS = ("E173", "E1550", "E1750", "E3131", "MS2131", "E171", "E160", "E353", "K3")


def select(maker: str | None, model: str | None) -> Quirks:
    """The quirks for what ``+CGMI`` / ``+CGMM`` printed (case-insensitive, prefixes only)."""
    maker_u = (maker or "").upper()
    model_u = (model or "").upper().removeprefix("SIMCOM_")
    if "QUECTEL" in maker_u:
        return QUECTEL_2G3G if model_u.startswith(_QUECTEL_2G3G_MODELS) else QUECTEL
    if "SIMCOM" in maker_u:
        return SIMCOM_LTE if model_u.startswith(_SIMCOM_LTE_MODELS) else SIMCOM_2G
    if "HUAWEI" in maker_u:
        return HUAWEI_3G if model_u.startswith(_HUAWEI_3G_MODELS) else HUAWEI
    return GENERIC


def with_overrides(quirks: Quirks, *, radio_off_cfun: int | None = None) -> Quirks:
    """Config wins over the table (``radio_off_cfun`` of an ``[[devices]]`` entry)."""
    if radio_off_cfun is None:
        return quirks
    return dataclasses.replace(quirks, radio_off_cfun=radio_off_cfun)
