"""HTTP to the hub: one ``httpx.AsyncClient``, request signing, and outcome classification.

Every request goes through :meth:`HubClient.request`, which never raises for anything the
network or the hub can do; it returns one of four outcomes (PROTOCOL.md section 2), the way
arq's ``Retry`` separates "try again" from "give up":

* :class:`Ok`: 2xx with the JSON expected (the caller validates its shape and may still turn
  a malformed body into :class:`Retry`).
* :class:`AuthFailed`: 401/403, or the platform's error object with code 201/202/203.
* :class:`Retry`: 408/425/429/5xx, timeouts, connection errors, a body that is not JSON, is
  larger than ``upstream.max_body_mb`` or nests too deep (:mod:`agent.hubbody`); carries
  ``Retry-After`` when the hub sent one.
* :class:`Permanent`: any other 4xx or platform error object: never retried in a loop.

The API key and signing secret live in ``SecretStr`` and are placed only in headers.  An
exception text can still quote a header (h11's ``Illegal header value b'Bearer <key> '``), and
a hub's error page can echo one, so every outcome's reason is scrubbed
(:meth:`HubClient.scrub`) before it reaches a log, /status or the dead letters.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import platform
import re
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from agent import __version__
from agent.hubbody import ACCEPT_ENCODING, BodyError, parse_json, read_body
from agent.metrics import Metrics

log = structlog.get_logger("agent.hubclient")

AUTH_CODES = frozenset({201, 202, 203})
TRANSIENT_STATUS = frozenset({408, 425, 429})
DEFAULT_MAX_BODY = 16 << 20
# What a header value looks like inside an exception text: h11 and httpx quote them as bytes
# reprs, and an Authorization value starts with its scheme.
_QUOTED = re.compile(r"\bb'(?:[^'\\]|\\.)*'" + r'|\bb"(?:[^"\\]|\\.)*"')
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")


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
    if value.isascii() and value.isdigit():  # str.isdigit alone also takes "²", which float refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_outcome(response: httpx.Response) -> Outcome | None:
    """The outcome decided by the status alone (the body is not read), else None."""
    status = response.status_code
    if status in (401, 403):
        return AuthFailed(f"HTTP {status}")
    if status in TRANSIENT_STATUS or status >= 500:
        return Retry(f"HTTP {status}", retry_after(response.headers.get("retry-after")))
    if not 200 <= status < 500:
        return Retry(f"unexpected HTTP {status}")
    return None


def classify(response: httpx.Response, body: bytes | bytearray | None = None) -> Outcome:
    """The outcome of an answer whose decoded body is ``body`` (default: ``response.content``)."""
    early = status_outcome(response)
    if early is not None:
        return early
    status = response.status_code
    if body is None:
        body = response.content
    if 400 <= status < 500:
        return Permanent(f"HTTP {status}: {_snippet(body)}", status)
    if not body:
        return Ok(None)
    try:
        data = parse_json(body)
    except BodyError as exc:
        return Retry(f"HTTP {status} with a body that is {exc}: {_snippet(body)}")
    if isinstance(data, dict) and data.get("name") == "error":
        code = data.get("code")
        message = str(data.get("message", ""))[:200]
        # ``code`` may be anything a hub sends (a list is not even hashable): compare ints only.
        if isinstance(code, int) and code in AUTH_CODES:
            return AuthFailed(f"platform error {code}: {message}")
        return Permanent(f"platform error {str(code)[:40]}: {message}", status)
    return Ok(data)


def _snippet(body: bytes | bytearray) -> str:
    text = bytes(body[:120]).decode("utf-8", "replace")
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
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.base = url.rstrip("/")
        self._timeout_s = timeout_s
        self._max_body = max_body
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
                # Only what agent.hubbody decodes itself, within the size cap.
                "Accept-Encoding": ACCEPT_ENCODING,
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
                outcome = await self._exchange(method, path, body, params, extra)
        except TimeoutError:
            outcome = Retry(f"no complete answer within {deadline:.0f} s")
        except httpx.TimeoutException as exc:
            outcome = Retry(f"timeout ({type(exc).__name__})")
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, UnicodeError) as exc:
            # Transport failures, and requests httpx cannot even build (a URL or a header it
            # refuses): never a crash of the calling loop, never the text unscrubbed.
            outcome = Retry(f"connection error: {type(exc).__name__}: {self.scrub(str(exc))}")
        except Exception as exc:
            # Last resort, for a failure nobody foresaw in reading what the hub sent.  Raised,
            # it would end the TaskGroup: exit 1, and the same answer again after every restart
            # (issue #12).  Retried with backoff, it costs an error line per attempt.
            detail = self.scrub(str(exc))
            log.error("unexpected error on a hub request", error=type(exc).__name__, detail=detail)
            outcome = Retry(f"unexpected {type(exc).__name__}: {detail}")
        if isinstance(outcome, Retry | Permanent | AuthFailed):
            # A reason may quote the hub's body, and a proxy's error page can echo the
            # request's headers back: scrubbed like an exception text.
            outcome = replace(outcome, reason=self.scrub(outcome.reason))
        if self._metrics is not None:
            self._metrics.hub_duration.labels(endpoint).observe(time.perf_counter() - started)
            cls = {Retry: "transient", Permanent: "permanent", AuthFailed: "auth"}.get(
                type(outcome)
            )
            if cls is not None:
                self._metrics.hub_errors.labels(endpoint, cls).inc()
        return outcome

    async def _exchange(
        self,
        method: str,
        path: str,
        body: bytes,
        params: dict[str, str] | None,
        extra: dict[str, Any],
    ) -> Outcome:
        async with self._client.stream(
            method,
            self.base + path,
            content=body or None,
            params=params,
            headers=self._headers(body),
            **extra,
        ) as response:
            early = status_outcome(response)
            if early is not None:
                return early  # leaving the block closes the stream unread
            try:
                data = await read_body(response, self._max_body)
            except BodyError as exc:
                status = response.status_code
                if 400 <= status < 500:
                    return Permanent(f"HTTP {status}: ({exc})", status)
                return Retry(f"HTTP {status}: {exc}")
        return classify(response, data)

    def scrub(self, text: str) -> str:
        """``text`` (an exception message) without anything that could be a secret: the key
        and signing secret themselves, any ``Bearer`` value, and any quoted bytes (the way
        h11 and httpx quote header values); at most 200 characters."""
        for secret in (self._key, self._secret):
            if secret is not None:
                value = secret.get_secret_value()
                for form in {value, value.strip()}:
                    if form:
                        text = text.replace(form, "***")
        text = _QUOTED.sub("b'***'", text)
        text = _BEARER.sub("Bearer ***", text)
        return text[:200] or "(no detail)"
