"""HTTP to the hub: one ``httpx.AsyncClient``, request signing, and outcome classification.

Every request goes through :meth:`HubClient.request`, which never raises for anything the
network or the hub can do; it returns one of four outcomes (PROTOCOL.md section 2), the way
arq's ``Retry`` separates "try again" from "give up":

* :class:`Ok`: 2xx with the JSON expected (the caller validates its shape and may still turn
  a malformed body into :class:`Retry`).
* :class:`AuthFailed`: 401/403, or the platform's error object with code 201/202/203.
* :class:`Retry`: 408/425/429/5xx, timeouts, connection errors, a body that is not JSON;
  carries ``Retry-After`` when the hub sent one.
* :class:`Permanent`: any other 4xx or platform error object: never retried in a loop.

The API key and signing secret live in ``SecretStr`` and are placed only in headers; they never
reach a log line or an exception text.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import platform
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from agent import __version__
from agent.metrics import Metrics

AUTH_CODES = frozenset({201, 202, 203})
TRANSIENT_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Ok:
    data: Any


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    reason: str
    status: int


@dataclass(frozen=True, slots=True)
class AuthFailed:
    reason: str


Outcome = Ok | Retry | Permanent | AuthFailed


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date, RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    if status in (401, 403):
        return AuthFailed(f"HTTP {status}")
    if status in TRANSIENT_STATUS or status >= 500:
        return Retry(f"HTTP {status}", retry_after(response.headers.get("retry-after")))
    if 400 <= status < 500:
        return Permanent(f"HTTP {status}: {_snippet(response)}", status)
    if not 200 <= status < 300:
        return Retry(f"unexpected HTTP {status}")
    if not response.content:
        return Ok(None)
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return Retry(f"HTTP {status} with a body that is not JSON: {_snippet(response)}")
    if isinstance(data, dict) and data.get("name") == "error":
        code = data.get("code")
        message = str(data.get("message", ""))[:200]
        if code in AUTH_CODES:
            return AuthFailed(f"platform error {code}: {message}")
        return Permanent(f"platform error {code}: {message}", status)
    return Ok(data)


def _snippet(response: httpx.Response) -> str:
    text = response.content[:120].decode("utf-8", "replace")
    return " ".join(text.split()) or "(empty body)"


class HubClient:
    """The agent's only HTTP client."""

    def __init__(
        self,
        url: str,
        *,
        api_key: SecretStr,
        agent_id: str,
        signing_secret: SecretStr | None = None,
        timeout_s: float = 10.0,
        ca_file: Path | None = None,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base = url.rstrip("/")
        self._timeout_s = timeout_s
        self._key = api_key
        self._secret = signing_secret
        self._metrics = metrics
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            headers={
                "X-Agent-Id": agent_id,
                "User-Agent": f"vsim-agent/{__version__} (Python {platform.python_version()})",
            },
            verify=verify,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}
        if body:
            headers["Content-Type"] = "application/json"
        if self._secret is not None:
            ts = str(int(time.time()))
            mac = hmac.new(
                self._secret.get_secret_value().encode(),
                ts.encode() + b"." + body,
                hashlib.sha256,
            ).hexdigest()
            headers["X-Timestamp"] = ts
            headers["X-Signature"] = f"v1={mac}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        body: bytes = b"",
        params: dict[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - an HTTP read timeout, not a deadline
    ) -> Outcome:
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = httpx.Timeout(timeout, connect=5.0)
        # httpx's timeouts apply per read: a peer that trickles bytes could hold a request for
        # ever.  An overall deadline keeps every loop moving (and the watchdog fed).
        deadline = (timeout if timeout is not None else self._timeout_s) + self._timeout_s
        try:
            async with asyncio.timeout(deadline):
                response = await self._client.request(
                    method,
                    self.base + path,
                    content=body or None,
                    params=params,
                    headers=self._headers(body),
                    **extra,
                )
        except TimeoutError:
            outcome: Outcome = Retry(f"no complete answer within {deadline:.0f} s")
        except httpx.TimeoutException as exc:
            outcome = Retry(f"timeout ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            outcome = Retry(f"connection error: {type(exc).__name__}: {_clean(exc)}")
        else:
            outcome = classify(response)
        if self._metrics is not None:
            self._metrics.hub_duration.labels(endpoint).observe(time.perf_counter() - started)
            cls = {Retry: "transient", Permanent: "permanent", AuthFailed: "auth"}.get(
                type(outcome)
            )
            if cls is not None:
                self._metrics.hub_errors.labels(endpoint, cls).inc()
        return outcome


def _clean(exc: Exception) -> str:
    # httpx messages carry the URL at most, never headers: safe, but keep them short.
    return str(exc)[:200] or "(no detail)"
