"""The store on a real SQLite file: intake, reassembly, outbox states, dead letters, commands."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.reassembly import content_id
from agent.store import Store
from drivers.base import Concat, Encoding, SmsPart

ICCID = "89701012345678901234"
T0 = 1_800_000_000.0
SCTS = datetime(2026, 11, 26, 15, 1, 9, tzinfo=UTC)


def part(
    text: str,
    *,
    ref: int | None = None,
    no: int = 1,
    total: int = 1,
    bits: int = 8,
    sender: str = "VKcom",
    iccid: str = ICCID,
    enc: Encoding = Encoding.GSM7,
    data: bytes = b"",
    tag: str = "",
) -> SmsPart:
    concat = Concat(ref, no, total, bits) if ref is not None else None
    raw = f"{sender}|{ref}|{no}|{total}|{bits}|{text}|{tag}".encode() + data
    return SmsPart(
        port="p/0",
        iccid=iccid,
        sender=sender,
        sent_at=SCTS,
        encoding=enc,
        raw=raw,
        ack_token=(ref, no),
        text=text,
        data=data,
        concat=concat,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "agent.db")
    yield s
    s.close()


def bodies(store: Store) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in store.peek(0, 1000)]


def test_single_part_message_fields_and_id(store: Store) -> None:
    p = part("VK: 93401 - ваш код")
    res = store.ingest([p], now=T0, reassembly_timeout_s=600)
    assert (res.stored_parts, res.messages, res.duplicates) == (1, 1, 0)
    [m] = bodies(store)
    assert m["id"] == content_id(ICCID, [p.raw]) and len(str(m["id"])) == 32
    assert m["sim_id"] == ICCID and m["from"] == "VKcom" and m["text"] == "VK: 93401 - ваш код"
    assert m["sent_at"] == "2026-11-26T15:01:09+00:00"
    assert m["received_at"] == "2027-01-15T08:00:00.000+00:00"
    assert m["parts"] == 1 and m["complete"] is True


def test_reread_is_deduplicated_even_after_delivery(store: Store) -> None:
    p = part("code 1234")
    store.ingest([p], now=T0, reassembly_timeout_s=600)
    rows = store.peek(0, 10)
    store.settle(rows, [rows[0].id], {}, now=T0 + 1)
    assert store.outbox_stats() == (0, None)
    res = store.ingest([p], now=T0 + 5, reassembly_timeout_s=600)
    assert res.duplicates == 1 and res.messages == 0
    assert store.outbox_stats()[0] == 0


def test_equal_text_different_sms_stay_distinct(store: Store) -> None:
    a, b = part("same", tag="scts-1"), part("same", tag="scts-2")
    store.ingest([a, b], now=T0, reassembly_timeout_s=600)
    assert store.outbox_stats()[0] == 2


def test_multipart_any_order_many_in_flight(store: Store) -> None:
    # Two messages from one sender interleaved (8- and 16-bit refs with the same value),
    # and one from another sender reusing ref 7: three groups, all distinct.
    a = [part(f"A{i}", ref=7, no=i, total=3) for i in (1, 2, 3)]
    b = [part(f"B{i}", ref=7, no=i, total=2, bits=16) for i in (1, 2)]
    c = [part(f"C{i}", ref=7, no=i, total=2, sender="Google") for i in (1, 2)]
    order = [a[2], b[1], c[0], a[0], c[1], b[0], a[1]]
    for p in order:
        store.ingest([p], now=T0, reassembly_timeout_s=600)
    got = {m["from"] + ":" + str(m["text"]): m for m in bodies(store)}
    assert set(got) == {"VKcom:A1A2A3", "VKcom:B1B2", "Google:C1C2"}
    assert got["VKcom:A1A2A3"]["id"] == content_id(ICCID, [p.raw for p in a])
    assert all(m["complete"] for m in got.values())
    assert store.pending_parts() == 0


def test_partial_after_timeout_then_late_part_alone(store: Store) -> None:
    p1, p2, p3 = (part(f"P{i}", ref=9, no=i, total=3) for i in (1, 2, 3))
    store.ingest([p3, p1], now=T0, reassembly_timeout_s=600)
    assert store.expire_partials(now=T0 + 599, timeout=600) == 0
    assert store.expire_partials(now=T0 + 600, timeout=600) == 1
    [m] = bodies(store)
    assert m["text"] == "P1P3" and m["parts"] == 2 and m["complete"] is False
    store.ingest([p2], now=T0 + 700, reassembly_timeout_s=600)
    first, late = bodies(store)
    assert first["id"] == m["id"]
    assert late["text"] == "P2" and late["parts"] == 1 and late["complete"] is False
    # A re-read of a delivered part changes nothing.
    assert store.ingest([p1], now=T0 + 701, reassembly_timeout_s=600).duplicates == 1


def test_ucs2_surrogate_pair_split_across_parts(store: Store) -> None:
    raw = "код 🙂 ok".encode("utf-16-be")
    cut = raw.index("🙂".encode("utf-16-be")) + 2  # between the two surrogates
    p1 = part("", ref=1, no=1, total=2, enc=Encoding.UCS2, data=raw[:cut])
    p2 = part("", ref=1, no=2, total=2, enc=Encoding.UCS2, data=raw[cut:])
    store.ingest([p2, p1], now=T0, reassembly_timeout_s=600)
    [m] = bodies(store)
    assert m["text"] == "код 🙂 ok"


def test_binary_and_undecodable_are_hex_with_marker(store: Store) -> None:
    store.ingest(
        [
            part("", enc=Encoding.BINARY, data=b"\x01\xab"),
            part("", enc=Encoding.UNDECODABLE, data=b"\x07\x91", tag="x"),
        ],
        now=T0,
        reassembly_timeout_s=600,
    )
    ms = {m["encoding"]: m for m in bodies(store)}
    assert ms["8bit"]["text"] == "01AB" and ms["8bit"]["complete"] is True
    assert ms["undecodable"]["text"] == "0791" and ms["undecodable"]["complete"] is False


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(1, 6))), st.integers(0, 65535))
def test_any_order_gives_one_exact_message(
    tmp_path_factory: pytest.TempPathFactory, order: list[int], ref: int
) -> None:
    s = Store(tmp_path_factory.mktemp("h") / "a.db")
    try:
        parts = {i: part(f"<{i}>", ref=ref, no=i, total=5, bits=16) for i in range(1, 6)}
        for i in order:
            s.ingest([parts[i]], now=T0, reassembly_timeout_s=600)
        [m] = bodies(s)
        assert m["text"] == "<1><2><3><4><5>" and m["parts"] == 5
    finally:
        s.close()


def test_outbox_peek_settle_dead_letters_resend(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    reader = Store(tmp_path / "agent.db", reader=True)
    store.ingest([part(f"m{i}", tag=str(i)) for i in range(5)], now=T0, reassembly_timeout_s=600)
    rows = reader.peek(0, 3)
    assert [json.loads(r.body)["text"] for r in rows] == ["m0", "m1", "m2"]  # arrival order
    settled = store.settle(rows, [rows[0].id], {rows[1].id: "unknown sim"}, now=T0 + 2)
    assert (settled.delivered, settled.dead) == (1, 1)
    assert [d.reason for d in store.dead_letters()] == ["unknown sim"]
    # The one the hub did not mention stays queued, in order, with the rest.
    assert [json.loads(r.body)["text"] for r in reader.peek(0, 10)] == ["m2", "m3", "m4"]
    assert [json.loads(r.body)["text"] for r in reader.peek(rows[2].seq, 10)] == ["m3", "m4"]
    with pytest.raises(sqlite3.OperationalError):  # the reader cannot write
        reader.resend_dead(None)
    assert store.resend_dead(None) == 1
    assert store.outbox_stats()[0] == 4 and store.dead_letter_count() == 0
    # A resent message comes after everything queued (new seq), so no cursor skips it.
    assert json.loads(reader.peek(0, 10)[-1].body)["text"] == "m1"
    reader.close()
    store.close()


def test_seq_persists_and_grows(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.db")
    assert [s.next_seq(), s.next_seq()] == [1, 2]
    s.close()
    s = Store(tmp_path / "a.db")
    assert s.next_seq() == 3
    s.close()


def test_commands_lifecycle(store: Store) -> None:
    store.command_start({"id": "c-1", "type": "disable", "sim_id": ICCID}, now=T0)
    assert [c.id for c in store.commands_running()] == ["c-1"]
    store.command_finish("c-1", {"ok": True, "state": "disabled"}, now=T0 + 1)
    [c] = store.commands_unreported()
    assert c.result == {"ok": True, "state": "disabled"}
    store.command_reported("c-1")
    assert store.commands_unreported() == [] and store.command("c-1").reported  # type: ignore[union-attr]


def test_desired_state_survives_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.db")
    s.set_desired(ICCID, enabled=False, now=T0)
    s.set_desired(ICCID, forward="+79007777777", set_forward=True, now=T0)
    s.close()
    s = Store(tmp_path / "a.db")
    row = s.sims()[ICCID]
    assert row.desired_enabled is False and row.desired_forward == "+79007777777"
    s.close()


def test_wal_and_full_sync(store: Store) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_driver_state_is_durable_per_device(tmp_path: Path) -> None:
    """DriverContext.state's table: per device, overwritten in place, kept across a reopen."""
    path = tmp_path / "agent.db"
    store = Store(path)
    assert store.driver_state_get("gw1", "cursor") is None
    store.driver_state_set("gw1", "cursor", "17")
    store.driver_state_set("gw1", "cursor", "18")
    store.driver_state_set("gw2", "cursor", "3")
    store.close()
    store = Store(path)
    assert store.driver_state_get("gw1", "cursor") == "18"
    assert store.driver_state_get("gw2", "cursor") == "3"
    assert store.driver_state_get("gw1", "boot") is None
    store.close()


