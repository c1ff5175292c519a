"""The command catalog's parsers, on answers as real modems print them."""

from __future__ import annotations

import pytest

from drivers.at import commands as c
from drivers.at.framing import AtCommandError, Response
from tests.drivers.at.fake_line import FakeLine

pytestmark = pytest.mark.timeout(10)


def r(*lines: str, cmd: str = "AT") -> Response:
    return Response(cmd, lines)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ('1,"a,b",3', ["1", "a,b", "3"]),
        ('0,,"" , 7', ["0", "", "", "7"]),
        (" 21 , 99 ", ["21", "99"]),
        ('"","+79161234567",145', ["", "+79161234567", "145"]),
        ('"  spaced "', ["  spaced "]),
    ],
)
def test_split_fields(text: str, fields: list[str]) -> None:
    assert c.split_fields(text) == fields


@pytest.mark.parametrize(
    ("rssi", "dbm"), [(0, -113), (1, -111), (2, -109), (21, -71), (30, -53), (31, -51), (99, None)]
)
def test_csq_to_dbm_ts_27007_8_5(rssi: int, dbm: int | None) -> None:
    assert c.csq_to_dbm(rssi) == dbm
    assert c.parse_csq(r(f"+CSQ: {rssi},99")) == dbm


def test_registration() -> None:
    creg = c.CREG.parse
    assert creg(r("+CREG: 0,1")) == 1
    assert creg(r('+CREG: 2,5,"1A2B","01C3",7')) == 5
    assert c.CEREG.parse(r("+CEREG: 0,3")) == 3
    assert c.parse_reg_urc('+CREG: 1,"1A2B","01C3"') == 1
    assert c.parse_reg_urc("+CEREG: 0") == 0
    assert {1, 5} <= c.REGISTERED_STATS and not {0, 2, 3, 4} & c.REGISTERED_STATS


def test_cops() -> None:
    assert c.parse_cops(r('+COPS: 0,2,"25002",7')) == c.Operator(0, 2, "25002")
    assert c.parse_cops(r('+COPS: 0,0,"MegaFon",7')) == c.Operator(0, 0, "MegaFon")
    assert c.parse_cops(r("+COPS: 0")) == c.Operator(0)
    assert c.parse_cops(r('+COPS: 1,0,"MTS RUS"')).value == "MTS RUS"


def test_cpin_and_cfun() -> None:
    assert c.parse_cpin(r("+CPIN: READY")) == "READY"
    assert c.parse_cpin(r('+CPIN: "SIM PIN"')) == "SIM PIN"
    assert c.parse_cfun(r("+CFUN: 4")) == 4
    assert c.parse_cfun(r("+CFUN: 1,0")) == 1


def test_identity_parsers() -> None:
    assert c.parse_maker(r("Quectel")) == "Quectel"
    assert c.parse_maker(r("+CGMI: SIMCOM_Ltd")) == "SIMCOM_Ltd"
    assert c.parse_model(r("+CGMM: E3372")) == "E3372"
    assert c.parse_firmware(r("Revision: EC25EFAR06A06M4G")) == "EC25EFAR06A06M4G"
    assert c.parse_imei(r("861234567890123")) == "861234567890123"
    assert c.parse_imei(r('+CGSN: "861234567890123"')) == "861234567890123"
    with pytest.raises(c.ParseError):
        c.parse_imei(r("ERROR-ish"))
    ati = c.parse_ati(r("Manufacturer: huawei", "Model: E3372", "Revision: 22.315", "IMEI: 86"))
    assert ati == {"maker": "huawei", "model": "E3372", "firmware": "22.315", "imei": "86"}
    assert c.parse_ati(r("Quectel", "EC25", "Revision: EC25EFAR06A06M4G")) == {
        "maker": "Quectel",
        "model": "EC25",
        "firmware": "EC25EFAR06A06M4G",
    }


ICCID = "8970199123456789012"


def test_iccid_forms() -> None:
    cmds = c.ICCID_COMMANDS
    assert cmds["qccid"].parse(r(f"+QCCID: {ICCID}F")) == ICCID
    assert cmds["ccid"].parse(r(ICCID)) == ICCID  # SIM800: bare digits
    assert cmds["ccid"].parse(r(f'+CCID: "{ICCID}"')) == ICCID
    assert cmds["ciccid"].parse(r(f"+ICCID: {ICCID}")) == ICCID
    swapped = c.swap_nibbles(ICCID)
    assert swapped.startswith("98")
    assert cmds["huawei"].parse(r(f'^ICCID: "{swapped}"')) == ICCID  # Qualcomm Huawei: swapped
    assert cmds["huawei"].parse(r(f"^ICCID: {ICCID}")) == ICCID  # HiSilicon: as printed
    assert cmds["crsm"].parse(r(f'+CRSM: 144,0,"{swapped}"')) == ICCID
    # the pair-swapped form MultiTech documents for its Huawei-based H3 radio (letters -> digits)
    assert c.normalize_iccid("98101440521234397460") == "89014104252143934706"
    with pytest.raises(c.ParseError):
        cmds["crsm"].parse(r('+CRSM: 106,130,""'))
    with pytest.raises(c.ParseError):
        c.normalize_iccid("12345")


