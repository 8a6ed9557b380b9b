"""1:1 chat: exactly once, in order, through restarts on either side; receipts; bad input."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conftest import NodeFactory, RunningNode, raw_link, run_cli
from lannode.chat.service import new_message_id
from lannode.core.chat import (
    BadFrame,
    ChatError,
    ChatMessage,
    MessageFrame,
    check_text,
    decode_frame,
    dm_conversation,
    encode_frame,
)
from lannode.core.link import CHANNEL_CHAT
from lannode.net.api_client import RemoteError


def message(key: SigningKey, to: str, text: str = "hi", seq: int = 1) -> ChatMessage:
    from lannode.identity import node_id_for

    me = node_id_for(bytes(key.verify_key))
    return ChatMessage(new_message_id(), dm_conversation(me, to), bytes(key.verify_key), seq, seq, 1000, text).signed(key)


def test_a_message_survives_its_frame_and_a_forgery_does_not() -> None:
    key = SigningKey.generate()
    m = message(key, "b" * 24, "Grüße 👋")
    frame = decode_frame(encode_frame(MessageFrame(m)))
    assert isinstance(frame, MessageFrame) and frame.message == m
    assert json.loads(m.body()) == m.to_json() and ChatMessage.from_json(json.loads(m.body())) == m
    body = json.loads(encode_frame(MessageFrame(m)))
    body["m"]["text"] = "changed"
    forged = decode_frame(json.dumps(body).encode())
    assert isinstance(forged, MessageFrame) and not forged.message.verify()
    with pytest.raises(BadFrame, match="signature"):
        ChatMessage.from_json(body["m"])


def test_text_limits() -> None:
    with pytest.raises(ChatError):
        check_text("   ")
    with pytest.raises(ChatError):
        check_text("x" * (16 * 1024 + 1))
    check_text("x" * (16 * 1024))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.from_regex(r'\{"t":"(msg|ack|read)".{0,80}\}', fullmatch=True).map(str.encode)))
def test_any_frame_bytes_decode_or_raise_bad_frame(data: bytes) -> None:
    try:
        decode_frame(data)
    except BadFrame:
        pass


def test_the_recipient_queue_resends_in_order_and_skips_what_was_acknowledged() -> None:
    from lannode.chat.outbox import Pending, RecipientQueue

    q = RecipientQueue()
    items = [Pending(f"m{i}", "msg", b"") for i in range(5)]
    for item in items:
        q.add(item)
    assert [i.id for i in q.due] == ["m0", "m1", "m2", "m3", "m4"]
    for deadline, item in zip([3.0, 1.0, 1.0, 2.0], list(q.due)[:4]):  # sent: waiting for receipts
        item.deadline = deadline
        q.wait_for_receipt(item)
        q.due.popleft()
    q.acknowledge("m2")
    assert q.next_deadline() == 1.0
    assert [i.id for i in q.expired(1.5)] == ["m1"]  # m2's receipt came; m0 and m3 not yet due
    assert q.next_deadline() == 2.0
    items[3].deadline = 9.0  # sent again meanwhile: its old deadline no longer counts
    q.wait_for_receipt(items[3])
    assert q.expired(5.0) == [items[0]] and q.next_deadline() == 9.0
    # m4 is still due; its receipt arrives first (a data channel carried it): it is skipped
    q.acknowledge("m4")
    q.drop_acknowledged()
    assert not q.due
    # the peer came back: everything waiting goes at once
    q.retry_now()
    assert [i.id for i in q.expired(0.0)] == ["m3"] and q.next_deadline() == math.inf and not q.waiting


def test_sends_ready_together_share_one_commit_led_by_the_first(tmp_path: Path) -> None:
    """The first ticket of a batch commits it after one scheduler pass; whatever is
    queued meanwhile (other sends, a receipt's callback) rides in the same transaction,
    and a bad statement list fails alone."""
    from lannode.chat.db import ChatDb, GroupCommit

    async def main() -> None:
        db = ChatDb(tmp_path / "chat.sqlite")
        counts: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            commit = GroupCommit(db, nursery)

            async def send(i: int) -> None:
                counts[f"m{i}"] = await commit.commit([("INSERT INTO outbox (id, recipient, kind) VALUES (?, 'r', 'msg')", (f"m{i}",))])

            def receipt() -> None:  # a callback's statements, queued by a task ready at the same time
                commit.submit([("INSERT INTO outbox (id, recipient, kind) VALUES ('cb', 'r', 'msg')", ())], lambda c: counts.__setitem__("cb", c))

            async def receipt_task() -> None:
                receipt()

            for i in range(5):
                nursery.start_soon(send, i)
            nursery.start_soon(receipt_task)
        assert commit.transactions == 1
        assert counts == {**{f"m{i}": [1] for i in range(5)}, "cb": [1]}
        # alone, a send commits by itself; a failing list fails alone, the others go in
        await commit.commit([("INSERT INTO outbox (id, recipient, kind) VALUES ('alone', 'r', 'msg')", ())])
        assert commit.transactions == 2
        async with trio.open_nursery() as nursery:
            commit = GroupCommit(db, nursery)
            outcome: dict[str, Any] = {}

            async def attempt(name: str, sql: str) -> None:
                try:
                    outcome[name] = await commit.commit([(sql, ())])
                except ChatError as exc:
                    outcome[name] = str(exc)

            nursery.start_soon(attempt, "good", "INSERT INTO outbox (id, recipient, kind) VALUES ('g', 'r', 'msg')")
            nursery.start_soon(attempt, "bad", "INSERT INTO no_such_table VALUES (1)")
        assert outcome["good"] == [1] and "could not be stored" in outcome["bad"]
        db.close()

    trio.run(main)


def test_chat_db_checkpoints_in_a_worker_thread(tmp_path: Path) -> None:
    from lannode.chat.db import CHECKPOINT_EVERY, ChatDb, GroupCommit

    async def main() -> None:
        db = ChatDb(tmp_path / "chat.sqlite")
        async with trio.open_nursery() as nursery:
            commit = GroupCommit(db, nursery)
            for i in range(CHECKPOINT_EVERY + 1):
                await commit.commit([("INSERT INTO outbox (id, recipient, kind) VALUES (?, 'r', 'read')", (f"m{i}",))])
        assert db.checkpoints == 1  # once, after CHECKPOINT_EVERY commits; SQLite itself runs none
        assert db.query("PRAGMA wal_autocheckpoint")[0][0] == 0
        db.close()

    trio.run(main)
    assert sqlite3.connect(tmp_path / "chat.sqlite").execute("SELECT COUNT(*) FROM outbox").fetchone() == (CHECKPOINT_EVERY + 1,)


# -- real daemons --------------------------------------------------------------------------------


def network(nodes: NodeFactory, *names: str) -> list[RunningNode]:
    started = [nodes.start(n) for n in names]
    for node in started:
        node.wait_until(lambda node=node: sum(p["state"] == "alive" for p in node.call("peer.list")) == len(started) - 1, what="everyone alive")
    return started


def log(node: RunningNode, peer: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = node.call("chat.log", peer=peer, limit=500)
    return result


def test_messages_arrive_exactly_once_in_order_with_delivery_and_read_receipts(nodes: NodeFactory) -> None:
    a, b, c = network(nodes, "ann", "ben", "cat")
    sent = [a.call("chat.send", peer="ben", text=f"message {i}") for i in range(25)]
    b.wait_until(lambda: len(log(b, "ann")) == 25, what="25 messages at ben")
    received = log(b, "ann")
    assert [m["text"] for m in received] == [f"message {i}" for i in range(25)]
    assert [m["id"] for m in received] == [m["id"] for m in sent]
    assert all(m["direction"] == "in" for m in received)
    a.wait_until(lambda: all(m["delivered_at"] for m in log(a, "ben")), what="delivery receipts")
    time.sleep(1)  # retries that might duplicate would have happened by now
    assert len(log(b, "ann")) == 25 and b.status()["chat"]["received"] == 25
    # each receipt counted once, and the outbox emptied (on disk too: nothing is sent again after a restart)
    assert a.status()["chat"]["delivered"] == 25 and a.status()["chat"]["outbox"] == 0
    with sqlite3.connect(a.home.path / "chat.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM receipts WHERE delivered_at IS NULL").fetchone() == (0,)
    # ben reads two; ann sees the read receipts
    b.call("chat.read", ids=[received[0]["id"], received[1]["id"]])
    a.wait_until(lambda: [bool(m["read_at"]) for m in log(a, "ben")][:3] == [True, True, False], what="read receipts")
    # a reply sorts after what it answers, on both sides
    b.call("chat.send", peer="ann", text="got them")
    a.wait_until(lambda: log(a, "ben")[-1]["text"] == "got them", what="the reply")
    assert [m["text"] for m in log(a, "ben")] == [m["text"] for m in log(b, "ann")]
    # the third node never holds any of it
    assert c.call("chat.conversations") == []
    assert not (c.home.path / "chat.sqlite").exists() or b"message 3" not in (c.home.path / "chat.sqlite").read_bytes()


def test_a_message_to_a_stopped_peer_is_delivered_when_it_returns(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    b_id = b.status()["node_id"]
    b.stop()
    a.wait_until(lambda: {p["node_id"]: p["state"] for p in a.call("peer.list")}[b_id] == "left", what="ben gone")
    result = run_cli("chat", "send", b_id[:8], "are you there?", "--json", "--home", str(a.home.path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["delivered_at"] is None
    b2 = nodes.start_on(b.home, name="ben")
    b2.wait_until(lambda: [m["text"] for m in log(b2, "ann")] == ["are you there?"], timeout=30, what="delivery after the return")
    a.wait_until(lambda: log(a, "ben")[0]["delivered_at"] is not None, what="the delivery receipt")


def test_messages_handed_to_a_link_whose_peer_then_dies_are_sent_again(nodes: NodeFactory) -> None:
    """With the link open, a message goes from chat.send straight to it. The peer, frozen,
    never reads them; killed, it loses them from its socket; restarted, it gets them all
    the same (sent again for want of a receipt), once each and in order."""
    import signal

    a, b = network(nodes, "ann", "ben")
    b_id = b.status()["node_id"]
    a.call("chat.send", peer=b_id, text="first")
    a.wait_until(lambda: log(a, "ben")[0]["delivered_at"] is not None, what="the first receipt (the link is open)")
    b.process.send_signal(signal.SIGSTOP)
    try:
        for i in range(3):
            assert a.call("chat.send", peer=b_id, text=f"into the void {i}")["delivered_at"] is None
        time.sleep(0.5)  # on the wire, into ben's socket, never read
    finally:
        b.process.send_signal(signal.SIGKILL)
        b.process.send_signal(signal.SIGCONT)
    b.process.wait(10)
    b2 = nodes.start_on(b.home, name="ben")
    want = ["first"] + [f"into the void {i}" for i in range(3)]
    b2.wait_until(lambda: [m["text"] for m in log(b2, "ann")] == want, timeout=40, what="the lost messages sent again")
    a.wait_until(lambda: all(m["delivered_at"] for m in log(a, "ben")), timeout=20, what="their receipts")
    time.sleep(1)
    assert [m["text"] for m in log(b2, "ann")] == want


def test_a_sender_restarted_with_a_full_outbox_still_delivers(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    b_id = b.status()["node_id"]
    b.stop()
    for i in range(3):
        a.call("chat.send", peer=b_id, text=f"while you were out {i}")
    a.stop()
    b2 = nodes.start_on(b.home, name="ben")
    a2 = nodes.start_on(a.home, name="ann")
    b2.wait_until(lambda: [m["text"] for m in log(b2, "ann")] == [f"while you were out {i}" for i in range(3)], timeout=30, what="the outbox delivered after both restarts")
    a2.wait_until(lambda: all(m["delivered_at"] for m in log(a2, "ben")), what="receipts after the restart")
    text = run_cli("chat", "log", "ben", "--home", str(a2.home.path)).stdout
    assert "while you were out 2 (delivered)" in text


OLD_TABLES = """
PRAGMA user_version = 0;  -- session 9 kept no schema version
BEGIN;
CREATE TABLE outbox_old (id TEXT NOT NULL, recipient TEXT NOT NULL, kind TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                         next_try REAL NOT NULL DEFAULT 0, PRIMARY KEY (id, recipient, kind));
INSERT INTO outbox_old SELECT id, recipient, kind, attempts, next_try FROM outbox;
DROP TABLE outbox; ALTER TABLE outbox_old RENAME TO outbox;
CREATE TABLE receipts_old (id TEXT NOT NULL, peer TEXT NOT NULL, delivered_at INTEGER, read_at INTEGER, PRIMARY KEY (id, peer));
INSERT INTO receipts_old SELECT * FROM receipts;
DROP TABLE receipts; ALTER TABLE receipts_old RENAME TO receipts;
CREATE INDEX messages_by_sender ON messages (conversation, sender, seq);
COMMIT;
"""


def test_a_home_from_before_without_rowid_keeps_its_outbox_and_delivers_it(nodes: NodeFactory) -> None:
    """chat.sqlite as session 9 left it (rowid outbox and receipts, a third index): the
    tables are rebuilt on start, and what waited in the outbox still goes out."""
    a, b = network(nodes, "ann", "ben")
    b_id = b.status()["node_id"]
    a.call("chat.send", peer=b_id, text="before")
    a.wait_until(lambda: log(a, "ben")[0]["delivered_at"] is not None, what="the first receipt")
    b.stop()
    a.call("chat.send", peer=b_id, text="waiting in the old outbox")
    a.stop()
    db = sqlite3.connect(a.home.path / "chat.sqlite")
    db.executescript(OLD_TABLES)
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (1,)
    db.close()
    a2 = nodes.start_on(a.home, name="ann")
    b2 = nodes.start_on(b.home, name="ben")
    b2.wait_until(lambda: [m["text"] for m in log(b2, "ann")] == ["before", "waiting in the old outbox"], timeout=30, what="the migrated outbox delivered")
    a2.wait_until(lambda: all(m["delivered_at"] for m in log(a2, "ben")), what="its receipt")
    db = sqlite3.connect(a2.home.path / "chat.sqlite")
    tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL"))
    db.close()
    assert "WITHOUT ROWID" in tables["outbox"] and "WITHOUT ROWID" in tables["receipts"]
    assert "messages_by_sender" not in tables and "messages_order" in tables
    assert [m["text"] for m in log(a2, "ben")] == ["before", "waiting in the old outbox"]


def test_bad_chat_input_gets_clear_errors_and_harms_nothing(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    with pytest.raises(RemoteError, match="at most 16384 bytes"):
        a.call("chat.send", peer="ben", text="x" * 20000)
    with pytest.raises(RemoteError, match="no peer named"):
        a.call("chat.send", peer="nobody", text="hello")
    with pytest.raises(RemoteError, match="no conversation"):
        a.call("chat.log", conversation="group/none")
    # a stranger links to ben and sends garbage, a forged message and someone else's 1:1 message
    ben = next(p for p in a.call("peer.list") if p["name"] == "ben")
    with raw_link(SigningKey.generate(), ben) as (conn, sock):
        conn.send_message(CHANNEL_CHAT, b"\xff not json")
        forged = message(SigningKey.generate(), ben["node_id"])  # signed by someone else than the link's peer
        conn.send_message(CHANNEL_CHAT, encode_frame(MessageFrame(forged)))
        sock.sendall(conn.data_to_send())
        b.wait_until(lambda: b.status()["chat"]["rejected"] >= 2, what="both refused and counted")
    assert b.call("chat.conversations") == []
    with pytest.raises(RemoteError, match="list of 1 to 100"):
        a.call("chat.send", peer="ben", texts=[])
    with pytest.raises(RemoteError, match="list of 1 to 100"):
        a.call("chat.send", peer="ben", texts=["ok", 3])
    # and chat still works, one message or several in one call
    a.call("chat.send", peer="ben", text="still fine")
    batch = a.call("chat.send", peer="ben", texts=["one", "two", "three"])
    assert [m["seq"] for m in batch] == [2, 3, 4]
    b.wait_until(lambda: [m["text"] for m in log(b, "ann")] == ["still fine", "one", "two", "three"], what="normal service")


def test_chat_watch_streams_new_messages(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        from lannode.net.api_client import connect

        async with connect(b.home) as client:
            await client.subscribe("chat.message")
            await trio.to_thread.run_sync(lambda: a.call("chat.send", peer="ben", text="live"))
            with trio.fail_after(20):
                async for topic, data in client.events():
                    seen.append(data)
                    return

    trio.run(watch)
    assert seen[0]["text"] == "live" and seen[0]["direction"] == "in"


def test_a_message_carried_by_a_data_channel_is_stored_once_and_the_link_never_sends_it(nodes: NodeFactory) -> None:
    """What two browser fronts do: A's front asks for a direct send, carries the signed body over
    its data channel, and B's front hands it to B's node with chat.deliver."""
    a, b, c = network(nodes, "ann", "ben", "cat")
    sent = a.call("chat.send", peer="ben", text="over the data channel", direct=True)
    assert sent["body"] and json.loads(sent["body"])["id"] == sent["id"]
    assert b.call("chat.deliver", body=sent["body"]) == {"id": sent["id"], "new": True}
    assert b.call("chat.deliver", body=sent["body"]) == {"id": sent["id"], "new": False}  # a second tab: no duplicate
    a.wait_until(lambda: log(a, "ben")[0]["delivered_at"], what="the receipt, from ben's node over the link")
    time.sleep(2.5)  # past the link's grace: had the receipt not cancelled it, the link copy would have gone
    assert b.status()["chat"]["duplicates"] == 1 and b.status()["chat"]["received"] == 1
    assert [m["text"] for m in log(b, "ann")] == ["over the data channel"] and a.status()["chat"]["outbox"] == 0
    # a direct send whose data channel never carried it still arrives, by the link, after the grace
    late = a.call("chat.send", peer="ben", text="the channel broke", direct=True)
    b.wait_until(lambda: [m["text"] for m in log(b, "ann")][-1:] == ["the channel broke"], what="the link's copy")
    assert log(b, "ann")[-1]["id"] == late["id"]
    # forged, foreign or misdirected bodies are refused, and counted
    forged = json.loads(sent["body"]) | {"text": "changed"}
    for body, words in ((json.dumps(forged), "signed"), ("{", "signed"), (sent["body"], "does not take")):
        target = c if words == "does not take" else b
        with pytest.raises(RemoteError, match=words):
            target.call("chat.deliver", body=body)
    stranger = SigningKey.generate()
    with pytest.raises(RemoteError, match="not a peer"):
        b.call("chat.deliver", body=message(stranger, b.status()["node_id"]).body())
    assert b.status()["chat"]["rejected"] >= 3 and c.status()["chat"]["rejected"] >= 1
