"""The queue of claims a node has yet to spread (lannode/core/broadcasts.py)."""

from __future__ import annotations

from lannode.core.broadcasts import BroadcastQueue


def test_a_newer_claim_about_a_node_replaces_the_queued_one() -> None:
    queue = BroadcastQueue()
    queue.queue("ann", b"suspect ann", multicast=False)
    queue.queue("ann", b"dead ann", multicast=True)
    assert len(queue) == 1 and queue.multicasts == 1
    assert queue.take(100, about=None, multicast_round=False, limit=3) == [b"dead ann"]


def test_news_about_the_destination_goes_first_then_the_least_sent() -> None:
    queue = BroadcastQueue()
    for node in ("ann", "ben", "cat"):
        queue.queue(node, node.encode() * 10, multicast=False)
    assert queue.take(60, about="cat", multicast_round=False, limit=9) == [b"cat" * 10, b"ann" * 10]
    assert queue.take(30, about=None, multicast_round=False, limit=9) == [b"ben" * 10]  # sent least


def test_our_own_claims_lead_a_multicast_round() -> None:
    queue = BroadcastQueue()
    queue.queue("ben", b"relayed", multicast=False)
    queue.queue("me", b"mine", multicast=True)
    assert queue.take(100, about=None, multicast_round=True, limit=9)[0] == b"mine"


def test_a_claim_leaves_after_its_limit_and_what_does_not_fit_waits() -> None:
    queue = BroadcastQueue()
    queue.queue("ann", b"a" * 50, multicast=True)
    queue.queue("ben", b"b" * 10, multicast=False)
    assert queue.take(20, about=None, multicast_round=False, limit=2) == [b"b" * 10]
    assert queue.take(100, about=None, multicast_round=False, limit=2) == [b"a" * 50, b"b" * 10]
    assert len(queue) == 1 and queue.multicasts == 1  # ben's went out twice
    queue.take(100, about=None, multicast_round=False, limit=2)
    assert len(queue) == 0 and queue.multicasts == 0


def test_a_forgotten_node_takes_its_queued_claim_with_it() -> None:
    queue = BroadcastQueue()
    queue.queue("ann", b"left ann", multicast=True)
    queue.drop("ann")
    queue.drop("nobody")
    assert len(queue) == 0 and queue.multicasts == 0
