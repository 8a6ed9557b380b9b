"""Chat as a service: history in SQLite, the outbox, delivery and read receipts, the chat.* API.

Messages are ``lannode.core.chat.ChatMessage``: signed by their author, stored
once per id, shown in ``(lamport, sender, seq)`` order. This module keeps them in
``chat.sqlite`` in the home (WAL), and delivers:

* **Store and forward.** ``chat.send`` writes the message and an outbox row in
  one transaction before it answers, so a sent message survives a restart of
  either side. The outbox is worked per recipient: when the peer is alive, its
  pending messages go over the peer link in order; a message not acknowledged
  within ``ack_timeout`` is sent again, and a peer that cannot be reached is
  retried with backoff (1 s doubling to 60 s) and at once when it comes back
  alive. Only the two ends ever hold a 1:1 message: the receiver refuses one
  that did not come straight from its author.
* **Exactly once.** The receiver stores by message id (a duplicate is ignored,
  and acknowledged again, since the first acknowledgement may have been lost),
  and announces a message to its fronts only when it stored it.
* **Receipts.** The receiver's ``ack`` is the delivery receipt (the message is
  on its disk); ``chat.read`` from a front sends a ``read`` receipt back.

SQLite runs with ``synchronous=NORMAL`` in WAL mode: a committed message survives
the daemon crashing or being killed; a power cut may lose the last fraction of a
second (``FULL`` costs an fsync per message, and the 1,000 messages per second
goal with it).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from lannode.core import api
from lannode.core.chat import (
    AckFrame,
    BadFrame,
    ChatError,
    ChatMessage,
    MessageFrame,
    ReadFrame,
    check_text,
    decode_frame,
    dm_conversation,
    dm_peer,
    encode_frame,
    new_message_id,
)
from lannode.core.membership import State
from lannode.identity import Identity
from lannode.net.api_server import ApiServer, EventBus, require
from lannode.net.links import Link, LinkError
from lannode.peers import PeerService

log = logging.getLogger("lannode.chat")

CHANNEL_CHAT = 3
MAX_PAGE = 500


def now_ms() -> int:
    return int(time.time() * 1000)


SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation TEXT NOT NULL,
    sender TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lamport INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    text TEXT NOT NULL,
    body TEXT NOT NULL,            -- the signed message as JSON, to relay or re-verify
    outgoing INTEGER NOT NULL,
    delivered_at INTEGER,
    read_at INTEGER
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (conversation, lamport, sender, seq);
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (conversation, sender, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,            -- 'msg' or 'read'
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (id, recipient, kind)
);
"""


