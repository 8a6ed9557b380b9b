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
    """chat.sqlite. One connection, used from worker threads one at a time."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run statements atomically; the row counts they changed."""
        with self._lock:
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
        self._wake = trio.Event()
        self._in_flight: set[str] = set()
        self._retry_now: set[str] = set()
        self.pending_recipients = 0
        peers.links.handle(CHANNEL_CHAT, self._on_frame)
        peers.state_listeners.append(self._on_peer_state)

    # -- life ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.db = await trio.to_thread.run_sync(ChatDb, self.db_path)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._outbox_loop, nursery)
                task_status.started()
        finally:
            self.db.close()

    async def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self.db is not None
        db = self.db
        return await trio.to_thread.run_sync(lambda: db.run(sql, params))

    async def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        assert self.db is not None
        db = self.db
        return await trio.to_thread.run_sync(lambda: db.transaction(statements))

    # -- sending ---------------------------------------------------------------------------------
    async def send(self, peer: str, text: str) -> dict[str, Any]:
        check_text(text)
        if peer == self.me:
            raise ChatError("that is this node; pick a peer")
        conversation = dm_conversation(self.me, peer)
        async with self._send_lock:  # seq and lamport are read and written together
            rows = await self._sql(
                "SELECT COALESCE(MAX(lamport), 0) AS lamport, COALESCE(MAX(CASE WHEN sender = ? THEN seq END), 0) AS seq FROM messages WHERE conversation = ?",
                (self.me, conversation),
            )
            message = ChatMessage(
                id=new_message_id(),
                conversation=conversation,
                sender_key=self.identity.public_key,
                seq=rows[0]["seq"] + 1,
                lamport=rows[0]["lamport"] + 1,
                sent_at=now_ms(),
                text=text,
            ).signed(self.identity.signing_key)
            await self._tx(
                [
                    (_INSERT, _row(message, outgoing=True, received_at=message.sent_at)),
                    ("INSERT INTO outbox (id, recipient, kind) VALUES (?, ?, 'msg')", (message.id, peer)),
                ]
            )
        record = await self.get(message.id)
        self.bus.publish("chat.message", record)
        self._wake.set()
        return record

    async def get(self, message_id: str) -> dict[str, Any]:
        rows = await self._sql("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no message {message_id}")
        return message_record(rows[0], self.me)

    def _on_peer_state(self, node_id: str, state: State) -> None:
        if state is State.ALIVE:
            self._retry_now.add(node_id)
            self._wake.set()

    async def _outbox_loop(self, nursery: trio.Nursery) -> None:
        while True:
            now = time.time()
            if self._retry_now:
                recipients = list(self._retry_now)
                self._retry_now.clear()
                await self._tx([("UPDATE outbox SET next_try = 0 WHERE recipient = ?", (r,)) for r in recipients])
            rows = await self._sql("SELECT recipient, MIN(next_try) AS due FROM outbox GROUP BY recipient")
            self.pending_recipients = len(rows)
            next_due = math.inf
            for row in rows:
                recipient, due = row["recipient"], row["due"]
                if due <= now and recipient not in self._in_flight:
                    self._in_flight.add(recipient)
                    nursery.start_soon(self._deliver_to, recipient)
                elif recipient not in self._in_flight:
                    next_due = min(next_due, due)
            with trio.move_on_after(max(0.05, min(next_due - time.time(), 60.0))):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _deliver_to(self, recipient: str) -> None:
        try:
            rows = await self._sql(
                "SELECT o.id, o.kind, o.attempts, m.body FROM outbox o LEFT JOIN messages m ON m.id = o.id "
                "WHERE o.recipient = ? ORDER BY m.lamport, m.seq",
                (recipient,),
            )
            if not rows:
                return
            attempts = max(r["attempts"] for r in rows)
            try:
                link = await self.peers.links.link_to(recipient)
                reads = []
                for row in rows:
                    if row["kind"] == "msg":
                        await link.send(CHANNEL_CHAT, encode_frame(MessageFrame(ChatMessage.from_json(_json(row["body"])))))
                    else:
                        reads.append(row["id"])
                if reads:
                    await link.send(CHANNEL_CHAT, encode_frame(ReadFrame(tuple(reads))))
                    # a read receipt is a courtesy: once handed to the link it is done
                    await self._tx([("DELETE FROM outbox WHERE id = ? AND recipient = ? AND kind = 'read'", (i, recipient)) for i in reads])
                self.peers.pin(link)  # this person wrote to them: trust on first use
                retry_in = self.ack_timeout  # resent unless the receipt comes first
            except LinkError as exc:
                retry_in = min(60.0, 2.0**attempts)
                log.debug("chat to %s: %s; retry in %.0f s", recipient, exc, retry_in)
            await self._tx([("UPDATE outbox SET attempts = attempts + 1, next_try = ? WHERE recipient = ?", (time.time() + retry_in, recipient))])
        finally:
            self._in_flight.discard(recipient)
            self._wake.set()

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
        (inserted,) = await self._tx([(_INSERT_IGNORE, _row(message, outgoing=False, received_at=now_ms()))])
        if inserted:
            self.received += 1
            self.bus.publish("chat.message", await self.get(message.id))
        else:
            self.duplicates += 1
        await link.send(CHANNEL_CHAT, encode_frame(AckFrame((message.id,))))

    async def _on_receipt(self, peer: str, ids: tuple[str, ...], column: str) -> None:
        at = now_ms()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for message_id in ids:
            conversation = dm_conversation(self.me, peer)
            statements.append((f"UPDATE messages SET {column} = COALESCE({column}, ?) WHERE id = ? AND outgoing = 1 AND conversation = ?", (at, message_id, conversation)))
            if column == "delivered_at":
                statements.append(("DELETE FROM outbox WHERE id = ? AND recipient = ? AND kind = 'msg'", (message_id, peer)))
        counts = await self._tx(statements)
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
            rows += await self._sql("SELECT id, sender FROM messages WHERE id = ? AND outgoing = 0 AND read_at IS NULL", (message_id,))
        at = now_ms()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for row in rows:
            statements.append(("UPDATE messages SET read_at = ? WHERE id = ?", (at, row["id"])))
            statements.append(("INSERT OR IGNORE INTO outbox (id, recipient, kind) VALUES (?, ?, 'read')", (row["id"], row["sender"])))
        if statements:
            await self._tx(statements)
            self._wake.set()
        return len(rows)

    # -- reading ---------------------------------------------------------------------------------
    async def history(self, conversation: str, *, limit: int = 50, before: str | None = None, search: str | None = None) -> list[dict[str, Any]]:
        where, params = ["conversation = ?"], [conversation]
        if before is not None:
            rows = await self._sql("SELECT lamport, sender, seq FROM messages WHERE id = ? AND conversation = ?", (before, conversation))
            if not rows:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no message {before} in this conversation")
            where.append("(lamport, sender, seq) < (?, ?, ?)")
            params += [rows[0]["lamport"], rows[0]["sender"], rows[0]["seq"]]
        if search:
            where.append("text LIKE ? ESCAPE '\\'")
            params.append("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        rows = await self._sql(
            f"SELECT * FROM messages WHERE {' AND '.join(where)} ORDER BY lamport DESC, sender DESC, seq DESC LIMIT ?",
            (*params, limit),
        )
        return [message_record(row, self.me) for row in reversed(rows)]

    async def conversations(self) -> list[dict[str, Any]]:
        rows = await self._sql(
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
            "outbox_recipients": self.pending_recipients,
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


_INSERT = (
    "INSERT INTO messages (id, conversation, sender, seq, lamport, sent_at, received_at, text, body, outgoing) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_IGNORE = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)


def _row(message: ChatMessage, *, outgoing: bool, received_at: int) -> tuple[Any, ...]:
    body = json.dumps(message.to_json(), separators=(",", ":"), ensure_ascii=False)
    return (message.id, message.conversation, message.sender, message.seq, message.lamport, message.sent_at, received_at, message.text, body, int(outgoing))


def _json(text: str) -> Any:
    return json.loads(text)
