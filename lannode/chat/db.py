"""chat.sqlite: the schema and its migrations, the connections (writer inline, reader and
checkpointer in worker threads), and group commit (many messages, one transaction).

SQLite runs with ``synchronous=NORMAL`` in WAL mode: a committed message survives the
daemon crashing or being killed; a power cut may lose the last fraction of a second
(``FULL`` costs an fsync per message, and the 1,000 messages per second goal with it).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import trio

from lannode.core.chat import (
    ChatError,
    ChatMessage,
)
from lannode.files import create_private

log = logging.getLogger("lannode.chat")

CHECKPOINT_EVERY = 128  # commits (of about 6 pages each) between WAL checkpoints


SCHEMA_VERSION = 3  # 1: 1:1 chat; 2: groups (messages.kind, receipts); 3: the outbox and receipts WITHOUT ROWID
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
    delivered_at INTEGER,          -- every recipient has it
    read_at INTEGER,               -- outgoing: every recipient saw it; incoming: we saw it
    kind TEXT NOT NULL DEFAULT 'text'
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (conversation, lamport, sender, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,            -- 'msg' or 'read'
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (id, recipient, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (   -- per recipient of an outgoing message
    id TEXT NOT NULL,
    peer TEXT NOT NULL,
    delivered_at INTEGER,
    read_at INTEGER,
    PRIMARY KEY (id, peer)
) WITHOUT ROWID;
"""


