"""The core flow end to end (issue part 1), verified from the hub's side of PROTOCOL.md.

An agent process with a simulated bank of SIMs talks to the reference hub over loopback HTTP:
its inventory is registered with every §3 field, SMS arrive with the §4 fields and content ids
(recomputed here from the network's copy of each part), multipart messages are reassembled or
delivered partial as the protocol says, commands are executed once with their results posted,
and a rental works through the platform's customer API.
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from drivers.simulated import signal_for
from tests.e2e.conftest import DEVICE, Agent, HubThread, Recorder, long_text, wait_until

MSK = timezone(timedelta(hours=3))


# -- the network's copy of each part, for recomputing ids ----------------------------------


def network_parts(path: Path) -> list[dict[str, Any]]:
    """Every SMS part still stored in the simulated network, in arrival order."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM sms ORDER BY id")]
    finally:
        db.close()


def raw_content(part: dict[str, Any]) -> bytes:
    """The raw content the simulated driver hands the core for a part (``_part`` in
    drivers/simulated.py: PROTOCOL.md §4 "for drivers without PDUs")."""
    head = [
        part["sender"],
        part["sent_at"],
        part["uid"],
        f"{part['part'] or 1}/{part['total'] or 1}",
    ]
    payload = part["text"].encode() if part["encoding"] == "gsm7" else bytes(part["data"])
    return "\x1f".join(head).encode() + b"\x1f" + payload


def expected_id(parts: list[dict[str, Any]]) -> str:
    """PROTOCOL.md §4, computed independently of the agent: the first 128 bits of SHA-256 over
    the ICCID and the raw content of each part in part order."""
    ordered = sorted(parts, key=lambda p: p["part"] or 1)
    h = hashlib.sha256(ordered[0]["iccid"].encode())
    for p in ordered:
        h.update(raw_content(p))
    return h.hexdigest()[:32]


def parts_of(rows: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["uid"] == uid]


