"""Modem models: the strings and quirks that differ between firmware families.

Owns data only.  Each field says what a driver must cope with; the command state machine in
``modem.py`` reads these and never tests a profile's name.  Identity strings are illustrative
test data in the shape the real firmware prints (see research/at-modems.md and the vendors'
AT manuals); values marked *assumed* are plausible behaviour chosen to keep drivers honest,
not verified on hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

# Commands every profile accepts as "remember the setting and say OK", with their read reply.
# They matter only because drivers send them during initialisation.
_COMMON_ACCEPTED: Mapping[str, str | None] = {
    "+CSMP": "+CSMP: 17,167,0,0",  # TS 27.005 3.3.2
    "+CSMS": "+CSMS: 0,1,1,1",  # TS 27.005 3.2.1
    "+CSCB": '+CSCB: 0,"",""',
    "+CLIP": "+CLIP: 0,1",
    "+CRC": "+CRC: 0",
    "+CSDH": "+CSDH: 0",
}


@dataclass(frozen=True)
class Profile:
    name: str
    manufacturer: str  # +CGMI
    model: str  # +CGMM
    revision: str  # +CGMR
    ati: tuple[str, ...]  # ATI lines; "{imei}" is substituted
    # How the ICCID is read without +CRSM: "+CCID" (bare digits), "+QCCID" ("+QCCID: ..."),
    # "^ICCID" ("^ICCID: ..." to the ?-form).
    iccid_command: Literal["+CCID", "+QCCID", "^ICCID"]
    # Some Huawei firmware prints ^ICCID nibble-swapped like EF_ICCID ("98..."), some does not
    # (modemmanager-devel, "huawei: fix ^ICCID parsing", Sept 2013).  Parse both.
    iccid_swapped: bool = False
    iccid_quoted: bool = False
    # Index printed for the first storage slot.  TS 27.005 leaves it to the implementation;
    # SIMCom's SIM800 counts from 1, other firmware from 0 (assumed for ec25 and e3372).
    first_index: int = 1
    # <alpha> in PDU-mode +CMGR/+CMGL: empty (",,") or an empty quoted string (",\"\",").
    pdu_alpha: str = ""
    # AT+CMGR on an empty location: "ok" (just OK) or "error" (+CMS ERROR: 321).
    cmgr_empty: Literal["ok", "error"] = "ok"
    cmee_default: int = 0
    # Final result to an unknown command.  Huawei answers "COMMAND NOT SUPPORT" (a final
    # result code that is neither OK nor ERROR; research §6 lists it in gsmmodem's terminator).
    unknown_reply: str = "ERROR"
    cereg: bool = True  # +CEREG (TS 27.007 10.1.22); absent on 2G-only firmware
    act: int | None = 7  # <AcT> printed in +COPS/+CREG: 7 = E-UTRAN; None = not printed
    cscs_default: str = "IRA"
    cnmi_default: tuple[int, int, int, int, int] = (2, 1, 0, 0, 0)
    memories: tuple[str, ...] = ("SM", "ME")
    me_capacity: int = 50
    boot_urcs: tuple[str, ...] = ()  # at power-on, before the SIM is read
    cpin_urc: bool = True  # "+CPIN: READY" / "+CPIN: NOT READY" URCs on SIM state changes
    sim_ready_urcs: tuple[str, ...] = ()  # after the SIM is read (boot, swap)
    sim_removed_urcs: tuple[str, ...] = ()
    # URC when a message cannot be stored because the memory is full; "{mem}" is substituted.
    memory_full_urc: str | None = None
    noise_urcs: tuple[str, ...] = ()  # periodic unsolicited reports, when enabled
    # Huawei firmware takes and prints USSD strings as packed GSM-7 hex (TS 23.038 6.1.2.3)
    # instead of characters of +CSCS.
    ussd_packed: bool = False
    ccfc_inactive_class: int = 1
    accepted: Mapping[str, str | None] = field(default_factory=lambda: _COMMON_ACCEPTED)


def _accepted(extra: Mapping[str, str | None]) -> Mapping[str, str | None]:
    return MappingProxyType({**_COMMON_ACCEPTED, **extra})


EC25 = Profile(
    name="ec25",
    manufacturer="Quectel",
    model="EC25",
    revision="EC25EFAR06A06M4G",
    ati=("Quectel", "EC25", "Revision: EC25EFAR06A06M4G"),
    iccid_command="+QCCID",
    first_index=0,
    cmee_default=1,  # assumed: numeric +CME ERROR out of the box; a driver sets AT+CMEE itself
    cscs_default="GSM",
    me_capacity=255,
    # Quectel EC2x power-on sequence: RDY, then SIM and SMS/phonebook initialisation reports.
    boot_urcs=("RDY", "+CFUN: 1"),
    sim_ready_urcs=("+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
    memory_full_urc='+QIND: "smsfull","{mem}"',  # AT+QINDCFG="smsfull" report
    accepted=_accepted(
        {
            "+QURCCFG": '+QURCCFG: "urcport","usbat"',
            "+QINDCFG": '+QINDCFG: "all",1',
            "+CVHU": "+CVHU: 0",
        }
    ),
)

SIM800 = Profile(
    name="sim800",
    manufacturer="SIMCOM_Ltd",
    model="SIMCOM_SIM800L",
    revision="Revision:1418B04SIM800L24",
    ati=("SIM800 R14.18",),
    iccid_command="+CCID",
    first_index=1,
    pdu_alpha='""',
    cmee_default=0,
    cereg=False,  # GSM/GPRS only: AT+CEREG is an unknown command
    act=None,
    me_capacity=50,
    boot_urcs=("RDY", "+CFUN: 1"),
    sim_ready_urcs=("Call Ready", "SMS Ready"),
    accepted=_accepted({"+CVHU": "+CVHU: 0"}),
)

E3372 = Profile(
    name="e3372",
    manufacturer="huawei",
    model="E3372",
    revision="22.200.15.00.00",
    ati=(
        "Manufacturer: huawei",
        "Model: E3372",
        "Revision: 22.200.15.00.00",
        "IMEI: {imei}",
        "+GCAP: +CGSM,+DS,+ES",
    ),
    iccid_command="^ICCID",
    iccid_swapped=True,
    iccid_quoted=True,
    first_index=0,
    cmgr_empty="error",  # assumed
    unknown_reply="COMMAND NOT SUPPORT",
    cnmi_default=(0, 0, 0, 0, 0),  # assumed: no +CMTI until the driver sets AT+CNMI
    cpin_urc=False,
    sim_ready_urcs=("^SIMST: 1",),
    sim_removed_urcs=("^SIMST: 255",),
    memory_full_urc='^SMMEMFULL: "{mem}"',
    # Periodic reports of HiSilicon sticks; AT^CURC=0 turns them off.
    noise_urcs=("^RSSI: {rssi}", '^HCSQ: "LTE",{rssi},45,130,25', "^MODE: 7,17"),
    ussd_packed=True,
    accepted=_accepted({"^USSDMODE": "^USSDMODE: 0"}),
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (EC25, SIM800, E3372)})


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile.lower()]
    except KeyError:
        raise ValueError(f"unknown modem profile {profile!r}; known: {sorted(PROFILES)}") from None