class ChatDb:
    """chat.sqlite with three connections: writes and small look-ups run inline on the trio
    thread (a WAL commit without fsync takes tens of microseconds, far less than a
    hop to a worker thread); history pages and searches run in worker threads on a
    reading connection, which WAL lets proceed alongside the writer; and checkpoints
    (copying the WAL back into the database, with its fsyncs) run in a worker thread
    on a third, where SQLite would run them inside every thousandth page's commit."""

    def __init__(self, path: Path) -> None:
        create_private(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint()
        self._migrate()
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {max(SCHEMA_VERSION, self._db.execute('PRAGMA user_version').fetchone()[0])}")
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._read_lock = threading.Lock()
        self._checkpointer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._checkpoint_lock = threading.Lock()
        self._commits = 0  # since the last checkpoint was asked for
        self.checkpoints = 0

    def _migrate(self) -> None:
        """Bring an older chat.sqlite to ``SCHEMA_VERSION``, one step per version, each in a
        transaction; the version is SQLite's ``user_version``. A database from before
        versions were kept says its version by its shape, once."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            version = self._version_by_shape()
        if version < 2:
            self._to_groups()
        if version < 3:
            self._to_without_rowid()
        if version > SCHEMA_VERSION:
            log.warning("chat.sqlite is of a newer lannode (schema %d, this one knows %d); going on with what both know", version, SCHEMA_VERSION)

    def _version_by_shape(self) -> int:
        tables = {row["name"]: row["sql"] for row in self._db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
        if "messages" not in tables:
            return SCHEMA_VERSION  # a new database
        if "kind" not in {row["name"] for row in self._db.execute("PRAGMA table_info(messages)")}:
            return 1
        return 3 if "WITHOUT ROWID" in (tables.get("outbox") or "").upper() else 2

    def _to_groups(self) -> None:
        """Version 2: messages gain a kind, outgoing 1:1 messages a receipt row."""
        self._db.executescript(
            """
            BEGIN;
            ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
            CREATE TABLE receipts (id TEXT NOT NULL, peer TEXT NOT NULL, delivered_at INTEGER, read_at INTEGER, PRIMARY KEY (id, peer));
            INSERT INTO receipts (id, peer, delivered_at, read_at)
                SELECT id, CASE WHEN substr(conversation, 4, 24) = sender THEN substr(conversation, 29) ELSE substr(conversation, 4, 24) END,
                       delivered_at, read_at
                FROM messages WHERE outgoing = 1 AND conversation LIKE 'dm/%';
            COMMIT;
            """
        )

    def _to_without_rowid(self) -> None:
        """Version 3: the outbox and receipts are rebuilt WITHOUT ROWID (each row then lives
        in one b-tree, not a table and its key's index: two pages fewer written per
        message), and messages lose an index ((conversation, sender, seq) look-ups are
        rare, and messages_order covers them)."""
        self._db.execute("DROP INDEX IF EXISTS messages_by_sender")
        for table, columns in (("outbox", "id, recipient, kind, attempts, next_try"), ("receipts", "id, peer, delivered_at, read_at")):
            create = SCHEMA.split(f"CREATE TABLE IF NOT EXISTS {table} (", 1)[1].split(";", 1)[0]
            self._db.executescript(
                f"""
                BEGIN;
                CREATE TABLE {table}_rebuilt ({create};
                INSERT INTO {table}_rebuilt ({columns}) SELECT {columns} FROM {table};
                DROP TABLE {table};
                ALTER TABLE {table}_rebuilt RENAME TO {table};
                COMMIT;
                """
            )

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
        self._commits += 1
        return counts

    def checkpoint_due(self) -> bool:
        """True once per CHECKPOINT_EVERY commits: the caller then runs checkpoint()."""
        if self._commits < CHECKPOINT_EVERY:
            return False
        self._commits = 0
        return True

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for, nor blocks, the writer
        or a reader). Blocking: run it in a worker thread."""
        with self._checkpoint_lock:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1

    def close(self) -> None:
        with self._checkpoint_lock:
            self._checkpointer.close()
        self._db.close()
        self._reader.close()


Statements = list[tuple[str, tuple[Any, ...]]]
CommitCallback = Callable[[list[int] | None], None]


class GroupCommit:
    """Statements from many tasks committed together: one transaction (one WAL append)
    per scheduler pass rather than one per message, the way databases group commits.

    ``submit`` queues statements and returns at once; its callback gets their row
    counts once they are committed (or None if they could not be). ``enqueue`` queues
    them and returns a ticket to wait on. The first ticket of a batch leads it: its
    ``wait()`` lets every task that is ready now add to the batch, then commits it on
    the spot, where a callback's batch is committed by a task started for it (the
    leader saves that task and a wake-up, per chat.send). A batch that fails is
    retried statement list by statement list, so one bad list never takes the others
    down with it.
    """

    def __init__(self, db: ChatDb, nursery: trio.Nursery) -> None:
        self._db = db
        self._nursery = nursery
        self._batch: list[tuple[Statements, CommitCallback | None]] = []
        self._leader: Ticket | None = None  # the ticket that will commit the batch forming now
        self.transactions = 0

    def submit(self, statements: Statements, callback: CommitCallback | None = None) -> None:
        self._batch.append((statements, callback))
        if len(self._batch) == 1 and self._leader is None:
            self._nursery.start_soon(self._flush_soon)  # runs after every task that is ready now

    def enqueue(self, statements: Statements) -> "Ticket":
        """Queue statements now; await the ticket's ``wait()`` for their row counts."""
        ticket = Ticket(self)
        lead = not self._batch and self._leader is None
        self._batch.append((statements, ticket.finished))
        if lead:
            self._leader = ticket
        return ticket

    async def commit(self, statements: Statements) -> list[int]:
        return await self.enqueue(statements).wait()

    async def _lead(self) -> None:
        # never cancelled here: the batch is committed whatever happens to the leader's task
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._leader = None
        self._flush()

    async def _flush_soon(self) -> None:
        if self._batch and self._leader is None:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        try:
            counts: list[int] | None = self._db.transaction([s for statements, _ in batch for s in statements])
            self.transactions += 1
        except sqlite3.Error:
            counts = None
        if self._db.checkpoint_due():
            self._nursery.start_soon(self._checkpoint)
        done = 0
        for statements, callback in batch:
            if counts is not None:
                mine: list[int] | None = counts[done : done + len(statements)]
                done += len(statements)
            else:
                try:
                    mine = self._db.transaction(statements)
                    self.transactions += 1
                except sqlite3.Error:
                    log.exception("chat.sqlite refused a write")
                    mine = None
            if callback is not None:
                callback(mine)

    async def _checkpoint(self) -> None:
        db = self._db
        try:
            await trio.to_thread.run_sync(db.checkpoint)
        except sqlite3.Error as exc:
            log.warning("chat.sqlite checkpoint failed (the WAL keeps growing until one works): %s", exc)


class Ticket:
    def __init__(self, commit: GroupCommit) -> None:
        self._commit = commit
        self._done = trio.Event()
        self._counts: list[int] | None = None

    def finished(self, counts: list[int] | None) -> None:
        self._counts = counts
        self._done.set()

    async def wait(self) -> list[int]:
        if self._commit._leader is self:
            await self._commit._lead()
        else:
            await self._done.wait()
        if self._counts is None:
            raise ChatError("the message could not be stored (chat.sqlite refused it: see the node's log)")
        return self._counts


def message_record(row: Any, me: str, *, body: bool = False) -> dict[str, Any]:
    """The API's record of a message: from a ``messages`` row, or anything indexed the same
    way. ``body``: with the signed message, for a page that checks signatures itself."""
    record = {
        "id": row["id"],
        "conversation": row["conversation"],
        "sender": row["sender"],
        "direction": "out" if row["outgoing"] else "in",
        "kind": row["kind"],
        "seq": row["seq"],
        "lamport": row["lamport"],
        "sent_at": row["sent_at"],
        "received_at": row["received_at"],
        "text": row["text"],
        "delivered_at": row["delivered_at"],
        "read_at": row["read_at"],
    }
    if row["kind"] == "group":
        record["op"] = json.loads(row["text"])
    if body:
        record["body"] = row["body"]
    return record



COLUMNS = ("id", "conversation", "sender", "seq", "lamport", "sent_at", "received_at", "text", "body", "outgoing", "kind")
INSERT = f"INSERT INTO messages ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INSERT_IGNORE = INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)


def record_of(message: ChatMessage, *, outgoing: bool, received_at: int, body: str = "") -> dict[str, Any]:
    """The API's record of a message just stored, without reading it back (with ``body``,
    if given: see ``message_record``)."""
    row = dict(zip(COLUMNS, row_of(message, body, outgoing=outgoing, received_at=received_at)), delivered_at=None, read_at=None)
    return message_record(row, "", body=bool(body))


def row_of(message: ChatMessage, body: str, *, outgoing: bool, received_at: int) -> tuple[Any, ...]:
    return (message.id, message.conversation, message.sender, message.seq, message.lamport, message.sent_at, received_at, message.text, body, int(outgoing), message.kind)

# (sender, seq) pairs that two different messages of a conversation carry: see lannode.core.groups
EQUIVOCAL = "SELECT sender, seq FROM messages WHERE conversation = ? GROUP BY sender, seq HAVING COUNT(*) > 1"
