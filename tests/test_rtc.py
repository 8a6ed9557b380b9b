"""The signaling broker and meeting rooms, between fronts on two real daemons."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from conftest import NodeFactory, RunningNode
from lannode.net.api_client import RemoteError, connect


def network(nodes: NodeFactory, *names: str) -> list[RunningNode]:
    started = [nodes.start(n) for n in names]
    for node in started:
        node.wait_until(lambda node=node: sum(p["state"] == "alive" for p in node.call("peer.list")) == len(started) - 1, what="everyone alive")
    return started


def test_an_offer_reaches_the_peers_front_and_the_answer_comes_back_to_the_caller(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    results: dict[str, Any] = {}

    async def main() -> None:
        async with connect(a.home) as front_a, connect(b.home) as front_b, connect(b.home) as other_b:
            id_a = (await front_a.call("rtc.register"))["front"]
            id_b = (await front_b.call("rtc.register"))["front"]
            id_b2 = (await other_b.call("rtc.register"))["front"]
            offer = {"type": "offer", "sdp": "v=0 ..."}
            sent = await front_a.call("rtc.signal", peer="ben", kind="offer", data=offer)
            assert sorted(sent["delivered_to"]) == sorted([id_b, id_b2])  # no front named: all of ben's
            with trio.fail_after(10):
                async for topic, event in front_b.events():
                    if topic == "rtc.signal":
                        results["offer"] = event
                        break
            # ben answers the one front that called
            await front_b.call("rtc.signal", peer="ann", kind="answer", data={"type": "answer"}, to_front=event["from_front"])
            with trio.fail_after(10):
                async for topic, answer in front_a.events():
                    if topic == "rtc.signal":
                        results["answer"] = answer
                        break
            results["ids"] = (id_a, id_b)

    trio.run(main)
    offer, answer = results["offer"], results["answer"]
    id_a, id_b = results["ids"]
    assert offer["kind"] == "offer" and offer["data"]["sdp"] == "v=0 ..." and offer["from_name"] == "ann" and offer["from_front"] == id_a
    assert answer["kind"] == "answer" and answer["to_front"] == id_a and answer["from_front"] == id_b


def test_signals_nobody_can_take_get_clear_errors_at_once(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    b_id = b.status()["node_id"]
    with pytest.raises(RemoteError, match="nobody has lannode open on ben"):
        a.call("rtc.signal", peer="ben", kind="offer", data={})

    async def with_front() -> None:
        async with connect(b.home) as front_b:
            await front_b.call("rtc.register")
            with pytest.raises(RemoteError, match="no front deadbeef"):
                await trio.to_thread.run_sync(lambda: a.call("rtc.signal", peer="ben", kind="candidate", data={}, to_front="deadbeef"))
            with pytest.raises(RemoteError, match='"kind" is one of'):
                await trio.to_thread.run_sync(lambda: a.call("rtc.signal", peer="ben", kind="bogus", data={}))
            with pytest.raises(RemoteError, match="at most 65536 bytes"):
                await trio.to_thread.run_sync(lambda: a.call("rtc.signal", peer="ben", kind="offer", data="x" * 70000))

    trio.run(with_front)
    # the front closed with its connection
    with pytest.raises(RemoteError, match="nobody has lannode open"):
        a.call("rtc.signal", peer="ben", kind="offer", data={})
    with pytest.raises(RemoteError, match="no peer named"):
        a.call("rtc.signal", peer="carl", kind="offer", data={})
    b.stop()
    a.wait_until(lambda: {p["node_id"]: p["state"] for p in a.call("peer.list")}[b_id] == "left", what="ben gone")
    with pytest.raises(RemoteError, match="ben is left"):
        a.call("rtc.signal", peer="ben", kind="offer", data={})


def test_meeting_rooms_show_who_is_in_them_on_every_node(nodes: NodeFactory) -> None:
    a, b, c = network(nodes, "ann", "ben", "cat")
    a.call("room.join", room="standup")
    b.call("room.join", room="standup")

    def names(node: RunningNode) -> list[str]:
        return sorted(m["name"] for m in node.call("room.members", room="standup")["members"])

    c.wait_until(lambda: names(c) == ["ann", "ben"], what="both members seen from a third node")
    b.call("room.leave", room="standup")
    a.wait_until(lambda: names(a) == ["ann"], what="ben's leaving replicated")
    a.stop(9)  # killed without leaving: dropped from the list once it is dead
    c.wait_until(lambda: names(c) == [], timeout=30, what="a dead member no longer listed")
    with pytest.raises(RemoteError, match="room name"):
        c.call("room.join", room="a/b")
