"""The running box: the gateway listener, the control listener, the clock tick and the pusher.

Owns :class:`EjoinEmulator`, which serves a :class:`~.model.Box` under uvicorn inside the
caller's event loop (no signal handlers, so tests run it in-process and ``__main__`` runs it
standalone):

* the gateway API (:mod:`.app`) on ``host:port``.  A reboot really stops it: the listening
  socket is closed for ``down_s`` (connection refused, as a box that is booting), then rebound on
  the same port, with a new ``ssrc`` and a renumbered store;
* the control API (:func:`control_app`) on its own port, so it stays reachable while the box
  "reboots" and ignores the injected faults;
* a 20 ms tick that applies registrations, held-SMS delivery and eSIM progress, and POSTs new
  rows as ``recv-sms`` to the push URL (twice with the ``push_dup`` fault).  A push that fails
  is dropped, as the research reports of real boxes (section 11: no known retry).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drivers.serve import EmbeddedServer, embedded_config
from tests.gateways.ejoin.app import create_app, recv_sms_push
from tests.gateways.ejoin.model import Box, Faults

_TICK_S = 0.02


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait, cancelling again while a task survives (an httpx request in the
    pusher can swallow one cancellation inside anyio's connect scope)."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(50):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    return sock


class _Listener:
    """One app served on one socket until stopped."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.sock = _bind(host, port)
        self.port: int = self.sock.getsockname()[1]
        cfg = embedded_config(app, server_header=True, timeout_graceful_shutdown=1)
        self.server = EmbeddedServer(cfg)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))

    async def started(self) -> None:
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        # A box losing power does not drain its connections: no graceful wait.
        self.server.should_exit = self.server.force_exit = True
        self.server.exit_now.set()
        # wait() rather than await: the serve task's own end (even a cancellation inside
        # uvicorn's shutdown) must not propagate into whoever stops the box.
        await asyncio.wait([self.task])
        self.sock.close()


class EjoinEmulator:
    """A box on loopback.  ``async with EjoinEmulator(Box(...)) as emu: emu.url ...``"""

    def __init__(
        self,
        box: Box,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int | None = None,
        push_url: str | None = None,
    ) -> None:
        self.box = box
        self.host = host
        self._port = port
        self._control_port = control_port
        self.push_url = push_url
        self.pushes_sent = 0
        self._gateway: _Listener | None = None
        self._control: _Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def control_url(self) -> str:
        assert self._control is not None
        return f"http://{self.host}:{self._control.port}"

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=2.0)
        self._gateway = _Listener(create_app(self.box), self.host, self._port)
        self._port = self._gateway.port
        await self._gateway.started()
        if self._control_port is not None:
            self._control = _Listener(control_app(self), self.host, self._control_port)
            await self._control.started()
        self._spawn(self._tick_loop())

    async def stop(self) -> None:
        await cancel_all(list(self._tasks))
        for listener in (self._gateway, self._control):
            if listener is not None:
                await listener.stop()
        self._gateway = self._control = None
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> EjoinEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reboot(self, down_s: float = 0.5) -> None:
        """Power-cycle the box: refuse connections for ``down_s``, then come back renumbered
        with a new ssrc.  Returns once it answers again."""
        if self._gateway is not None:
            await self._gateway.stop()
            self._gateway = None
        self.box.reboot(down_s)
        await asyncio.sleep(down_s)
        self._gateway = _Listener(create_app(self.box), self.host, self._port)
        await self._gateway.started()

    def reboot_soon(self, down_s: float) -> None:
        self._spawn(self.reboot(down_s))

    async def _tick_loop(self) -> None:
        while True:
            self.box.tick()
            if self.box.push_queue and self._gateway is not None:
                rows, self.box.push_queue = self.box.push_queue, []
                if self.push_url:
                    await self._push(rows)
            await asyncio.sleep(_TICK_S)

    async def _push(self, rows: list[Any]) -> None:
        assert self._client is not None
        body = recv_sms_push(self.box, rows)
        for _ in range(2 if self.box.faults.push_dup else 1):
            try:
                await self._client.post(self.push_url or "", json=body)
                self.pushes_sent += 1
            except httpx.HTTPError:
                pass  # the box does not retry a push (section 11); the poll catches up


