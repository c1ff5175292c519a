"""Outcome classification (PROTOCOL.md section 2), request signing against the real hub, and
hostile answers (deep, endless, compressed, gzip bombs) from a real uvicorn server."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.backoff import Backoff
from agent.hub import HubConfig, HubState, run_hub
from agent.hubbody import json_too_deep
from agent.hubclient import AuthFailed, HubClient, Ok, Permanent, Retry, classify, retry_after
from tests.e2e.hostile_hub import HostileFront, gzip_bomb, serve


def resp(status: int, body: bytes = b"", **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers=headers)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (resp(200, b'{"ok": true}'), Ok),
        (resp(401), AuthFailed),
        (resp(403), AuthFailed),
        (
            resp(200, b'{"name":"error","message":"Api key is not valid","code":202,"status":200}'),
            AuthFailed,
        ),
        (resp(200, b'{"name":"error","message":"blocked","code":203,"status":200}'), AuthFailed),
        (resp(200, b'{"name":"error","message":"nope","code":104,"status":200}'), Permanent),
        (resp(408), Retry),
        (resp(425), Retry),
        (resp(429), Retry),
        (resp(500), Retry),
        (resp(503), Retry),
        (resp(200, b"<html>maintenance</html>"), Retry),
        (resp(200, b"\xff\xfe"), Retry),
        (resp(404), Permanent),
        (resp(422, b"bad"), Permanent),
    ],
)
def test_classify(response: httpx.Response, kind: type) -> None:
    assert isinstance(classify(response), kind)


def test_retry_after_seconds_and_date() -> None:
    assert isinstance(o := classify(resp(503, **{"Retry-After": "7"})), Retry) and o.after == 7
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after("soon") is None
    # What a hostile hub may put there: never an exception out of classification.
    assert retry_after("\u00b2") is None  # isdigit() says yes, float() says no
    assert retry_after("Mon, 01 Jan 99999999999 00:00:00 GMT") is None  # OverflowError
    superscript = httpx.Response(503, headers=[(b"retry-after", b"\xb2")])  # latin-1 "²"
    assert isinstance(o := classify(superscript), Retry) and o.after is None


def test_backoff_is_capped_jittered_and_never_zero() -> None:
    import random

    b = Backoff(1.0, 8.0, rng=random.Random(1))
    delays = [b.next() for _ in range(40)]
    assert all(0.05 <= d <= 8.0 for d in delays)
    assert max(delays[10:]) > 2  # it grows
    assert b.next(retry_after=30) == 8.0  # Retry-After honoured, but capped
    b.reset()
    assert b.next() <= 1.0


async def test_transport_errors_are_transient_and_never_leak_the_key() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = HubClient(
        "http://127.0.0.1:9/agent/v1",
        api_key=SecretStr("sekret-key"),
        agent_id="a",
        transport=httpx.MockTransport(boom),
    )
    try:
        outcome = await client.request("GET", "/commands", endpoint="commands")
    finally:
        await client.aclose()
    assert isinstance(outcome, Retry)
    assert "sekret-key" not in repr(outcome)


async def test_an_unforeseen_failure_is_transient_and_scrubbed() -> None:
    """The last resort of ``HubClient.request``: an exception nobody foresaw (a mock is the
    only way to raise one on purpose) comes back as Retry, with the key scrubbed."""

    def odd(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"odd failure near {request.headers['authorization']}")

    client = HubClient(
        "http://127.0.0.1:9/agent/v1",
        api_key=SecretStr("sekret-key-42"),
        agent_id="a",
        transport=httpx.MockTransport(odd),
    )
    try:
        outcome = await client.request("GET", "/commands", endpoint="commands")
    finally:
        await client.aclose()
    assert isinstance(outcome, Retry), outcome
    assert outcome.reason.startswith("unexpected RuntimeError: odd failure near"), outcome
    assert "sekret" not in outcome.reason


async def test_signed_requests_accepted_by_the_hub_and_bad_secret_refused() -> None:
    state = HubState()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_hub(
            HubConfig(agent_keys={"k"}, signing_secret="s3cret"),
            "127.0.0.1",
            0,
            state=state,
            ready=ready,
            shutdown=stop,
        )
    )
    await ready.wait()
    body = json.dumps({"agent": {"id": "a"}, "seq": 1, "sims": []}).encode()
    try:
        good = HubClient(
            f"{state.base_url}/agent/v1",
            api_key=SecretStr("k"),
            agent_id="a",
            signing_secret=SecretStr("s3cret"),
        )
        bad = HubClient(
            f"{state.base_url}/agent/v1",
            api_key=SecretStr("k"),
            agent_id="a",
            signing_secret=SecretStr("wrong"),
        )
        try:
            assert isinstance(await good.request("PUT", "/sims", body=body, endpoint="sims"), Ok)
            assert isinstance(
                await bad.request("PUT", "/sims", body=body, endpoint="sims"), AuthFailed
            )
            headers = good._headers(body)
            ts = headers["X-Timestamp"]
            expected = hmac.new(b"s3cret", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            assert headers["X-Signature"] == f"v1={expected}"
        finally:
            await good.aclose()
            await bad.aclose()
    finally:
        stop.set()
        await task


# -- hostile answers (issue #12): deep, oversized and compressed bodies ------------------------


@pytest.mark.parametrize(
    ("body", "kind", "reason"),
    [
        (b"[" * 100_000, Retry, "nested deeper than 32 levels"),
        (b"[" * 100_000 + b"]" * 100_000, Retry, "nested deeper than 32 levels"),
        (b'{"a":' * 33 + b"1" + b"}" * 33, Retry, "nested deeper than 32 levels"),
        (b"[" * 32 + b"]" * 32, Ok, ""),
        # Brackets inside strings (escaped quotes included) are text, not nesting.
        (json.dumps({"commands": [], "note": '["\\' + "[" * 5000}).encode(), Ok, ""),
        (b'{"accepted": [' + b"9" * 5000 + b"]}", Retry, "not JSON"),  # int digit limit
        # A platform error object whose code is not even hashable is still just refused.
        (b'{"name": "error", "code": [202], "message": {"x": 1}}', Permanent, "platform error"),
    ],
)
def test_classify_hostile_bodies(body: bytes, kind: type, reason: str) -> None:
    outcome = classify(resp(200, body))
    assert isinstance(outcome, kind), outcome
    if reason:
        assert reason in str(outcome), outcome
        assert len(str(outcome)) < 400, "the reason must stay short"


def test_json_depth_scan_stops_early_on_a_deep_body() -> None:
    assert json_too_deep(b"[" * 16_000_000)  # would take seconds if it scanned to the end
    assert not json_too_deep(b"[" * 20 + b'"' + b"[" * 100 + b'"' + b"]" * 20)
    assert not json_too_deep(b'{"a": "unterminated ' + b"[" * 10)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _inner_app() -> Starlette:
    """What the hostile layer wraps in these tests: a few well-formed compressed answers."""
    ok = json.dumps({"commands": [{"id": "c-1", "type": "enable"}]}).encode()

    def answer(body: bytes, encoding: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return Response(
                body, media_type="application/json", headers={"content-encoding": encoding}
            )

        return endpoint

    async def echo(request: Request) -> Response:
        # A proxy's error page that quotes the request's headers back.
        return Response(f"refused; you sent {request.headers['authorization']}", 400)

    return Starlette(
        routes=[
            Route("/agent/v1/echo", echo),
            Route("/agent/v1/gz", answer(_gzip(ok), "gzip")),
            # Two gzip members in one body (RFC 1952 2.2): the second half of the JSON.
            Route("/agent/v1/gz2", answer(_gzip(ok[:10]) + _gzip(ok[10:]), "gzip")),
            Route("/agent/v1/deflate", answer(zlib.compress(ok), "deflate")),
            Route("/agent/v1/truncated", answer(_gzip(ok)[:-12], "gzip")),
            Route("/agent/v1/brotli", answer(b"\x0b\x02\x80{}\x03", "br")),
        ]
    )


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[HostileFront, str]]:
    front = HostileFront()
    async with serve(front(_inner_app())) as url:
        yield front, url + "/agent/v1"


def _client(url: str, *, key: str = "k", max_body: int = 16 << 20) -> HubClient:
    return HubClient(url, api_key=SecretStr(key), agent_id="a", max_body=max_body)


async def test_compressed_answers_are_decoded_or_refused(
    hostile: tuple[HostileFront, str],
) -> None:
    _front, url = hostile
    client = _client(url)
    try:
        for path in ("/gz", "/gz2", "/deflate"):
            outcome = await client.request("GET", path, endpoint="t")
            assert outcome == Ok({"commands": [{"id": "c-1", "type": "enable"}]}), path
        truncated = await client.request("GET", "/truncated", endpoint="t")
        assert isinstance(truncated, Retry) and "ends early" in truncated.reason, truncated
        brotli = await client.request("GET", "/brotli", endpoint="t")
        assert isinstance(brotli, Retry) and "Content-Encoding" in brotli.reason, brotli
    finally:
        await client.aclose()


@pytest.mark.parametrize("endpoint", ["messages", "commands"])
async def test_deep_body_from_a_real_server_is_transient(
    hostile: tuple[HostileFront, str], endpoint: Literal["messages", "commands"]
) -> None:
    front, url = hostile
    if endpoint == "messages":
        front.set(messages="deep")
    else:
        front.set(commands="deep")
    client = _client(url)
    method, path = ("POST", "/messages") if endpoint == "messages" else ("GET", "/commands")
    try:
        outcome = await client.request(method, path, body=b'{"messages": []}', endpoint="t")
    finally:
        await client.aclose()
    assert isinstance(outcome, Retry), outcome
    assert "nested deeper than 32 levels" in outcome.reason
    assert front.hostile_answers(endpoint) == 1


async def test_endless_body_is_cut_at_the_cap(hostile: tuple[HostileFront, str]) -> None:
    """A chunked body that never ends: the client stops at the cap (1 MiB here) within a
    couple of seconds and calls it transient; the next request on the same client works."""
    front, url = hostile
    front.set(commands="endless")
    client = _client(url, max_body=1 << 20)
    try:
        started = time.monotonic()
        outcome = await client.request("GET", "/commands", endpoint="t")
        took = time.monotonic() - started
        assert isinstance(outcome, Retry), outcome
        assert outcome.reason == "HTTP 200: answer larger than 1 MiB; dropped unread"
        assert took < 5, f"took {took:.1f} s to give up"
        assert isinstance(await client.request("GET", "/gz", endpoint="t"), Ok)
    finally:
        await client.aclose()


async def test_gzip_bomb_never_inflates_past_the_cap(hostile: tuple[HostileFront, str]) -> None:
    """1 MiB of gzip that inflates to 1 GiB: refused as larger than the 16 MiB cap, and the
    Python heap never holds much more than the cap (tracemalloc's peak), where inflating
    whole network chunks would take ~64 MiB at once."""
    front, url = hostile
    front.set(messages="gzip_bomb")
    gzip_bomb()  # built before tracing starts: the server's copy is not the client's memory
    client = _client(url)
    tracemalloc.start()
    try:
        outcome = await client.request("POST", "/messages", body=b"{}", endpoint="t")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await client.aclose()
    assert isinstance(outcome, Retry), outcome
    assert "larger than 16 MiB" in outcome.reason
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB traced while reading a gzip bomb"


async def test_an_illegal_key_header_never_reaches_the_reason(
    hostile: tuple[HostileFront, str],
) -> None:
    """A key with a trailing space makes h11 refuse the header with an error that quotes it
    (``Illegal header value b'Bearer <key> '``): the outcome is transient and its reason
    carries neither the key nor the header value."""
    _front, url = hostile
    key = "sk-leak-" + "7" * 24
    client = _client(url, key=key + " ")
    try:
        outcome = await client.request("GET", "/gz", endpoint="t")
    finally:
        await client.aclose()
    assert isinstance(outcome, Retry), outcome
    assert "LocalProtocolError" in outcome.reason, outcome
    assert key[:12] not in outcome.reason and "Bearer" not in outcome.reason.replace(
        "Bearer ***", ""
    ), outcome


async def test_a_hub_body_echoing_the_key_is_scrubbed(
    hostile: tuple[HostileFront, str],
) -> None:
    _front, url = hostile
    client = _client(url, key="sk-echoed-0123456789")
    try:
        outcome = await client.request("GET", "/echo", endpoint="t")
    finally:
        await client.aclose()
    assert isinstance(outcome, Permanent), outcome
    assert outcome.reason.startswith("HTTP 400: refused; you sent"), outcome
    assert "0123456789" not in outcome.reason, outcome


def test_scrub_removes_keys_bearer_values_and_quoted_bytes() -> None:
    client = HubClient(
        "http://127.0.0.1:9",
        api_key=SecretStr(" key-123456 "),
        agent_id="a",
        signing_secret=SecretStr("whsec-abcdef"),
    )
    text = (
        'Illegal header value b\'Bearer key-123456 \' / b"x\\"y" / bearer\tOTHER-TOKEN '
        "/ secret whsec-abcdef / key-123456"
    )
    out = client.scrub(text)
    for leak in ("key-123456", "OTHER-TOKEN", "whsec-abcdef", 'x\\"y'):
        assert leak not in out, out
    assert out.startswith("Illegal header value")


def test_an_auth_failure_stands_only_until_the_hub_answers_past_the_key() -> None:
    """/status and the auth gauge: an endpoint that got a 401 and then a 503 (or a refused
    result: the hub took the key to answer) is no longer an auth failure."""
    from agent.core import HubHealth
    from agent.metrics import Metrics

    health = HubHealth(Metrics())
    health.auth("POST /messages", "HTTP 401", 300)
    health.auth("GET /commands", "HTTP 401", 300)
    assert health.auth_failed
    health.error("POST /messages", "HTTP 503")
    assert health.auth_failed, "GET /commands still fails auth"
    assert health.errors["POST /messages"] == "POST /messages: HTTP 503"
    health.ok("GET /commands")
    assert not health.auth_failed
    assert health.last_error == "POST /messages: HTTP 503"
