"""Hub outages (issue part 3, PROTOCOL.md §2, DESIGN.md invariants 3 and 5): whatever the hub
does (5xx, timeouts, resets, HTML, a dead process, a rejected key) nothing is lost, retries
back off instead of spinning, and delivery resumes by itself."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.e2e.conftest import Agent, HubThread, Traffic, wait_until

ENDPOINTS = ("messages", "sims", "commands", "results")


def assert_all_delivered_once(hub: HubThread, traffic: Traffic) -> None:
    by_text = hub.by_text()
    missing = set(traffic.sent) - set(by_text)
    assert not missing, f"lost: {sorted(missing)[:5]}"
    split = {t: len(r) for t, r in by_text.items() if len(r) != 1}
    assert not split, f"texts delivered under more than one id: {split}"


def max_in_window(times: list[float], width: float) -> int:
    """The most requests seen in any ``width``-second window."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def started_agent(hub: HubThread, make_agent: Any, **sections: Any) -> Agent:
    agent: Agent = make_agent(hub, **sections)
    agent.start()
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory registered")
    return agent


def test_transient_faults_lose_nothing(hub: HubThread, make_agent: Any) -> None:
    """Every kind of transient failure, on every endpoint, in a row: 503, 502 with an HTML page,
    200 with an HTML page, timeouts (the hub holds the request past the agent's 1 s timeout),
    TCP resets and 429 with Retry-After.  All 30 SMS still reach the hub once each, every fault
    is consumed, and the same agent process keeps running."""
    agent = started_agent(hub, make_agent, upstream={"timeout_s": 1})
    pid = agent.pid
    faults: list[dict[str, Any]] = [
        {"status": 503, "count": 3},
        {"mode": "html", "status": 502, "count": 2},
        {"mode": "html", "count": 2},
        {"mode": "timeout", "delay_s": 2.5, "count": 2},
        {"mode": "reset", "count": 3},
        {"mode": "retry_after", "retry_after": 1, "count": 2},
    ]
    for fault in faults:
        hub.state.add_fault(**fault)
    total = sum(f["count"] for f in faults)
    traffic = Traffic(agent.network_path, agent.numbers(), count=30, rate=20, prefix="transient")
    traffic.start().join()
    wait_until(lambda: hub.state.faults.injected == total, 30, "every fault consumed")
    wait_until(
        lambda: set(traffic.sent) <= hub.texts(),
        20,
        "all 30 SMS at the hub",
        detail=lambda: str(agent.status()["hub"]),
    )
    assert_all_delivered_once(hub, traffic)
    assert agent.alive and agent.pid == pid
    wait_until(lambda: agent.net.stored() == 0, 5, "every part deleted from the SIMs")
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 5, "an empty outbox")
    assert agent.status()["outbox"] == {
        "depth": 0,
        "oldest_age_s": None,
        "dead_letters": 0,
        "reassembly_pending_parts": 0,
    }


def test_sustained_503_backs_off_and_resumes(hub: HubThread, make_agent: Any) -> None:
    """While every agent request gets 503 for 6 s: no message is accepted, each endpoint is
    tried at most ~3 times a second on average (and never more than 6 in any second) once the
    backoff has started, and the agent uses little CPU (no spin).  When the hub recovers, every
    queued SMS is delivered without a restart; a 429 with ``Retry-After: 2`` delays the next
    attempt by at least that long."""
    agent = started_agent(hub, make_agent)
    before = len(hub.state.messages)
    hub.state.add_fault(status=503, count=-1)
    t0 = time.time()
    cpu0 = agent.cpu_seconds()
    traffic = Traffic(agent.network_path, agent.numbers(), count=20, rate=10, prefix="outage")
    traffic.start().join()
    time.sleep(max(0.0, t0 + 6 - time.time()))
    t1 = time.time()
    cpu = (agent.cpu_seconds() - cpu0) / (t1 - t0)
    assert len(hub.state.messages) == before, "a message was accepted during the outage"
    assert agent.status()["outbox"]["depth"] == 20
    assert agent.net.stored() == 0, "committed parts must leave the SIMs even with no hub"
    for endpoint in ENDPOINTS:
        times = [t for t in hub.state.request_times(endpoint) if t0 + 2 <= t < t1]
        assert len(times) <= 3 * (t1 - t0 - 2), f"{endpoint}: {len(times)} requests in 4 s"
        assert max_in_window(times, 1.0) <= 6, f"{endpoint}: burst {times}"
    assert hub.requests("messages", t0, t1) >= 2, "the sender stopped trying"
    assert cpu < 0.4, f"agent used {cpu:.0%} CPU during the outage"

    hub.state.clear_faults()
    wait_until(lambda: set(traffic.sent) <= hub.texts(), 10, "delivery resumed by itself")
    assert_all_delivered_once(hub, traffic)

    # Retry-After is whole seconds (RFC 9110 10.2.3); 2 s is also the configured backoff cap,
    # while a plain first retry would come after 0 to 1 s of jitter.
    hub.state.add_fault(mode="retry_after", retry_after=2, count=2, endpoint="messages")
    t2 = time.time()
    agent.net.send(agent.numbers()[0], "after Retry-After 8080")
    wait_until(lambda: "after Retry-After 8080" in hub.texts(), 10, "delivery after 429s")
    times = sorted(t for t in hub.state.request_times("messages") if t >= t2)
    assert len(times) >= 3
    gaps = [b - a for a, b in itertools.pairwise(times)][:2]
    assert all(g >= 1.95 for g in gaps), f"Retry-After not honoured: gaps {gaps}"


