"""JSON responses and the platform's error object, shared by every API of the reference hub.

The platform answers errors as ``{"name": "error", "message": ..., "code": ..., "status": 200}``
(PROTOCOL.md §2).  The reference hub uses that object everywhere, with ``status`` equal to the
HTTP status actually sent (200 on the customer API, the error status on the agent API).

Error codes (the platform's own table is not available to the project; these are the hub's):

====  ================================  =========================================
code  message                           where
====  ================================  =========================================
100   Unknown method                    customer API, unknown ``<method>``
101   Service is not specified          ``getnumber`` without ``id``
102   Country is not specified or wrong ``getnumber`` without a 2-letter ``code``
103   No free numbers                   ``getnumber`` when no SIM is eligible
104   Wrong parameter: <name>           a missing or malformed query parameter
105   Activation not found              unknown activation ``id``
106   No SMS yet                        ``getstatus`` / ``getlatestcode`` with nothing to show
107   Activation is closed              the activation was released (``setstatus`` 1)
201   Api key is missing                no key (customer path, or no ``Authorization``)
202   Api key is not valid              wrong key, or a key used by the wrong agent
203   User is blocked                   reserved; the hub never blocks on its own
204   Request signature is not valid    missing, wrong or stale ``X-Signature``
400+  the HTTP reason                   agent API: a malformed body (400), 404, 405
====  ================================  =========================================
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

ERR_UNKNOWN_METHOD = 100
ERR_NO_SERVICE = 101
ERR_NO_COUNTRY = 102
ERR_NO_NUMBERS = 103
ERR_BAD_PARAM = 104
ERR_NO_ACTIVATION = 105
ERR_NO_SMS = 106
ERR_CLOSED = 107
ERR_NO_KEY = 201
ERR_BAD_KEY = 202
ERR_BLOCKED = 203
ERR_BAD_SIGNATURE = 204

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _dumps(data).encode(), status_code=status, headers=headers, media_type="application/json"
    )


def error_body(code: int, message: str, status: int = 200) -> dict[str, Any]:
    return {"name": "error", "message": message, "code": code, "status": status}


def error_response(
    code: int, message: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return json_response(error_body(code, message, status), status, headers)
