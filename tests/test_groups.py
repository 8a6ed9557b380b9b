"""Groups: the membership fold, and real daemons creating, inviting, leaving, removing and catching up."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from conftest import NodeFactory, RunningNode, raw_link, run_cli
from lannode.chat.service import new_message_id
from lannode.core.chat import ChatMessage, SyncFrame, encode_frame
from lannode.core.groups import fold, group_conversation, op_text
from lannode.core.ids import node_id_for
from lannode.core.link import CHANNEL_CHAT
from lannode.identity import Identity
from lannode.net.api_client import RemoteError
from test_chat import network


class Author:
    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.id = node_id_for(bytes(self.key.verify_key))
        self.seq = 0

    def op(self, group: str, lamport: int, text: str, *, message_id: str | None = None) -> ChatMessage:
        self.seq += 1
        return ChatMessage(message_id or new_message_id(), group_conversation(group), bytes(self.key.verify_key), self.seq, lamport, 0, text, "group").signed(self.key)


def test_the_fold_applies_operations_by_who_may_do_them() -> None:
    ann, ben, cat, dan = Author(), Author(), Author(), Author()
    gid = new_message_id()
    ops = [
        ann.op(gid, 1, op_text("create", name="team", members=[ben.id]), message_id=gid),
        ben.op(gid, 2, op_text("invite", members=[cat.id])),
        dan.op(gid, 3, op_text("rename", name="hijacked")),  # not a member: nothing
        ben.op(gid, 4, op_text("remove", members=[ann.id])),  # only the creator removes: nothing
        cat.op(gid, 5, op_text("rename", name="crew")),
        ann.op(gid, 6, op_text("remove", members=[ben.id])),
        ben.op(gid, 7, op_text("rename", name="too late")),  # removed: nothing
        cat.op(gid, 8, op_text("leave")),
    ]
    state = fold(gid, ops)
    assert state is not None
    assert state.name == "crew" and state.creator == ann.id
    assert state.members == {ann.id}
    assert state.ever == {ann.id, ben.id, cat.id}
    assert state.version == 5
    # without its create there is no group, and a "create" under another id is not this group's
    assert fold(gid, ops[1:]) is None
    assert fold(gid, [dan.op(gid, 1, op_text("create", name="fake", members=[dan.id]))]) is None


def test_a_removed_member_cannot_date_an_invitation_before_its_removal() -> None:
    ann, mal, sock = Author(), Author(), Author()
    gid = new_message_id()
    ops = [
        ann.op(gid, 1, op_text("create", name="team", members=[mal.id]), message_id=gid),
        mal.op(gid, 2, op_text("rename", name="mal's"), message_id=None),  # mal's seq 1, before its removal
        ann.op(gid, 10, op_text("remove", members=[mal.id], cut={mal.id: 1})),
    ]
    before = fold(gid, ops)
    assert before is not None and before.members == {ann.id}
    # after its removal mal signs an invitation for a node of its own, with a clock before it
    backdated = mal.op(gid, 3, op_text("invite", members=[sock.id]))  # seq 2: past the cut
    state = fold(gid, [*ops, backdated])
    assert state is not None and state.members == {ann.id} and state.name == "mal's"
    assert state.cuts == {mal.id: 1}
    # nor under the cut with a seq it used already: both messages of that seq count for nothing
    mal.seq = 0
    reused = mal.op(gid, 3, op_text("invite", members=[sock.id]))
    state = fold(gid, [*ops, reused], equivocal={(mal.id, 1)})
    assert state is not None and state.members == {ann.id} and state.name == "team"
    # without the cut (a removal by an older lannode) the fold is as before
    old = [*ops[:2], ann.op(gid, 11, op_text("remove", members=[mal.id])), mal.op(gid, 3, op_text("invite", members=[sock.id]))]
    legacy = fold(gid, old)
    assert legacy is not None and sock.id in legacy.members


def test_a_member_removed_and_invited_again_counts_from_its_return() -> None:
    ann, ben = Author(), Author()
    gid = new_message_id()
    ops = [ann.op(gid, 1, op_text("create", name="team", members=[ben.id]), message_id=gid)]
    ops.append(ben.op(gid, 2, op_text("rename", name="one")))  # ben's seq 1
    ops.append(ann.op(gid, 3, op_text("remove", members=[ben.id], cut={ben.id: 1})))
    ops.append(ann.op(gid, 4, op_text("invite", members=[ben.id])))
    ops.append(ben.op(gid, 5, op_text("rename", name="two")))  # seq 2, after its return: counts
    state = fold(gid, ops)
    assert state is not None and state.name == "two" and ben.id in state.members and state.cuts == {}


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_the_fold_is_the_same_whatever_order_operations_arrive_in(rng: random.Random) -> None:
    people = [Author() for _ in range(4)]
    gid = new_message_id()
    ops = [people[0].op(gid, 1, op_text("create", name="g", members=[people[1].id]), message_id=gid)]
    for lamport in range(2, 14):
        who = rng.choice(people)
        other = rng.choice(people).id
        text = rng.choice([op_text("invite", members=[other]), op_text("remove", members=[other]), op_text("leave"), op_text("rename", name=f"n{lamport}")])
        ops.append(who.op(gid, lamport, text))
    expected = fold(gid, ops)
    assert expected is not None
    for _ in range(5):
        shuffled = ops + ops[: rng.randrange(len(ops))]  # duplicates too
        rng.shuffle(shuffled)
        state = fold(gid, shuffled)
        assert state is not None
        assert (state.name, state.members, state.ever, state.version) == (expected.name, expected.members, expected.ever, expected.version)


# -- real daemons --------------------------------------------------------------------------------


def glog(node: RunningNode, group: str, **params: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = node.call("chat.log", group=group, limit=500, **params)
    return result


def texts(node: RunningNode, group: str) -> list[str]:
    return [m["text"] for m in glog(node, group) if m["kind"] == "text"]


def test_a_group_from_create_to_remove_on_three_nodes(nodes: NodeFactory) -> None:
    a, b, c = network(nodes, "ann", "ben", "cat")
    group = a.call("group.create", name="team", members=["ben"])
    gid = group["id"]
    assert group["members"] == sorted([a.status()["node_id"], b.status()["node_id"]])
    b.wait_until(lambda: [g["name"] for g in b.call("group.list")] == ["team"], what="ben knows the group")
    # both write, interleaved; each sees both streams exactly once, in the same order, each sender's in its order
    for i in range(10):
        a.call("chat.send", group="team", text=f"a{i}")
        b.call("chat.send", group="#team", text=f"b{i}")
    for node in (a, b):
        node.wait_until(lambda node=node: len(texts(node, gid)) == 20, what="20 group messages")
    assert [m["id"] for m in glog(a, gid)] == [m["id"] for m in glog(b, gid)]
    for who in ("a", "b"):
        assert [t for t in texts(a, gid) if t[0] == who] == [f"{who}{i}" for i in range(10)]
    # the third node is not in it and holds nothing of it
    assert c.call("group.list") == []
    with pytest.raises(RemoteError, match="no group"):
        c.call("chat.log", group=gid)
    # ann invites cat, who receives the earlier history from the inviter
    a.call("group.invite", group=gid, members=["cat"])
    c.wait_until(lambda: c.call("group.list") != [], what="cat learns of the group")
    c.wait_until(lambda: len(texts(c, gid)) == 20, what="cat catches up on the history")
    assert [m["id"] for m in glog(c, gid)] == [m["id"] for m in glog(a, gid)]
    c.call("chat.send", group=gid, text="hello all")
    for node in (a, b):
        node.wait_until(lambda node=node: texts(node, gid)[-1] == "hello all", what="cat's message")
    # every recipient's receipt, then the message counts as delivered
    a.call("chat.send", group=gid, text="ticks")
    a.wait_until(lambda: glog(a, gid)[-1]["delivered_at"] is not None, what="delivered to both")
    assert set(glog(a, gid)[-1]["receipts"]) == {b.status()["node_id"], c.status()["node_id"]}
    # rename by any member, leave, remove by the creator only
    b.call("group.rename", group=gid, name="crew")
    a.wait_until(lambda: a.call("group.info", group=gid)["name"] == "crew", what="the rename")
    with pytest.raises(RemoteError, match="only the group's creator"):
        b.call("group.remove", group=gid, members=["cat"])
    b.call("group.leave", group=gid)
    a.wait_until(lambda: b.status()["node_id"] not in a.call("group.info", group=gid)["members"], what="ben gone")
    a.call("chat.send", group=gid, text="after ben left")
    c.wait_until(lambda: texts(c, gid)[-1] == "after ben left", what="cat still in")
    time.sleep(1)
    assert "after ben left" not in texts(b, gid)
    with pytest.raises(RemoteError, match="no longer a member"):
        b.call("chat.send", group=gid, text="let me back")
    a.call("group.remove", group=gid, members=["cat"])
    c.wait_until(lambda: not c.call("group.info", group=gid)["member"], what="cat learns it was removed")
    a.call("chat.send", group=gid, text="only me now")
    time.sleep(1)
    assert "only me now" not in texts(c, gid)
    # exactly once everywhere, after all of it
    for node in (a, b, c):
        ids = [m["id"] for m in glog(node, gid)]
        assert len(ids) == len(set(ids))


def test_a_member_who_was_away_catches_up_from_another_member(nodes: NodeFactory) -> None:
    a, b, c = network(nodes, "ann", "ben", "cat")
    gid = a.call("group.create", name="team", members=["ben", "cat"])["id"]
    c.wait_until(lambda: c.call("group.list") != [], what="cat in the group")
    c_id = c.status()["node_id"]
    c.stop()
    for i in range(5):
        a.call("chat.send", group=gid, text=f"while cat was out {i}")
    b.wait_until(lambda: len(texts(b, gid)) == 5, what="ben has them")
    a.stop()  # the author is gone too: only ben can hand them on
    c2 = nodes.start_on(c.home, name="cat")
    c2.wait_until(lambda: texts(c2, gid) == [f"while cat was out {i}" for i in range(5)], timeout=30, what="cat caught up from ben")
    assert c2.status()["chat"]["catch_ups"]["asked"] >= 1
    assert b.status()["chat"]["catch_ups"]["answered"] >= 1
    # the author comes back: its outbox delivers again, and nothing is shown twice
    a2 = nodes.start_on(a.home, name="ann")
    a2.wait_until(lambda: glog(a2, gid)[-1]["delivered_at"] is not None, timeout=30, what="ann's receipts from cat")
    time.sleep(1)
    assert len(texts(c2, gid)) == 5
    assert c_id in a2.call("group.info", group=gid)["members"]


def test_a_node_outside_the_group_cannot_read_it(nodes: NodeFactory) -> None:
    a, b, c = network(nodes, "ann", "ben", "cat")
    gid = a.call("group.create", name="secret", members=["ben"])["id"]
    a.call("chat.send", group=gid, text="the launch code is 0000")
    b.wait_until(lambda: texts(b, gid) == ["the launch code is 0000"], what="ben has it")
    # cat (and a stranger with a fresh key) ask ann for the group's history over a link
    ann = next(p for p in b.call("peer.list") if p["name"] == "ann")
    before = a.status()["chat"]["rejected"]
    received = b""
    assert c.call("group.list") == [] and c.call("chat.conversations") == []
    # cat's own identity (a known, pinned peer, not a member); its daemon is stopped first, or
    # ann would keep only one of the two links from cat, and maybe not ours
    c.stop()
    cat_key = Identity.load_or_create(c.home.path).signing_key
    for key in (cat_key, SigningKey.generate()):
        with raw_link(key, ann) as (conn, sock):
            conn.send_message(CHANNEL_CHAT, encode_frame(SyncFrame(group_conversation(gid), {})))
            sock.sendall(conn.data_to_send())
            sock.settimeout(5)
            answer = b""
            deadline = time.monotonic() + 5
            while b'"synced"' not in answer and time.monotonic() < deadline:
                conn.receive_data(sock.recv(65536))
                for event in conn.events():
                    answer += getattr(event, "data", b"")
            assert b'"synced"' in answer, "ann answers, with nothing"
            received += answer
    assert b"launch code" not in received
    assert a.status()["chat"]["rejected"] >= before + 2
    # and cat's disk never had it
    assert b"launch code" not in (c.home.path / "chat.sqlite").read_bytes()


def test_groups_from_the_cli(nodes: NodeFactory) -> None:
    a, b = network(nodes, "ann", "ben")
    home = ["--home", str(a.home.path)]
    made = run_cli("group", "create", "book club", "ben", "--json", *home)
    assert made.returncode == 0, made.stderr
    sent = run_cli("chat", "send", "#book club", "chapter 3 tonight", *home)
    assert sent.returncode == 0, sent.stderr
    b.wait_until(lambda: texts(b, "book club") == ["chapter 3 tonight"], what="ben has it")
    shown = run_cli("chat", "log", "#book club", "--home", str(b.home.path)).stdout
    assert "created the group 'book club'" in shown and "chapter 3 tonight" in shown
    listed = run_cli("group", "ls", *home).stdout
    assert "#book club" in listed and "2 members" in listed
    bad = run_cli("group", "invite", "#nonesuch", "ben", *home)
    assert bad.returncode == 1 and "no group" in bad.stderr
    usage = run_cli("group", "rename", "#book club", *home)
    assert usage.returncode == 2 and "group rename GROUP NAME" in usage.stderr