def rfc3339_with_offset(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no offset"
    assert "T" in value
    return parsed


def one_message(hub: HubThread, text: str) -> dict[str, Any]:
    """The hub's single record for ``text`` (fails if the text arrived under two ids)."""
    records = hub.by_text().get(text, [])
    assert len(records) == 1, f"{text[:40]!r} arrived as {len(records)} distinct ids"
    return records[0]


# -- tests --------------------------------------------------------------------------------


def test_inventory_registered_with_every_field_and_seq_persisted(
    hub: HubThread, make_agent: Any
) -> None:
    """PUT /sims carries every SIM with the §3 fields the network defines (ICCID, IMSI,
    number, RU / 25001 / MTS, device and port, online, signal); ``seq`` grows with each
    heartbeat and keeps growing after a SIGKILL and restart (the hub never sees an older one)."""
    agent: Agent = make_agent(hub, upstream={"heartbeat_s": 1})
    agent.start()
    expected = {r["iccid"]: r for r in agent.net.sims(DEVICE)}
    assert len(expected) == 8

    wait_until(lambda: set(hub.sims()) == set(expected), 10, "8 SIMs registered at the hub")
    for iccid, sim in hub.sims().items():
        row = expected[iccid]
        assert sim["sim_id"] == iccid
        assert sim["imsi"] == row["imsi"]
        assert sim["number"] == row["number"] and sim["number"].startswith("+7")
        assert sim["number_source"] == "gateway"
        assert sim["country"] == "RU"
        assert sim["mcc_mnc"] == "25001"
        assert sim["operator"] == "MTS"
        assert sim["device"] == DEVICE
        assert sim["port"] == f"{DEVICE}/{row['idx']}"
        assert sim["state"] == "online"
        assert sim["signal_dbm"] == signal_for(iccid)
        assert sim["forward_to"] is None
        assert sim["agent_id"] == "t1"

    info = hub.state.agents["t1"]
    assert info["agent"]["id"] == "t1" and info["agent"]["version"]
    first = info["seq"]
    wait_until(lambda: hub.state.agents["t1"]["seq"] >= first + 2, 5, "heartbeats raising seq")
    before_kill = hub.state.agents["t1"]["seq"]

    agent.kill(signal.SIGKILL)
    restarted = time.time()
    agent.start()
    wait_until(
        lambda: hub.state.agents["t1"]["updated"] > restarted, 10, "a snapshot after restart"
    )
    after = hub.state.agents["t1"]
    assert after["seq"] > before_kill, "seq went back after a restart"
    assert after["stale"] == 0, "the hub ignored a snapshot older than one it held"
    assert len(hub.sims()) == 8, "the first snapshot after the restart left SIMs out"


def test_first_snapshot_after_start_lists_every_sim(make_hub: Any, make_agent: Any) -> None:
    """§3: PUT /sims is "the full list of SIMs the agent manages, as they are now".  A bank of
    64 SIMs that never changes must appear whole in every snapshot, including the first one
    after a (re)start; a partial one makes the hub forget the missing SIMs (rentals show
    is_work 0, commands for them are not routed) until the next snapshot."""
    recorder = Recorder()
    hub: HubThread = make_hub(wrap=recorder)
    agent: Agent = make_agent(hub, sims=64, upstream={"heartbeat_s": 1})
    agent.start()
    wait_until(lambda: len(hub.sims()) == 64, 10, "64 SIMs registered")
    agent.kill(signal.SIGKILL)
    before = len(recorder.bodies("PUT", "/sims"))
    agent.start()
    wait_until(
        lambda: len(recorder.bodies("PUT", "/sims")) >= before + 2, 10, "snapshots after restart"
    )
    sizes = [len(b["sims"]) for b in recorder.bodies("PUT", "/sims")]
    assert all(n == 64 for n in sizes), f"SIMs per snapshot, in order: {sizes}"


def test_sms_fields_and_content_ids(hub: HubThread, make_agent: Any) -> None:
    """Each SMS reaches the hub once with the §4 fields (32-hex id equal to SHA-256(ICCID + raw)
    recomputed here, from, exact text, sent_at with its +03:00 offset, received_at, parts 1,
    complete); two SMS with equal text stay two ids; and an SMS read again after a crash
    between commit and delete (ack held back, SIGKILL) keeps its id and is not sent twice."""
    agent: Agent = make_agent(hub)
    agent.provision()
    n0, n1 = agent.numbers()[:2]
    sent_at = datetime(2026, 11, 26, 15, 1, 9, tzinfo=MSK)
    vk = "VK: 93401 - ваш код для регистрации ВКонтакте."
    agent.net.send(n0, vk, sender="VKcom")
    agent.net.send(n1, "Your code is 5521", sender="+79001112233", sent_at=sent_at)
    agent.net.send(n1, "Twice", sender="Bank", sent_at=sent_at)
    agent.net.send(n1, "Twice", sender="Bank", sent_at=sent_at)
    rows = network_parts(agent.network_path)  # before the agent reads and deletes them
    assert len(rows) == 4
    want = {r["uid"]: expected_id([r]) for r in rows}

    started = time.time()
    agent.start()
    wait_until(lambda: len(hub.state.messages) == 4, 10, "4 messages at the hub")
    assert {r["body"]["id"] for r in hub.messages()} == set(want.values())

    records = {r["body"]["id"]: r for r in hub.messages()}
    for row in rows:
        rec = records[want[row["uid"]]]
        body = rec["body"]
        assert rec["count"] == 1
        assert len(body["id"]) == 32 and body["id"] == body["id"].lower()
        assert body["sim_id"] == row["iccid"]
        assert body["number"] == agent.net.sim(row["iccid"])["number"]
        assert body["from"] == row["sender"]
        assert body["parts"] == 1 and body["complete"] is True
        assert rfc3339_with_offset(body["sent_at"]) == datetime.fromisoformat(row["sent_at"])
        received = rfc3339_with_offset(body["received_at"]).timestamp()
        assert started - 1 <= received <= time.time()
    assert records[want[rows[0]["uid"]]]["body"]["text"] == vk
    five = records[want[rows[1]["uid"]]]["body"]
    assert five["text"] == "Your code is 5521"
    assert five["sent_at"] == "2026-11-26T15:01:09+03:00"
    twice = hub.by_text()["Twice"]
    assert len(twice) == 2, "two SMS with the same text must keep two ids"
    assert agent.net.stored() == 0, "delivered SMS must be deleted from the SIM"

    # Crash after commit, before the SIM deletes the part: the re-read is the same message.
    agent.net.set_fault(DEVICE, slow_ack_s=60)
    agent.net.send(n0, "Re-read after crash 7777", sender="VKcom")
    rows = network_parts(agent.network_path)
    reread_id = expected_id(rows)
    wait_until(lambda: reread_id in hub.state.messages, 10, "the message before the crash")
    assert agent.net.stored() == 1, "the ack was held back: the part must still be stored"
    agent.kill(signal.SIGKILL)
    agent.net.set_fault(DEVICE, slow_ack_s=0)
    agent.start()
    wait_until(lambda: agent.net.stored() == 0, 10, "the re-read part acked")
    # A barrier instead of a pause: the outbox goes out in commit order, so once an SMS sent
    # after the re-read has arrived, a wrongly re-sent copy of the re-read would have too.
    agent.net.send(n0, "barrier after the re-read", sender="VKcom")
    wait_until(lambda: "barrier after the re-read" in hub.texts(), 10, "the barrier SMS")
    assert one_message(hub, "Re-read after crash 7777")["body"]["id"] == reread_id
    assert hub.state.messages[reread_id]["count"] == 1
    assert len(hub.state.messages) == 6


def test_multipart_reassembly_partial_and_split_emoji(hub: HubThread, make_agent: Any) -> None:
    """A 3-part SMS arriving 3,1,2 is delivered once (complete, parts 3, exact text); a UCS2
    text whose emoji's surrogate pair straddles two parts comes out whole; a message missing
    part 2 is delivered after ``reassembly_timeout_s`` with ``complete: false`` and the text of
    parts 1 and 3, and the late part 2 is then delivered alone, also ``complete: false``."""
    agent: Agent = make_agent(hub, agent={"reassembly_timeout_s": 2})
    agent.provision()
    n0, n1, n2 = agent.numbers()[:3]
    ordered = long_text("multipart 3-1-2:")
    emoji = "Ж" * 66 + "😀" + "код 4242 " + "Б" * 80  # units 66-67 = the pair: parts 1|2
    missing = long_text("missing part two:")
    agent.net.send(n0, ordered, sender="VKcom", order=[3, 1, 2])
    agent.net.send(n1, emoji, sender="Telegram", order=[2, 3, 1])
    agent.net.send(n2, missing, sender="Bank")
    rows = network_parts(agent.network_path)
    uids = list(dict.fromkeys(r["uid"] for r in rows))  # in the order the SMS were sent
    texts = (ordered, emoji, missing)
    by_uid = {text: parts_of(rows, uid) for text, uid in zip(texts, uids, strict=True)}
    assert [len(v) for v in by_uid.values()] == [3, 3, 3]
    # Part 2 of the last message is held back in the network: it is "late".
    late = next(p for p in by_uid[missing] if p["part"] == 2)
    db = sqlite3.connect(agent.network_path)
    with db:
        db.execute("DELETE FROM sms WHERE id = ?", (late["id"],))
    db.close()

    agent.start()
    wait_until(lambda: len(hub.state.messages) == 2, 10, "the two complete multipart messages")
    rec = one_message(hub, ordered)
    assert rec["body"]["id"] == expected_id(by_uid[ordered])
    assert (rec["body"]["parts"], rec["body"]["complete"], rec["count"]) == (3, True, 1)
    rec = one_message(hub, emoji)
    assert rec["body"]["id"] == expected_id(by_uid[emoji])
    assert rec["body"]["parts"] == 3 and rec["body"]["complete"] is True
    assert "\ufffd" not in rec["body"]["text"]

    first_and_third = [p for p in by_uid[missing] if p["part"] != 2]
    partial_text = first_and_third[0]["text"] + first_and_third[1]["text"]
    t0 = time.monotonic()
    wait_until(lambda: partial_text in hub.texts(), 8, "the partial message after the timeout")
    rec = one_message(hub, partial_text)
    assert rec["body"]["complete"] is False and rec["body"]["parts"] == 2
    assert rec["body"]["id"] == expected_id(first_and_third)
    assert time.monotonic() - t0 < 6

    db = sqlite3.connect(agent.network_path)
    with db:
        cols = [c for c in late if c != "id"]
        db.execute(
            f"INSERT INTO sms ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [late[c] for c in cols],
        )
    db.close()
    wait_until(lambda: late["text"] in hub.texts(), 8, "the late part delivered alone")
    rec = one_message(hub, late["text"])
    assert rec["body"]["complete"] is False and rec["body"]["parts"] == 1
    assert rec["body"]["id"] == expected_id([late])
    wait_until(lambda: agent.net.stored() == 0, 5, "every part deleted from the SIMs")
    assert len(hub.state.messages) == 4
    assert all(r["count"] == 1 for r in hub.messages())


def test_commands_executed_once_with_results(make_hub: Any, make_agent: Any) -> None:
    """disable / enable / forward / unforward each change the SIM in the network, post
    ``{"ok": true, "state", "error": null, "finished_at"}`` and refresh the inventory; a command
    the hub delivers again (its result was lost to 503s) is not executed a second time (the SIM
    state changed behind its back stays as it is, one "command executed" log line), and its
    stored result is sent again."""
    from agent.hub import HubConfig

    hub: HubThread = make_hub(HubConfig(customer_key="customer-key", redeliver_after_s=1.0))
    agent: Agent = make_agent(hub)
    agent.start()
    s0, s1, s2 = (r["iccid"] for r in agent.net.sims(DEVICE)[:3])
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")

    def run(kind: str, sim_id: str, to: str | None = None) -> dict[str, Any]:
        cid = hub.state.enqueue_command(kind, sim_id, to)
        wait_until(lambda: cid in hub.state.command_results, 10, f"result of {kind}")
        result = hub.state.command_results[cid]
        assert result["ok"] is True and result["error"] is None, result
        rfc3339_with_offset(result["finished_at"])
        return {"id": cid, **result}

    r = run("disable", s0)
    assert r["state"] == "disabled"
    assert agent.net.sim(s0)["radio_on"] == 0
    wait_until(lambda: hub.sims()[s0]["state"] == "disabled", 2, "inventory showing disabled")

    r = run("enable", s0)
    assert r["state"] == "online"
    assert agent.net.sim(s0)["radio_on"] == 1
    wait_until(lambda: hub.sims()[s0]["state"] == "online", 2, "inventory showing online")

    r = run("forward", s1, "+79007777777")
    assert agent.net.sim(s1)["forward_to"] == "+79007777777"
    wait_until(lambda: hub.sims()[s1]["forward_to"] == "+79007777777", 2, "forward_to shown")

    run("unforward", s1)
    assert agent.net.sim(s1)["forward_to"] is None
    wait_until(lambda: hub.sims()[s1]["forward_to"] is None, 2, "forward_to cleared")

    # A repeated id: the result is lost (503), the hub delivers the command again.
    hub.state.add_fault(status=503, count=-1, endpoint="results")
    cid = hub.state.enqueue_command("disable", s2)
    wait_until(lambda: agent.net.sim(s2)["radio_on"] == 0, 10, "the disable executed")
    agent.net.set_sim(s2, radio_on=True)  # a second execution would switch it off again
    wait_until(lambda: hub.state.commands[cid].deliveries >= 2, 10, "the command redelivered")
    wait_until(
        lambda: any(e.get("command_id") == cid for e in agent.events("command executed")),
        5,
        "the execution log line",
    )
    wait_until(
        lambda: any(e.get("command_id") == cid for e in agent.events("command repeated")),
        5,
        "the agent recognising the repeated id",
    )
    hub.state.clear_faults()
    wait_until(lambda: cid in hub.state.command_results, 10, "the stored result re-sent")
    assert hub.state.command_results[cid]["ok"] is True
    assert hub.state.command_results[cid]["state"] == "disabled"
    assert agent.net.sim(s2)["radio_on"] == 1, "the repeated command was executed again"
    executed: dict[str, int] = {}
    for e in agent.events("command executed"):
        executed[e["command_id"]] = executed.get(e["command_id"], 0) + 1
    assert executed == dict.fromkeys(hub.state.commands, 1), executed
    assert agent.alive


def test_enable_result_reports_the_sim_online(hub: HubThread, make_agent: Any) -> None:
    """§5: the result carries the SIM's state after the command.  After ``enable`` the SIM is
    online (the network has its radio on, the next inventory says online), so the result must
    say ``online``, not the state from before the radio came back."""
    agent: Agent = make_agent(hub)
    agent.start()
    iccid = agent.net.sims(DEVICE)[0]["iccid"]
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")
    off = hub.state.enqueue_command("disable", iccid)
    wait_until(lambda: off in hub.state.command_results, 10, "disable result")
    on = hub.state.enqueue_command("enable", iccid)
    wait_until(lambda: on in hub.state.command_results, 10, "enable result")
    wait_until(lambda: hub.sims()[iccid]["state"] == "online", 5, "inventory online")
    assert agent.net.sim(iccid)["radio_on"] == 1
    assert hub.state.command_results[on]["state"] == "online"


def test_rental_through_the_customer_api(hub: HubThread, make_agent: Any) -> None:
    """getnumber hands out an online RU number; an SMS to it shows in getstatus with its code
    in ``small``; send-disable-sim switches the SIM off (inventory ``disabled``, is_work 0) and
    an SMS sent meanwhile stays held in the network; send-enable-sim brings the SIM back online
    and the held SMS arrives."""
    agent: Agent = make_agent(hub)
    agent.start()
    numbers = set(agent.numbers())
    wait_until(lambda: len(hub.sims()) == 8, 10, "inventory")

    got = hub.customer("getnumber", id="vk", code="RU")
    assert got["number"] in numbers and got["send"] == 0
    act, number = got["id"], got["number"]
    iccid = agent.net.sim(number)["iccid"]
    assert hub.customer("getstatus", id=act)["code"] == 106  # no SMS yet

    agent.net.send(number, "VK: 93401 - ваш код для регистрации ВКонтакте.", sender="VKcom")
    status = wait_until(
        lambda: (s := hub.customer("getstatus", id=act)).get("name") != "error" and s,
        10,
        "the SMS in getstatus",
    )
    assert status["small"] == "93401"
    assert status["from"] == "VKcom" and status["number"] == number
    assert status["text"].startswith("VK: 93401")

    assert hub.customer("send-disable-sim", id=act) == 1
    wait_until(lambda: hub.sims()[iccid]["state"] == "disabled", 10, "SIM disabled")
    assert agent.net.sim(iccid)["radio_on"] == 0
    full = {a["id"]: a for a in hub.customer("getallfullnumbers")}
    assert full[act]["is_work"] == 0 and full[act]["number"] == number

    agent.net.send(number, "Telegram code 55512", sender="Telegram")
    # A barrier instead of a pause: an SMS to another SIM of the same bank, sent after the held
    # one, has reached the hub, so the device has read the network past the held SMS.
    other = sorted(numbers - {number})[0]
    agent.net.send(other, "barrier 0000", sender="Bank")
    wait_until(lambda: "barrier 0000" in hub.texts(), 10, "the barrier SMS")
    assert hub.customer("getstatus", id=act)["small"] == "93401", "a disabled SIM received"
    assert agent.net.stored() == 1, "the network must hold the SMS for the disabled SIM"
    assert agent.status()["outbox"]["depth"] == 0

    assert hub.customer("send-enable-sim", id=act) == 1
    wait_until(lambda: hub.sims()[iccid]["state"] == "online", 10, "SIM online again")
    status = wait_until(
        lambda: (s := hub.customer("getstatus", id=act))["small"] == "55512" and s,
        10,
        "the held SMS after re-enable",
    )
    assert status["from"] == "Telegram"
    assert [s["small"] for s in hub.customer("all-sms", id=act)] == ["93401", "55512"]
    full = {a["id"]: a for a in hub.customer("getallfullnumbers")}
    assert full[act]["is_work"] == 1
    wait_until(lambda: agent.net.stored() == 0, 5, "held SMS deleted from the SIM")
