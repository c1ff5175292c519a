"""Own-number discovery (DESIGN.md "Own-number discovery"), in order:

1. the core's cache for the ICCID (per-ICCID config merged in by the core),
2. ``AT+CNUM`` (TS 27.007 7.1, EF_MSISDN; often empty),
3. the ``"ON"`` phonebook (TS 27.007 8.11/8.12),
4. a USSD recipe for the SIM's operator (``[[number_discovery]]``: code + regex), the reply
   decoded by its DCS (TS 23.038 clause 5) with :func:`drivers.at.pdu.decode_ussd`,
5. else unknown.

Owns: that order and the normalisation of what a USSD reply says to E.164.  Must not: talk to
the port itself; the caller hands in the three probes as coroutines.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

import structlog

from drivers.at.commands import UssdReply
from drivers.at.pdu import PduError, decode_ussd
from drivers.base import UssdRecipe

log = structlog.get_logger(__name__)

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")

Probe = Callable[[], Awaitable[str | None]]
UssdProbe = Callable[[str], Awaitable[UssdReply | None]]


def recipe_for(
    recipes: Sequence[UssdRecipe], imsi: str | None, mcc_mnc: str | None
) -> UssdRecipe | None:
    """The recipe of the SIM's home operator (IMSI prefix), else of the serving network."""
    for recipe in recipes:
        if imsi and imsi.startswith(recipe.mcc_mnc):
            return recipe
    for recipe in recipes:
        if mcc_mnc and mcc_mnc == recipe.mcc_mnc:
            return recipe
    return None


def to_e164(found: str) -> str | None:
    """``"+7 900 123-45-67"``, ``"0079001234567"``, ``"79001234567"`` -> ``"+79001234567"``.

    A recipe's regex must capture the number with its country code (with or without "+");
    national trunk prefixes cannot be undone without a per-country table.
    """
    digits = re.sub(r"\D", "", found)
    if digits.startswith("00"):
        digits = digits[2:]
    if not 7 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return "+" + digits


def number_from_reply(reply: UssdReply, regex: str, *, packed: bool) -> str | None:
    if reply.text is None:
        return None
    dcs = reply.dcs if reply.dcs is not None else 15
    try:
        # Huawei prints packed hex whatever the DCS; other modems print GSM 7 bit text in
        # the TE character set and UCS2 as hex, which decode_ussd recognises by shape.
        text = decode_ussd(reply.text, dcs, as_hex=True if packed else None)
    except PduError as exc:
        log.info("at.ussd_undecodable", dcs=dcs, error=str(exc))
        return None
    match = re.search(regex, text)
    if match is None:
        log.info("at.ussd_no_match", chars=len(text))
        return None
    return to_e164(match.group(1) if match.groups() else match.group(0))


async def discover(
    *,
    cached: str | None,
    cnum: Probe,
    phonebook: Probe,
    ussd: UssdProbe,
    recipe: UssdRecipe | None,
    ussd_packed: bool,
) -> tuple[str, str] | None:
    """(number, source) or None.  Sources: "cache", "cnum", "phonebook", "ussd"."""
    if cached:
        return cached, "cache"
    for source, probe in (("cnum", cnum), ("phonebook", phonebook)):
        number = await probe()
        if number and _E164.match(number):
            return number, source
        if number:
            # A national number (type of address 129): not E.164, and the trunk prefix cannot
            # be undone safely.  Try the next source rather than report a wrong number.
            log.info("at.number_not_international", source=source)
    if recipe is None:
        return None
    reply = await ussd(recipe.ussd)
    if reply is None:
        return None
    number = number_from_reply(reply, recipe.regex, packed=ussd_packed)
    return (number, "ussd") if number else None
