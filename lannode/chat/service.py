"""Chat as a service: 1:1 and group conversations, history in SQLite, the outbox,
delivery and read receipts, catch-up, the chat.* and group.* API.

Messages are ``lannode.core.chat.ChatMessage``: signed by their author, stored
once per id, shown in ``(lamport, sender, seq)`` order. This module keeps them in
``chat.sqlite`` in the home (WAL), and delivers:

* **Store and forward.** ``chat.send`` writes the message, an outbox row and a
  receipt row per recipient in one transaction before it answers, so a sent
  message survives a restart of either side. The outbox is worked per recipient:
  when the peer is alive, its pending messages go over the peer link in order; a
  message not acknowledged within ``ack_timeout`` is sent again, and a peer that
  cannot be reached is retried with backoff (1 s doubling to 60 s) and at once
  when it comes back alive.
* **Exactly once.** The receiver stores by message id (a duplicate is ignored,
  and acknowledged again, since the first acknowledgement may have been lost),
  and announces a message to its fronts only when it stored it.
* **Receipts.** The receiver's ``ack`` is the delivery receipt (the message is
  on its disk); ``chat.read`` from a front sends a ``read`` receipt to the
  author. Receipts are kept per recipient; a message counts as delivered (read)
  when every recipient has it (has seen it), as WhatsApp's ticks do in groups.

**1:1 conversations.** Only the two ends ever hold a 1:1 message: the receiver
refuses one that did not come straight from its author, and nobody relays one.

**Groups** (``lannode.core.groups``): the group's membership is a fold over
signed operations that travel as messages of the group conversation, so every
member computes the same members from the same operations. A message to a group
goes from its author's outbox to each member (fan-out); a member that was away
catches up from *any* member: when a member comes alive, or a message arrives
that needs context this node lacks, this node sends that member a digest (per
sender, the highest seq it holds with nothing missing below) and the member
answers with what is missing, signed by the original authors.

*Who can read a group.* Group messages travel only over peer links, each
encrypted end to end between two nodes, and only to members: the author sends to
the members it knows, and a catch-up is answered only to a node that is a member
in the answerer's fold. No node outside the group ever receives a group message,
so no per-group key is needed, and we avoid what a group key costs: rekeying
on every removal (a removed member keeps the old key) and a key-distribution
protocol that has to survive members being offline. What this relies on, and a
group key would not: every member's node enforces membership when it answers a
catch-up. A member can always pass messages on by hand; no scheme prevents that.
New members see the group's earlier history (Matrix's default "shared"
visibility): the catch-up sends everything the digest lacks.

How the history is kept on disk: ``lannode.chat.db``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import trio
from nacl.signing import SigningKey

from lannode.chat.db import (
    EQUIVOCAL,
    INSERT,
    INSERT_IGNORE,
    ChatDb,
    GroupCommit,
    Statements,
    message_record,
    record_of,
    row_of,
)
from lannode.chat.outbox import Delivery, Pending, message_frame
from lannode.clock import now_ms
from lannode.core import api
from lannode.core.chat import (
    AckFrame,
    BadFrame,
    ChatError,
    ChatMessage,
    MessageFrame,
    ReadFrame,
    SyncedFrame,
    SyncFrame,
    check_text,
    decode_frame,
    dm_conversation,
    dm_peer,
    encode_frame,
    make_message_id,
    next_count,
)
from lannode.core.groups import (
    GroupState,
    check_name,
    fold,
    group_conversation,
    group_id_of,
    names_me,
    op_text,
    parse_op,
)
from lannode.core.link import CHANNEL_CHAT
from lannode.core.membership import State
from lannode.events import EventBus
from lannode.identity import Author
from lannode.net.links import LinkError, Links, PeerLink

log = logging.getLogger("lannode.chat")


def new_message_id() -> str:
    """A message id made now (``lannode.core.chat.make_message_id``)."""
    return make_message_id(now_ms())

SYNC_BATCH = 1000  # messages per catch-up answer; the requester asks again for more
SYNC_RETRY = 5.0  # seconds before the same catch-up may be asked of the same member again


ACK_DELAY = 0.02  # seconds a delivery receipt waits for more messages to acknowledge with it
DIRECT_GRACE = 2.0  # seconds the link holds a message back while a front's data channel carries it
MAX_DRAFTS = 100  # messages in one chat.draft


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A group operation of ours, checked: what it says and whom it goes to."""

    group_id: str
    text: str
    recipients: list[str]
    message_id: str | None  # a create's: the new group's id

    @property
    def conversation(self) -> str:
        return group_conversation(self.group_id)


