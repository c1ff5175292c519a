"""GoIP lines → real agent process → reference hub, over real UDP and HTTP on 127.0.0.1.

What an operator of a GoIP farm relies on: every line registered with its ICCID; every SMS at
the hub exactly once by id although the box retransmits (and duplicates datagrams) until it is
acknowledged, and the agent is SIGKILLed while SMS are in flight; ``disable`` / ``enable``
reach the box as module control and come back in the inventory; what GoIP cannot do is refused.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import Agent, HubThread, wait_until
from tests.e2e_gw.conftest import Emulator, free_udp_port

LINES = 4
DEVICE = "goip1"


def setup(
    hub: HubThread,
    make_agent: Callable[..., Agent],
    emulators: Callable[[str, list[str]], Emulator],
    *extra: str,
) -> tuple[Agent, Emulator]:
    port = free_udp_port()
    agent = make_agent(
        hub,
        devices=[
            {
                "name": DEVICE,
                "driver": "goip",
                "listen": f"127.0.0.1:{port}",
                "lines": [{"id": f"goip{i:02d}", "password": "secret"} for i in range(1, 5)],
                "command_timeout_s": 1.0,
            }
        ],
    )
    agent.start()
    emu = emulators(
        "tests.gateways.goip",
        [
            "--server",
            f"127.0.0.1:{port}",
            "--lines",
            str(LINES),
            "--keepalive",
            "1",
            "--retransmit",
            "0.5",
            "--max-retransmits",
            "-1",
            *extra,
        ],
    )
    iccids = {line["iccid"] for line in emu.info["lines"]}
    wait_until(
        lambda: {s for s, v in hub.sims().items() if v["state"] == "online"} == iccids,
        20,
        "every line online at the hub",
        detail=lambda: str(hub.sims()),
    )
    return agent, emu


def command(hub: HubThread, kind: str, sim_id: str, **kw: Any) -> dict[str, Any]:
    cid = hub.state.enqueue_command(kind, sim_id, **kw)
    wait_until(lambda: cid in hub.state.command_results, 20, f"the result of {kind}")
    return dict(hub.state.command_results[cid])


def test_lines_registered_and_sms_once_through_duplicates_and_kills(
    hub: HubThread, make_agent: Any, emulators: Any
) -> None:
    agent, emu = setup(hub, make_agent, emulators, "--duplicate")
    lines = emu.info["lines"]
    for line in lines:
        sim = hub.sims()[line["iccid"]]
        assert sim["port"] == f"{DEVICE}/{line['id']}"
        assert sim["number"] == line["number"] and sim["number_source"] == "gateway"
        assert sim["kind"] == "sim" and sim["slot"] is None and sim["selected"] is True

    texts = [f"goip code {i:04d}" for i in range(60)]
    for i, text in enumerate(texts):
        emu.post("/sms", {"line": i % LINES, "from": "+79001112233", "text": text})
        if i in (15, 35):
            # Killed with SMS received but not yet acknowledged to the box: the box keeps
            # retransmitting them, and the restarted agent takes them once.
            assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
            agent.start()
    wait_until(lambda: set(texts) <= hub.texts(), 30, "all 60 SMS at the hub")
    by_text = hub.by_text()
    assert all(len(by_text[t]) == 1 for t in texts), "an SMS arrived under two ids"
    for text in texts:
        record = by_text[text][0]
        i = int(text.rsplit(" ", 1)[1])
        assert record["body"]["sim_id"] == lines[i % LINES]["iccid"]
        assert record["body"]["from"] == "+79001112233"
    # Every SMS was acknowledged to the box (nothing left retransmitting), none refused.
    wait_until(
        lambda: all(not line["pending"] for line in emu.get("/lines")),
        15,
        "every SMS acknowledged to the box",
    )
    assert all(not line["refused"] for line in emu.get("/lines"))


def test_disable_enable_reach_the_box_and_forward_is_refused(
    hub: HubThread, make_agent: Any, emulators: Any
) -> None:
    _agent, emu = setup(hub, make_agent, emulators)
    line = emu.info["lines"][1]
    iccid = line["iccid"]

    result = command(hub, "disable", iccid)
    assert result["ok"] is True and result["state"] == "disabled", result
    view = emu.get("/lines")[1]
    assert view["enabled"] is False
    assert "module_ctl_i" in view["commands"], view  # the protocol's module control

    # The network holds SMS for the disabled module; they arrive after enable.
    held = emu.post("/sms", {"line": 1, "from": "Bank", "text": "held while disabled 7070"})
    assert held["held"] is True
    result = command(hub, "enable", iccid)
    assert result["ok"] is True, result
    wait_until(lambda: hub.sims()[iccid]["state"] == "online", 15, "online again at the hub")
    wait_until(lambda: "held while disabled 7070" in hub.texts(), 15, "the held SMS")
    assert emu.get("/lines")[1]["enabled"] is True

    result = command(hub, "forward", iccid, to="+79007777777")
    assert result["ok"] is False
    assert result["error"] == "call forwarding is not supported by goip", result
