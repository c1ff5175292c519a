"""Quirk selection by what +CGMI/+CGMM print."""

from __future__ import annotations

import pytest

from drivers.at import quirks as q


@pytest.mark.parametrize(
    ("maker", "model", "family"),
    [
        ("Quectel", "EC25", "quectel"),
        ("Quectel", "EG25-G", "quectel"),
        ("Quectel", "UC20", "quectel-2g3g"),
        ("SIMCOM_Ltd", "SIMCOM_SIM800L", "simcom-2g"),
        ("SIMCOM INCORPORATED", "SIMCOM_SIM7600E-H", "simcom-lte"),
        ("SIMCOM_Ltd", "SIM868", "simcom-2g"),
        ("huawei", "E3372", "huawei"),
        ("huawei", "E173", "huawei-3g"),
        ("Fibocom", "L850", "generic"),
        (None, None, "generic"),
    ],
)
def test_select(maker: str | None, model: str | None, family: str) -> None:
    assert q.select(maker, model).family == family


def test_what_differs() -> None:
    assert q.select("huawei", "E3372").radio_off_cfun == 0  # leaving CFUN=4 needs a reset
    assert q.select("Quectel", "EC25").radio_off_cfun == 4  # CFUN=0 would power the SIM off
    assert q.select("huawei", "E3372").extra_init == ("AT^CURC=0",)
    assert not q.select("SIMCOM_Ltd", "SIM800").has_cereg
    assert q.select("huawei", "E3372").iccid_commands[0] == "huawei"
    assert q.select("Quectel", "EC25").iccid_commands[0] == "qccid"
    assert all(f.iccid_commands[-1] != "" for f in (q.GENERIC, q.HUAWEI, q.QUECTEL))
    assert "crsm" in q.GENERIC.iccid_commands


def test_config_override() -> None:
    base = q.select("Quectel", "EC25")
    assert q.with_overrides(base, radio_off_cfun=None) is base
    assert q.with_overrides(base, radio_off_cfun=0).radio_off_cfun == 0
