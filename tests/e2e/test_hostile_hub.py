"""A hostile hub (issue #12 items 1, 2, 5 and 11): answers no hub should give, to a real
``vsim-agent run`` process.  Whatever the hub answers, the agent process stays up, its memory
stays bounded, its request rate stays bounded, /status names the failing endpoint (and only
that one), its key never shows, and once the hub behaves again every SMS reaches it exactly
once.  The hostile layer is :mod:`tests.e2e.hostile_hub`, in front of the reference hub."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from agent.hub import HubConfig
from tests.e2e.conftest import CUSTOMER_KEY, DEVICE, Agent, HubThread, wait_until
from tests.e2e.hostile_hub import HostileFront, Mode

KEY = "sk-hostile-4f1c9a7be2d35b60d8e1"
RSS_LIMIT_MB = 200.0
WINDOW_S = 6.0


def start(make_hub: Any, make_agent: Any, **upstream: Any) -> tuple[HostileFront, HubThread, Agent]:
    front = HostileFront()
    hub: HubThread = make_hub(HubConfig(agent_keys={KEY}, customer_key=CUSTOMER_KEY), wrap=front)
    # A short long-poll, so a mode switch reaches GET /commands within a second.
    agent: Agent = make_agent(hub, api_key=KEY, upstream={"poll_wait_s": 1, **upstream})
    agent.start()
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory registered")
    return front, hub, agent


def proc_mb(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start) of ``pid`` in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status: the process has exited")


def send_sms(agent: Agent, label: str, count: int) -> list[str]:
    texts = [f"{label} {i} code {4200 + i}" for i in range(count)]
    numbers = agent.numbers()
    for i, text in enumerate(texts):
        agent.net.send(numbers[i % len(numbers)], text, sender="VKcom")
    return texts


def assert_no_key(agent: Agent) -> None:
    pieces = {KEY} | {KEY[i : i + 12] for i in range(0, len(KEY) - 11, 4)}
    for where, text in (("log", agent.logs()), ("/status", agent._get("/status").text)):
        leaked = sorted(p for p in pieces if p in text)
        assert not leaked, f"the agent's {where} shows key material {leaked}"


def assert_recovers(front: HostileFront, hub: HubThread, agent: Agent, texts: list[str]) -> None:
    """The hub behaves again: every SMS arrives under exactly one id, the outbox empties with
    no dead letter, every endpoint's error clears, and the poller still carries commands."""
    front.set(messages="normal", commands="normal")
    wait_until(lambda: set(texts) <= hub.texts(), 20, "every SMS at the hub")
    by_text = hub.by_text()
    split = {t: len(by_text[t]) for t in texts if len(by_text[t]) != 1}
    assert not split, f"SMS delivered under more than one id: {split}"
    wait_until(lambda: agent.status()["outbox"]["depth"] == 0, 15, "an empty outbox")
    assert agent.status()["outbox"]["dead_letters"] == 0
    sim = agent.net.sims(DEVICE)[0]["iccid"]
    cid = hub.state.enqueue_command("disable", sim)
    wait_until(lambda: cid in hub.state.command_results, 15, "a command through the poller")
    assert hub.state.command_results[cid]["ok"] is True
    wait_until(
        lambda: agent.status()["hub"]["errors"] == {},
        15,
        "every endpoint's error cleared",
        detail=lambda: str(agent.status()["hub"]),
    )


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("deep", "nested deeper than 32 levels"),
        ("endless", "answer larger than 16 MiB"),
        ("gzip_bomb", "answer larger than 16 MiB"),
    ],
)
def test_unreadable_answers_on_both_endpoints(
    make_hub: Any, make_agent: Any, mode: Mode, reason: str
) -> None:
    """POST /messages and GET /commands both answer 100,000 nested ``[``, an endless chunked
    body, or 1 MiB of gzip inflating to 1 GiB, for 6 s.  The agent process stays up (same
    pid), its peak RSS stays under 200 MB, each endpoint sees at most ~1.5 requests a second
    (backoff, cap 2 s), and /status names the reason for each endpoint; then the hub behaves
    and everything is delivered once."""
    # The retry delays are drawn with full jitter (unseeded, in the agent process): a cap of
    # 10 s makes more than 1.5 requests/s over the window practically impossible (about one
    # run in a million), where the 2-s cap of the other tests failed one CI run.
    front, hub, agent = start(make_hub, make_agent, backoff_max_s=10)
    pid = agent.pid
    front.set(messages=mode, commands=mode)
    t0 = time.time()
    texts = send_sms(agent, mode, 5)
    rss = [proc_mb(pid, "VmRSS")]
    while time.time() < t0 + WINDOW_S:
        assert agent.proc.poll() is None, f"the agent died:\n{agent.tail()}"
        rss.append(proc_mb(pid, "VmRSS"))
        time.sleep(0.1)
    t1 = time.time()
    assert agent.proc.poll() is None, f"the agent died:\n{agent.tail()}"
    peak = proc_mb(pid, "VmHWM")
    print(f"{mode}: RSS {min(rss):.0f}-{max(rss):.0f} MB, peak {peak:.0f} MB")
    assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB (sampled {max(rss):.0f} MB)"
    for endpoint in ("messages", "commands"):
        hits = front.count(endpoint, t0, t1)
        assert front.hostile_answers(endpoint) >= 2, f"{endpoint}: the hostile mode was not hit"
        assert hits <= 1.5 * (t1 - t0), f"{endpoint}: {hits} requests in {t1 - t0:.1f} s"
    errors = agent.status()["hub"]["errors"]
    for endpoint in ("POST /messages", "GET /commands"):
        assert reason in errors.get(endpoint, ""), errors
    assert_no_key(agent)
    assert_recovers(front, hub, agent, texts)
    assert agent.pid == pid and agent.alive