def test_hub_process_down_then_back(hub: HubThread, make_agent: Any) -> None:
    """The hub stops listening for 5 s (connection refused): SMS keep being committed and
    deleted from the SIMs, the outbox holds them, /status names the error, the agent's own
    error counters show a bounded retry rate and CPU stays low.  The hub comes back on the same
    port: everything queued is delivered and the inventory is registered again, unprompted."""
    agent = started_agent(hub, make_agent)
    hub.stop()
    t0 = time.time()
    cpu0 = agent.cpu_seconds()
    errors0 = agent.metrics()
    traffic = Traffic(agent.network_path, agent.numbers(), count=20, rate=10, prefix="down")
    traffic.start().join()
    wait_until(lambda: agent.status()["outbox"]["depth"] == 20, 5, "20 SMS queued")
    time.sleep(max(0.0, t0 + 5 - time.time()))
    status = agent.status()
    cpu = (agent.cpu_seconds() - cpu0) / (time.time() - t0)
    errors = failed_requests(agent.metrics()) - failed_requests(errors0)
    assert agent.net.stored() == 0, "committed parts must leave the SIMs with the hub down"
    assert status["outbox"]["depth"] == 20
    assert "connect" in (status["hub"]["last_error"] or "").lower(), status["hub"]
    assert cpu < 0.4, f"agent used {cpu:.0%} CPU with the hub down"
    assert errors <= 4 * 3 * (time.time() - t0), f"{errors} failed requests in 5 s"

    back = time.time()
    hub.start()
    wait_until(lambda: set(traffic.sent) <= hub.texts(), 10, "delivery resumed")
    assert_all_delivered_once(hub, traffic)
    wait_until(lambda: hub.state.agents["t1"]["updated"] > back, 10, "inventory re-sent")
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 5, "empty outbox")
    # Errors are kept per endpoint: the poller's clears once a long-poll is open again, up to
    # one backoff (2 s) plus POLL_HELD_S (2 s) after the hub came back.
    wait_until(
        lambda: agent.status()["hub"]["last_error"] is None,
        10,
        "every endpoint's error cleared",
        detail=lambda: str(agent.status()["hub"]),
    )


def failed_requests(metrics: str) -> float:
    """Sum of ``vsim_hub_errors_total`` over endpoints and classes."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vsim_hub_errors_total{")
    )


@pytest.mark.parametrize("mode", ["auth401", "auth202"])
def test_auth_failure_keeps_everything_queued(hub: HubThread, make_agent: Any, mode: str) -> None:
    """The hub rejects the key (401, or HTTP 200 with the platform's error code 202): nothing is
    sent or dead-lettered, everything stays queued, /status shows ``auth_failed: true`` and
    /metrics ``vsim_hub_auth_failure 1``, the error is logged once per streak, not per request,
    and requests slow to one per ``auth_retry_s`` (2 s).  Once the hub accepts the key again
    everything is delivered and the flags clear."""
    agent = started_agent(hub, make_agent)
    before = len(hub.state.messages)
    hub.state.add_fault(mode=mode, count=-1)
    t0 = time.time()
    traffic = Traffic(agent.network_path, agent.numbers(), count=10, rate=20, prefix=mode)
    traffic.start().join()
    wait_until(
        lambda: agent.status()["hub"]["auth_failed"] and agent.metric("vsim_hub_auth_failure"),
        10,
        "auth failure in /status and /metrics",
    )
    assert agent.metric("vsim_hub_auth_failure") == 1.0
    time.sleep(max(0.0, t0 + 5 - time.time()))
    status = agent.status()
    assert status["outbox"]["depth"] == 10
    assert status["outbox"]["dead_letters"] == 0
    assert len(hub.state.messages) == before
    assert agent.net.stored() == 0
    window = hub.requests("messages", t0 + 1, time.time())
    assert 1 <= window <= 4, f"{window} POST /messages in 4 s with auth_retry_s = 2"
    logged = agent.events("hub rejected the API key: sending stopped, everything stays queued")
    assert 1 <= len(logged) <= 2, f"{len(logged)} auth error lines for one streak"
    assert all(e["level"] == "error" for e in logged)

    hub.state.clear_faults()
    wait_until(lambda: set(traffic.sent) <= hub.texts(), 10, "delivery after the key is accepted")
    assert_all_delivered_once(hub, traffic)
    wait_until(lambda: not agent.status()["hub"]["auth_failed"], 5, "auth_failed cleared")
    assert agent.metric("vsim_hub_auth_failure") == 0.0
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 5, "an empty outbox")