class ChatDb:
    """chat.sqlite with two connections: writes and small look-ups run inline on the trio
    thread (a WAL commit without fsync takes tens of microseconds, far less than a
    hop to a worker thread); history pages and searches run in worker threads on a
    reading connection, which WAL lets proceed alongside the writer."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._read_lock = threading.Lock()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run statements atomically; the row counts they changed."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            counts = [self._db.execute(sql, params).rowcount for sql, params in statements]
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return counts

    def close(self) -> None:
        self._db.close()
        self._reader.close()


def message_record(row: sqlite3.Row, me: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "conversation": row["conversation"],
        "sender": row["sender"],
        "direction": "out" if row["outgoing"] else "in",
        "seq": row["seq"],
        "lamport": row["lamport"],
        "sent_at": row["sent_at"],
        "received_at": row["received_at"],
        "text": row["text"],
        "delivered_at": row["delivered_at"],
        "read_at": row["read_at"],
    }


class ChatService:
    def __init__(self, home_path: Path, identity: Identity, peers: PeerService, bus: EventBus, *, ack_timeout: float = 5.0) -> None:
        self.identity = identity
        self.me = identity.node_id
        self.peers = peers
        self.bus = bus
        self.ack_timeout = ack_timeout
        self.db_path = home_path / "chat.sqlite"
        self.db: ChatDb | None = None
        self.rejected = 0
        self.delivered = 0
        self.received = 0
        self.duplicates = 0
        self._send_lock = trio.Lock()
        self._queues: dict[str, _RecipientQueue] = {}
        self._clocks: dict[str, tuple[int, int]] = {}
        self._pending_acks: dict[str, list[str]] = {}
        self._nursery: trio.Nursery | None = None
        peers.links.handle(CHANNEL_CHAT, self._on_frame)
        peers.state_listeners.append(self._on_peer_state)

    # -- life ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.db = await trio.to_thread.run_sync(ChatDb, self.db_path)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._load_outbox()
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
    async def send(self, peer: str, text: str) -> dict[str, Any]:
        check_text(text)
        if peer == self.me:
            raise ChatError("that is this node; pick a peer")
        conversation = dm_conversation(self.me, peer)
        async with self._send_lock:  # seq and lamport are read and written together
            lamport, seq = self._clock(conversation)
            message = ChatMessage(
                id=new_message_id(),
                conversation=conversation,
                sender_key=self.identity.public_key,
                seq=seq + 1,
                lamport=lamport + 1,
                sent_at=now_ms(),
                text=text,
            ).signed(self.identity.signing_key)
            self._saw(message)
            self._tx(
                [
                    (_INSERT, _row(message, outgoing=True, received_at=message.sent_at)),
                    ("INSERT INTO outbox (id, recipient, kind) VALUES (?, ?, 'msg')", (message.id, peer)),
                ]
            )
        record = self.get(message.id)
        self.bus.publish("chat.message", record)
        self._enqueue(peer, _Pending(message.id, "msg", _message_frame(_body(message))))
        return record

    def _clock(self, conversation: str) -> tuple[int, int]:
        """(highest lamport seen, our last seq) in a conversation: cached, read once from disk
        with two index look-ups."""
        cached = self._clocks.get(conversation)
        if cached is None:
            top = self._query("SELECT lamport FROM messages WHERE conversation = ? ORDER BY lamport DESC LIMIT 1", (conversation,))
            mine = self._query("SELECT seq FROM messages WHERE conversation = ? AND sender = ? ORDER BY seq DESC LIMIT 1", (conversation, self.me))
            cached = (top[0]["lamport"] if top else 0, mine[0]["seq"] if mine else 0)
            self._clocks[conversation] = cached
        return cached

    def _saw(self, message: ChatMessage) -> None:
        lamport, seq = self._clock(message.conversation)
        self._clocks[message.conversation] = (max(lamport, message.lamport), message.seq if message.sender == self.me else seq)

    def get(self, message_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no message {message_id}")
        return message_record(rows[0], self.me)

    def _on_peer_state(self, node_id: str, state: State) -> None:
        queue = self._queues.get(node_id)
        if queue is not None and state is State.ALIVE:
            queue.retry_now()

    def _enqueue(self, recipient: str, item: "_Pending") -> None:
        queue = self._queues.get(recipient)
        if queue is None:
            queue = self._queues[recipient] = _RecipientQueue()
            if self._nursery is not None:
                self._nursery.start_soon(self._deliver_to, recipient, queue)
        queue.due.append(item)
        queue.wake.set()

    def _load_outbox(self) -> None:
        rows = self._query(
            "SELECT o.id, o.recipient, o.kind, m.body FROM outbox o LEFT JOIN messages m ON m.id = o.id ORDER BY m.lamport, m.seq"
        )
        for row in rows:
            if row["kind"] == "msg" and row["body"] is not None:
                self._enqueue(row["recipient"], _Pending(row["id"], "msg", _message_frame(row["body"])))
            elif row["kind"] == "read":
                self._enqueue(row["recipient"], _Pending(row["id"], "read", b""))

    async def _deliver_to(self, recipient: str, queue: "_RecipientQueue") -> None:
        """One task per recipient: send what is due in order, resend what was not
        acknowledged within ack_timeout, back off while the peer cannot be reached."""
        while True:
            now = trio.current_time()
            for item in [i for i in queue.waiting.values() if i.deadline <= now]:
                del queue.waiting[item.id]
                queue.due.appendleft(item)  # unacknowledged: send again
            if queue.due and now >= queue.backoff_until:
                try:
                    link = await self.peers.links.link_to(recipient)
                    reads = []
                    while queue.due:
                        item = queue.due[0]
                        if item.kind == "read":
                            reads.append(item.id)
                        else:
                            await link.send(CHANNEL_CHAT, item.frame)
                            item.deadline = trio.current_time() + self.ack_timeout
                            queue.waiting[item.id] = item
                        queue.due.popleft()
                    if reads:
                        await link.send(CHANNEL_CHAT, encode_frame(ReadFrame(tuple(reads))))
                        # a read receipt is a courtesy: once handed to the link it is done
                        self._tx([("DELETE FROM outbox WHERE id = ? AND recipient = ? AND kind = 'read'", (i, recipient)) for i in reads])
                    queue.failures = 0
                    self.peers.pin(link)  # this person wrote to them: trust on first use
                except LinkError as exc:
                    queue.failures += 1
                    backoff = min(60.0, 2.0 ** (queue.failures - 1))
                    queue.backoff_until = trio.current_time() + backoff
                    log.debug("chat to %s: %s; retry in %.0f s", recipient, exc, backoff)
            wake_at = min([i.deadline for i in queue.waiting.values()] + ([queue.backoff_until] if queue.due else []), default=math.inf)
            with trio.move_on_at(wake_at):
                await queue.wake.wait()
            queue.wake = trio.Event()

    # -- receiving -------------------------------------------------------------------------------
    async def _on_frame(self, link: Link, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except BadFrame as exc:
            self.rejected += 1
            log.info("bad chat frame from %s: %s", link.node_id, exc)
            return
        if isinstance(frame, MessageFrame):
            await self._on_message(link, frame.message)
        elif isinstance(frame, AckFrame):
            await self._on_receipt(link.node_id, frame.ids, "delivered_at")
        else:
            await self._on_receipt(link.node_id, frame.ids, "read_at")

    async def _on_message(self, link: Link, message: ChatMessage) -> None:
        if message.sender != link.node_id or dm_peer(message.conversation, self.me) != message.sender:
            self.rejected += 1  # a 1:1 message comes from its author, to us, or not at all
            log.info("refused a chat message from %s: not its author's 1:1 message to us", link.node_id)
            return
        (inserted,) = self._tx([(_INSERT_IGNORE, _row(message, outgoing=False, received_at=now_ms()))])
        if inserted:
            self._saw(message)
            self.received += 1
            self.bus.publish("chat.message", self.get(message.id))
        else:
            self.duplicates += 1
        # acknowledge in batches: every message stored while a batch is on its way joins the next
        pending = self._pending_acks.setdefault(link.node_id, [])
        pending.append(message.id)
        if len(pending) == 1 and self._nursery is not None:
            self._nursery.start_soon(self._send_acks, link)

    async def _send_acks(self, link: Link) -> None:
        await trio.lowlevel.checkpoint()  # let the rest of what arrived with this message be stored first
        ids = self._pending_acks.pop(link.node_id, [])
        for start in range(0, len(ids), 512):
            try:
                await link.send(CHANNEL_CHAT, encode_frame(AckFrame(tuple(ids[start : start + 512]))))
            except LinkError:
                return  # the sender will send them again, and we will acknowledge again

    async def _on_receipt(self, peer: str, ids: tuple[str, ...], column: str) -> None:
        at = now_ms()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for message_id in ids:
            conversation = dm_conversation(self.me, peer)
            statements.append((f"UPDATE messages SET {column} = COALESCE({column}, ?) WHERE id = ? AND outgoing = 1 AND conversation = ?", (at, message_id, conversation)))
            if column == "delivered_at":
                statements.append(("DELETE FROM outbox WHERE id = ? AND recipient = ? AND kind = 'msg'", (message_id, peer)))
        counts = self._tx(statements)
        queue = self._queues.get(peer)
        if queue is not None and column == "delivered_at":
            for message_id in ids:
                queue.waiting.pop(message_id, None)
        step = 2 if column == "delivered_at" else 1
        for i, message_id in enumerate(ids):
            if counts[i * step]:
                if column == "delivered_at":
                    self.delivered += 1
                state = "delivered" if column == "delivered_at" else "read"
                self.bus.publish("chat.receipt", {"id": message_id, "peer": peer, "state": state, "at": at})

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
                self._enqueue(row["sender"], _Pending(row["id"], "read", b""))
        return len(rows)

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
        return [message_record(row, self.me) for row in reversed(rows)]

    async def conversations(self) -> list[dict[str, Any]]:
        rows = await self._read(
            "SELECT conversation, COUNT(*) AS messages, SUM(outgoing = 0 AND read_at IS NULL) AS unread, MAX(received_at) AS last_at "
            "FROM messages GROUP BY conversation ORDER BY last_at DESC"
        )
        result = []
        for row in rows:
            peer = dm_peer(row["conversation"], self.me)
            member = self.peers.membership.members.get(peer) if peer and self.peers.membership else None
            result.append({"conversation": row["conversation"], "peer": peer, "name": member.presence.name if member else None, "messages": row["messages"], "unread": row["unread"] or 0, "last_at": row["last_at"]})
        return result

    def statistics(self) -> dict[str, Any]:
        return {
            "outbox": sum(len(q.due) + len(q.waiting) for q in self._queues.values()),
            "received": self.received,
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }

    # -- API -------------------------------------------------------------------------------------
    def _conversation_of(self, params: dict[str, Any]) -> str:
        if "conversation" in params:
            conversation: str = require(params, "conversation", str)
            if dm_peer(conversation, self.me) is None:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no conversation {conversation!r} on this node")
            return conversation
        peer = self.peers.resolve(require(params, "peer", str))
        return dm_conversation(self.me, peer.node_id)

    def register_methods(self, server: ApiServer) -> None:
        async def chat_send(params: dict[str, Any], caller: api.Principal) -> Any:
            peer = self.peers.resolve(require(params, "peer", str))
            text = require(params, "text", str)
            try:
                return await self.send(peer.node_id, text)
            except ChatError as exc:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None

        async def chat_log(params: dict[str, Any], caller: api.Principal) -> Any:
            limit = require(params, "limit", int, optional=True) or 50
            if not 1 <= limit <= MAX_PAGE:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, f'"limit" is 1 to {MAX_PAGE}')
            return await self.history(
                self._conversation_of(params),
                limit=limit,
                before=require(params, "before", str, optional=True),
                search=require(params, "search", str, optional=True),
            )

        async def chat_read(params: dict[str, Any], caller: api.Principal) -> Any:
            ids = require(params, "ids", list)
            if not all(isinstance(i, str) for i in ids) or len(ids) > 512:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"ids" is a list of at most 512 message ids')
            return {"marked": await self.mark_read(ids)}

        async def chat_conversations(params: dict[str, Any], caller: api.Principal) -> Any:
            return await self.conversations()

        server.method("chat.send", chat_send, '{"peer", "text"}: send a 1:1 message; it is kept in the outbox until the peer has it.')
        server.method("chat.log", chat_log, '{"peer" or "conversation", "limit"?, "before"?, "search"?}: a page of history, oldest first.')
        server.method("chat.read", chat_read, '{"ids"}: mark received messages as seen; their senders get a read receipt.')
        server.method("chat.conversations", chat_conversations, "Conversations with message and unread counts, newest first.")


@dataclass(slots=True)
class _Pending:
    id: str
    kind: str  # "msg" or "read"
    frame: bytes
    deadline: float = 0.0


@dataclass
class _RecipientQueue:
    """A recipient's outbox in memory; the outbox table is its durable copy."""

    due: deque[_Pending] = field(default_factory=deque)
    waiting: dict[str, _Pending] = field(default_factory=dict)  # sent, not yet acknowledged
    failures: int = 0
    backoff_until: float = -math.inf
    wake: trio.Event = field(default_factory=trio.Event)

    def retry_now(self) -> None:
        """The peer is back: no more backoff, and resend whatever waits for a receipt."""
        self.backoff_until = -math.inf
        self.failures = 0
        for item in self.waiting.values():
            item.deadline = -math.inf
        self.wake.set()


def _message_frame(body: str) -> bytes:
    # the stored body was checked when it was written: no re-parse, no re-verify
    return b'{"t":"msg","m":' + body.encode() + b"}"


_INSERT = (
    "INSERT INTO messages (id, conversation, sender, seq, lamport, sent_at, received_at, text, body, outgoing) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_IGNORE = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)


def _body(message: ChatMessage) -> str:
    return json.dumps(message.to_json(), separators=(",", ":"), ensure_ascii=False)


def _row(message: ChatMessage, *, outgoing: bool, received_at: int) -> tuple[Any, ...]:
    body = _body(message)
    return (message.id, message.conversation, message.sender, message.seq, message.lamport, message.sent_at, received_at, message.text, body, int(outgoing))


def _json(text: str) -> Any:
    return json.loads(text)
