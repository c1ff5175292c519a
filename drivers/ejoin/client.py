"""The one HTTP client to an Ejoin box: credentials, timeouts, bounded bodies, failure reasons.

Owns every request the driver makes and turns every way a box can fail into a
:class:`GatewayError` whose message is a reason fit for ``status`` and logs:

* unreachable / refused (a box rebooting refuses connections), timeouts (a slow box);
* wrong credentials: HTTP 401/403, or a 200 whose JSON or text says ``Invalid User`` (the
  task-status code 1 of research/gateways.md section 1.6);
* an HTML page (a login page, a wrong URL, a proxy error) or any body that is not a JSON
  object; a body larger than :data:`MAX_BODY` (a status of 32 ports x 32 slots is ~200 KB).

Credentials travel as query parameters (section 1.2: the box has no other scheme we rely on),
so they are in every URL.  They never reach a log or an error: reasons name the path only, the
password is scrubbed from any exception text, and a filter on httpx's logger (which logs full
URLs at debug level) redacts ``password=`` wherever it appears.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import httpx

from drivers.base import DriverError

MAX_BODY = 4 * 1024 * 1024
_SECRET_RE = re.compile(r"(password=)[^&\s'\"]*", re.IGNORECASE)


#: A reason the box supplies is cut to this many characters for errors and logs.
REASON_MAX = 200


def box_reason(value: Any, password: str = "") -> str:
    """A reason the box supplied (hostile text), fit for a CommandError or a log: a string
    only, ``password=`` values and the password itself scrubbed, at most :data:`REASON_MAX`
    characters."""
    text = value.strip() if isinstance(value, str) else ""
    text = _SECRET_RE.sub(r"\1***", text)
    if password:
        text = text.replace(password, "***")
    return text[:REASON_MAX]


class GatewayError(DriverError):
    """The box did not give a usable answer; ``str()`` is the reason (no credentials)."""

    def __init__(self, reason: str, *, auth: bool = False) -> None:
        super().__init__(reason)
        self.auth = auth


class _RedactPasswords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _SECRET_RE.sub(r"\1***", str(a)) if "password=" in str(a).lower() else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str) and "password=" in record.msg.lower():
            record.msg = _SECRET_RE.sub(r"\1***", record.msg)
        return True


def _install_redaction() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactPasswords) for f in logger.filters):
            logger.addFilter(_RedactPasswords())


class EjoinClient:
    """``get``/``post`` against one box; every call returns a parsed JSON value or raises
    :class:`GatewayError`."""

    def __init__(self, url: str, username: str, password: str, timeout_s: float) -> None:
        _install_redaction()
        self._base = url.rstrip("/")
        self._creds = {"username": username, "password": password}
        self._password = password
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def reason(self, value: Any) -> str:
        """:func:`box_reason` with this client's password."""
        return box_reason(value, self._password)

    def _scrub(self, text: str) -> str:
        text = _SECRET_RE.sub(r"\1***", text)
        return text.replace(self._password, "***") if self._password else text

    async def get(self, path: str, **params: str | int) -> Any:
        return await self._request("GET", path, params, None)

    async def post(self, path: str, body: Any, **params: str | int) -> Any:
        return await self._request("POST", path, params, body)

    async def _request(
        self, method: str, path: str, params: dict[str, str | int], body: Any
    ) -> Any:
        # Each request runs in a task of its own: httpcore's connect uses anyio cancel scopes
        # whose late cancellation retries can hit the task that made the request (observed with
        # anyio 4.16 on Python 3.11 after a refused connect); a short-lived task confines them.
        # Cancelling the caller cancels the request task with it.
        return await asyncio.create_task(self._send(method, path, params, body))

    async def _send(self, method: str, path: str, params: dict[str, str | int], body: Any) -> Any:
        query = {**self._creds, **{k: str(v) for k, v in params.items()}}
        what = f"{method} {path}"
        try:
            req = self._http.build_request(method, f"{self._base}/{path}", params=query, json=body)
            resp = await self._http.send(req, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise GatewayError(f"{what}: answer larger than {MAX_BODY} bytes")
                    chunks.append(chunk)
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            raise GatewayError(f"{what}: no answer in time (box slow or hung)") from None
        except httpx.ConnectError as exc:
            raise GatewayError(f"{what}: unreachable ({self._scrub(str(exc))})") from None
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
            raise GatewayError(f"{what}: {kind} ({self._scrub(str(exc))})") from None
        raw = b"".join(chunks)
        if resp.status_code in (401, 403):
            raise GatewayError(f"{what}: wrong credentials (HTTP {resp.status_code})", auth=True)
        text = raw.decode("utf-8", "replace").strip()
        if "invalid user" in text[:200].lower():
            raise GatewayError(f"{what}: wrong credentials (Invalid User)", auth=True)
        if resp.status_code != 200:
            raise GatewayError(f"{what}: HTTP {resp.status_code}")
        if text.startswith("<"):
            raise GatewayError(f"{what}: answered HTML, not JSON (login page or wrong URL?)")
        try:
            return json.loads(text)
        except ValueError:
            raise GatewayError(f"{what}: answer is not JSON ({len(raw)} bytes)") from None
