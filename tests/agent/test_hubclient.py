"""Outcome classification (PROTOCOL.md section 2) and request signing against the real hub."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import httpx
import pytest
from pydantic import SecretStr

from agent.backoff import Backoff
from agent.hub import HubConfig, HubState, run_hub
from agent.hubclient import AuthFailed, HubClient, Ok, Permanent, Retry, classify, retry_after


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
