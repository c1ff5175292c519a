"""Broken modems, failing deletes, full storage and SIM swaps (issue item 6), end to end.

DESIGN.md invariant 5: one device failing (hang, unplug, garbage bytes) never stalls the
others, and a broken modem comes back by itself.  Measured from the hub's side: while three
modems misbehave, SMS to the healthy ones keep arriving with their usual latency, and every
SMS sent to a broken one (including those the SIM stored or the network held meanwhile)
arrives after it recovers.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import HubThread, wait_until
from tests.e2e_at.conftest import Farm, Line, message_id, records, wait_online, wait_texts
from tests.emulator import SimCard
from tests.support.pdu_encoder import encode_deliver

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
_seq = iter(range(1_000_000))


def sms(line: Line, text: str) -> str:
    """Deliver ``text`` to the SIM in ``line`` now (a distinct SMSC time per message)."""
    pdu = encode_deliver("+79001234567", text, sent_at=T0 + timedelta(seconds=next(_seq)))
    line.modem.deliver_pdu(pdu)
    return pdu


def hold_pty(path: str, timeout: float = 5.0) -> list[int]:
    """Open ptys until one gets ``path``, whose number the kernel frees once every process
    closed it (the agent too); returns the descriptors for the caller to close."""
    deadline = time.monotonic() + timeout
    while True:
        fds: list[int] = []
        for _ in range(16):  # the kernel hands out the lowest free number
            master, slave = os.openpty()
            fds += [master, slave]
            if os.ttyname(slave) == path:
                return fds
        for fd in fds:
            os.close(fd)
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} was not released within {timeout} s")
        time.sleep(0.05)


class Steady(threading.Thread):
    """SMS to the healthy modems every ``interval`` s, alternating; ``sent`` maps each text to
    the ``time.time()`` it was handed to the network."""

    def __init__(self, lines: list[Line], interval: float = 0.1) -> None:
        super().__init__(name="e2e-at-steady")
        self.lines, self.interval = lines, interval
        self.sent: dict[str, float] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.wait(self.interval):
                line = self.lines[i % len(self.lines)]
                text = f"healthy {line.name} {i:04d}"
                t = time.time()
                sms(line, text)
                self.sent[text] = t
                i += 1
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        assert self.error is None, repr(self.error)


@pytest.mark.timeout(90)
def test_garbage_mute_and_unplug_do_not_stall_the_others_and_heal(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """Two healthy modems (EC25/TCP, SIM800/pty) get an SMS every 0.1 s throughout.  Meanwhile
    an E3372 (TCP) spits random bytes (0xFF, NUL, CR/LF, half result codes) for 3 s, an EC25
    (pty) hangs mute for 4 s, a SIM800 (pty via its by-id symlink) is unplugged for 3 s and
    comes back under a new pty path, and an EC25 (TCP) is unplugged for 3 s (connection
    refused).  Each broken modem is sent SMS during its outage.

    During the faults every healthy SMS reaches the hub within 1 s (and no second without
    arrivals); the agent notices the hang (a command timeout) and the unplugs by itself; after
    recovery every SIM is online again at the hub, every SMS of the broken modems has arrived
    (those stored by the mute modem without a +CMTI, those the network held while the others
    were unplugged), exactly once, and every SIM is empty."""
    healthy = [farm.add("ec25", "tcp", name="ok-tcp"), farm.add("sim800", "pty", name="ok-pty")]
    noisy = farm.add("e3372", "tcp", name="garbage")
    mute = farm.add("ec25", "pty", name="mute")
    gone = farm.add("sim800", "pty", name="unplug-pty")
    gone_tcp = farm.add("ec25", "tcp", name="unplug-tcp")
    agent = make_agent()
    agent.start()
    wait_online(hub, [line.iccid for line in farm.lines])
    old_path = farm.server.pty_path(gone.modem)

    steady = Steady(healthy)
    steady.start()
    broken_texts: list[str] = []
    rng = random.Random(7)
    try:
        time.sleep(1.0)  # a baseline before the faults
        fault_start = time.time()
        mute.modem.mute(True)
        gone.modem.unplug()
        gone_tcp.modem.unplug()
        # Once the agent has closed the dead port its pty number is free: hold it, so the
        # replug re-enumerates under a new path (a modem back as ttyUSB5 instead of ttyUSB2);
        # only the by-id symlink stays the same.
        spare = hold_pty(old_path)
        for k in range(12):  # 3 s of garbage, with SMS to the noisy modem in between
            burst = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 64)))
            noisy.modem.garbage(b"\xff\x00" + burst + rng.choice([b"\r\n", b"\r\nO", b"+CM", b""]))
            if k % 4 == 0:
                text = f"broken garbage {k}"
                sms(noisy, text)
                broken_texts.append(text)
            if k == 2:
                for line in (mute, gone, gone_tcp):
                    text = f"broken {line.name} during the outage"
                    sms(line, text)
                    broken_texts.append(text)
            time.sleep(0.25)
        gone.modem.replug()
        gone_tcp.modem.replug()
        new_path = farm.server.wait_pty_path(gone.modem)
        for fd in spare:
            os.close(fd)
        time.sleep(1.0)
        mute.modem.mute(False)  # the firmware un-hangs; the agent must notice and re-init
        wait_texts(hub, broken_texts, 40, detail=farm.storage)
        fault_end = time.time()
    finally:
        steady.finish()

    # The faults were real and the agent saw them.
    assert new_path != old_path  # re-enumerated under a new pty path
    assert os.path.realpath(gone.url) == new_path  # the agent only knows the symlink
    assert any(e.kind == "muted" for e in mute.modem.transcript())
    assert any(e.kind == "garbage" for e in noisy.modem.transcript())
    failures = {(e.get("port"), e.get("what")) for e in agent.events("at.port_failure")}
    assert ("mute/0", "modem not answering") in failures, failures
    assert any(p == "unplug-pty/0" for p, _ in failures), failures
    assert any(p == "unplug-tcp/0" for p, _ in failures), failures

    # The healthy modems kept flowing at full speed during the faults.
    wait_texts(hub, steady.sent, 10)
    got = records(hub)
    by_text = {r["body"]["text"]: r for r in got.values()}
    during = {t: s for t, s in steady.sent.items() if fault_start <= s <= fault_end}
    assert len(during) >= 5 * (fault_end - fault_start)
    latency = sorted(by_text[t]["received"] - s for t, s in during.items())
    arrivals = sorted(by_text[t]["received"] for t in during)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(
        f"faults {fault_end - fault_start:.1f} s: {len(during)} healthy SMS, latency "
        f"median {statistics.median(latency) * 1000:.0f} ms, max {latency[-1] * 1000:.0f} ms, "
        f"max gap between arrivals {max(gaps) * 1000:.0f} ms"
    )
    assert latency[-1] < 1.0
    assert max(gaps) < 1.0
    healed = {
        line.name: max(by_text[t]["received"] for t in broken_texts if line.name in t) - fault_start
        for line in (noisy, mute, gone, gone_tcp)
    }
    print("last SMS of each broken modem at the hub, s after the faults began:", healed)

    # The broken ones healed by themselves: online again, everything delivered once, empty.
    wait_online(hub, [line.iccid for line in farm.lines])
    for text in broken_texts:
        assert by_text[text]["count"] == 1
    assert len({r["body"]["text"] for r in got.values()}) == len(got)
    wait_until(farm.all_empty, 10, "every SIM emptied", detail=farm.storage)


@pytest.mark.timeout(60)
def test_failing_deletes_are_retried_without_duplicates(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """``AT+CMGD`` answers ``+CMS ERROR: 321`` three times in a row on one modem and eight
    times on another (more than the ack's own retries: the delete is parked and retried by
    the next sweep).  The deletes are retried until the SIMs are empty, the same index is
    asked again, and every SMS reaches the hub under one id, received once: the re-reads that
    failed deletes cause are recognised by the agent and never re-sent."""
    few = farm.add("ec25", "tcp", name="fails-3")
    many = farm.add("sim800", "pty", name="fails-8")
    agent = make_agent()
    agent.start()
    wait_online(hub, [few.iccid, many.iccid])
    few.modem.fail_cmgd(3)
    many.modem.fail_cmgd(8)
    sent = {}
    for k in range(4):
        for line in (few, many):
            text = f"cmgd fails {line.name} {k}"
            sent[text] = message_id(line.iccid, [sms(line, text)])
    wait_texts(hub, sent, 10)
    wait_until(farm.all_empty, 20, "every SIM emptied", detail=farm.storage)

    assert len(few.modem.events("delete_failed")) == 3
    assert len(many.modem.events("delete_failed")) == 8
    for line in (few, many):
        failed = {e.index for e in line.modem.events("delete_failed")}
        cmgds = [c for c in line.modem.commands() if c.startswith("AT+CMGD=")]
        for index in failed:  # asked again after the failure, and then deleted
            assert cmgds.count(f"AT+CMGD={index}") >= 2
        assert len(line.modem.events("deleted")) == 4
    got = records(hub)
    assert set(got) == set(sent.values())
    assert all(r["count"] == 1 for r in got.values())
    assert hub.state.duplicates == 0


@pytest.mark.timeout(60)
def test_full_storage_is_drained(hub: HubThread, farm: Farm, make_agent: Any) -> None:
    """SIMs with room for 5 SMS.  12 SMS arrive while the agent is not running: 5 are stored,
    the SIM reports memory full and the network holds 7.  The agent drains the SIM at start-up;
    each delete frees room, the network delivers the held ones, and all 12 arrive.  Then a
    burst of 15 fills the memory again while the agent runs (EC25 reports
    ``+QIND: "smsfull"``, E3372 ``^SMMEMFULL``): drained as well, nothing lost, SIMs empty."""
    lines = [
        farm.add("ec25", "tcp", sim=SimCard.generate(capacity=5)),
        farm.add("e3372", "pty", sim=SimCard.generate(capacity=5)),
    ]
    sent: list[str] = []
    for line in lines:
        for k in range(12):
            text = f"backlog {line.name} {k:02d}"
            sms(line, text)
            sent.append(text)
        assert len(line.modem.stored()) == 5 and len(line.modem.pending()) == 7
        assert line.modem.events("memory_full")
    agent = make_agent()
    agent.start()
    wait_texts(hub, sent, 20, detail=farm.storage)
    wait_until(farm.all_empty, 10, "backlog drained", detail=farm.storage)

    for line in lines:
        before = len(line.modem.events("memory_full"))
        for k in range(15):
            text = f"burst {line.name} {k:02d}"
            sms(line, text)
            sent.append(text)
        assert len(line.modem.events("memory_full")) > before
    wait_texts(hub, sent, 20, detail=farm.storage)
    wait_until(farm.all_empty, 10, "burst drained", detail=farm.storage)
    assert all(len(r) == 1 for r in hub.by_text().values())
    assert len(records(hub)) == len(sent) == 2 * 27
    noticed = {e.get("port") for e in agent.events("at.storage_full")}
    assert noticed == {f"{line.name}/0" for line in lines}, noticed


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("profile", "kind", "announce"),
    [("ec25", "tcp", True), ("sim800", "pty", False)],
    ids=["ec25-with-urcs", "sim800-silent"],
)
def test_sim_swap_updates_the_inventory_and_attributes_sms(
    hub: HubThread, farm: Farm, make_agent: Any, profile: str, kind: str, announce: bool
) -> None:
    """A SIM is replaced in a running modem: announced by URCs (EC25: ``+CPIN``, ``+QUSIM``),
    or silently (a SIM800 without SIM-detect: only the agent's ICCID poll can tell).  The hub's
    inventory then lists the new ICCID (with its IMSI and number) on the same port and no
    longer the old one, and an SMS that reaches the new SIM right after the swap is attributed
    to the new SIM, never to the old."""
    line = farm.add(profile, kind)
    agent = make_agent()
    agent.start()
    old = line.iccid
    wait_online(hub, [old])
    before = sms(line, "for the old SIM")
    wait_until(lambda: message_id(old, [before]) in records(hub), 10, "the old SIM's SMS")

    new_sim = SimCard.generate()
    line.modem.insert_sim(new_sim, announce=announce)
    after = sms(line, "for the new SIM")
    wait_online(hub, [new_sim.iccid])
    wait_until(lambda: old not in hub.sims(), 10, "the old ICCID gone from the inventory")
    new_id = message_id(new_sim.iccid, [after])
    wait_until(lambda: new_id in records(hub), 10, "the new SIM's SMS")

    record = hub.sims()[new_sim.iccid]
    assert record["imsi"] == new_sim.imsi
    assert record["number"] == new_sim.number
    assert record["port"] == f"{line.name}/0"
    body = records(hub)[new_id]["body"]
    assert body["sim_id"] == new_sim.iccid
    assert body["number"] == new_sim.number
    assert all(
        r["body"]["sim_id"] == old
        for r in records(hub).values()
        if r["body"]["text"] != "for the new SIM"
    )
    wait_until(line.empty, 5, "the new SIM emptied")


@pytest.mark.timeout(60)
def test_an_unplugged_modem_keeps_its_sim_listed_offline(
    hub: HubThread, farm: Farm, make_agent: Any
) -> None:
    """PROTOCOL.md §3: ``offline`` is a SIM "present but not registered or the modem is
    down".  While a modem is unplugged (USB hiccup, reset, re-enumeration) its SIM stays in the
    inventory as ``offline``, so the hub keeps the number (``getallfullnumbers``, commands)
    instead of forgetting it and learning it anew a few seconds later."""
    line = farm.add("sim800", "pty")
    agent = make_agent(upstream={"heartbeat_s": 1})
    agent.start()
    wait_online(hub, [line.iccid])
    line.modem.unplug()
    wait_until(
        lambda: hub.sims().get(line.iccid, {}).get("state") != "online",
        10,
        "the hub told about the unplug",
    )
    # Two more snapshots (heartbeats every second) after the hub learnt of the unplug: a
    # wrong snapshot without the SIM would have replaced the offline entry by now.
    told = time.time()
    wait_until(lambda: hub.requests("sims", told) >= 2, 10, "two later snapshots")
    assert hub.sims().get(line.iccid, {}).get("state") == "offline", hub.sims()
    line.modem.replug()
    wait_online(hub, [line.iccid])
