"""The replicated metadata store: CRDT laws in virtual settings, then real daemons replicating."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conftest import NodeFactory, RunningNode, run_cli
from lannode.core import wire
from lannode.core.store import (
    BadEntry,
    Entry,
    ReplicatedMap,
    StoreError,
    decode_entry,
    decode_sync,
    encode_delta,
    encode_digest,
)

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 4)]


def snapshot(m: ReplicatedMap) -> dict[str, bytes | None]:
    return {k: e.value for k, e in m.entries.items()}


def anti_entropy(a: ReplicatedMap, b: ReplicatedMap) -> None:
    """One push-pull exchange, as two nodes do over a link (through the wire encoding)."""
    for x, y in ((a, b), (b, a)):
        kind, _, digest, _ = decode_sync(encode_digest(x.digest(), reply_wanted=True))
        _, _, marks, entries = decode_sync(encode_delta(y.digest(), y.delta_for(digest)))
        x.apply_delta(marks, entries)


operation = st.tuples(st.integers(0, 2), st.sampled_from(["put", "delete"]), st.sampled_from(["a", "b", "c/1", "c/2"]), st.binary(max_size=8), st.integers(0, 50))


@settings(max_examples=60, deadline=None)
@given(st.lists(operation, max_size=25), st.randoms(use_true_random=False))
def test_replicas_converge_whatever_the_order_of_writes_and_exchanges(ops: list[Any], rnd: random.Random) -> None:
    replicas = [ReplicatedMap(k) for k in KEYS]
    clock = 1000
    written: list[Entry] = []
    for who, kind, key, value, step in ops:
        clock += step
        entry = replicas[who].put(key, value, clock) if kind == "put" else replicas[who].delete(key, clock)
        if entry is not None:
            written.append(entry)
        if rnd.random() < 0.3:  # some writes also arrive by gossip, in any order, some twice
            for other in replicas:
                for e in rnd.sample(written, min(3, len(written))):
                    other.merge(e)
    pairs = [(0, 1), (1, 2), (0, 2)]
    rnd.shuffle(pairs)
    for i, j in pairs + pairs:
        anti_entropy(replicas[i], replicas[j])
    assert snapshot(replicas[0]) == snapshot(replicas[1]) == snapshot(replicas[2])
    assert replicas[0].digest() == replicas[1].digest() == replicas[2].digest()


def test_an_entry_that_came_before_the_versions_under_it_is_still_passed_on() -> None:
    a, b, c = (ReplicatedMap(k) for k in KEYS)
    first, second, third = (a.put(key, b"x", 1000 + i) for i, key in enumerate(["k1", "k2", "k3"]))
    assert b.merge(third)  # gossip brought version 3 alone: b's watermark for a stays at 0
    assert b.digest() == c.digest() == {}
    assert b.delta_for(c.digest()) == [third]  # the same digest, and still something to give
    anti_entropy(a, b)
    assert b.delta_for(a.digest()) == [] and a.delta_for(b.digest()) == []
    anti_entropy(b, c)
    assert snapshot(c) == snapshot(a) and c.digest() == a.digest()
    assert [e.version for e in c.delta_for({})] == [first.version, second.version, third.version]


def test_the_later_write_wins_and_a_tie_breaks_the_same_way_everywhere() -> None:
    a, b = ReplicatedMap(KEYS[0]), ReplicatedMap(KEYS[1])
    first = a.put("k", b"1", 1000)
    second = b.put("k", b"2", 1000)  # the same millisecond on another node
    a.merge(second)
    b.merge(first)
    assert a.get("k") == b.get("k")
    winner = max((first, second), key=lambda e: e.rank())
    assert a.get("k") == winner
    # a write made after seeing another wins even if the writer's clock is behind
    b.merge(a.put("k", b"3", 2000))
    late = b.put("k", b"4", 10)  # b's wall clock is far behind
    a.merge(late)
    assert a.get("k") == late and late.timestamp > 2000


def test_a_delete_replicates_and_tombstones_go_after_the_horizon() -> None:
    a, b = ReplicatedMap(KEYS[0], horizon_ms=1000), ReplicatedMap(KEYS[1], horizon_ms=1000)
    b.merge(a.put("k", b"v", 100))
    b.merge(a.delete("k", 200))
    assert b.get("k") is None and b.entries["k"].deleted
    assert b.gc(1100) == []  # not yet past the horizon
    assert b.gc(1300) == ["k"] and "k" not in b.entries


def test_a_node_back_after_the_horizon_drops_what_was_deleted_meanwhile_but_keeps_its_own_news() -> None:
    a, away = ReplicatedMap(KEYS[0], horizon_ms=1000), ReplicatedMap(KEYS[1], horizon_ms=1000)
    anti_entropy(a, away)
    a.put("doomed", b"x", 100)
    anti_entropy(a, away)
    assert away.get("doomed") is not None
    a.delete("doomed", 200)
    a.gc(5000)  # the tombstone is purged while `away` is away
    mine = away.put("written-offline", b"y", 5000)
    assert away.needs_full_resync(last_sync_ms=200, now_ms=5000)
    # full snapshot: ask with an empty digest, merge, prune
    _, _, marks, entries = decode_sync(encode_delta(a.digest(), a.delta_for({})))
    away.apply_delta(marks, entries)
    assert away.prune_after_snapshot(marks, {e.key for e in entries}) == ["doomed"]
    assert away.get("written-offline") == mine
    anti_entropy(a, away)
    assert a.get("written-offline") == mine


def test_forged_and_malformed_entries_are_refused() -> None:
    a = ReplicatedMap(KEYS[0])
    good = ReplicatedMap(KEYS[1]).put("k", b"v", 1)
    forged = Entry(good.key, b"evil", good.origin, good.version, good.timestamp + 1, good.signature)
    assert not a.merge(forged) and a.rejected == 1 and a.get("k") is None
    assert a.merge(good)
    # held now: a copy with its signature and another value or time is still a forgery
    for changed in (Entry(good.key, b"evil", good.origin, good.version, good.timestamp, good.signature), Entry(good.key, good.value, good.origin, good.version, good.timestamp + 1, good.signature)):
        assert not a.merge(changed) and a.get("k") == good
    assert a.rejected == 3
    with pytest.raises(BadEntry):
        decode_entry(good.encode()[:-1])
    with pytest.raises(StoreError):
        a.put("", b"", 1)
    with pytest.raises(StoreError):
        a.put("k", b"x" * (64 * 1024 + 1), 1)


def test_an_entry_gossip_brings_again_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    a = ReplicatedMap(KEYS[0])
    good = ReplicatedMap(KEYS[1]).put("k", b"v", 1)
    checks: list[bytes] = []
    real = wire.signature_ok

    def counted(public_key: bytes, message: bytes, signature: bytes) -> bool:
        checks.append(signature)
        return real(public_key, message, signature)

    monkeypatch.setattr(wire, "signature_ok", counted)
    assert a.merge_gossiped(good.encode()) and len(checks) == 1
    for _ in range(3):
        assert not a.merge_gossiped(good.encode())
    assert len(checks) == 1 and a.rejected == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_sync_messages_raise_only_bad_entry(data: bytes) -> None:
    try:
        decode_sync(data)
    except BadEntry:
        pass


# -- real daemons --------------------------------------------------------------------------------


def get(node: RunningNode, key: str) -> Any:
    try:
        return node.call("store.get", key=key)["value"]
    except Exception:
        return None


def start_network(nodes: NodeFactory, names: list[str]) -> list[RunningNode]:
    started = [nodes.start(name) for name in names]
    ids = [n.status()["node_id"] for n in started]
    for node, own in zip(started, ids):
        node.wait_until(lambda node=node, own=own: sum(p["state"] == "alive" for p in node.call("peer.list")) == len(ids) - 1, what="all peers alive")
    return started


def test_a_write_reaches_every_node_and_a_delete_too(nodes: NodeFactory) -> None:
    a, b, c = start_network(nodes, ["a", "b", "c"])
    result = run_cli("store", "put", "groups/42/name", '"Kitchen"', "--json", "--home", str(a.home.path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value"] == "Kitchen"
    for node in (b, c):
        node.wait_until(lambda node=node: get(node, "groups/42/name") == "Kitchen", what="the write replicated")
    b.call("store.put", key="groups/42/members", value=["a", "b"])
    listed = json.loads(run_cli("store", "ls", "groups/42/", "--json", "--home", str(c.home.path)).stdout) if c.wait_until(lambda: get(c, "groups/42/members"), what="second write") else []
    assert [e["key"] for e in listed] == ["groups/42/members", "groups/42/name"]
    assert run_cli("store", "rm", "groups/42/name", "--home", str(c.home.path)).returncode == 0
    for node in (a, b):
        node.wait_until(lambda node=node: get(node, "groups/42/name") is None, what="the delete replicated")
    missing = run_cli("store", "get", "groups/42/name", "--home", str(a.home.path))
    assert missing.returncode == 1 and "no key" in missing.stderr


def test_concurrent_writes_to_one_key_settle_on_the_same_value_everywhere(nodes: NodeFactory) -> None:
    trio_nodes = start_network(nodes, ["x", "y", "z"])
    for i, node in enumerate(trio_nodes):
        node.call("store.put", key="topic", value=f"from {i}")
    first = trio_nodes[0]
    first.wait_until(lambda: len({json.dumps(n.call("store.get", key="topic")) for n in trio_nodes}) == 1, what="one winner everywhere")


def test_watch_streams_changes_under_a_prefix_only(nodes: NodeFactory) -> None:
    a, b = start_network(nodes, ["a", "b"])
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        from lannode.net.api_client import connect

        async with connect(a.home) as client:
            await client.call("store.watch", prefix="drive/")
            await trio.to_thread.run_sync(lambda: b.call("store.put", key="chat/x", value=1))
            await trio.to_thread.run_sync(lambda: b.call("store.put", key="drive/f1", value={"size": 3}))
            with trio.fail_after(20):
                async for topic, data in client.events():
                    seen.append(data)
                    if data["deleted"]:
                        return
                    # the next change once this one arrived: a watcher may miss states
                    # that were overwritten before they reached it, never the last one
                    await trio.to_thread.run_sync(lambda: b.call("store.delete", key="drive/f1"))

    trio.run(watch)
    assert [(d["key"], d["value"], d["deleted"]) for d in seen] == [("drive/f1", {"size": 3}, False), ("drive/f1", None, True)]


def test_a_node_that_was_down_catches_up_and_its_data_survives_restarts(nodes: NodeFactory) -> None:
    a, b = start_network(nodes, ["a", "b"])
    a.call("store.put", key="before", value=1)
    b.wait_until(lambda: get(b, "before") == 1, what="first write")
    b.stop()
    for i in range(30):  # written while b is down: only anti-entropy can bring these
        a.call("store.put", key=f"while-down/{i}", value=i)
    a.call("store.delete", key="before")
    # new writes are multicast for about a second; after that only anti-entropy can bring them
    time.sleep(3)
    b2 = nodes.start_on(b.home, name="b")
    b2.wait_until(lambda: len(b2.call("store.list", prefix="while-down/")) == 30 and get(b2, "before") is None, timeout=30, what="catch-up by anti-entropy")
    assert b2.status()["store"]["syncs"] >= 1
    a.stop()
    b2.stop()
    alone = nodes.start_on(b.home, name="b")
    assert get(alone, "while-down/29") == 29, "what was stored survives a restart"


def test_the_watch_commands_print_writes_and_messages_as_they_come(nodes: NodeFactory) -> None:
    import select
    import subprocess
    import sys

    a, b = nodes.start("ann"), nodes.start("ben")
    a.wait_until(lambda: any(p["name"] == "ben" and p["state"] == "alive" for p in a.call("peer.list")), what="ben alive")
    store_watch = subprocess.Popen([sys.executable, "-m", "lannode", "store", "watch", "--home", str(a.home.path)], stdout=subprocess.PIPE, text=True)
    chat_watch = subprocess.Popen([sys.executable, "-m", "lannode", "chat", "watch", "--home", str(b.home.path)], stdout=subprocess.PIPE, text=True)

    def first_line(watcher: subprocess.Popen[str], act: Any) -> str:
        """Act until the watcher (which may not have subscribed yet) prints a line."""
        assert watcher.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            act()
            if select.select([watcher.stdout], [], [], 0.5)[0]:
                return watcher.stdout.readline()
        raise AssertionError("the watcher printed nothing")

    try:
        assert first_line(store_watch, lambda: a.call("store.put", key="hello", value="world")) == 'hello\t"world"\n'
        assert first_line(chat_watch, lambda: a.call("chat.send", peer="ben", text="hi ben")).rstrip().endswith(": hi ben")
    finally:
        for watcher in (store_watch, chat_watch):
            watcher.terminate()
            watcher.wait(timeout=10)