def control_app(emu: EjoinEmulator) -> Starlette:
    """The test-control API; see the package docstring for the endpoints."""
    box = emu.box

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        data = (await request.json()) if raw else {}
        return data if isinstance(data, dict) else {}

    async def state(_: Request) -> Response:
        box.tick()
        ports = []
        for p in box.port_table.values():
            ports.append(
                {
                    "port": p.number,
                    "active": p.active,
                    "eid": p.eid,
                    "slots": [
                        {
                            "slot": n,
                            "iccid": s.sim.iccid if s.sim else None,
                            "number": s.sim.number if s.sim else None,
                            "locked": s.locked,
                            "receiving": box.receiving(p.number, n),
                            "forward_to": s.sim.forward_to if s.sim else None,
                        }
                        for n, s in p.slots.items()
                    ],
                }
            )
        return JSONResponse(
            {
                "url": emu.url,
                "mac": box.mac,
                "ssrc": box.ssrc,
                "model": box.model,
                "firmware": box.firmware,
                "rows": len(box.rows),
                "held": {k: len(v) for k, v in box.held.items() if v},
                "pushes_sent": emu.pushes_sent,
                "faults": box.faults.as_dict(),
                "ports": ports,
            }
        )

    async def sms(request: Request) -> Response:
        b = await body(request)
        try:
            result, iccid = box.send_sms(
                str(b["to"]),
                str(b.get("sender", "+79001234567")),
                str(b["text"]),
                at=int(b["at"]) if b.get("at") is not None else None,
                split=bool(b.get("split", True)),
            )
        except KeyError as exc:
            return JSONResponse({"error": f"unknown SIM or missing field: {exc}"}, 404)
        return JSONResponse({"result": result, "iccid": iccid})

    async def report(request: Request) -> Response:
        b = await body(request)
        box.store_report(int(b["port"]), int(b.get("slot", 1)), str(b.get("recipient", "")))
        return JSONResponse({"ok": True})

    async def reboot(request: Request) -> Response:
        emu.reboot_soon(float((await body(request)).get("down_s", 1.0)))
        return JSONResponse({"ok": True})

    async def fault(request: Request) -> Response:
        if request.method == "POST":
            b = await body(request)
            known = set(Faults().as_dict())
            unknown = set(b) - known
            if unknown:
                return JSONResponse({"error": f"unknown faults: {sorted(unknown)}"}, 400)
            for key, value in b.items():
                setattr(box.faults, key, value)
        return JSONResponse(box.faults.as_dict())

    async def sim(request: Request) -> Response:
        b = await body(request)
        port, slot = int(b["port"]), int(b["slot"])
        if b.get("action") == "remove":
            box.remove_sim(port, slot)
            return JSONResponse({"ok": True})
        return JSONResponse({"iccid": box.insert_sim(port, slot, str(b.get("salt", "new")))})

    async def push(request: Request) -> Response:
        emu.push_url = (await body(request)).get("url") or None
        return JSONResponse({"url": emu.push_url})

    async def log(_: Request) -> Response:
        return JSONResponse(box.log)

    return Starlette(
        routes=[
            Route("/state", state, methods=["GET"]),
            Route("/sms", sms, methods=["POST"]),
            Route("/report", report, methods=["POST"]),
            Route("/reboot", reboot, methods=["POST"]),
            Route("/fault", fault, methods=["GET", "POST"]),
            Route("/sim", sim, methods=["POST"]),
            Route("/push", push, methods=["POST"]),
            Route("/log", log, methods=["GET"]),
        ]
    )