def test_imsi() -> None:
    assert c.parse_imsi(r("250991234567890")) == "250991234567890"
    assert c.parse_imsi(r("+CIMI: 250991234567890")) == "250991234567890"
    with pytest.raises(c.ParseError):
        c.parse_imsi(r())


def test_cpms_set_and_read_forms() -> None:
    assert c.parse_cpms(r("+CPMS: 3,50,3,50,3,50")) == c.Storage(3, 50)
    assert c.parse_cpms(r('+CPMS: "SM",50,50,"SM",50,50,"SM",50,50')) == c.Storage(50, 50)


PDU = "07919730071111F1000B919746121611F10000811170021222230DC8329BFD6681EE6F399B1C02"


def test_cmgr_and_cmgl() -> None:
    assert c.parse_cmgr(4)(r("+CMGR: 0,,23", PDU)) == c.StoredPdu(4, 0, PDU)
    assert c.parse_cmgr(4)(r()) is None  # empty index: bare OK
    listed = c.parse_cmgl(r("+CMGL: 1,0,,23", PDU, '+CMGL: 7,1,"",23', PDU))
    assert listed == [c.StoredPdu(1, 0, PDU), c.StoredPdu(7, 1, PDU)]
    assert c.parse_cmgl(r()) == []


def test_numbers() -> None:
    assert c.parse_cnum(r('+CNUM: "","+79161234567",145')) == "+79161234567"
    assert c.parse_cnum(r('+CNUM: "Own, mine","79161234567",145')) == "+79161234567"
    assert c.parse_cnum(r('+CNUM: "","89161234567",129')) == "89161234567"
    assert c.parse_cnum(r('+CNUM: "","",129', '+CNUM: "x","+4915112345678",145')) == (
        "+4915112345678"
    )
    assert c.parse_cnum(r()) is None
    assert c.parse_cpbr_range(r("+CPBR: (1-4),40,18")) == (1, 4)
    assert c.parse_cpbr(r('+CPBR: 1,"+79161234567",145,"My number"')) == "+79161234567"
    assert c.parse_cpbr(r('+CPBR: 1,"",129,""')) is None


def test_cusd() -> None:
    assert c.parse_cusd('+CUSD: 0,"04110430043B0430043D0441",72') == c.UssdReply(
        0, "04110430043B0430043D0441", 72
    )
    assert c.parse_cusd("+CUSD: 2") == c.UssdReply(2, None, None)
    assert c.parse_cusd('+CUSD: 1,"Menu, choose: 1",15').text == "Menu, choose: 1"


def test_ccfc_query() -> None:
    assert c.parse_ccfc(r('+CCFC: 1,1,"+79001112233",145')) == "+79001112233"
    assert c.parse_ccfc(r("+CCFC: 0,7")) is None
    assert c.parse_ccfc(r("+CCFC: 0,1", '+CCFC: 1,4,"+7900",145')) is None  # fax only


def test_describe_errors() -> None:
    assert c.describe(AtCommandError("AT+CCFC=0,4", "+CME ERROR: 30")) == (
        "+CME ERROR: 30 (no network service)"
    )
    assert c.describe(AtCommandError("AT+CMGD=1", "+CMS ERROR: 322")) == (
        "+CMS ERROR: 322 (memory full)"
    )
    assert c.describe(AtCommandError("AT", "ERROR")) == "ERROR"


def test_catalog_templates_render() -> None:
    assert c.CCFC_SET.render({"number": "+79001112233", "toa": 145}) == (
        'AT+CCFC=0,3,"+79001112233",145'
    )
    assert c.CPMS_SET.render({"mem": "SM"}) == 'AT+CPMS="SM","SM","SM"'
    assert c.CUSD.render({"code": "*111#"}) == 'AT+CUSD=1,"*111#",15'
    assert c.cmgr(12).template == "AT+CMGR=12"


async def test_channel_runs_a_command_and_reports_parse_errors() -> None:
    line = FakeLine(
        {
            "AT+CSQ": b"\r\n+CSQ: 31,99\r\n\r\nOK\r\n",
            "AT+CIMI": b"\r\nnonsense\r\n\r\nOK\r\n",
        }
    )
    channel = c.AtChannel(line.protocol, default_timeout_s=1)
    assert await channel.run(c.CSQ) == -51
    with pytest.raises(c.ParseError):
        await channel.run(c.CIMI)
    assert channel.timeout_for("default") == 1
    assert channel.timeout_for("network") == c.TIMEOUTS["network"]