def test_malformed_parts_are_flagged_with_their_raw_bytes(store: Store) -> None:
    """A part the driver decoded despite a defect (SmsPart.malformed) reaches the hub as text
    with a ``malformed`` reason and the raw bytes of every part; others carry neither."""
    from dataclasses import replace

    store.ingest([part("plain")], now=T0, reassembly_timeout_s=60)
    one = replace(part("Movistar: hola"), malformed="TP-UD carries 30 octet(s) more")
    store.ingest([one], now=T0, reassembly_timeout_s=60)
    first = part("abc", ref=5, no=1, total=2)
    second = replace(part("def", ref=5, no=2, total=2), malformed="too long")
    store.ingest([second], now=T0, reassembly_timeout_s=60)
    store.ingest([first], now=T0, reassembly_timeout_s=60)
    plain, single, multi = bodies(store)
    assert "malformed" not in plain and "raw" not in plain
    assert single["text"] == "Movistar: hola" and single["complete"] is True
    assert single["malformed"] == "TP-UD carries 30 octet(s) more"
    assert single["raw"] == [one.raw.hex().upper()]
    assert multi["text"] == "abcdef" and multi["complete"] is True
    assert multi["malformed"] == "part 2: too long"
    assert multi["raw"] == [first.raw.hex().upper(), second.raw.hex().upper()]


def test_database_of_the_previous_schema_gains_the_malformed_column(tmp_path: Path) -> None:
    """A database of the previous schema keeps its waiting parts and gets the new column."""
    from agent.store import MIGRATIONS

    path = tmp_path / "agent.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:-1]:
        db.executescript(script)
    db.execute(
        "INSERT INTO parts (part_id, iccid, sender, ref_bits, ref, part_no, total, encoding,"
        " text, data, raw, sent_at, flash, received_at) VALUES ('p1', ?, 'VKcom', 8, 5, 1, 2,"
        " 'gsm7', 'abc', x'', x'01', NULL, 0, ?)",
        (ICCID, T0),
    )
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    db.commit()
    db.close()
    store = Store(path)
    try:
        store.ingest([part("def", ref=5, no=2, total=2)], now=T0, reassembly_timeout_s=60)
        [body] = bodies(store)
    finally:
        store.close()
    assert body["text"] == "abcdef" and "malformed" not in body
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()