def test_commands_answered_at_once_are_polled_at_most_once_a_second(
    make_hub: Any, make_agent: Any
) -> None:
    """GET /commands answers ``{"commands": []}`` at once, ignoring ``wait=25`` (once 17,059
    requests in 10 s).  The polls stay at least ~1 s apart, /status says the hub ignores
    ``wait`` for GET /commands only, SMS keep flowing meanwhile, and once the hub holds its
    polls again a command goes through and the error clears."""
    front, hub, agent = start(make_hub, make_agent)
    pid = agent.pid
    front.set(commands="early_empty")
    t0 = time.time()
    texts = send_sms(agent, "early", 3)
    wait_until(lambda: set(texts) <= hub.texts(), 10, "SMS delivered while polls are early")
    time.sleep(max(0.0, t0 + WINDOW_S - time.time()))
    t1 = time.time()
    assert agent.proc.poll() is None, f"the agent died:\n{agent.tail()}"
    times = [t for t in front.times("commands") if t0 <= t < t1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"early_empty: {len(times)} polls in {t1 - t0:.1f} s, smallest gap {min(gaps):.3f} s")
    assert len(times) >= 3, "the poller stopped polling"
    assert len(times) <= 1.5 * (t1 - t0), f"{len(times)} polls in {t1 - t0:.1f} s"
    assert min(gaps) >= 0.9, f"polls closer than the 1 s floor: {gaps}"
    errors = agent.status()["hub"]["errors"]
    assert "ignoring wait" in errors.get("GET /commands", ""), errors
    assert "POST /messages" not in errors, errors
    warned = agent.events(
        "hub answers GET /commands at once, ignoring wait; polling at most once a second"
    )
    assert len(warned) == 1, f"{len(warned)} warnings for one streak"
    assert proc_mb(pid, "VmHWM") < RSS_LIMIT_MB
    assert_no_key(agent)
    assert_recovers(front, hub, agent, texts)
    assert agent.pid == pid and agent.alive


def test_an_ack_that_settles_nothing_backs_off(make_hub: Any, make_agent: Any) -> None:
    """POST /messages answers 200 ``{"accepted": [], "rejected": []}`` (the hub stores the
    batch, the ack settles none of it).  The sender's backoff keeps growing (cap 6 s here)
    instead of restarting at ~2 tries a second: after four such answers, at most 7 requests
    in the next 6 s (about 12 before the fix).  /status keeps the error for POST /messages
    while the long-poll works, so ``last_error`` is not null; once the hub acks again every
    SMS is delivered once (the repeats are repeated ids) and the outbox empties."""
    front, hub, agent = start(make_hub, make_agent, backoff_max_s=6)
    pid = agent.pid
    front.set(messages="no_settle")
    texts = send_sms(agent, "unsettled", 4)
    wait_until(lambda: front.hostile_answers("messages") >= 4, 20, "four acks settling nothing")
    t0 = time.time()
    time.sleep(WINDOW_S)
    t1 = time.time()
    assert agent.proc.poll() is None, f"the agent died:\n{agent.tail()}"
    tries = front.count("messages", t0, t1)
    print(f"no_settle: {tries} POST /messages in {t1 - t0:.1f} s after four empty acks")
    assert tries <= 7, f"{tries} POST /messages in {t1 - t0:.1f} s: the backoff restarted"
    hub_status = agent.status()["hub"]
    assert "did not answer for every message" in hub_status["errors"].get("POST /messages", "")
    assert "GET /commands" not in hub_status["errors"], hub_status
    assert (hub_status["last_error"] or "").startswith("POST /messages"), hub_status
    assert set(texts) <= hub.texts(), "the hub stored the batches it did not ack"
    assert proc_mb(pid, "VmHWM") < RSS_LIMIT_MB
    assert_no_key(agent)
    assert_recovers(front, hub, agent, texts)
    assert hub.state.duplicates >= 1, "the unacked messages were sent again"
    assert agent.pid == pid and agent.alive