class ChatPeers(Protocol):
    """What chat needs to know of the others (``PeerService``; a guest's view of it)."""

    state_listeners: list[Callable[[str, State], None]]

    def states(self) -> list[tuple[str, State]]: ...

    def pin(self, link: PeerLink) -> None: ...

    def resolve_id(self, text: str) -> str: ...

    def name_of(self, node_id: str) -> str: ...

    def name_if_known(self, node_id: str) -> str | None: ...

    def key_of(self, node_id: str) -> bytes | None: ...


class ChatService:
    def __init__(self, home_path: Path, identity: Author, peers: ChatPeers, bus: EventBus, *, links: Links, ack_timeout: float = 5.0) -> None:
        self.identity = identity
        self.me = identity.node_id
        self.peers = peers
        self.links = links
        self.with_bodies = identity.signing_key is None  # a guest's page checks every signature it shows
        self.bus = bus
        self.ack_timeout = ack_timeout
        self.db_path = home_path / "chat.sqlite"
        self.db: ChatDb | None = None
        self.rejected = 0
        self.delivered = 0
        self.received = 0
        self.duplicates = 0
        self.deferred = 0  # group messages left unacknowledged until a catch-up gave their context
        self.syncs_sent = 0
        self.syncs_answered = 0
        self.delivery = Delivery(links, ack_timeout=ack_timeout, reads_sent=self._reads_sent, reached=peers.pin)
        self._clocks: dict[str, tuple[int, int]] = {}
        self._pending_acks: dict[str, list[str]] = {}
        self._groups: dict[str, GroupState] = {}
        self._syncing: dict[tuple[str, str], float] = {}  # (member, conversation) -> when asked
        self._nursery: trio.Nursery | None = None
        self._commit: GroupCommit | None = None
        links.handle(CHANNEL_CHAT, self._on_frame)
        peers.state_listeners.append(self._on_peer_state)

    # -- life ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.db = await trio.to_thread.run_sync(ChatDb, self.db_path)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._commit = GroupCommit(self.db, nursery)
                self.delivery.start(nursery)
                for row in self._query("SELECT DISTINCT conversation FROM messages WHERE kind = 'group'"):
                    self._refold(row["conversation"])
                self._load_outbox()
                for node_id, state in self.peers.states():
                    self._on_peer_state(node_id, state)  # peers seen before chat was up
                task_status.started()
                await trio.sleep_forever()  # the recipients' delivery tasks live in this nursery
        finally:
            self.db.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self.db is not None
        return self.db.query(sql, params)

    def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        assert self.db is not None
        return self.db.transaction(statements)

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self.db is not None
        db = self.db
        return await trio.to_thread.run_sync(lambda: db.read(sql, params))

    # -- sending ---------------------------------------------------------------------------------
    async def send(self, peer: str, texts: list[str], *, direct: bool = False) -> list[dict[str, Any]]:
        """Store and send 1:1 messages. ``direct``: the calling front also carries them over
        its data channel (each record then has the signed ``body`` to send), so the link
        holds its copy back for DIRECT_GRACE and drops it once the peer acknowledges."""
        for text in texts:
            check_text(text)
        if peer == self.me:
            raise ChatError("that is this node; pick a peer")
        return await self._author(dm_conversation(self.me, peer), "text", texts, [peer], direct=direct)

    async def send_group(self, group_id: str, texts: list[str]) -> list[dict[str, Any]]:
        for text in texts:
            check_text(text)
        state = self._member_of(group_id)
        return await self._author(group_conversation(group_id), "text", texts, sorted(state.members - {self.me}))

    async def _author(
        self, conversation: str, kind: str, texts: list[str], recipients: list[str], *, message_id: str | None = None, direct: bool = False
    ) -> list[dict[str, Any]]:
        """Make and sign messages with this node's key, then commit and send them."""
        key = self._signing_key()
        messages = []
        # No await from here to the commit's enqueue (in _commit_authored): seq and lamport are
        # taken and queued in order, with no other send in between (trio switches tasks only
        # at an await).
        for text in texts:
            lamport, seq = self._clock(conversation)
            message, body = ChatMessage(
                id=message_id or new_message_id(),
                conversation=conversation,
                sender_key=self.identity.public_key,
                seq=next_count(seq),
                lamport=next_count(lamport),
                sent_at=now_ms(),
                text=text,
                kind=kind,
            ).signed_body(key)
            self._saw(message)
            messages.append((message, body))
        return await self._commit_authored(conversation, kind, messages, recipients, direct=direct)

    def draft(self, conversation: str, texts: list[str], *, kind: str = "text", message_id: str | None = None) -> list[dict[str, Any]]:
        """The next messages of ours in ``conversation``, unsigned, for a page that signs for
        itself (a guest's): the canonical JSON of each (keys sorted, no spaces), after
        ``SIGN_DOMAIN``, is what it signs; ``send_signed`` takes them back. Nothing is
        reserved: a message of ours that lands first makes these stale."""
        if len(texts) > MAX_DRAFTS:
            raise ChatError(f"at most {MAX_DRAFTS} messages at once")
        lamport, seq = self._clock(conversation)
        drafts = []
        for text in texts:
            if kind == "text":
                check_text(text)
            lamport, seq = next_count(lamport), next_count(seq)
            message = ChatMessage(message_id or new_message_id(), conversation, self.identity.public_key, seq, lamport, now_ms(), text, kind)
            drafts.append(message.signed_fields())
        return drafts

    def recipients_of(self, conversation: str) -> list[str]:
        """Whom a text message in ``conversation`` goes to: the peer, or the group's other members."""
        group_id = group_id_of(conversation)
        if group_id is not None:
            return sorted(self._member_of(group_id).members - {self.me})
        peer = dm_peer(conversation, self.me)
        if peer is None or peer == self.me:
            raise ChatError("not a conversation of this author")
        return [peer]

    async def send_signed(
        self, conversation: str, bodies: list[Any], *, kind: str = "text", recipients: list[str] | None = None, direct: bool = False
    ) -> list[dict[str, Any]]:
        """Store and send messages their author signed elsewhere (``draft``): each must be
        ours, in ``conversation``, signed, and next in our order there."""
        if recipients is None:
            recipients = self.recipients_of(conversation)
        _, seq = self._clock(conversation)
        messages = []
        for data in bodies:
            try:
                message = ChatMessage.from_json(data, verify=True)
            except BadFrame as exc:
                raise ChatError(f"not a signed message of this author: {exc}") from None
            if message.sender != self.me or message.conversation != conversation or message.kind != kind:
                raise ChatError("a message of another author, conversation or kind")
            if kind == "text":
                check_text(message.text)
            if message.seq != next_count(seq):  # its lamport may trail what came in since the draft: concurrent, as any author's may be
                raise ChatError("stale: another message of yours came first; draft them again")
            seq = message.seq
            messages.append((message, message.body()))
        for message, _ in messages:
            self._saw(message)
        return await self._commit_authored(conversation, kind, messages, recipients, direct=direct)

    async def _commit_authored(
        self, conversation: str, kind: str, messages: list[tuple[ChatMessage, str]], recipients: list[str], *, direct: bool = False
    ) -> list[dict[str, Any]]:
        """Write messages, their outbox and receipt rows in one transaction, then hand them
        to each recipient's delivery task. Sends running at the same time share a commit."""
        assert self._commit is not None
        statements: Statements = []
        for message, body in messages:
            statements.append((INSERT, row_of(message, body, outgoing=True, received_at=message.sent_at)))
            for recipient in recipients:
                statements.append(("INSERT INTO outbox (id, recipient, kind) VALUES (?, ?, 'msg')", (message.id, recipient)))
                statements.append(("INSERT INTO receipts (id, peer) VALUES (?, ?)", (message.id, recipient)))
        ticket = self._commit.enqueue(statements)
        try:
            await ticket.wait()
        except ChatError:
            self._clocks.pop(conversation, None)  # read the clock from disk again
            raise
        if kind == "group":
            self._refold(conversation)
        records = []
        group = group_id_of(conversation) is not None
        for message, body in messages:
            record = record_of(message, outgoing=True, received_at=message.sent_at, body=body if self.with_bodies else "")
            self.bus.publish("chat.message", record)
            frame = message_frame(body)
            hold = trio.current_time() + DIRECT_GRACE if direct else -math.inf
            for recipient in recipients:
                self.delivery.enqueue(recipient, Pending(message.id, "msg", frame, not_before=hold, group=group))
            records.append({**record, "body": body} if direct else record)
        return records

    def _signing_key(self) -> SigningKey:
        key = self.identity.signing_key
        if key is None:
            raise ChatError("a guest signs its own messages: chat.draft, then chat.send with the signed bodies")
        return key

    def _clock(self, conversation: str) -> tuple[int, int]:
        """(highest lamport seen, our last seq) in a conversation: cached, read once from disk
        with two index look-ups."""
        cached = self._clocks.get(conversation)
        if cached is None:
            top = self._query("SELECT lamport FROM messages WHERE conversation = ? ORDER BY lamport DESC LIMIT 1", (conversation,))
            mine = self._query("SELECT MAX(seq) AS seq FROM messages WHERE conversation = ? AND sender = ?", (conversation, self.me))
            cached = (top[0]["lamport"] if top else 0, mine[0]["seq"] or 0)
            self._clocks[conversation] = cached
        return cached

    def _saw(self, message: ChatMessage) -> None:
        lamport, seq = self._clock(message.conversation)
        self._clocks[message.conversation] = (max(lamport, message.lamport), message.seq if message.sender == self.me else seq)

    def get(self, message_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no message {message_id}")
        return message_record(rows[0], self.me, body=self.with_bodies)

    def _on_peer_state(self, node_id: str, state: State) -> None:
        if state is not State.ALIVE:
            return
        self.delivery.retry_now(node_id)
        # a member is back: catch up on every group we share with it
        for group in self._groups.values():
            if self.me in group.members and node_id in group.members:
                self._request_sync(node_id, group_conversation(group.id))

    def _load_outbox(self) -> None:
        rows = self._query(
            "SELECT o.id, o.recipient, o.kind, m.body, m.conversation FROM outbox o LEFT JOIN messages m ON m.id = o.id ORDER BY m.lamport, m.seq"
        )
        for row in rows:
            if row["kind"] == "msg" and row["body"] is not None:
                self.delivery.enqueue(row["recipient"], Pending(row["id"], "msg", message_frame(row["body"]), group=group_id_of(row["conversation"]) is not None))
            elif row["kind"] == "read":
                self.delivery.enqueue(row["recipient"], Pending(row["id"], "read", b""))

    def _reads_sent(self, recipient: str, ids: list[str]) -> None:
        # a read receipt is a courtesy: once handed to the link it is done
        self._tx([("DELETE FROM outbox WHERE id = ? AND recipient = ? AND kind = 'read'", (i, recipient)) for i in ids])

    # -- receiving -------------------------------------------------------------------------------
    async def _on_frame(self, link: PeerLink, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except BadFrame as exc:
            self.rejected += 1
            log.info("bad chat frame from %s: %s", link.node_id, exc)
            return
        if isinstance(frame, MessageFrame):
            await self._on_message(link, frame.message)
        elif isinstance(frame, AckFrame):
            self._on_receipt(link.node_id, frame.ids, "delivered_at")
        elif isinstance(frame, ReadFrame):
            self._on_receipt(link.node_id, frame.ids, "read_at")
        elif isinstance(frame, SyncFrame):
            if self._nursery is not None:
                self._nursery.start_soon(self._answer_sync, link, frame)
        else:
            self._syncing.pop((link.node_id, frame.conversation), None)
            if frame.more:
                self._request_sync(link.node_id, frame.conversation)

    def _admit(self, relayer: str, message: ChatMessage) -> str:
        """"accept", "refuse" (counted, never acknowledged) or "later" (catch up from the
        relayer first; the author sends it again)."""
        group_id = group_id_of(message.conversation)
        if group_id is None:
            # a 1:1 message comes from its author, to us, or not at all
            ok = message.sender == relayer and dm_peer(message.conversation, self.me) == message.sender and message.kind == "text"
            return "accept" if ok else "refuse"
        if message.kind == "group":
            return "accept"  # operations are signed and small; the fold decides what they do
        state = self._groups.get(group_id)
        if state is None or message.sender not in state.ever:
            return "later"  # an invitation or a member's invitation has not reached us yet
        cut = state.cuts.get(message.sender)
        if cut is not None and message.seq > cut:
            return "refuse"  # written after its removal, dated however early
        if relayer != message.sender and relayer not in state.members:
            return "refuse"
        return "accept"

    async def _on_message(self, link: PeerLink, message: ChatMessage) -> None:
        verdict = self._admit(link.node_id, message)
        if verdict == "accept" and (not link.vouched or link.node_id != message.sender or message.kind == "group") and not message.verify():
            verdict = "refuse"  # relayed, from a guest, or an operation others will fold: the author's signature must hold
        if verdict == "refuse":
            self.rejected += 1
            log.info("refused a chat message from %s in %s", link.node_id, message.conversation)
            return
        if verdict == "later":
            self.deferred += 1
            self._request_sync(link.node_id, message.conversation)
            return
        assert self._commit is not None
        received_at = now_ms()
        statements: Statements = [(INSERT_IGNORE, row_of(message, message.body(), outgoing=False, received_at=received_at))]
        if message.kind == "group":
            # the next frame's admission may depend on this operation: fold it before reading on
            try:
                counts: list[int] | None = await self._commit.commit(statements)
            except ChatError:
                counts = None
            self._stored(link.node_id, message, received_at, counts)
        else:
            self._commit.submit(statements, lambda counts: self._stored(link.node_id, message, received_at, counts))

    async def deliver_direct(self, body: Any) -> dict[str, Any]:
        """A message a front received over a data channel from its author's front: checked
        as if the author's node had sent it over the link (its signature must hold, since
        no link vouches for it), stored once, and acknowledged to the author's node."""
        try:
            message = ChatMessage.from_json(json.loads(body) if isinstance(body, str) else body, verify=True)
        except (BadFrame, ValueError) as exc:
            self.rejected += 1
            raise ChatError(f"not a signed chat message: {exc}") from None
        if self.peers.key_of(message.sender) != message.sender_key:
            self.rejected += 1
            raise ChatError("the message's author is not a peer this node knows")
        if message.kind != "text" or self._admit(message.sender, message) != "accept":
            self.rejected += 1
            raise ChatError("this node does not take that message from its author")
        assert self._commit is not None
        received_at = now_ms()
        counts = await self._commit.commit([(INSERT_IGNORE, row_of(message, message.body(), outgoing=False, received_at=received_at))])
        self._stored(message.sender, message, received_at, counts, via="direct")
        return {"id": message.id, "new": bool(counts[0])}

    def _stored(self, relayer: str, message: ChatMessage, received_at: int, counts: list[int] | None, *, via: str = "link") -> None:
        """After the commit: announce a new message, and acknowledge it (new or not)."""
        if counts is None:
            return  # not stored, so not acknowledged: the sender tries again
        if counts[0]:
            self._saw(message)
            self.received += 1
            group_id = group_id_of(message.conversation)
            before = self._groups.get(group_id or "")
            was_member = before is not None and self.me in before.members
            state = self._refold(message.conversation) if message.kind == "group" else before
            if message.kind == "group" and names_me(message, self.me) and not was_member:
                self._request_sync(relayer, message.conversation)  # invited: fetch the group
            if group_id is None or (state is not None and self.me in state.ever):
                body = message.body() if self.with_bodies else ""
                self.bus.publish("chat.message", {**record_of(message, outgoing=False, received_at=received_at, body=body), "via": via})
        else:
            self.duplicates += 1
        # acknowledge in batches: every message stored while a batch is on its way joins the next
        pending = self._pending_acks.setdefault(relayer, [])
        pending.append(message.id)
        if len(pending) == 1 and self._nursery is not None:
            self._nursery.start_soon(self._send_acks, relayer)

    async def _send_acks(self, relayer: str) -> None:
        # Delayed, as TCP delays its acks: at a thousand messages a second one receipt
        # then covers several, and the author's node commits one update, not one each.
        # The message is stored already; only its "delivered" tick waits.
        await trio.sleep(ACK_DELAY)
        ids = self._pending_acks.pop(relayer, [])
        try:
            link = await self.links.link_to(relayer)  # open already, unless the message came directly
            for start in range(0, len(ids), 512):
                frame = encode_frame(AckFrame(tuple(ids[start : start + 512])))
                if not link.send_nowait(CHANNEL_CHAT, frame):
                    await link.send(CHANNEL_CHAT, frame)
        except LinkError:
            return  # the sender will send them again, and we will acknowledge again

    def _on_receipt(self, peer: str, ids: tuple[str, ...], column: str) -> None:
        """A recipient's receipts: its own rows only, then the message's once every recipient is there."""
        assert self._commit is not None
        at = now_ms()
        statements: Statements = []
        # Delivery receipts for 1:1 messages that wait for one (the common case: a receipt
        # covers every message of the last ACK_DELAY) take three statements in all, not
        # three each; the peer is their one recipient, so each is then complete.
        plain: list[str] = []
        queue = self.delivery.queues.get(peer) if column == "delivered_at" else None
        if queue is not None:
            plain = [i for i in ids if (item := queue.messages.get(i)) is not None and not item.group]
            conversation = dm_conversation(self.me, peer)
            for start in range(0, len(plain), 500):
                chunk = plain[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                statements += [
                    (f"UPDATE receipts SET delivered_at = ? WHERE peer = ? AND delivered_at IS NULL AND id IN ({marks})", (at, peer, *chunk)),
                    (
                        f"UPDATE messages SET delivered_at = ? WHERE outgoing = 1 AND delivered_at IS NULL AND conversation = ? AND id IN ({marks})",
                        (at, conversation, *chunk),
                    ),
                    (f"DELETE FROM outbox WHERE recipient = ? AND kind = 'msg' AND id IN ({marks})", (peer, *chunk)),
                ]
        batched = len(statements)
        taken = set(plain)
        rest = [i for i in ids if i not in taken]
        for message_id in rest:
            statements.append((f"UPDATE receipts SET {column} = ? WHERE id = ? AND peer = ? AND {column} IS NULL", (at, message_id, peer)))
            statements.append(
                (
                    f"UPDATE messages SET {column} = ? WHERE id = ? AND outgoing = 1 AND {column} IS NULL "
                    f"AND EXISTS (SELECT 1 FROM receipts WHERE id = ? AND peer = ?) "
                    f"AND NOT EXISTS (SELECT 1 FROM receipts WHERE id = ? AND {column} IS NULL)",
                    (at, message_id, message_id, peer, message_id),
                )
            )
        if column == "delivered_at":
            statements += [("DELETE FROM outbox WHERE id = ? AND recipient = ? AND kind = 'msg'", (message_id, peer)) for message_id in rest]
            if queue is not None:
                for message_id in ids:
                    queue.acknowledge(message_id)
        state = "delivered" if column == "delivered_at" else "read"

        def announce(counts: list[int] | None) -> None:
            if counts is None:
                return
            for message_id in plain:
                self.delivered += 1
                self.bus.publish("chat.receipt", {"id": message_id, "peer": peer, "state": state, "at": at, "complete": True})
            for i, message_id in enumerate(rest):
                if counts[batched + 2 * i]:
                    self.delivered += column == "delivered_at"
                    self.bus.publish("chat.receipt", {"id": message_id, "peer": peer, "state": state, "at": at, "complete": bool(counts[batched + 2 * i + 1])})

        self._commit.submit(statements, announce)

    async def mark_read(self, ids: list[str]) -> int:
        rows = []
        for message_id in ids:
            rows += self._query("SELECT id, sender FROM messages WHERE id = ? AND outgoing = 0 AND read_at IS NULL", (message_id,))
        at = now_ms()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for row in rows:
            statements.append(("UPDATE messages SET read_at = ? WHERE id = ?", (at, row["id"])))
            statements.append(("INSERT OR IGNORE INTO outbox (id, recipient, kind) VALUES (?, ?, 'read')", (row["id"], row["sender"])))
        if statements:
            self._tx(statements)
            for row in rows:
                self.delivery.enqueue(row["sender"], Pending(row["id"], "read", b""))
        return len(rows)

    # -- groups ----------------------------------------------------------------------------------
    def _refold(self, conversation: str) -> GroupState | None:
        """Recompute a group's state from the operations on disk, and tell the fronts if it changed."""
        group_id = group_id_of(conversation)
        if group_id is None:
            return None
        rows = self._query("SELECT body FROM messages WHERE conversation = ? AND kind = 'group'", (conversation,))
        ops = []
        for row in rows:
            try:
                ops.append(ChatMessage.from_json(json.loads(row["body"])))
            except BadFrame:
                continue  # stored before verification was the rule: an operation must verify to count
        equivocal: set[tuple[str, int]] = set()
        if any('"cut"' in op.text for op in ops):  # a removal with a cut: a seq used twice voids both
            equivocal = {(row["sender"], row["seq"]) for row in self._query(EQUIVOCAL, (conversation,))}
        state = fold(group_id, ops, equivocal)
        before = self._groups.get(group_id)
        if state is None:
            return None
        self._groups[group_id] = state
        if self.me in state.ever and (before is None or before.version != state.version):
            self.bus.publish("group.updated", state.to_json(self.me))
        return state

    def _member_of(self, group_id: str) -> GroupState:
        state = self._groups.get(group_id)
        if state is None or self.me not in state.ever:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no group {group_id} on this node")
        if self.me not in state.members:
            raise ChatError(f"this node is no longer a member of {state.name!r}")
        return state

    async def create_group(self, name: str, members: list[str]) -> dict[str, Any]:
        plan = await self.plan_group_op("create", None, name=name, members=members)
        await self._author(plan.conversation, "group", [plan.text], plan.recipients, message_id=plan.message_id)
        return self._groups[plan.group_id].to_json(self.me)

    async def group_op(self, group_id: str, op: str, *, name: str | None = None, members: Iterable[str] = ()) -> dict[str, Any]:
        plan = await self.plan_group_op(op, group_id, name=name, members=members)
        await self._author(plan.conversation, "group", [plan.text], plan.recipients)
        return self._groups[group_id].to_json(self.me)

    async def plan_group_op(
        self, op: str, group_id: str | None, *, name: str | None = None, members: Iterable[str] = (), message_id: str | None = None
    ) -> GroupPlan:
        """What a group operation of ours says and whom it goes to, after the checks: a
        create (``group_id`` None; its message id is the new group's id) or an operation
        on a group we are a member of."""
        if op == "create":
            others = sorted(set(members) - {self.me})
            group_id = message_id or new_message_id()
            return GroupPlan(group_id, op_text("create", name=check_name(name or ""), members=others), others, group_id)
        if op not in ("rename", "invite", "remove", "leave") or group_id is None:
            raise ChatError(f"no group operation {op!r}")
        state = self._member_of(group_id)
        wanted = set(members)
        if op == "rename":
            name = check_name(name or "")
        elif op == "invite":
            wanted -= state.members
            if not wanted:
                raise ChatError("they are members already")
        elif op == "remove":
            if self.me != state.creator:
                raise ChatError("only the group's creator removes members (anyone may leave)")
            wanted &= state.members - {self.me}
            if not wanted:
                raise ChatError("none of them is a member")
        cut = None
        if op == "remove":  # what we hold of each: anything of theirs past it, dated however early, has no effect
            have = await self._digest(group_conversation(group_id))
            cut = {member: have.get(member, 0) for member in wanted}
        recipients = sorted((state.members | wanted) - {self.me})  # the removed learn they were removed
        return GroupPlan(group_id, op_text(op, name=name if op == "rename" else None, members=wanted, cut=cut), recipients, None)

    async def send_signed_op(self, body: Any) -> dict[str, Any]:
        """A group operation its author signed elsewhere (``plan_group_op`` and ``draft``):
        planned again here from what it says, so it goes to whom it must and to nobody it
        must not; stale if the group changed between the draft and now."""
        try:
            message = ChatMessage.from_json(body, verify=True)
            op = parse_op(message)
        except BadFrame as exc:
            raise ChatError(f"not a signed group operation: {exc}") from None
        group_id = message.id if op.op == "create" else group_id_of(message.conversation)
        plan = await self.plan_group_op(op.op, None if op.op == "create" else group_id, name=op.name, members=op.members, message_id=message.id)
        if plan.conversation != message.conversation or plan.text != message.text:
            raise ChatError("stale: the group changed since this was drafted; draft it again")
        await self.send_signed(plan.conversation, [body], kind="group", recipients=plan.recipients)
        return self._groups[plan.group_id].to_json(self.me)

    def visible(self, conversation: str) -> bool:
        """Whether this node shows ``conversation``: a 1:1 of its own, or a group it was ever in."""
        group = self._groups.get(group_id_of(conversation) or "")
        return dm_peer(conversation, self.me) is not None or (group is not None and self.me in group.ever)

    def groups(self) -> list[dict[str, Any]]:
        return sorted((g.to_json(self.me) for g in self._groups.values() if self.me in g.ever), key=lambda g: (not g["member"], g["name"], g["id"]))

    def resolve_group(self, text: str) -> GroupState:
        """A group by id, unique name or unique id prefix (``api.resolve``); '#' in front is allowed."""
        text = text.removeprefix("#")
        return api.resolve(
            text,
            [g for g in self._groups.values() if self.me in g.ever],
            id_of=lambda g: g.id,
            name_of=lambda g: g.name,
            what="group",
            what_plural="groups",
            not_found=f"no group {text!r} on this node (lannode group ls lists them)",
        )

    def _request_sync(self, member: str, conversation: str) -> None:
        now = time.monotonic()
        key = (member, conversation)
        if self._nursery is None or now - self._syncing.get(key, -math.inf) < SYNC_RETRY:
            return
        self._syncing[key] = now
        self._nursery.start_soon(self._send_sync, member, conversation)

    async def _send_sync(self, member: str, conversation: str) -> None:
        have = await self._digest(conversation)
        try:
            link = await self.links.link_to(member)
            await link.send(CHANNEL_CHAT, encode_frame(SyncFrame(conversation, have)))
            self.syncs_sent += 1
        except LinkError as exc:
            log.debug("catch-up from %s: %s", member, exc)

    async def _digest(self, conversation: str) -> dict[str, int]:
        """Per sender, the highest seq held with none missing below it."""
        have: dict[str, int] = {}
        for row in await self._read("SELECT sender, COUNT(*) AS n, MAX(seq) AS top FROM messages WHERE conversation = ? GROUP BY sender", (conversation,)):
            if row["n"] == row["top"]:
                have[row["sender"]] = row["top"]
            else:  # a gap: walk that sender's seqs
                seqs = [r["seq"] for r in await self._read("SELECT seq FROM messages WHERE conversation = ? AND sender = ? ORDER BY seq", (conversation, row["sender"]))]
                have[row["sender"]] = next((i for i, seq in enumerate(seqs) if seq != i + 1), len(seqs))
        return have

    async def _answer_sync(self, link: PeerLink, frame: SyncFrame) -> None:
        """Send a member what it lacks of a group: operations first, so every message after
        them finds its author a member."""
        group_id = group_id_of(frame.conversation)
        state = self._groups.get(group_id) if group_id else None
        sent = 0
        more = False
        try:
            if state is not None and link.node_id in state.members and self.me in state.ever:
                rows = await self._read(
                    "SELECT sender, seq, body FROM messages WHERE conversation = ? ORDER BY kind = 'text', lamport, sender, seq", (frame.conversation,)
                )
                for row in rows:
                    if row["seq"] > frame.have.get(row["sender"], 0):
                        if sent == SYNC_BATCH:
                            more = True
                            break
                        await link.send(CHANNEL_CHAT, message_frame(row["body"]))
                        sent += 1
                self.syncs_answered += 1
            else:
                self.rejected += 1  # not a member here: it learns nothing, not even what we hold
            await link.send(CHANNEL_CHAT, encode_frame(SyncedFrame(frame.conversation, more)))
        except LinkError:
            pass

    # -- reading ---------------------------------------------------------------------------------
    async def history(self, conversation: str, *, limit: int = 50, before: str | None = None, search: str | None = None) -> list[dict[str, Any]]:
        where, params = ["conversation = ?"], [conversation]
        if before is not None:
            rows = self._query("SELECT lamport, sender, seq FROM messages WHERE id = ? AND conversation = ?", (before, conversation))
            if not rows:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no message {before} in this conversation")
            where.append("(lamport, sender, seq) < (?, ?, ?)")
            params += [rows[0]["lamport"], rows[0]["sender"], rows[0]["seq"]]
        if search:
            where.append("text LIKE ? ESCAPE '\\'")
            params.append("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        rows = await self._read(
            f"SELECT * FROM messages WHERE {' AND '.join(where)} ORDER BY lamport DESC, sender DESC, seq DESC LIMIT ?",
            (*params, limit),
        )
        records = [message_record(row, self.me, body=self.with_bodies) for row in reversed(rows)]
        if group_id_of(conversation):
            outgoing = [r["id"] for r in records if r["direction"] == "out"]
            receipts: dict[str, dict[str, Any]] = {}
            for start in range(0, len(outgoing), 500):
                chunk = outgoing[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in await self._read(f"SELECT * FROM receipts WHERE id IN ({marks})", tuple(chunk)):
                    receipts.setdefault(row["id"], {})[row["peer"]] = {"delivered_at": row["delivered_at"], "read_at": row["read_at"]}
            for record in records:
                if record["direction"] == "out":
                    record["receipts"] = receipts.get(record["id"], {})
        return records

    async def conversations(self) -> list[dict[str, Any]]:
        rows = await self._read(
            "SELECT conversation, COUNT(*) AS messages, SUM(outgoing = 0 AND read_at IS NULL AND kind = 'text') AS unread, MAX(received_at) AS last_at "
            "FROM messages GROUP BY conversation ORDER BY last_at DESC"
        )
        result = []
        for row in rows:
            peer = dm_peer(row["conversation"], self.me)
            group = self._groups.get(group_id_of(row["conversation"]) or "")
            if peer is None and (group is None or self.me not in group.ever):
                continue  # operations of a group this node was never in
            name = group.name if group else self.peers.name_if_known(peer) if peer else None
            result.append(
                {
                    "conversation": row["conversation"],
                    "peer": peer,
                    "group": group.id if group else None,
                    "name": name,
                    "messages": row["messages"],
                    "unread": row["unread"] or 0,
                    "last_at": row["last_at"],
                }
            )
        return result

    def statistics(self) -> dict[str, Any]:
        return {
            "outbox": self.delivery.pending(),
            "received": self.received,
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "groups": sum(self.me in g.members for g in self._groups.values()),
            "catch_ups": {"asked": self.syncs_sent, "answered": self.syncs_answered},
        }

    def register_methods(self, server: api.Methods) -> None:
        from lannode.chat.methods import register  # the chat.* and group.* surface, kept apart

        register(self, server)
