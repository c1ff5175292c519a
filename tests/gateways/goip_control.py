"""HTTP control API of the GoIP emulator (:mod:`tests.gateways.goip`), on starlette.

The routes are documented in the emulator's module docstring.  Bodies are JSON; a bad body or
an unknown line is a 400 with ``{"error": …}``, never a crash of the emulator.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:  # run as ``python -m tests.gateways.goip``, that module is ``__main__``
    from tests.gateways.goip import GoipEmulator

_FAULTS = ("loss", "duplicate", "no_answer", "wrong_password", "no_iccid")


def control_app(emulator: GoipEmulator) -> Starlette:
    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > 65536:
            raise ValueError("body too large")
        data = json.loads(raw or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def error(exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def lines(_request: Request) -> JSONResponse:
        return JSONResponse([line.view() for line in emulator.lines])

    async def sms(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            line = emulator.line(data["line"])
            recvid = line.deliver(str(data.get("from", "+79001112233")), str(data["text"]))
        except (ValueError, KeyError, TypeError) as exc:
            return error(exc)
        return JSONResponse({"recvid": recvid, "held": recvid is None})

    async def enable(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            targets = emulator.select(data.get("line"))
            for line in targets:
                line.set_enabled(bool(data["enabled"]))
        except (ValueError, KeyError, TypeError) as exc:
            return error(exc)
        return JSONResponse([line.view() for line in targets])

    async def reboot(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            targets = emulator.select(data.get("line"))
            silence = float(data.get("silence_s", 5.0))
            for line in targets:
                line.reboot(silence)
        except (ValueError, KeyError, TypeError) as exc:
            return error(exc)
        return JSONResponse([line.view() for line in targets])

    async def faults(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            key = data.pop("line", None)
            unknown = set(data) - set(_FAULTS)
            if unknown:
                raise ValueError(f"unknown faults {sorted(unknown)}; known: {list(_FAULTS)}")
            emulator.set_faults(key, **data)
            targets = emulator.select(key)
        except (ValueError, KeyError, TypeError) as exc:
            return error(exc)
        return JSONResponse([line.view() for line in targets])

    return Starlette(
        routes=[
            Route("/lines", lines, methods=["GET"]),
            Route("/sms", sms, methods=["POST"]),
            Route("/enable", enable, methods=["POST"]),
            Route("/reboot", reboot, methods=["POST"]),
            Route("/faults", faults, methods=["POST"]),
        ]
    )
