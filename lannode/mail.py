"""Mail as a service: the node's outbox, and the mail.* API.

Sending mail is split in two, so that the relay's password lives in one small
process and nowhere else:

* **This module, in the daemon**, owns the outbox. ``mail.send`` checks the
  addresses and subject (``lannode.core.mail``: a CR or LF is refused, never
  stripped), builds the whole RFC 5322 message with its attachments, writes it to
  ``HOME/mail/spool/ID.eml`` (temp file, fsync, rename) and its row to
  ``HOME/mail/outbox.sqlite`` before it answers. A message the API accepted is on
  disk; it is never lost across a restart of the node or the plugin.
* **The mail plugin** (``plugins/mail``) is the only one that talks SMTP. It
  claims the next due message (``mail.claim``), sends the spool file through the
  relay, and reports how it went (``mail.report``): sent; a failure that may pass
  (relay down, 4xx), retried after ``retry_first`` seconds doubling to
  ``retry_max``, until ``give_up_after``; or one that will not (5xx, a refused
  login, an untrusted certificate), which fails the message with the relay's
  reason. ``mail.retry`` sends a failed message again (after fixing the password,
  say).

A message is claimed by one plugin connection at a time. If that connection drops
mid-send, or the node restarts, the message goes back to the queue: delivery is at
least once, as with every mail relay (the relay may have taken it just before the
drop). Each state change is a ``mail.state`` event.

**What can be sent**: text, files on this machine (local programs), files a page
uploaded (``lannode.uploads``), a chat transcript, and a drive file this node can
read, up to ``max_attachment_bytes`` in all; a bigger drive file is not attached
but named in the body, with the command that gets it.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import trio

from lannode import __version__
from lannode.core import api
from lannode.core.api import require
from lannode.core.chat import dm_conversation
from lannode.core.groups import group_conversation
from lannode.core.mail import (
    Attachment,
    MailError,
    MailSettings,
    build_message,
    draft,
    retry_delay,
)
from lannode.events import EventBus
from lannode.files import create_private, write_private

if TYPE_CHECKING:
    from lannode.chat.service import ChatService
    from lannode.drive.service import DriveService
    from lannode.uploads import UploadService

log = logging.getLogger("lannode.mail")

STATES = ("queued", "retrying", "sending", "sent", "failed")
KEEP_SENT = 30 * 86400.0  # sent messages stay listed this long (their spool file goes at once)
MAX_TRANSCRIPT = 20_000  # messages in one transcript
HOUSEKEEPING = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,       -- JSON list: the envelope (To, Cc, Bcc)
    to_header TEXT NOT NULL,
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    attachments TEXT NOT NULL,      -- JSON list of {name, size}
    notes TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,          -- wall clock: a restart keeps the schedule
    last_error TEXT,
    refused TEXT,                   -- JSON {address: reply} of recipients the relay refused
    sent_at REAL,
    owner TEXT NOT NULL DEFAULT ''  -- '' for the node's own; a guest's node id for a guest's (lannode.guests)
);
"""
SCHEMA_VERSION = 1  # PRAGMA user_version; 0: before guests (no owner column)


@dataclass(frozen=True, slots=True)
class MailSource:
    """Whose message it is and where its attachments come from: the node's own chat,
    uploads and drive (owner ""), or a guest's (its own chat and uploads, no drive)."""

    chat: "ChatService"
    uploads: "UploadService"
    drive: "DriveService | None"
    owner: str = ""


@dataclass(slots=True)
class _Claim:
    id: str
    connection: int


