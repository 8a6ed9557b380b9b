"""Group conversations as a fold over signed operations, sans-IO.

A group is the conversation ``group/<id>``. Its operations are ordinary signed
``ChatMessage`` values of kind ``"group"`` whose text is a small JSON object:

* ``{"op": "create", "name": N, "members": [ids]}``: the group's first message;
  the group id *is* this message's id, so nobody can forge another "create" for
  the same group (it would have a different id), and the creator is its signer.
* ``{"op": "rename", "name": N}``: any member.
* ``{"op": "invite", "members": [ids]}``: any member adds nodes.
* ``{"op": "remove", "members": [ids], "cut": {id: seq}}``: the creator removes
  members; ``cut`` names, for each, the highest of its seqs the creator held with
  none missing below it.
* ``{"op": "leave"}``: a member leaves.

The group's state is the fold of its operations in the conversation's display
order ``(lamport, sender, seq)``; an operation whose signer is not a member at
its place in that order does nothing. Every member that holds the same set of
operations computes the same state, whatever order they arrived in, which is
all the replication membership needs: operations travel like any message (the
sender's outbox to each member, catch-up from any member).

The fold also remembers everyone who was ever a member, so a message written
before its author left or was removed is still accepted from a catch-up.

A removed member still holds its key, and a clock is only what its signer says:
it could sign an invitation after its removal and date it before. The removal's
``cut`` closes that. An operation by a member with a seq past the cut of a removal
that comes after it in the order was signed after the creator's view of that
member was taken, so it has no effect, whatever clock it claims; and a seq at or
below the cut that two different messages of that member carry (a seq used again,
to slip a new operation under the cut) voids both (``equivocal``, computed by the
caller from every message of the conversation). A text message of a removed member
past its cut is refused by the chat service the same way.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from lannode.core.chat import MAX_COUNT, BadFrame, ChatError, ChatMessage
from lannode.core.ids import is_node_id

GROUP_PREFIX = "group/"
MAX_NAME_BYTES = 100
MAX_MEMBERS = 256
OPS = ("create", "rename", "invite", "remove", "leave")


def group_conversation(group_id: str) -> str:
    return GROUP_PREFIX + group_id


def group_id_of(conversation: str) -> str | None:
    """The group id of a group conversation, or None for anything else."""
    if not conversation.startswith(GROUP_PREFIX):
        return None
    gid = conversation[len(GROUP_PREFIX) :]
    if len(gid) != 32 or any(c not in "0123456789abcdef" for c in gid):
        return None
    return gid


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ChatError("a group needs a name")
    if len(name.encode()) > MAX_NAME_BYTES or any(ord(c) < 32 for c in name):
        raise ChatError(f"a group name is at most {MAX_NAME_BYTES} bytes of printable text")
    return name


def op_text(op: str, *, name: str | None = None, members: Iterable[str] = (), cut: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {"op": op}
    if name is not None:
        body["name"] = name
    members = sorted(set(members))
    if members:
        body["members"] = members
    if cut:
        body["cut"] = cut
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class GroupOp:
    op: str
    name: str | None = None
    members: tuple[str, ...] = ()
    cut: tuple[tuple[str, int], ...] = ()  # a removal's (member, the highest seq of it held), in member order


def parse_op(message: ChatMessage) -> GroupOp:
    """The operation a group message carries; BadFrame when it is not a valid one."""
    try:
        body = json.loads(message.text)
    except ValueError:
        raise BadFrame("a group operation is JSON") from None
    if not isinstance(body, dict) or body.get("op") not in OPS:
        raise BadFrame("not a known group operation")
    op: str = body["op"]
    name = body.get("name")
    members = body.get("members", [])
    if name is not None and (not isinstance(name, str) or len(name.encode()) > MAX_NAME_BYTES):
        raise BadFrame("a group name is a short string")
    if not isinstance(members, list) or len(members) > MAX_MEMBERS or not all(is_node_id(m) for m in members):
        raise BadFrame("group members are a list of node ids")
    if op in ("create", "rename") and not name:
        raise BadFrame(f"{op} needs a name")
    if op in ("invite", "remove") and not members:
        raise BadFrame(f"{op} needs members")
    cut = body.get("cut", {})
    if not isinstance(cut, dict) or (cut and op != "remove") or not set(cut) <= set(members):
        raise BadFrame("a cut names removed members")
    if not all(isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_COUNT for seq in cut.values()):
        raise BadFrame(f"a cut's seqs are 0 to {MAX_COUNT}")
    return GroupOp(op, name, tuple(members), tuple(sorted(cut.items())))


@dataclass(slots=True)
class GroupState:
    id: str
    creator: str
    name: str
    members: set[str] = field(default_factory=set)
    ever: set[str] = field(default_factory=set)  # everyone who was a member at some point
    removed: set[str] = field(default_factory=set)
    cuts: dict[str, int] = field(default_factory=dict)  # of the removed: past this seq nothing of theirs counts
    version: int = 0  # operations that took effect

    def to_json(self, me: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation": group_conversation(self.id),
            "name": self.name,
            "creator": self.creator,
            "members": sorted(self.members),
            "member": me in self.members,
            "version": self.version,
        }


def fold(group_id: str, messages: Iterable[ChatMessage], equivocal: Collection[tuple[str, int]] = ()) -> GroupState | None:
    """The group's state from its operations (any order, duplicates harmless), or None
    while its "create" is not among them. ``equivocal``: (sender, seq) pairs that two
    different messages of the conversation carry."""
    ops = sorted((m for m in messages if m.kind == "group"), key=ChatMessage.order_key)
    create = next((m for m in ops if m.id == group_id), None)
    if create is None:
        return None
    try:
        first = parse_op(create)
    except BadFrame:
        return None
    if first.op != "create" or first.name is None:
        return None
    state = GroupState(group_id, create.sender, first.name)
    state.members = {create.sender, *first.members}
    state.ever = set(state.members)
    state.version = 1
    parsed: list[tuple[ChatMessage, GroupOp]] = []
    removals: dict[str, list[tuple[tuple[int, str, int], int]]] = {}  # member -> (the removal's place, its cut)
    seen = {create.id}
    for message in ops:
        if message.id in seen or message.order_key() < create.order_key():
            continue
        seen.add(message.id)
        try:
            op = parse_op(message)
        except BadFrame:
            continue
        parsed.append((message, op))
        if op.op == "remove" and message.sender == state.creator:
            for member, seq in op.cut:
                removals.setdefault(member, []).append((message.order_key(), seq))
    for message, op in parsed:
        sender = message.sender
        if (sender, message.seq) in equivocal:
            continue
        place = message.order_key()
        if any(later > place and message.seq > cut for later, cut in removals.get(sender, ())):
            continue  # signed after a later removal took its view of this member: dated back
        if apply(state, sender, op):
            state.version += 1
    return state


def apply(state: GroupState, sender: str, op: GroupOp) -> bool:
    """Apply one operation by ``sender``; whether it took effect."""
    if sender not in state.members:
        return False
    if op.op == "rename" and op.name:
        state.name = op.name
    elif op.op == "invite":
        added = set(op.members) - state.members
        if len(state.members) + len(added) > MAX_MEMBERS:
            return False
        state.members |= added
        state.ever |= added
        state.removed -= added
        for member in added:
            state.cuts.pop(member, None)
    elif op.op == "remove" and sender == state.creator:
        gone = set(op.members) & state.members - {sender}
        state.members -= gone
        state.removed |= gone
        state.cuts.update((member, seq) for member, seq in op.cut if member in gone)
    elif op.op == "leave":
        state.members.discard(sender)
    else:
        return False
    return True


def names_me(message: ChatMessage, me: str) -> bool:
    """Whether a group message is an operation that adds ``me`` (a create or an invite)."""
    if message.kind != "group":
        return False
    try:
        op = parse_op(message)
    except BadFrame:
        return False
    return op.op in ("create", "invite") and me in op.members
