"""The box's HTTP API: the ``goip_*.html`` endpoints over a :class:`~.model.Box`.

Owns the wire (research/gateways.md section 1): credentials as ``username``/``password`` query
parameters on every request, JSON bodies, ``code`` 200 (or 0 for ``goip_get_sms`` and the AT
pass-through) on success, and the injected faults that change how the box answers
(:class:`~.model.Faults`): a delay before every answer, an HTML page instead of JSON, and
rejected credentials either as the JSON ``"1 Invalid User"`` status (the task-status code of
section 1.6) or as an HTTP 401.

Endpoints: ``goip_get_status.html`` (dev-status, every slot), ``goip_get_sms.html`` (cursor
``sms_id``/``sms_num``/``sms_del``, ``ssrc``, ``next_sms``), ``goip_send_cmd.html`` (``lock``,
``unlock``, ``switch``, ``reset``, ``save``, ``multiple``), ``goip_send_at.html``,
``goip_get_esims.html``, ``goip_write_esims.html``, ``goip_delete_esims.html`` and
``goip_get_sms_stat.html`` (the cheap health check of section 1.7).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.gateways.ejoin.model import Box

_MAX_BODY = 64 * 1024


async def _gate(request: Request, box: Box) -> Response | None:
    """Faults and credentials, in the order a real box applies them: slow first, then the
    login check (a web server answering HTML is a wrong URL or a login page)."""
    box.tick()
    path = request.url.path.lstrip("/")
    box.hits[path] = box.hits.get(path, 0) + 1
    if box.faults.delay_s > 0:
        await asyncio.sleep(box.faults.delay_s)
    if box.faults.html:
        return HTMLResponse("<html><head><title>Login</title></head><body>Login</body></html>")
    q = request.query_params
    ok = q.get("username") == box.username and q.get("password") == box.password
    if box.faults.auth is not None or not ok:
        if box.faults.auth == "401":
            return PlainTextResponse("401 Unauthorized", status_code=401)
        return JSONResponse({"code": 1, "reason": "1 Invalid User"})
    return None


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise ValueError("body too large")
    return json.loads(body or b"null")


def _row(box: Box, sms_id: int | None, r: Any) -> list[Any]:
    return [r.is_report, box.port_name(r.port, r.slot), r.epoch, r.sender, r.recipient, r.content]


def create_app(box: Box) -> Starlette:
    async def get_status(request: Request) -> Response:
        if (denied := await _gate(request, box)) is not None:
            return denied
        return JSONResponse(box.status())

    async def get_sms(request: Request) -> Response:
        if (denied := await _gate(request, box)) is not None:
            return denied
        q = request.query_params
        try:
            start = int(q.get("sms_id", "1"))
            count = int(q.get("sms_num", "0"))
            delete = q.get("sms_del", "0") == "1"
        except ValueError:
            return JSONResponse({"code": 400, "reason": "bad parameter"})
        rows, nxt = box.read_rows(start, count)
        if delete:
            box.delete_rows([i for i, _ in rows])
        return JSONResponse(
            {
                "code": 0,
                "reason": "OK",
                "ssrc": box.ssrc,
                "sms_num": len(rows),
                "next_sms": nxt,
                "data": [_row(box, i, r) for i, r in rows],
            }
        )

    async def send_cmd(request: Request) -> Response:
        if (denied := await _gate(request, box)) is not None:
            return denied
        try:
            body = await _json_body(request)
            ops = body["ops"] if body.get("op") == "multiple" else [body]
            for op in ops:
                box.command(str(op["op"]), str(op.get("ports", "")))
        except ValueError as exc:
            return JSONResponse({"code": 500, "reason": str(exc)})
        except (KeyError, TypeError, AttributeError):
            return JSONResponse({"code": 400, "reason": "bad request"})
        return JSONResponse({"code": 200, "reason": "OK"})

    async def send_at(request: Request) -> Response:
        if (denied := await _gate(request, box)) is not None:
            return denied
        try:
            port = int(request.query_params.get("port", ""))
        except ValueError:
            return JSONResponse({"code": 2, "reason": "2 Invalid Port"})
        return JSONResponse(box.at_command(port, request.query_params.get("at", "")))

    async def get_esims(request: Request) -> Response:
        if (denied := await _gate(request, box)) is not None:
            return denied
        return JSONResponse(box.esims())

    def esim_op(kind: str) -> Any:
        async def handler(request: Request) -> Response:
            if (denied := await _gate(request, box)) is not None:
                return denied
            try:
                items = await _json_body(request)
                for item in items:
                    if kind == "write":
                        box.esim_start(
                            "write",
                            int(item["port"]),
                            int(item["slot"]),
                            str(item.get("ac", "")),
                            str(item.get("cc", "")),
                        )
                    else:
                        box.esim_start("delete", int(item["port"]), int(item["slot"]))
            except ValueError as exc:
                return JSONResponse({"code": 500, "reason": str(exc)})
            except (KeyError, TypeError):
                return JSONResponse({"code": 400, "reason": "bad request"})
            return JSONResponse({"code": 200, "reason": "OK"})

        return handler

    async def sms_stat(request: Request) -> Response:
        if (denied := await _gate(request, box)) is not None:
            return denied
        received: dict[str, int] = {}
        for r in box.rows:
            key = box.port_name(r.port, r.slot)
            received[key] = received.get(key, 0) + 1
        stats = [{"port": k, "received": v, "sent": 0, "sent_ok": 0} for k, v in received.items()]
        return JSONResponse({"code": 200, "reason": "OK", "stats": stats})

    return Starlette(
        routes=[
            Route("/goip_get_status.html", get_status, methods=["GET"]),
            Route("/goip_get_sms.html", get_sms, methods=["GET"]),
            Route("/goip_send_cmd.html", send_cmd, methods=["POST"]),
            Route("/goip_send_at.html", send_at, methods=["GET"]),
            Route("/goip_get_esims.html", get_esims, methods=["GET"]),
            Route("/goip_write_esims.html", esim_op("write"), methods=["POST"]),
            Route("/goip_delete_esims.html", esim_op("delete"), methods=["POST"]),
            Route("/goip_get_sms_stat.html", sms_stat, methods=["GET"]),
        ]
    )


def recv_sms_push(box: Box, rows: list[Any]) -> dict[str, Any]:
    """The ``recv-sms`` push body for stored rows (section 1.4 (a)): no message id."""
    return {"type": "recv-sms", "sms_num": len(rows), "sms": [_row(box, None, r) for r in rows]}


def decode_content(content: str) -> str:
    return base64.b64decode(content).decode()
