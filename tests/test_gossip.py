"""Real daemons finding each other over multicast on loopback, and shrugging off bad datagrams."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conftest import NodeFactory, RunningNode, raw_link, run_cli, write_config
from lannode.core import messages as m
from lannode.core.link import CHANNEL_MEMBERS
from lannode.core.wire import DatagramCodec
from lannode.home import Home


def peer_states(node: RunningNode) -> dict[str, str]:
    return {peer["node_id"]: peer["state"] for peer in node.call("peer.list")}


def wait_for_states(node: RunningNode, expected: dict[str, str], what: str, timeout: float = 20.0) -> None:
    node.wait_until(lambda: all(peer_states(node).get(k) == v for k, v in expected.items()), timeout=timeout, what=what)


def gossip_address(node: RunningNode) -> tuple[str, int]:
    host, port = node.status()["gossip"]["address"].rsplit(":", 1)
    return host, int(port)


def test_five_nodes_see_each_other_and_notice_kill_stop_and_restart(nodes: NodeFactory) -> None:
    five = [nodes.start(f"n{i}") for i in range(5)]
    ids = [node.status()["node_id"] for node in five]
    for node, own in zip(five, ids):
        wait_for_states(node, {i: "alive" for i in ids if i != own}, "4 peers alive")
        assert own not in peer_states(node)

    killed, stopped, rest = five[0], five[1], five[2:]
    killed.stop(signal.SIGKILL)
    for node in rest:
        wait_for_states(node, {ids[0]: "dead"}, "the killed node dead", timeout=30)

    assert stopped.stop(signal.SIGTERM) == 0
    for node in rest:
        wait_for_states(node, {ids[1]: "left"}, "the stopped node left")

    back = nodes.start_on(killed.home, name="n0")
    for node in rest:
        wait_for_states(node, {ids[0]: "alive"}, "the restarted node alive again")
    wait_for_states(back, {ids[2]: "alive", ids[3]: "alive", ids[4]: "alive"}, "the restarted node sees the others")
    assert all(peer_states(node)[ids[1]] == "left" for node in rest)


def test_peers_lists_name_state_addresses_and_when_last_seen(nodes: NodeFactory) -> None:
    a, b = nodes.start("alpha"), nodes.start("beta")
    b_id = b.status()["node_id"]
    wait_for_states(a, {b_id: "alive"}, "beta alive")
    result = run_cli("peers", "--json", "--home", str(a.home.path))
    assert result.returncode == 0, result.stderr
    (peer,) = json.loads(result.stdout)
    assert peer["node_id"] == b_id and peer["name"] == "beta" and peer["state"] == "alive"
    assert peer["addresses"]["gossip"] == "{}:{}".format(*gossip_address(b))
    assert set(peer) >= {"node_id", "name", "state", "addresses", "capabilities", "incarnation", "since", "last_seen"}
    text = run_cli("peers", "--home", str(a.home.path))
    assert "beta" in text.stdout and "alive" in text.stdout and b_id in text.stdout


def test_a_peer_event_reaches_api_subscribers(nodes: NodeFactory) -> None:
    import trio

    from lannode.net.api_client import connect

    a = nodes.start("watcher")
    seen: list[tuple[str, Any]] = []

    async def watch() -> None:
        async with connect(a.home) as client:
            await client.subscribe("peer.*")
            await trio.to_thread.run_sync(nodes.start, "newcomer")
            with trio.fail_after(20):
                async for topic, data in client.events():
                    seen.append((topic, data))
                    if topic == "peer.state" and data["state"] == "alive":
                        return

    trio.run(watch)
    topic, data = seen[-1]
    assert data["name"] == "newcomer" and data["previous"] is None


def send_to(address: tuple[str, int], *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in datagrams:
            sock.sendto(data, address)


def test_bad_datagrams_are_dropped_counted_and_the_node_carries_on(nodes: NodeFactory) -> None:
    a, b = nodes.start("a"), nodes.start("b")
    b_id = b.status()["node_id"]
    wait_for_states(a, {b_id: "alive"}, "b alive")
    target = gossip_address(a)
    stranger = SigningKey.generate()
    codec = DatagramCodec(stranger, epoch=1)
    good = codec.encode(m.encode_payload([m.encode_message(m.Hello())]))
    forged = bytearray(codec.encode(m.encode_payload([m.encode_message(m.Ack(1))])))
    forged[-1] ^= 1
    mallory_presence = m.Presence(bytes(SigningKey.generate().verify_key), 1, "mallory", "127.0.0.1", 9, 0, 0).signed(stranger)
    send_to(
        target,
        good,
        good,  # a replay
        bytes(forged),  # a bad signature
        good[:20],  # truncated
        b"\0" * 1500,  # oversized
        os.urandom(300),  # random bytes
        DatagramCodec(stranger, epoch=1, network_key=b"x" * 32).encode(b"\x01"),  # sealed with a key we do not hold
        codec.encode(b"\x01\x01\x00\x02zz"),  # a payload that does not parse
        codec.encode(m.encode_payload([m.encode_message(mallory_presence)])),  # someone else's record, signed by the stranger
    )
    # the group hears junk too
    group, port = nodes.gossip
    send_to((group, port), os.urandom(64))

    def dropped() -> dict[str, int]:
        counts: dict[str, int] = a.status()["gossip"]["dropped"]
        return counts

    expected = {"replay", "signature", "truncated", "oversized", "sealed", "malformed", "forged"}
    a.wait_until(lambda: expected <= set(dropped()), what=f"drops counted for {expected}")
    assert sum(dropped().values()) >= 9
    text = run_cli("status", "--home", str(a.home.path)).stdout
    assert "replay 1" in text and "forged 1" in text
    assert a.process.poll() is None
    assert peer_states(a) == {b_id: "alive"}, "nothing the stranger sent made it a member"


def test_with_a_network_key_only_members_see_each_other(nodes: NodeFactory) -> None:
    key = "a" * 43 + "="
    homes = [Home(nodes.root / f"keyed-{i}") for i in range(2)] + [Home(nodes.root / "open")]
    for i, home in enumerate(homes):
        write_config(home.path, f"k{i}", gossip=nodes.gossip)
    for home in homes[:2]:
        assert run_cli("network-key", "set", key, "--home", str(home.path)).returncode == 0
    k0, k1, outsider = (nodes.start_on(home, name=f"k{i}") for i, home in enumerate(homes))
    k1_id = k1.status()["node_id"]
    wait_for_states(k0, {k1_id: "alive"}, "the other member alive")
    k0.wait_until(lambda: k0.status()["gossip"]["dropped"].get("unsealed", 0) > 0, what="the outsider's datagrams dropped as unsealed")
    outsider.wait_until(lambda: outsider.status()["gossip"]["dropped"].get("sealed", 0) > 0, what="the members' datagrams dropped as sealed")
    assert set(peer_states(k0)) == {k1_id}
    assert peer_states(outsider) == {}


@pytest.fixture(scope="module")
def listening_node(module_nodes: NodeFactory) -> tuple[RunningNode, tuple[str, int]]:
    node = module_nodes.start("listener")
    return node, gossip_address(node)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=1400))
def test_random_bytes_never_hurt_a_running_node(listening_node: tuple[RunningNode, tuple[str, int]], data: bytes) -> None:
    node, address = listening_node
    send_to(address, data)
    assert node.process.poll() is None


def test_after_the_random_bytes_the_node_still_answers(listening_node: tuple[RunningNode, tuple[str, int]]) -> None:
    node, _ = listening_node
    node.wait_until(lambda: sum(node.status()["gossip"]["dropped"].values()) >= 60, what="every random datagram dropped and counted")


def test_an_idle_node_sleeps_between_protocol_rounds(nodes: NodeFactory) -> None:
    # a timer that woke itself once spun a whole core; the protocol needs a few rounds a second
    a, b = nodes.start("a"), nodes.start("b")
    wait_for_states(a, {b.status()["node_id"]: "alive"}, "b alive")
    before = a.status()["gossip"]["wakeups"]
    time.sleep(3)
    per_second = (a.status()["gossip"]["wakeups"] - before) / 3
    assert per_second < 100, f"{per_second:.0f} timer rounds a second"


def test_a_joiner_fetches_the_view_over_a_link_and_a_bad_view_harms_nothing(nodes: NodeFactory) -> None:
    a, b = nodes.start("alpha"), nodes.start("beta")
    a_id, b_id = a.status()["node_id"], b.status()["node_id"]
    wait_for_states(a, {b_id: "alive"}, "beta alive")
    c = nodes.start("gamma")
    c_id = c.status()["node_id"]
    wait_for_states(c, {a_id: "alive", b_id: "alive"}, "gamma sees both")
    # gamma's first answer made it ask that node for its whole view, over the link
    c.wait_until(lambda: c.status()["gossip"]["syncs"] >= 1, what="gamma merged a view")
    gossip = c.status()["gossip"]
    assert gossip["sync_bytes_received"] > 100 and gossip["view_exchanges"] >= 1
    assert all(n.status()["gossip"]["view_exchange_failures"] == 0 for n in (a, b, c))

    # hostile views on the same channel: refused whole, counted, and nothing else changes
    beta = next(p for p in a.call("peer.list") if p["node_id"] == b_id)
    stranger = SigningKey.generate()
    forged = m.Presence(bytes(stranger.verify_key), 1 << 32, "mallory", "127.0.0.1", 9, 0, 0, signature=bytes(64))
    with raw_link(SigningKey.generate(), beta) as (conn, sock):
        conn.send_message(CHANNEL_MEMBERS, b"\x01\xff\x00")  # a payload version that does not exist
        conn.send_message(CHANNEL_MEMBERS, b"\x01" + m.encode_payload([m.encode_message(forged)]))
        conn.send_message(CHANNEL_MEMBERS, b"")
        sock.sendall(conn.data_to_send())
        b.wait_until(lambda: b.status()["gossip"]["dropped"].get("forged", 0) >= 1 and b.status()["gossip"]["dropped"].get("malformed", 0) >= 1, what="both views refused and counted")
    states = peer_states(b)
    assert forged.node_id not in states and states[a_id] == "alive" and states[c_id] == "alive"


def test_a_datagram_that_finds_a_bug_is_counted_and_the_gossip_goes_on() -> None:
    """The service around the protocol, with a bug planted in it: the node must not go down."""
    import trio

    from lannode.core.membership import Membership
    from lannode.net.gossip import GossipService, GossipSettings

    class Buggy(Membership):
        def datagram_received(self, data: bytes, address: tuple[str, int], now: float) -> None:
            if data == b"boom":
                raise RuntimeError("a planted bug")
            super().datagram_received(data, address, now)

    events: list[object] = []

    def on_event(event: object) -> None:
        events.append(event)
        raise RuntimeError("a listener's bug")

    async def main() -> None:
        group, port = "239.255.7.9", 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        service = GossipService(lambda address: Buggy(SigningKey.generate(), epoch=1, name="n", address=address), GossipSettings("127.0.0.1", group, port, 0), on_event)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(service.run)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(3):
                    sock.sendto(b"boom", address)
                stranger = SigningKey.generate()
                presence = m.Presence(bytes(stranger.verify_key), 1 << 32, "stranger", "127.0.0.1", 9, 0, 0).signed(stranger)
                sock.sendto(DatagramCodec(stranger, epoch=1).encode(m.encode_payload([m.encode_message(presence)])), address)
            with trio.fail_after(5):
                while service.membership is None or not service.membership.members:
                    await trio.sleep(0.01)
            dropped = service.membership.codec.dropped
            assert dropped["error"] == 3 and dropped["event_error"] >= 1 and events
            nursery.cancel_scope.cancel()

    trio.run(main)