@dataclass
class MailService:
    home_path: Path
    settings: MailSettings | None  # None: mail is not set up in the config
    bus: EventBus
    chat: "ChatService"
    drive: "DriveService"
    uploads: "UploadService"
    plugin_state: Callable[[], str | None] = lambda: None  # the mail plugin's state (supervisor), None if not run
    problem: str | None = None  # why mail is not set up, for the error a sender gets
    db: sqlite3.Connection | None = None
    claims: dict[str, _Claim] = field(default_factory=dict)
    worker: int | None = None  # the API connection of the plugin taking messages, while it is open
    counters: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "sent": 0, "failed": 0, "attempts": 0, "requeued": 0})

    @property
    def folder(self) -> Path:
        return self.home_path / "mail"

    @property
    def spool(self) -> Path:
        return self.folder / "spool"

    def spool_path(self, message_id: str) -> Path:
        return self.spool / f"{message_id}.eml"

    # -- life ----------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self._open)
        task_status.started()
        while True:
            await trio.sleep(HOUSEKEEPING)
            await trio.to_thread.run_sync(self._prune)

    def _open(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_private(self.folder / "outbox.sqlite")
        db = sqlite3.connect(self.folder / "outbox.sqlite", check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a handful of rows a day: every acknowledged message is on disk
        if db.execute("PRAGMA user_version").fetchone()[0] < 1 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone():
            if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(messages)")}:
                db.execute("ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # an attempt the last run did not finish goes again (at least once, as relays do)
        interrupted = db.execute("UPDATE messages SET state = 'queued' WHERE state = 'sending'").rowcount
        if interrupted:
            log.info("%d message(s) were being sent when the node stopped; queued again", interrupted)
        known = {row["id"] for row in db.execute("SELECT id FROM messages WHERE state IN ('queued', 'retrying', 'failed')")}
        for path in self.spool.iterdir():
            if path.suffix == ".eml" and path.stem not in known or path.name.startswith("."):
                path.unlink(missing_ok=True)  # a message whose row never committed, or a temp file
        for message_id in known:
            if not self.spool_path(message_id).is_file():
                db.execute("UPDATE messages SET state = 'failed', last_error = ? WHERE id = ?", ("its spool file is missing from the node's home", message_id))
        self.db = db
        self._prune()

    def _prune(self) -> None:
        assert self.db is not None
        self.db.execute("DELETE FROM messages WHERE state = 'sent' AND sent_at < ?", (time.time() - KEEP_SENT,))

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        assert self.db is not None, "the outbox is not open"
        return self.db.execute(sql, args).fetchall()

    def _record(self, row: sqlite3.Row) -> dict[str, Any]:
        record = {
            "id": row["id"],
            "state": row["state"],
            "created_at": row["created_at"],
            "from": row["sender"],
            "to": row["to_header"],
            "recipients": json.loads(row["recipients"]),
            "subject": row["subject"],
            "size": row["size"],
            "attachments": json.loads(row["attachments"]),
            "notes": json.loads(row["notes"]),
            "attempts": row["attempts"],
            "next_attempt_at": row["next_at"] if row["state"] in ("queued", "retrying") else None,
            "last_error": row["last_error"],
            "refused": json.loads(row["refused"]) if row["refused"] else {},
            "sent_at": row["sent_at"],
        }
        if row["state"] in ("queued", "retrying") and self.worker is None:
            record["waiting_for"] = f"the mail plugin ({self.plugin_state() or 'not enabled'})"
        return record

    def _get(self, message_id: str, owner: str | None = None) -> sqlite3.Row:
        """A message by id or prefix; with ``owner``, only one of that owner's."""
        mine, args = ("", ()) if owner is None else (" AND owner = ?", (owner,))
        rows = self._rows(f"SELECT * FROM messages WHERE id = ?{mine}", (message_id, *args))
        if not rows and len(message_id) >= 4:
            rows = self._rows(f"SELECT * FROM messages WHERE id LIKE ?{mine}", (message_id.replace("%", "").replace("_", "") + "%", *args))
        if len(rows) != 1:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no message {message_id!r} in the outbox" if not rows else f"{message_id!r} names {len(rows)} messages; give more of the id")
        return rows[0]

    def _changed(self, message_id: str) -> dict[str, Any]:
        record = self._record(self._get(message_id))
        self.bus.publish("mail.state", record)
        return record

    def _need_settings(self) -> MailSettings:
        if self.settings is None:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, self.problem or "mail is not set up: add a [plugins.mail] table with enabled = true, host and from to the node's config")
        return self.settings

    # -- sending -------------------------------------------------------------------------------------
    @property
    def own(self) -> MailSource:
        return MailSource(self.chat, self.uploads, self.drive)

    async def send(self, params: dict[str, Any], caller: api.Principal, source: MailSource | None = None) -> dict[str, Any]:
        source = source or self.own
        settings = self._need_settings()
        try:
            d = draft(
                settings.sender,
                require(params, "to", (list, str)),
                require(params, "subject", str),
                require(params, "body", str, optional=True) or "",
                cc=require(params, "cc", list, optional=True) or [],
                bcc=require(params, "bcc", list, optional=True) or [],
            )
        except MailError as exc:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
        attachments, notes = await self._gather(params, caller, settings, source)
        total = sum(len(a.data) for a in attachments)
        if total > settings.max_attachment_bytes:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"the attachments come to {total:,} bytes; the limit is {settings.max_attachment_bytes:,} (max_attachment_bytes in [plugins.mail])")
        body = d.body
        if notes:
            body = (body.rstrip("\n") + "\n\n" if body.strip() else "") + "\n\n".join(notes)
        message_id = secrets.token_hex(8)
        domain = d.sender.domain
        raw = await trio.to_thread.run_sync(  # up to max_attachment_bytes to encode: not on the event loop
            partial(build_message, replace(d, body=body), attachments, now=time.time(), message_id=f"<{message_id}.{secrets.token_hex(6)}@{domain}>", mailer=f"lannode {__version__}")
        )
        now = time.time()
        row = (
            message_id,
            now,
            d.sender.addr_spec,
            json.dumps(d.recipients),
            ", ".join(str(a) for a in d.to),
            d.subject,
            len(raw),
            json.dumps([{"name": a.name, "size": len(a.data)} for a in attachments]),
            json.dumps(notes),
            "queued",
            now,
            source.owner,
        )

        def store() -> None:
            assert self.db is not None
            write_private(self.spool_path(message_id), raw)
            self.db.execute(
                "INSERT INTO messages (id, created_at, sender, recipients, to_header, subject, size, attachments, notes, state, next_at, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

        await trio.to_thread.run_sync(store)
        self.counters["accepted"] += 1
        log.info("queued %s to %s (%d bytes)", message_id, ", ".join(d.recipients), len(raw))
        return self._changed(message_id)

    async def _gather(self, params: dict[str, Any], caller: api.Principal, settings: MailSettings, source: MailSource) -> tuple[list[Attachment], list[str]]:
        """The attachments a send names, and notes for the body (a drive file too big to attach)."""
        attachments: list[Attachment] = []
        notes: list[str] = []
        limit = settings.max_attachment_bytes
        paths = require(params, "attach", list, optional=True) or []
        if paths and not caller.is_local:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, 'a web page attaches files it uploaded ("uploads"), not paths on this machine')
        named: list[tuple[Path, str]] = []
        for item in paths:
            if not isinstance(item, str):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"attach" is a list of file paths')
            path = Path(item).expanduser()
            named.append((path, path.name))
        for upload_id in require(params, "uploads", list, optional=True) or []:
            if not isinstance(upload_id, str):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"uploads" is a list of upload ids')
            path = source.uploads.complete_path(upload_id)
            named.append((path, path.name))
        for path, name in named:
            data = await trio.to_thread.run_sync(_read_capped, path, limit)
            attachments.append(Attachment(name, data))
        if (target := require(params, "transcript", str, optional=True)) is not None:
            attachments.append(await self._transcript(target, source.chat))
        if (wanted := require(params, "drive", str, optional=True)) is not None:
            if source.drive is None:
                raise api.ApiError(api.ErrorCode.FORBIDDEN, "drive files are not for guests yet")
            attachment, note = await self._drive_file(source.drive, wanted, limit - sum(len(a.data) for a in attachments))
            if attachment is not None:
                attachments.append(attachment)
            if note:
                notes.append(note)
        return attachments, notes

    async def _transcript(self, target: str, chat: "ChatService") -> Attachment:
        """A conversation's whole history as text, oldest first."""
        if target.startswith("#"):
            group = chat.resolve_group(target)
            conversation, title = group_conversation(group.id), f"#{group.name}"
        else:
            peer = chat.peers.resolve_id(target)
            conversation, title = dm_conversation(chat.me, peer), chat.peers.name_of(peer)
        pages: list[list[dict[str, Any]]] = []
        before: str | None = None
        count = 0
        while count < MAX_TRANSCRIPT:
            page = await chat.history(conversation, limit=500, before=before)
            if not page:
                break
            pages.append(page)
            count += len(page)
            before = page[0]["id"]
        messages = [m for page in reversed(pages) for m in page]
        lines = [f"Chat transcript: {title}, {len(messages)} messages, written by lannode on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", ""]
        for m in messages:
            stamp = datetime.fromtimestamp(m["sent_at"] / 1000).astimezone()  # chat keeps milliseconds.strftime("%Y-%m-%d %H:%M:%S")
            who = chat.peers.name_of(m["sender"])
            if m["kind"] == "group":
                op = m.get("op") or {}
                lines.append(f"[{stamp}] {who} {op.get('op', 'changed the group')}" + (f" {op.get('name')}" if op.get("name") else ""))
            else:
                text = str(m["text"]).replace("\r\n", "\n").replace("\n", "\n    ")
                lines.append(f"[{stamp}] {who}: {text}")
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in title.lstrip("#"))[:40] or "chat"
        return Attachment(f"chat-{safe}.txt", ("\n".join(lines) + "\n").encode(), "text/plain")

    async def _drive_file(self, drive: "DriveService", wanted: str, room: int) -> tuple[Attachment | None, str | None]:
        manifest, record = drive.resolve(wanted)
        if record is None:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, f"this node cannot read drive file {manifest.file_id}: its owner has not shared it with this node")
        name = str(record.get("name") or manifest.file_id)
        if manifest.layout.size > room:
            return None, (
                f"The file {name} ({manifest.layout.size:,} bytes) is too big to attach; it is on the lannode drive as {manifest.file_id}.\n"
                f"On a node it is shared with: lannode drive get {manifest.file_id} OUT"
            )
        out = self.spool / f".drive-{secrets.token_hex(6)}"
        try:
            await drive.get(manifest.file_id, out)
            data = await trio.to_thread.run_sync(out.read_bytes)
        finally:
            out.unlink(missing_ok=True)
        return Attachment(name, data), None

    # -- the plugin's side ---------------------------------------------------------------------------
    def claim(self, caller: api.Principal, reset: bool) -> dict[str, Any]:
        self._need_settings()
        self.worker = caller.connection
        if reset:  # a (re)started plugin: whatever an earlier one held goes back to the queue
            for held in list(self.claims.values()):
                self._release(held.id)
        now = time.time()
        rows = self._rows("SELECT * FROM messages WHERE state IN ('queued', 'retrying') ORDER BY next_at, created_at")
        due = [row for row in rows if row["next_at"] <= now and row["id"] not in self.claims]
        if not due:
            upcoming = [row["next_at"] for row in rows]
            return {"message": None, "next_in": max(0.0, min(upcoming) - now) if upcoming else None}
        row = due[0]
        assert self.db is not None
        self.db.execute("UPDATE messages SET state = 'sending', attempts = attempts + 1 WHERE id = ?", (row["id"],))
        self.claims[row["id"]] = _Claim(row["id"], caller.connection)
        self.counters["attempts"] += 1
        self._changed(row["id"])
        return {"message": {"id": row["id"], "path": str(self.spool_path(row["id"])), "from": row["sender"], "recipients": json.loads(row["recipients"]), "size": row["size"], "attempt": row["attempts"] + 1}}

    def report(self, message_id: str, outcome: str, error: str | None, refused: dict[str, str]) -> dict[str, Any]:
        settings = self._need_settings()
        if self.claims.pop(message_id, None) is None:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"message {message_id} is not being sent (its claim was released)")
        row = self._get(message_id)
        assert self.db is not None
        now = time.time()
        if outcome == "sent":
            self.db.execute("UPDATE messages SET state = 'sent', sent_at = ?, last_error = NULL, refused = ? WHERE id = ?", (now, json.dumps(refused), message_id))
            self.spool_path(message_id).unlink(missing_ok=True)
            self.counters["sent"] += 1
            log.info("sent %s (attempt %d)", message_id, row["attempts"])
        elif outcome == "retry" and now - row["created_at"] < settings.give_up_after:
            delay = retry_delay(row["attempts"], settings.retry_first, settings.retry_max)
            self.db.execute("UPDATE messages SET state = 'retrying', next_at = ?, last_error = ? WHERE id = ?", (now + delay, error, message_id))
            log.info("%s not sent (attempt %d): %s; next attempt in %.0f s", message_id, row["attempts"], error, delay)
        else:
            if outcome == "retry":
                error = f"gave up after {row['attempts']} attempts over {(now - row['created_at']) / 3600:.1f} h: {error}"
            self.db.execute("UPDATE messages SET state = 'failed', last_error = ?, refused = ? WHERE id = ?", (error, json.dumps(refused), message_id))
            self.counters["failed"] += 1
            log.warning("%s failed: %s", message_id, error)
        return self._changed(message_id)

    def _release(self, message_id: str) -> None:
        if self.claims.pop(message_id, None) is None or self.db is None:
            return
        self.db.execute("UPDATE messages SET state = 'queued' WHERE id = ? AND state = 'sending'", (message_id,))
        self.counters["requeued"] += 1
        self._changed(message_id)

    def on_disconnect(self, connection: int) -> None:
        if connection == self.worker:
            self.worker = None
        for held in [c for c in self.claims.values() if c.connection == connection]:
            log.info("the plugin went away while sending %s; queued again", held.id)
            self._release(held.id)

    # -- the person's side ---------------------------------------------------------------------------
    def outbox(self, everything: bool, owner: str = "") -> list[dict[str, Any]]:
        where = "" if everything else " AND state != 'sent'"
        return [self._record(row) for row in self._rows(f"SELECT * FROM messages WHERE owner = ?{where} ORDER BY created_at", (owner,))]

    def retry(self, message_id: str | None, owner: str = "") -> list[dict[str, Any]]:
        rows = [self._get(message_id, owner)] if message_id else self._rows("SELECT * FROM messages WHERE state IN ('failed', 'retrying') AND owner = ?", (owner,))
        assert self.db is not None
        done = []
        for row in rows:
            if row["state"] not in ("failed", "retrying", "queued"):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"message {row['id']} is {row['state']}; only a waiting or failed one is sent again")
            if not self.spool_path(row["id"]).is_file():
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"message {row['id']} has no spool file left to send")
            self.db.execute("UPDATE messages SET state = 'queued', next_at = ? WHERE id = ?", (time.time(), row["id"]))
            done.append(self._changed(row["id"]))
        return done

    def cancel(self, message_id: str, owner: str = "") -> dict[str, Any]:
        row = self._get(message_id, owner)
        if row["state"] in ("sending", "sent"):
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"message {row['id']} is {row['state']}; it can no longer be cancelled")
        assert self.db is not None
        self.db.execute("DELETE FROM messages WHERE id = ?", (row["id"],))
        self.spool_path(row["id"]).unlink(missing_ok=True)
        record = self._record(row) | {"state": "cancelled"}
        self.bus.publish("mail.state", record)
        return record

    def statistics(self) -> dict[str, Any]:
        counts = {state: 0 for state in STATES}
        if self.db is not None:
            for row in self._rows("SELECT state, COUNT(*) AS n FROM messages GROUP BY state"):
                counts[row["state"]] = row["n"]
        return {
            "enabled": self.settings is not None,
            **(self.settings.public() if self.settings else {"problem": self.problem}),
            "plugin_connected": self.worker is not None,
            "outbox": counts,
            **self.counters,
        }

    def register_methods(self, server: api.Methods, source: MailSource | None = None) -> None:
        """The mail.* methods: the node's own, or (``source``) a guest's: its own messages
        only, through the node's outbox and relay, and no plugin's methods."""
        owner = source.owner if source is not None else ""

        async def mail_send(params: dict[str, Any], caller: api.Principal) -> Any:
            return await self.send(params, caller, source)

        async def mail_outbox(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.outbox(bool(require(params, "all", bool, optional=True)), owner)

        async def mail_retry(params: dict[str, Any], caller: api.Principal) -> Any:
            message_id = require(params, "id", str, optional=True)
            if message_id is None and not require(params, "all", bool, optional=True):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, 'give "id", or "all": true')
            return self.retry(message_id, owner)

        async def mail_cancel(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.cancel(require(params, "id", str), owner)

        async def mail_status(params: dict[str, Any], caller: api.Principal) -> Any:
            return {"enabled": self.settings is not None, **(self.settings.public() if self.settings else {"problem": self.problem})}

        async def mail_claim(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.claim(caller, bool(require(params, "reset", bool, optional=True)))

        async def mail_report(params: dict[str, Any], caller: api.Principal) -> Any:
            outcome = require(params, "outcome", str)
            if outcome not in ("sent", "retry", "failed"):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"outcome" is sent, retry or failed')
            refused = require(params, "refused", dict, optional=True) or {}
            error = require(params, "error", str, optional=True)
            return self.report(require(params, "id", str), outcome, error[:2000] if error else None, {str(k): str(v)[:500] for k, v in refused.items()})

        server.method("mail.status", mail_status, "Whether mail is set up here: the relay, its security and the From address, or the problem.")
        if source is None:
            server.on_disconnect.append(self.on_disconnect)
        server.method("mail.send", mail_send, '{"to", "subject", "body"?, "cc"?, "bcc"?, "attach"?: [path] (local programs), "uploads"?: [upload id], "transcript"?: peer|#group, "drive"?: file}: queue a message; it is on disk when this answers.')
        server.method("mail.outbox", mail_outbox, '{"all"?}: messages waiting, being sent or failed (with "all", also those sent in the last 30 days).')
        server.method("mail.retry", mail_retry, '{"id"} or {"all": true}: send a failed or waiting message again now.')
        server.method("mail.cancel", mail_cancel, '{"id"}: drop a message that is not being sent.')
        if source is not None:
            return
        server.method("mail.claim", mail_claim, '{"reset"?}: the mail plugin takes the next due message (path of its spool file, envelope).', local_only=True)
        server.method("mail.report", mail_report, '{"id", "outcome": sent|retry|failed, "error"?, "refused"?}: the mail plugin says how an attempt went.', local_only=True)


def _read_capped(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"{path} is not a file")
        if size > limit:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"{path.name} has {size:,} bytes; attachments may come to {limit:,} (max_attachment_bytes in [plugins.mail])")
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"cannot attach {path}: {exc.strerror or exc}") from None


def settings_of(table: dict[str, Any] | None) -> tuple[MailSettings | None, str | None]:
    """The mail settings from the config's table, or why there are none."""
    if not table or not table.get("enabled"):
        return None, "mail is not set up: add a [plugins.mail] table with enabled = true, host and from to the node's config"
    try:
        return MailSettings.from_table(table), None
    except MailError as exc:
        return None, f"[plugins.mail] {exc}"

