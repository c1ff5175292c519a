"""The customer API subset of the reference hub (PROTOCOL.md §6): ``/api/<method>/<key>``.

Owns the wire format of the platform methods end-to-end tests speak: parameters come from the
query string (GET or POST), answers are JSON, errors are the platform's error object with HTTP
200 (codes in :mod:`agent.hub.wire`).  The rental rules live in :mod:`agent.hub.rentals`.

Decisions where the platform documentation available to the project is silent:

* The key is checked before the method: a wrong key answers 202 even for an unknown method.
* ``getnumber?id=<service>&code=<ISO2>``: any non-empty service name is accepted (the hub has
  no service list); ``code`` is case-insensitive.  ``send`` is always 0.
* SMS objects are ``{"number", "from", "text", "small", "time"}``: ``number`` is the receiving
  number, ``time`` the hub's arrival time in whole Unix seconds, ``small`` the first run of 4 to
  8 ASCII digits in the text not touching other digits (``null`` when there is none).
* ``getstatus``: the newest SMS of the activation, or error 106 while there is none.
  ``getlatestcode``: the newest SMS of the activation that has a code, as ``{"code", "number",
  "from", "text", "time"}``, or 106.  ``all-sms``: every SMS of the activation, oldest first
  (``[]`` when none).  All three answer 107 once the activation is released.
* ``setstatus``: status 1 releases (idempotent), status 2 with ``forward=<number>`` issues a
  ``forward`` command; both answer ``1``.  Any other status answers 104.
* ``getallfullnumbers``: the customer's active (not released) activations, oldest first,
  ``time`` = start in Unix seconds.
* ``send-enable-sim`` / ``send-disable-sim``: ``id`` is an active activation id, else a phone
  number of a SIM in the current inventory.  ``2`` when a command of the same kind for that SIM
  has no result yet; ``0`` when the id matches nothing.
* ``getallsmsofnumber?phone=``: every SMS received on the number, oldest first;
  ``getlastsmsofnumber?phone=&count=``: the newest ``count`` (default 1, at most 1000), newest
  first.  Both answer ``[]`` for a number with no SMS.  Numbers match on their digits, so
  ``+7900…``, ``7900…`` and an unencoded ``+`` (a space after decoding) all work.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.hub.rentals import Activation
from agent.hub.runtime import Runtime
from agent.hub.state import HubState, number_key
from agent.hub.wire import (
    ERR_BAD_KEY,
    ERR_BAD_PARAM,
    ERR_CLOSED,
    ERR_NO_ACTIVATION,
    ERR_NO_COUNTRY,
    ERR_NO_KEY,
    ERR_NO_NUMBERS,
    ERR_NO_SERVICE,
    ERR_NO_SMS,
    ERR_UNKNOWN_METHOD,
    error_response,
    json_response,
)

_CODE = re.compile(r"(?<![0-9])[0-9]{4,8}(?![0-9])")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_MAX_COUNT = 1000

Params = Mapping[str, str]
Handler = Callable[[HubState, Params], Response]


def extract_code(text: str) -> str | None:
    """The first run of 4 to 8 digits in ``text`` (the ``small`` field), or ``None``."""
    match = _CODE.search(text)
    return match.group() if match else None


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


def _sms(record: dict[str, Any]) -> dict[str, Any]:
    body = record["body"]
    number = body.get("number") or (f"+{record['number']}" if record["number"] else None)
    return {
        "number": number,
        "from": body["from"],
        "text": body["text"],
        "small": extract_code(body["text"]),
        "time": int(record["received"]),
    }


def _activation(state: HubState, params: Params, *, open_only: bool = True) -> Activation:
    raw = params.get("id", "").strip()
    if not raw.isdigit():
        raise _Fail(ERR_BAD_PARAM, "Wrong parameter: id")
    activation = state.rentals.get(int(raw))
    if activation is None:
        raise _Fail(ERR_NO_ACTIVATION, "Activation not found")
    if open_only and activation.released is not None:
        raise _Fail(ERR_CLOSED, "Activation is closed")
    return activation


def _activation_sms(state: HubState, activation: Activation) -> list[dict[str, Any]]:
    return state.messages_on_sim(activation.sim_id, activation.start_seq)


def getnumber(state: HubState, params: Params) -> Response:
    service = params.get("id", "").strip()
    if not service:
        raise _Fail(ERR_NO_SERVICE, "Service is not specified")
    country = params.get("code", "").strip()
    if not _COUNTRY.fullmatch(country):
        raise _Fail(ERR_NO_COUNTRY, "Country is not specified or wrong")
    activation = state.rentals.start(service, country.upper())
    if activation is None:
        raise _Fail(ERR_NO_NUMBERS, "No free numbers")
    return json_response({"id": activation.id, "number": activation.number, "send": 0})


def getstatus(state: HubState, params: Params) -> Response:
    records = _activation_sms(state, _activation(state, params))
    if not records:
        raise _Fail(ERR_NO_SMS, "No SMS yet")
    return json_response(_sms(records[-1]))


def all_sms(state: HubState, params: Params) -> Response:
    records = _activation_sms(state, _activation(state, params))
    return json_response([_sms(r) for r in records])


def getlatestcode(state: HubState, params: Params) -> Response:
    records = _activation_sms(state, _activation(state, params))
    for record in reversed(records):
        sms = _sms(record)
        if sms["small"] is not None:
            code = sms.pop("small")
            return json_response({"code": code, **sms})
    raise _Fail(ERR_NO_SMS, "No SMS yet")


def setstatus(state: HubState, params: Params) -> Response:
    activation = _activation(state, params, open_only=False)
    status = params.get("status", "").strip()
    if status == "1":
        state.rentals.release(activation)
        return json_response(1)
    if status == "2":
        if activation.released is not None:
            raise _Fail(ERR_CLOSED, "Activation is closed")
        digits = number_key(params.get("forward", "").strip())
        if digits is None or not 4 <= len(digits) <= 15 or digits[0] == "0":
            raise _Fail(ERR_BAD_PARAM, "Wrong parameter: forward")
        state.rentals.forward(activation, "+" + digits)
        return json_response(1)
    raise _Fail(ERR_BAD_PARAM, "Wrong parameter: status")


def getallfullnumbers(state: HubState, params: Params) -> Response:
    out = []
    for activation in state.rentals.active():
        sim = state.sims.get(activation.sim_id)
        works = sim is not None and sim["state"] == "online"
        out.append(
            {
                "id": activation.id,
                "time": int(activation.started),
                "number": activation.number,
                "is_work": 1 if works else 0,
            }
        )
    return json_response(out)


def _sim_for(state: HubState, params: Params) -> str | None:
    raw = params.get("id", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        activation = state.rentals.get(int(raw))
        if activation is not None and activation.released is None:
            return activation.sim_id
    sim = state.sim_by_number(raw)
    return None if sim is None else str(sim["sim_id"])


def _switch(kind: str) -> Handler:
    def handler(state: HubState, params: Params) -> Response:
        sim_id = _sim_for(state, params)
        if sim_id is None:
            return json_response(0)
        if state.open_commands(sim_id, kind):
            return json_response(2)
        state.enqueue_command(kind, sim_id)
        return json_response(1)

    return handler


def _phone(params: Params) -> str:
    phone = params.get("phone", "")
    if number_key(phone) is None:
        raise _Fail(ERR_BAD_PARAM, "Wrong parameter: phone")
    return phone


def getallsmsofnumber(state: HubState, params: Params) -> Response:
    return json_response([_sms(r) for r in state.messages_on_number(_phone(params))])


def getlastsmsofnumber(state: HubState, params: Params) -> Response:
    phone = _phone(params)
    raw = params.get("count", "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_COUNT:
        raise _Fail(ERR_BAD_PARAM, "Wrong parameter: count")
    records = state.messages_on_number(phone)[-int(raw) :]
    return json_response([_sms(r) for r in reversed(records)])


HANDLERS: dict[str, Handler] = {
    "getnumber": getnumber,
    "getstatus": getstatus,
    "all-sms": all_sms,
    "getlatestcode": getlatestcode,
    "setstatus": setstatus,
    "getallfullnumbers": getallfullnumbers,
    "send-enable-sim": _switch("enable"),
    "send-disable-sim": _switch("disable"),
    "getallsmsofnumber": getallsmsofnumber,
    "getlastsmsofnumber": getlastsmsofnumber,
}


async def customer(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    key = request.path_params.get("key", "")
    if not key:
        return error_response(ERR_NO_KEY, "Api key is missing")
    if not hmac.compare_digest(key.encode(), runtime.config.customer_key.encode()):
        return error_response(ERR_BAD_KEY, "Api key is not valid")
    handler = HANDLERS.get(request.path_params["method"].lower())
    if handler is None:
        return error_response(ERR_UNKNOWN_METHOD, "Unknown method")
    try:
        return handler(runtime.state, request.query_params)
    except _Fail as fail:
        return error_response(fail.code, fail.message)


routes = [
    Route("/api/{method}/{key}", customer, methods=["GET", "POST"]),
    Route("/api/{method}", customer, methods=["GET", "POST"]),
    Route("/api/{method}/", customer, methods=["GET", "POST"]),
]
