"""Membership (SWIM + Lifeguard) as a user relies on it, in virtual time.

These drive the real sans-IO protocol objects through sim/'s virtual LAN: real
encoding, loss and partitions, minutes of protocol in seconds. Signatures are the
simulator's stand-in (a forgery still fails: tests/test_sim.py checks it).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from lannode.core import messages as m
from lannode.core.ids import node_id_for
from lannode.core.membership import (
    TRANSITIONS,
    Membership,
    MembershipConfig,
    MemberStateChanged,
    State,
    Suspicion,
)
from lannode.core.wire import MAX_DATAGRAM, MAX_PAYLOAD, DatagramCodec, Dropped
from sim.virtualnet import SimNode, VirtualNetwork


def transitions_of(node: SimNode, about: SimNode) -> list[State]:
    return [e.state for _, e in node.events if isinstance(e, MemberStateChanged) and e.node_id == about.node_id]


def test_five_nodes_see_each_other_within_a_moment() -> None:
    net = VirtualNetwork(seed=1)
    nodes = [net.add(f"n{i}") for i in range(5)]
    assert net.run_until(0.25, lambda: net.all_see(nodes, State.ALIVE))
    names = {node.membership.members[other.node_id].presence.name for node in nodes[:1] for other in nodes[1:]}
    assert names == {"n1", "n2", "n3", "n4"}


def test_a_killed_node_is_suspected_then_declared_dead_by_everyone() -> None:
    net = VirtualNetwork(seed=2)
    nodes = [net.add(f"n{i}") for i in range(5)]
    net.run_for(3)
    victim, others = nodes[0], nodes[1:]
    net.kill(victim)
    assert net.run_until(net.now + 10, lambda: net.all_see(others, State.DEAD, [victim]))
    for node in others:
        assert transitions_of(node, victim)[-2:] == [State.SUSPECT, State.DEAD]
    # and nobody else was hurt
    assert net.all_see(others, State.ALIVE)


def test_the_alive_members_are_those_held_alive_through_a_suspicion_a_death_and_a_return() -> None:
    net = VirtualNetwork(seed=5)
    nodes = [net.add(f"n{i}") for i in range(5)]
    net.run_for(3)
    victim, watcher = nodes[0], nodes[1]

    def by_state() -> list[str]:
        return [x.node_id for x in watcher.membership.members.values() if x.state is State.ALIVE]

    seen: set[State | None] = set()

    def agrees() -> bool:
        assert [x.node_id for x in watcher.membership.alive_members()] == by_state()
        seen.add(watcher.state_of(victim))
        return watcher.state_of(victim) is State.DEAD

    assert agrees() is False and len(by_state()) == 4
    net.kill(victim)
    assert net.run_until(net.now + 10, agrees)
    assert seen == {State.ALIVE, State.SUSPECT, State.DEAD}
    assert victim.node_id not in by_state()
    back = net.restart(victim)
    assert net.run_until(net.now + 2, lambda: net.all_see(nodes[1:] + [back], State.ALIVE))
    assert [x.node_id for x in watcher.membership.alive_members()] == by_state() and len(by_state()) == 4


def test_the_alive_members_of_a_warm_started_group_follow_its_changes() -> None:
    """Warm-started nodes share member objects and copy one before changing it: what
    alive_members() keeps must follow the copies, a crash, a restart and a join."""
    net = VirtualNetwork(seed=6)
    nodes = net.add_warm([f"w{i}" for i in range(20)])
    watchers = nodes[1:6]

    def agrees() -> bool:
        for node in watchers:
            expected = [x for x in node.membership.members.values() if x.state is State.ALIVE]
            kept = node.membership.alive_members()
            assert len(kept) == len(expected) and all(a is b for a, b in zip(kept, expected))
        return False

    net.run_until(net.now + 2, agrees)
    net.kill(nodes[0])
    net.run_until(net.now + 10, agrees)
    assert all(node.state_of(nodes[0]) is State.DEAD for node in watchers)
    net.restart(nodes[0])
    net.add("newcomer")
    net.run_until(net.now + 3, agrees)
    assert all(len(node.membership.alive_members()) == 20 for node in watchers)


def test_a_clean_stop_is_left_not_dead_and_a_restart_comes_back_alive() -> None:
    net = VirtualNetwork(seed=3)
    nodes = [net.add(f"n{i}") for i in range(5)]
    net.run_for(3)
    leaver, others = nodes[0], nodes[1:]
    net.stop(leaver)
    assert net.run_until(net.now + 0.1, lambda: net.all_see(others, State.LEFT, [leaver]))
    net.run_for(10)
    assert net.all_see(others, State.LEFT, [leaver]), "left must stay left, never turn dead"
    back = net.restart(leaver)
    assert back.node_id == leaver.node_id
    assert net.run_until(net.now + 1, lambda: net.all_see(others + [back], State.ALIVE))


def test_a_killed_node_that_restarts_outranks_its_own_death() -> None:
    net = VirtualNetwork(seed=4)
    nodes = [net.add(f"n{i}") for i in range(4)]
    net.run_for(2)
    net.kill(nodes[0])
    assert net.run_until(net.now + 10, lambda: net.all_see(nodes[1:], State.DEAD, [nodes[0]]))
    back = net.restart(nodes[0])
    assert net.run_until(net.now + 1, lambda: net.all_see(nodes[1:] + [back], State.ALIVE))


def test_no_false_deaths_at_ten_percent_loss_and_suspicions_get_refuted() -> None:
    net = VirtualNetwork(seed=5, loss=0.10)
    nodes = [net.add(f"n{i}") for i in range(10)]
    assert net.run_until(2, lambda: net.all_see(nodes, State.ALIVE))
    net.run_for(120)
    deaths = [e for n in nodes for _, e in n.events if isinstance(e, MemberStateChanged) and e.state is State.DEAD]
    assert deaths == []
    assert net.all_see(nodes, State.ALIVE)
    # loss did cause suspicions, and the suspects refuted them
    assert sum(n.membership.counters.refutations for n in nodes) > 0


def test_a_partition_is_detected_and_heals() -> None:
    net = VirtualNetwork(seed=6, loss=0.10)
    nodes = [net.add(f"n{i}") for i in range(10)]
    net.run_for(3)
    left_half, right_half = nodes[:5], nodes[5:]
    net.partition(left_half, right_half)
    assert net.run_until(net.now + 20, lambda: net.all_see(left_half, State.DEAD, right_half) and net.all_see(right_half, State.DEAD, left_half))
    assert net.all_see(left_half, State.ALIVE) and net.all_see(right_half, State.ALIVE)
    net.heal()
    assert net.run_until(net.now + 15, lambda: net.all_see(nodes, State.ALIVE))


def test_every_datagram_fits_in_one_unfragmented_packet_even_with_many_claims() -> None:
    net = VirtualNetwork(seed=7, loss=0.05)
    nodes = [net.add(f"node-with-a-rather-long-name-{i:02d}-" + "x" * 30) for i in range(20)]
    net.run_for(3)
    for victim in nodes[:6]:
        net.kill(victim)
    net.run_for(10)
    assert 0 < net.largest_datagram <= MAX_DATAGRAM


def test_with_a_network_key_outsiders_neither_read_nor_join() -> None:
    members = VirtualNetwork(seed=8, network_key=b"k" * 32)
    a, b = members.add("kitchen-laptop"), members.add("b")
    members.run_for(1)
    outsider_codec = DatagramCodec(SigningKey.generate(), epoch=1)
    outsider = Membership(SigningKey.generate(), epoch=1, name="outsider", address=("127.0.0.9", 1))
    outsider.start(0)
    outsider.tick(0)
    for out in outsider.take_outgoing():
        a.membership.datagram_received(out.data, ("127.0.0.9", 1), members.now)
    assert a.membership.codec.dropped["unsealed"] >= 1
    assert set(a.membership.members) == {b.node_id}
    # and what the members say cannot be read without the key
    sealed = a.membership.codec.encode(m.encode_payload([m.encode_message(a.membership.presence)]))
    with pytest.raises(Dropped) as caught:
        outsider_codec.decode(sealed)
    assert caught.value.reason == "sealed"
    assert a.membership.presence.name.encode() not in sealed


def test_a_forged_presence_drops_the_whole_datagram_and_is_counted() -> None:
    net = VirtualNetwork(seed=9)
    a, b = net.add("a"), net.add("b")
    net.run_for(1)
    mallory = SigningKey.generate()
    victim_key = b.key
    # mallory re-signs b's record with a higher incarnation under her own signature
    forged = m.Presence(bytes(victim_key.verify_key), b.membership.presence.incarnation + 5, "b-evil", "127.6.6.6", 666, 0, 0).signed(mallory)
    codec = DatagramCodec(mallory, epoch=1)
    a.membership.datagram_received(codec.encode(m.encode_payload([m.encode_message(forged), m.encode_message(m.Dead(b.node_id, 2**40))])), ("127.6.6.6", 666), net.now)
    assert a.membership.codec.dropped["forged"] == 1
    assert a.state_of(b) is State.ALIVE
    assert a.membership.members[b.node_id].presence.name == "b"


def test_a_left_signed_by_someone_else_is_forged() -> None:
    net = VirtualNetwork(seed=10)
    a, b = net.add("a"), net.add("b")
    net.run_for(1)
    left = m.Left(b.node_id, b.membership.presence.incarnation).signed(SigningKey.generate())
    codec = DatagramCodec(SigningKey.generate(), epoch=1)
    a.membership.datagram_received(codec.encode(m.encode_payload([m.encode_message(left)])), ("127.0.0.66", 1), net.now)
    assert a.membership.codec.dropped["forged"] == 1
    assert a.state_of(b) is State.ALIVE


def test_malformed_payloads_are_dropped_and_counted() -> None:
    net = VirtualNetwork(seed=11)
    a = net.add("a")
    codec = DatagramCodec(SigningKey.generate(), epoch=1)
    malformed = [
        b"",  # no version
        b"\x02",  # a version we do not speak
        b"\x01\x03\x00\x09abc",  # a ping longer than what follows
        b"\x01\x01\x00\x01x",  # a presence of one byte
        b"\x01\x04\x00",  # a message header cut short
        b"\x01\x04\x00\x03abc",  # an ack of three bytes
        b"\x01\x04\x00\x05abcde",  # an ack of five
        b"\x01\x03\x00\x14" + bytes(20),  # a ping one byte too long, well framed
        b"\x01\x07\x00\x16" + bytes(22),  # a suspicion one byte short
    ]
    for payload in malformed:
        a.membership.datagram_received(codec.encode(payload), ("127.0.0.5", 1), net.now)
    assert a.membership.codec.dropped["malformed"] == len(malformed)
    assert a.membership.members == {}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_PAYLOAD))
def test_any_signed_payload_is_handled_or_dropped_never_raised(payload: bytes) -> None:
    key = SigningKey(b"\x01" * 32)
    membership = Membership(key, epoch=1, name="target", address=("127.0.0.1", 1))
    membership.start(0)
    codec = DatagramCodec(SigningKey(b"\x02" * 32), epoch=1)
    membership.datagram_received(codec.encode(payload), ("127.0.0.2", 2), 0.1)
    membership.tick(0.2)


def test_messages_survive_a_round_trip() -> None:
    key = SigningKey.generate()
    node_id = m.Presence(bytes(key.verify_key), 0, "", "127.0.0.1", 1, 0, 0).node_id
    samples: list[m.Message] = [
        m.Presence(bytes(key.verify_key), 7 << 32 | 3, "Küche ☕", "fe80::1", 4242, 4243, m.capability_bits(["links", "chat"])).signed(key),
        m.Left(node_id, 9).signed(key),
        m.Hello(),
        m.Ping(1, node_id),
        m.Ack(2**32 - 1),
        m.PingReq(3, node_id),
        m.Nack(4),
        m.Suspect(node_id, 5),
        m.Dead(node_id, 6),
    ]
    decoded = m.decode_payload(m.encode_payload([m.encode_message(x) for x in samples]))
    assert decoded == samples
    presence = decoded[0]
    assert isinstance(presence, m.Presence) and presence.verify()
    assert m.capability_names(presence.capabilities) == ["links", "chat"]
    left = decoded[1]
    assert isinstance(left, m.Left) and left.verify(bytes(key.verify_key))
    # a record keeps its encoding once made; a changed copy encodes what it now says
    assert presence.encode() is presence.encode()
    renamed = dataclasses.replace(presence, name="Keller", incarnation=presence.incarnation + 1).signed(key)
    again = m.decode_payload(m.encode_payload([m.encode_message(renamed)]))[0]
    assert isinstance(again, m.Presence) and (again.name, again.incarnation) == ("Keller", presence.incarnation + 1) and again.verify()


def test_an_unknown_message_type_from_a_newer_node_is_skipped() -> None:
    payload = m.encode_payload([b"\xee\x00\x03abc", m.encode_message(m.Ack(5))])
    assert m.decode_payload(payload) == [m.Ack(5)]


def test_the_state_table_only_moves_forward() -> None:
    # a claim about a dead or left node never makes it suspect, and only a newer record revives it
    for state in (State.DEAD, State.LEFT):
        assert (state, "suspect") not in TRANSITIONS
        assert TRANSITIONS[(state, "alive")] == (">", State.ALIVE)
    assert (State.LEFT, "dead") not in TRANSITIONS


def test_the_suspicion_timeout_falls_as_independent_confirmations_arrive() -> None:
    s = Suspicion(started=100.0, min_timeout=1.0, max_timeout=4.0, expected=3, accusers={"a"})
    deadlines = [s.deadline()]
    for accuser in ("b", "c", "d", "e"):
        s.accusers.add(accuser)
        deadlines.append(s.deadline())
    assert deadlines[0] == 104.0
    assert deadlines[0] > deadlines[1] > deadlines[2] > deadlines[3] == 101.0 == deadlines[4]
    assert math.isclose(deadlines[1], 104.0 - 3.0 * math.log(2) / math.log(4))


def test_a_node_that_keeps_failing_its_probes_slows_down_lifeguard() -> None:
    net = VirtualNetwork(seed=12)
    nodes = [net.add(f"n{i}") for i in range(5)]
    net.run_for(2)
    lonely = nodes[0]
    net.partition([lonely], nodes[1:])
    net.run_for(6)
    assert lonely.membership.health >= 2
    healthy = [n.membership.health for n in nodes[1:]]
    assert max(healthy) <= 1


def _accusations(nodes: list[SimNode]) -> int:
    """Suspicions a node raised itself (its own failed probes), over the whole group."""
    return sum(n.membership.counters.probe_failures - n.membership.counters.rechecks for n in nodes)


def test_a_big_lossy_group_double_checks_before_it_accuses_and_still_finds_the_dead() -> None:
    # 10% loss fails about 1 probe round in 700 even with the indirect checks and the second
    # ping. In 400 nodes that is a false accusation, and two multicast rounds for everyone,
    # every second or so; a second round before accusing squares the rate.
    def run(budget: float) -> tuple[int, int, VirtualNetwork, list[SimNode]]:
        net = VirtualNetwork(seed=21, loss=0.10, config=MembershipConfig(accusation_budget=budget))
        nodes = net.add_warm(f"n{i}" for i in range(400))
        net.run_for(20)
        refutations = sum(n.membership.counters.refutations for n in nodes)
        return _accusations(nodes), refutations, net, nodes

    reckless, reckless_refuted, _, _ = run(math.inf)
    careful, careful_refuted, net, nodes = run(MembershipConfig().accusation_budget)
    assert reckless >= 5 and reckless_refuted >= 5
    assert sum(n.membership.counters.rechecks for n in nodes) >= 5
    assert careful * 5 <= reckless and careful_refuted * 5 <= reckless_refuted
    victim, others = nodes[0], nodes[1:]
    net.kill(victim)
    assert net.run_until(net.now + 30, lambda: net.all_see(others, State.DEAD, [victim]))


def test_warm_started_nodes_share_one_view_and_copy_a_member_before_changing_it() -> None:
    net = VirtualNetwork(seed=22)
    nodes = net.add_warm(f"n{i}" for i in range(6))
    assert net.all_see(nodes, State.ALIVE)
    shared = nodes[1].membership.members[nodes[0].node_id]
    assert shared.shared and nodes[2].membership.members[nodes[0].node_id] is shared
    assert all(n.membership.live_count() == 5 for n in nodes)
    net.kill(nodes[0])
    assert net.run_until(net.now + 10, lambda: net.all_see(nodes[1:], State.DEAD, [nodes[0]]))
    assert shared.state is State.ALIVE, "the view the nodes began with is never changed in place"
    assert all(not n.membership.members[nodes[0].node_id].shared for n in nodes[1:])
    assert all(n.membership.live_count() == 4 for n in nodes[1:])
    # and nobody announced itself: the group knew it already
    assert not any(isinstance(e, MemberStateChanged) and e.previous is None for n in nodes for _, e in n.events)


def test_a_joiner_of_a_big_group_gets_a_few_hello_answers_and_the_whole_view_over_a_link() -> None:
    net = VirtualNetwork(seed=23, loss=0.10)
    group = net.add_warm(f"n{i}" for i in range(300))
    net.run_for(2)
    joiner = net.add("joiner")
    assert net.run_until(net.now + 3, lambda: joiner.membership.live_count() == 300 and all(n.state_of(joiner) is State.ALIVE for n in group))
    c = joiner.membership.counters
    assert c.syncs >= 1 and c.sync_bytes_received > 300 * 100
    # six Hellos, about eight answers each, and its probes' acks: not 6 x 300 presences
    assert c.datagrams_received < 150
    # the view came quietly: nobody gossips 300 presences because one node joined
    assert all(len(n.membership._broadcasts) < 5 for n in group)


def test_a_forged_record_in_a_view_refuses_the_whole_view() -> None:
    net = VirtualNetwork(seed=24)
    a, b = net.add_warm(["a", "b"])
    stranger = SigningKey(bytes(32))
    forged = m.Presence(bytes(stranger.verify_key), 1 << 32, "mallory", "127.0.0.9", 1, 0, 0, signature=bytes(64))
    view = m.encode_payload([m.encode_message(b.membership.presence), m.encode_message(forged)])
    assert not a.membership.merge_state(view, b.node_id, net.now)
    assert a.membership.codec.dropped["forged"] == 1 and forged.node_id not in a.membership.members
    assert not a.membership.merge_state(b"\x01\xff", b.node_id, net.now)
    assert a.membership.codec.dropped["malformed"] == 1
    # a view that holds us dead makes us refute; one holding another member dead is only a suspicion
    c = net.add("c")
    net.run_for(1)
    view = m.encode_payload([m.encode_message(b.membership.presence), m.encode_message(m.Dead(a.node_id, a.membership.presence.incarnation)), m.encode_message(m.Dead(c.node_id, c.membership.presence.incarnation))])
    before = a.membership.presence.incarnation
    assert a.membership.merge_state(view, b.node_id, net.now)
    assert a.membership.presence.incarnation > before
    assert a.state_of(c) is State.SUSPECT
    assert net.run_until(net.now + 10, lambda: a.state_of(c) is State.ALIVE), "c refutes"


# -- admission: who gets room in the member table (issue 25) --------------------------------------
def _stranger(host_port: int = 9) -> tuple[SigningKey, bytes]:
    """A throwaway node's own datagram announcing it: what a flood of fake members sends."""
    key = SigningKey.generate()
    presence = m.Presence(bytes(key.verify_key), 1 << 32, "fake", "127.0.0.66", host_port, 0, 0).signed(key)
    return key, DatagramCodec(key, epoch=1).encode(m.encode_payload([m.encode_message(presence)]))


