"""Shape checks for the bodies agents send (PROTOCOL.md §3 to §5), written by hand.

The hub is on the benchmark's hot path (1,000+ SMS/s in batches of 100), so these checks are
plain ``isinstance`` tests and two precompiled regexes rather than a model per message.  Every
check returns or raises a short reason in words an operator can act on; the reason travels back
to the agent (400 body, or a ``rejected`` entry) and ends up in its dead-letter table.

What is required, where PROTOCOL.md shows an example rather than a schema:

* a SIM (§3): ``sim_id`` (non-empty string), ``state`` (one of the five states), ``number``
  (E.164 string or null) and ``country`` (two capital letters or null) must be present; every
  other field of the example is optional but must have the example's type when present;
* a message (§4): ``id`` (32 lowercase hex), ``sim_id``, ``from``, ``text``, ``received_at``,
  ``parts`` (integer >= 1) and ``complete`` (boolean) must be present; ``number`` and
  ``sent_at`` may be absent or null;
* a command result (§5): ``ok`` (boolean) and ``finished_at`` must be present; ``state`` and
  ``error`` may be absent or null.

Timestamps must be RFC 3339 with an explicit offset (``Z`` or ``+hh:mm``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final, TypeGuard

SIM_STATES: Final = frozenset({"online", "offline", "standby", "disabled", "error"})
SIM_KINDS: Final = frozenset({"sim", "esim"})
NUMBER_SOURCES: Final = frozenset({"config", "cnum", "phonebook", "ussd", "gateway"})

_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
_E164 = re.compile(r"\+[1-9]\d{3,14}")
_COUNTRY = re.compile(r"[A-Z]{2}")

# Optional SIM fields and the types their non-null values must have.
_SIM_OPTIONAL_STR: Final = (
    "imsi",
    "mcc_mnc",
    "operator",
    "device",
    "port",
    "forward_to",
    "eid",
    "slot",
)


class BodyError(ValueError):
    """The request body does not have the shape PROTOCOL.md requires; ``str()`` is the reason."""


def is_message_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _MESSAGE_ID.fullmatch(value) is not None


def is_rfc3339(value: object) -> bool:
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:  # 2026-13-45 and friends
        return False
    return True


def is_e164(value: object) -> bool:
    return isinstance(value, str) and _E164.fullmatch(value) is not None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sim(sim: object) -> str | None:
    """The reason ``sim`` is not a valid §3 SIM entry, or ``None``."""
    if not isinstance(sim, dict):
        return "a SIM entry is not an object"
    sim_id = sim.get("sim_id")
    if not isinstance(sim_id, str) or not sim_id or len(sim_id) > 64:
        return "sim_id must be a non-empty string"
    where = f"sim {sim_id}: "
    if sim.get("state") not in SIM_STATES:
        return where + "state must be one of online, offline, standby, disabled, error"
    if "number" not in sim:
        return where + "number is required (null while unknown)"
    number = sim["number"]
    if number is not None and not is_e164(number):
        return where + "number must be E.164 with + or null"
    if "country" not in sim:
        return where + "country is required (null while unknown)"
    country = sim["country"]
    if country is not None and (not isinstance(country, str) or not _COUNTRY.fullmatch(country)):
        return where + "country must be ISO 3166 alpha-2 in capitals or null"
    source = sim.get("number_source")
    if source is not None and source not in NUMBER_SOURCES:
        return where + "number_source must be config, cnum, phonebook, ussd, gateway or null"
    for name in _SIM_OPTIONAL_STR:
        value = sim.get(name)
        if value is not None and not isinstance(value, str):
            return where + f"{name} must be a string or null"
    signal = sim.get("signal_dbm")
    if signal is not None and not _is_int(signal):
        return where + "signal_dbm must be an integer or null"
    last = sim.get("last_sms_at")
    if last is not None and not is_rfc3339(last):
        return where + "last_sms_at must be an RFC 3339 timestamp with offset or null"
    kind = sim.get("kind")
    if kind is not None and kind not in SIM_KINDS:
        return where + "kind must be sim, esim or null"
    selected = sim.get("selected")
    if selected is not None and not isinstance(selected, bool):
        return where + "selected must be a boolean or null"
    return _check_balance(where, sim.get("balance"))


def _check_balance(where: str, balance: object) -> str | None:
    if balance is None:
        return None
    if not isinstance(balance, dict):
        return where + "balance must be an object or null"
    amount = balance.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return where + "balance.amount must be a number"
    currency = balance.get("currency")
    if currency is not None and not isinstance(currency, str):
        return where + "balance.currency must be a string or null"
    if not is_rfc3339(balance.get("checked_at")):
        return where + "balance.checked_at must be an RFC 3339 timestamp with offset"
    return None


def parse_snapshot(body: object, agent_id: str) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """``(seq, agent, sims)`` of a PUT /sims body, or :class:`BodyError`."""
    if not isinstance(body, dict):
        raise BodyError("body must be a JSON object")
    agent = body.get("agent")
    if not isinstance(agent, dict) or not isinstance(agent.get("id"), str):
        raise BodyError("agent must be an object with a string id")
    if agent["id"] != agent_id:
        raise BodyError("agent.id does not match X-Agent-Id")
    seq = body.get("seq")
    if not _is_int(seq) or seq < 0:
        raise BodyError("seq must be a non-negative integer")
    sims = body.get("sims")
    if not isinstance(sims, list):
        raise BodyError("sims must be a list")
    seen: set[str] = set()
    for sim in sims:
        reason = check_sim(sim)
        if reason is not None:
            raise BodyError(reason)
        if sim["sim_id"] in seen:
            raise BodyError(f"sim {sim['sim_id']} is listed twice")
        seen.add(sim["sim_id"])
    return seq, agent, sims


def check_message(msg: dict[str, Any]) -> str | None:
    """The reason a §4 message (already known to be a dict with a valid id) is malformed."""
    sim_id = msg.get("sim_id")
    if not isinstance(sim_id, str) or not sim_id:
        return "sim_id must be a non-empty string"
    number = msg.get("number")
    if number is not None and not isinstance(number, str):
        return "number must be a string or null"
    if not isinstance(msg.get("from"), str):
        return "from must be a string"
    if not isinstance(msg.get("text"), str):
        return "text must be a string"
    sent_at = msg.get("sent_at")
    if sent_at is not None and not is_rfc3339(sent_at):
        return "sent_at must be an RFC 3339 timestamp with offset or null"
    if not is_rfc3339(msg.get("received_at")):
        return "received_at must be an RFC 3339 timestamp with offset"
    parts = msg.get("parts")
    if not _is_int(parts) or parts < 1:
        return "parts must be an integer >= 1"
    if not isinstance(msg.get("complete"), bool):
        return "complete must be a boolean"
    return None


def parse_batch(body: object) -> list[object]:
    """The ``messages`` list of a POST /messages body, or :class:`BodyError`."""
    if not isinstance(body, dict):
        raise BodyError("body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BodyError("messages must be a list")
    return messages


def parse_result(body: object) -> dict[str, Any]:
    """A §5 command result, or :class:`BodyError`."""
    if not isinstance(body, dict):
        raise BodyError("body must be a JSON object")
    if not isinstance(body.get("ok"), bool):
        raise BodyError("ok must be a boolean")
    state = body.get("state")
    if state is not None and not isinstance(state, str):
        raise BodyError("state must be a string or null")
    for name in ("error", "reply", "sim_id"):  # reply: ussd; sim_id: esim_download (v1.1)
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise BodyError(f"{name} must be a string or null")
    if not is_rfc3339(body.get("finished_at")):
        raise BodyError("finished_at must be an RFC 3339 timestamp with offset")
    return body
