"""Own-number discovery: order of sources and USSD reply handling."""

from __future__ import annotations

import pytest

from drivers.at import number
from drivers.at.commands import UssdReply
from drivers.at.session import pack_gsm7_hex
from drivers.base import UssdRecipe

RECIPE = UssdRecipe(mcc_mnc="25002", ussd="*205#", regex=r"(\+?\d[\d \-]{9,16}\d)")


def probe(value: str | None):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def run(*args: str) -> str | None:
        calls.append("x")
        return value

    run.calls = calls  # type: ignore[attr-defined]
    return run


async def discover(**kw):  # type: ignore[no-untyped-def]
    args = {
        "cached": None,
        "cnum": probe(None),
        "phonebook": probe(None),
        "ussd": probe(None),
        "recipe": RECIPE,
        "ussd_packed": False,
    }
    args.update(kw)
    return await number.discover(**args)


async def test_order_cache_cnum_phonebook_ussd() -> None:
    cnum = probe("+79000000001")
    assert await discover(cached="+79000000000", cnum=cnum) == ("+79000000000", "cache")
    assert cnum.calls == []
    assert await discover(cnum=cnum) == ("+79000000001", "cnum")
    assert await discover(phonebook=probe("+79000000002")) == ("+79000000002", "phonebook")
    reply = UssdReply(0, "Your number +7 900 000-00-03", 15)
    assert await discover(ussd=probe(reply)) == ("+79000000003", "ussd")
    assert await discover(recipe=None, ussd=probe(reply)) is None
    assert await discover(ussd=probe(UssdReply(4, None, None))) is None


async def test_national_numbers_are_not_reported_as_e164() -> None:
    found = await discover(cnum=probe("89161234567"), phonebook=probe("+79161234567"))
    assert found == ("+79161234567", "phonebook")


def test_reply_decoding() -> None:
    ucs2 = "Номер +79001234567".encode("utf-16-be").hex().upper()
    assert number.number_from_reply(UssdReply(0, ucs2, 72), RECIPE.regex, packed=False) == (
        "+79001234567"
    )
    packed = pack_gsm7_hex("Nr 79001234567")
    assert number.number_from_reply(UssdReply(0, packed, 15), RECIPE.regex, packed=True) == (
        "+79001234567"
    )
    assert (
        number.number_from_reply(UssdReply(0, "no digits here", 15), RECIPE.regex, packed=False)
        is None
    )
    assert number.number_from_reply(UssdReply(0, None, None), RECIPE.regex, packed=False) is None


@pytest.mark.parametrize(
    ("found", "e164"),
    [
        ("+7 900 123-45-67", "+79001234567"),
        ("0079001234567", "+79001234567"),
        ("79001234567", "+79001234567"),
        ("012345", None),
        ("123", None),
    ],
)
def test_to_e164(found: str, e164: str | None) -> None:
    assert number.to_e164(found) == e164


def test_recipe_for_home_operator_first() -> None:
    roaming = UssdRecipe(mcc_mnc="26201", ussd="*135#", regex=".")
    recipes = (roaming, RECIPE)
    assert number.recipe_for(recipes, "250021234567890", "26201") is RECIPE
    assert number.recipe_for(recipes, "999991234567890", "26201") is roaming
    assert number.recipe_for(recipes, None, None) is None


def test_pack_gsm7_hex_matches_ts_23038_examples() -> None:
    assert pack_gsm7_hex("*100#") == "AA180C3602"
    # 7 septets leave 7 spare bits in the last octet: a CR fills them (6.1.2.3.1)
    assert bytes.fromhex(pack_gsm7_hex("1234567"))[-1] >> 1 == 0x0D
    with pytest.raises(ValueError):
        pack_gsm7_hex("€")