def _victim(**config: float) -> Membership:
    victim = Membership(SigningKey.generate(), epoch=1, name="victim", address=("127.0.0.1", 1), config=MembershipConfig(**config))  # type: ignore[arg-type]
    victim.start(0.0)
    return victim


def test_one_host_brings_strangers_at_its_admission_rate_and_other_hosts_are_not_held_up() -> None:
    victim = _victim(admission_burst=4, admission_rate=1.0)
    for _ in range(10):
        victim.datagram_received(_stranger()[1], ("127.0.0.66", 9), 0.0)
    assert len(victim.members) == 4
    assert victim.codec.dropped["admission"] == 6
    victim.datagram_received(_stranger()[1], ("127.0.0.77", 9), 0.0)  # another host has its own budget
    assert len(victim.members) == 5
    for _ in range(10):
        victim.datagram_received(_stranger()[1], ("127.0.0.66", 9), 3.0)  # three seconds: three more
    assert len(victim.members) == 8


def test_a_full_table_makes_room_for_another_hosts_joiner_from_the_flooders_newcomers() -> None:
    victim = _victim(max_members=8, admission_burst=100)
    friend_key, friend = _stranger()
    victim.datagram_received(friend, ("127.0.0.5", 9), 0.0)
    friend_id = node_id_of(friend_key)
    victim.proven(friend_id)  # it answered a probe, or a link authenticated it
    fakes = []
    for _ in range(10):
        key, data = _stranger()
        victim.datagram_received(data, ("127.0.0.66", 9), 1.0)
        fakes.append(node_id_of(key))
    assert len(victim.members) == 8 and victim.codec.dropped["full"] == 3  # the flood never displaces its own
    joiner_key, joiner = _stranger()
    victim.datagram_received(joiner, ("127.0.0.7", 9), 2.0)
    assert node_id_of(joiner_key) in victim.members and len(victim.members) == 8
    assert fakes[6] not in victim.members  # the newest fake made way
    assert friend_id in victim.members and victim.counters.evicted == 1
    events = [e for e in victim.take_events() if isinstance(e, MemberStateChanged) and e.node_id == fakes[6]]
    assert [e.state for e in events] == [State.ALIVE, State.DEAD]  # the service hears it is gone


def test_a_full_table_of_proven_members_refuses_a_stranger_and_a_dead_member_makes_way_first() -> None:
    victim = _victim(max_members=3, admission_burst=100)
    ids = []
    for host in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
        key, data = _stranger()
        victim.datagram_received(data, (host, 9), 0.0)
        ids.append(node_id_of(key))
        victim.proven(ids[-1])
    victim.datagram_received(_stranger()[1], ("127.0.0.66", 9), 1.0)
    assert victim.codec.dropped["full"] == 1 and set(victim.members) == set(ids)
    victim._on_claim(ids[1], "dead", victim.members[ids[1]].incarnation, 2.0)
    key, data = _stranger()
    victim.datagram_received(data, ("127.0.0.66", 9), 3.0)
    assert set(victim.members) == {ids[0], ids[2], node_id_of(key)}


def node_id_of(key: SigningKey) -> str:
    return node_id_for(bytes(key.verify_key))
