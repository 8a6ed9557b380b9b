"""File drop as a service: offers, a person's decisions, resumable transfers, progress,
and the ``transfer.*`` API.

A sender offers files (``lannode.transfer.offers`` reads and hashes them); the
offer and the decisions travel on the peer link (``CHANNEL_TRANSFER``); the files'
bytes go over a bulk connection the receiver grants (``lannode.transfer.stream``).
What one peer's offers may hold of this node while a person decides is budgeted.
A transfer survives either side's restart: the sender offers again, and the
receiver resumes from the chunks it verified.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import trio

from lannode.config import Config
from lannode.core import api
from lannode.core.api import require
from lannode.core.bulk import SECRET_BYTES, TOKEN_BYTES
from lannode.core.link import AES_GCM, CHANNEL_TRANSFER
from lannode.core.membership import State
from lannode.core.transfer import (
    MAX_FILES,
    TERMINAL,
    BadOffer,
    FileProgress,
    Offer,
    OfferedFile,
    safe_relative_path,
)
from lannode.events import PROGRESS_EVERY, EventBus
from lannode.files import free_name_in, open_folder_beneath, write_private
from lannode.identity import Author
from lannode.net.bulk import BulkError, Meter, run_in_thread
from lannode.net.links import LinkError, LinkManager, Links, PeerLink
from lannode.transfer.offers import (
    TransferError,
    check_offer,
    hash_file,
    make_offer,
    named_sources,
    scan,
)
from lannode.transfer.stream import (
    Sink,
    Source,
    SourceChanged,
    receive_files,
    send_files,
    verified_prefix,
)
from lannode.uploads import UploadService

log = logging.getLogger("lannode.transfer")


# -- the service -----------------------------------------------------------------------------------
# Control messages travel on the peer link (CHANNEL_TRANSFER) as JSON objects with a "t":
#   offer   sender -> receiver: the offer; sent again after any failure or restart
#   pending receiver -> sender: a person has to decide
#   accept  receiver -> sender: a fresh secret and one-time token for a bulk connection
#   decline receiver -> sender (with a reason), cancel either way (with a reason)
#   update  sender -> receiver: a file changed since the offer; its new entry
#   done    receiver -> sender: every file is in place
# The data itself goes over the bulk connection (lannode.transfer.stream, on lannode.net.bulk).

PARTIAL_DIR = ".lannode-partial"
RETRY_MIN, RETRY_MAX = 1.0, 30.0
# What one peer's offers may hold of this node while a person decides, and all peers' together:
# an offer past them is declined at once, saying why, and neither kept nor listed.
MAX_PENDING_OFFERS_PER_PEER = 16
MAX_PENDING_FILES_PER_PEER = MAX_FILES  # one offer of the largest size
MAX_PENDING_FILES = 2 * MAX_FILES
MAX_FINISHED = 1000  # finished transfers kept (memory, disk, transfer.list); the oldest go first


def new_transfer_id() -> str:
    return secrets.token_hex(16)


@dataclass(eq=False)
class Transfer:
    id: str
    direction: str  # "out" or "in"
    peer: str
    peer_name: str
    offer: Offer
    state: str  # hashing, offered, pending, active, done, declined, cancelled, failed
    reason: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    sources: list[tuple[str, int, int]] = field(default_factory=list)  # out: (path, size, mtime_ns) per file
    paths: list[str] = field(default_factory=list)  # in: the safe relative path of each file
    # not persisted
    meter: Meter = field(default_factory=Meter)
    inbox: "trio.MemorySendChannel[dict[str, Any]] | None" = None
    worker: trio.CancelScope | None = None
    progress: list[FileProgress] = field(default_factory=list)
    done_files: set[int] = field(default_factory=set)
    rate: float = 0.0
    _last: tuple[float, int] = (0.0, 0)
    _began: tuple[float, int] = (0.0, 0)  # when this run of the transfer started, and its bytes then
    offer_saved: bool = False
    done_log: Any = None  # in: the open log of finished files
    landed: dict[int, str] = field(default_factory=dict)  # in: where each finished file landed, under the downloads folder

    @property
    def total(self) -> int:
        return self.offer.total

    def _who_and_state(self) -> dict[str, Any]:
        """What the record on disk and the record a front sees both begin with."""
        return {"id": self.id, "direction": self.direction, "peer": self.peer, "peer_name": self.peer_name, "state": self.state, "reason": self.reason}

    def to_disk(self) -> dict[str, Any]:
        return {
            **self._who_and_state(),
            "created": self.created,
            "finished": self.finished,
            "sources": self.sources,
            "paths": self.paths,
            "landed": {str(i): path for i, path in self.landed.items()},
        }

    @classmethod
    def from_disk(cls, data: dict[str, Any], offer_bytes: bytes) -> "Transfer":
        offer = Offer.decode(offer_bytes)
        return cls(
            id=data["id"],
            direction=data["direction"],
            peer=data["peer"],
            peer_name=data.get("peer_name", ""),
            offer=offer,
            state=data["state"],
            reason=data.get("reason", ""),
            created=data.get("created", time.time()),
            finished=data.get("finished"),
            sources=[tuple(s) for s in data.get("sources", [])],
            paths=list(data.get("paths", [])),
            landed={int(i): str(path) for i, path in dict(data.get("landed", {})).items()},
        )

    def record(self) -> dict[str, Any]:
        done = self.total if self.state == "done" else self.meter.bytes_done
        remaining = max(0, self.total - done)
        return {
            **self._who_and_state(),
            "files": len(self.offer.files),
            "files_done": len(self.offer.files) if self.state == "done" else len(self.done_files) if self.direction == "in" else self.meter.files_done,
            "bytes": done,
            "total": self.total,
            "rate": round(self.rate),
            "eta": round(remaining / self.rate, 1) if self.rate > 0 and self.state == "active" else None,
            "names": [f.path for f in self.offer.files[:20]],
            "created": self.created,
            "finished": self.finished,
            "current": self._current(),
        }

    def _current(self) -> dict[str, Any] | None:
        index = self.meter.file_index
        if self.state != "active" or not 0 <= index < len(self.offer.files):
            return None
        f = self.offer.files[index]
        return {"index": index, "name": f.path, "size": f.size, "bytes": min(f.size, self.meter.file_bytes)}


class TransferPeers(Protocol):
    """What file drop needs to know of the others (``PeerService``; a guest's view of it)."""

    state_listeners: list[Callable[[str, State], None]]

    def resolve_id(self, text: str) -> str: ...

    def name_of(self, node_id: str) -> str: ...

    def name_if_known(self, node_id: str) -> str | None: ...

    def bulk_address(self, node_id: str) -> tuple[str, int] | None: ...


class TransferService:
    """File drop: offers, decisions, the bulk workers, resume and progress."""

    def __init__(
        self,
        home_path: Path,
        config: Config,
        identity: Author,
        peers: TransferPeers,
        bus: EventBus,
        uploads: "UploadService | None" = None,
        *,
        links: Links,
        bulk: LinkManager,
        downloads: Path | None = None,
    ) -> None:
        self.uploads = uploads
        self.home_path = home_path
        self.dir = home_path / "transfers"
        configured = config.get("transfer.downloads")
        self.downloads = downloads or (Path(configured).expanduser() if configured else home_path / "downloads")
        self.limit = int(config.get("transfer.max_bytes"))
        self.auto_accept = set(config.get("transfer.auto_accept"))
        self.me = identity.node_id
        self.peers = peers
        self.links = links  # offers and decisions: to nodes, or to guests through their hosts
        self.bulk = bulk  # the bulk connections: always this machine's own link manager
        self.bus = bus
        self.transfers: dict[str, Transfer] = {}
        self._tokens: dict[str, bytes] = {}  # transfer id -> its one-time bulk token, while it is good
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()
        self.refused: dict[str, int] = {}
        self.set_aside = 0  # broken transfer records found at start, renamed .bad
        self.bytes_sent = 0  # file bytes this process handed to bulk connections (resends included)
        links.handle(CHANNEL_TRANSFER, self._on_frame)
        peers.state_listeners.append(self._on_peer_state)

    # -- life --------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        loaded = await trio.to_thread.run_sync(self._load)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for t in loaded:
                self.transfers[t.id] = t
                if t.direction == "out" and t.state in ("offered", "pending", "active"):
                    self._start_out(t)
                elif t.direction == "in" and t.state == "active":
                    await self._prepare_in(t)
            self._ready.set()  # the links were up before this: what came meanwhile was waiting
            nursery.start_soon(self._report_progress)
            task_status.started()
            await trio.sleep_forever()

    def _load(self) -> list[Transfer]:
        self.dir.mkdir(parents=True, exist_ok=True)
        loaded = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                t = Transfer.from_disk(json.loads(path.read_text()), path.with_suffix(".offer").read_bytes())
                t.offer_saved = True
                loaded.append(t)
            except (OSError, ValueError, KeyError, TypeError, BadOffer) as exc:
                # set aside (renamed .bad, kept for a person to look at), so it is read once
                log.warning("setting aside a broken transfer record %s: %s", path, exc)
                self.set_aside += 1
                try:
                    path.rename(path.with_suffix(".bad"))
                except OSError:
                    pass
        return loaded

    def _save(self, t: Transfer, *, offer: bool = False) -> None:
        """The transfer's state; its offer (large for many files) only when new or changed."""
        if offer or not t.offer_saved:
            write_private(self.dir / f"{t.id}.offer", t.offer.encode())
            t.offer_saved = True
        write_private(self.dir / f"{t.id}.json", json.dumps(t.to_disk()).encode())

    def _set_state(self, t: Transfer, state: str, reason: str = "") -> None:
        now = time.monotonic()
        if state == "active" and t.state != "active":
            t._began = (now, t.meter.bytes_done)
        if state == "done" and t.state == "active":
            began_at, began_bytes = t._began
            t.rate = (t.total - began_bytes) / max(1e-3, now - began_at)  # the run's average
            t.meter.bytes_done = t.total
            self.bus.publish("transfer.progress", {**t.record(), "current": None, "eta": 0})
        t.state = state
        t.reason = reason
        if state in TERMINAL:
            t.finished = time.time()
            if t.worker is not None:
                t.meter.stop()
        self._save(t)
        log.info("transfer %s (%s %s): %s%s", t.id[:8], "to" if t.direction == "out" else "from", t.peer_name or t.peer, state, f": {reason}" if reason else "")
        self.bus.publish("transfer.state", t.record())

    def sending(self, path: Path) -> bool:
        """Whether a transfer still to finish sends the file at ``path`` (an upload's, say)."""
        name = str(path.absolute())
        return any(t.direction == "out" and t.state not in TERMINAL and any(source[0] == name for source in t.sources) for t in self.transfers.values())

    def statistics(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for t in self.transfers.values():
            states[t.state] = states.get(t.state, 0) + 1
        return {"transfers": states, "refused": dict(self.refused), "downloads": str(self.downloads), "bytes_sent": self.bytes_sent, "set_aside": self.set_aside}

    def _refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    def find(self, text: str) -> Transfer:
        return api.resolve(
            text,
            list(self.transfers.values()),
            id_of=lambda t: t.id,
            name_of=None,
            what="transfer",
            what_plural="transfers",
            not_found=f"no transfer {text!r} (lannode transfers lists them)",
        )

    async def _link_send(self, peer: str, message: dict[str, Any]) -> None:
        link = await self.links.link_to(peer)
        await link.send(CHANNEL_TRANSFER, json.dumps(message, separators=(",", ":")).encode())

    async def _try_send(self, peer: str, message: dict[str, Any]) -> bool:
        try:
            await self._link_send(peer, message)
            return True
        except LinkError as exc:
            log.debug("transfer message to %s not sent: %s", peer, exc)
            return False

    # -- sending -----------------------------------------------------------------------------------
    async def send(self, peer_text: str, paths: list[str], *, named: list[tuple[Path, str]] | None = None) -> tuple[Transfer, list[str]]:
        """Offer files and folders at ``paths``, or files at paths under the names to offer
        them by (``named``: uploads, whose folder structure the page gave)."""
        peer = self.peers.resolve_id(peer_text)
        if peer == self.me:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, "that is this node; send to a peer")
        try:
            skipped: list[str] = []
            if named is not None:
                files = await trio.to_thread.run_sync(named_sources, named)
            else:
                files, skipped = await trio.to_thread.run_sync(scan, [Path(p) for p in paths])
            offer = await trio.to_thread.run_sync(make_offer, new_transfer_id(), files)
        except TransferError as exc:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
        t = Transfer(
            id=offer.id,
            direction="out",
            peer=peer,
            peer_name=self.peers.name_of(peer),
            offer=offer,
            state="offered",
            sources=[(str(f.path.absolute()), f.size, f.mtime_ns) for f in files],
        )
        if skipped:
            log.info("transfer %s skips %d entries: %s", t.id[:8], len(skipped), "; ".join(skipped[:5]))
        self._forget_finished()
        self.transfers[t.id] = t
        self._set_state(t, "offered")
        self._start_out(t)
        return t, skipped

    def _start_out(self, t: Transfer) -> None:
        assert self._nursery is not None
        send, receive = trio.open_memory_channel[dict[str, Any]](64)
        t.inbox = send
        self._nursery.start_soon(self._drive_out, t, receive)

    async def _drive_out(self, t: Transfer, inbox: "trio.MemoryReceiveChannel[dict[str, Any]]") -> None:
        """The sender's loop: offer, wait for a decision, stream, and start over after any
        failure (the receiver says where to resume)."""
        delay = RETRY_MIN
        carry: dict[str, Any] | None = None
        with trio.CancelScope() as scope:
            t.worker = scope
            while t.state not in TERMINAL:
                reply, carry = carry, None
                if reply is None or reply.get("t") == "wake":
                    if not await self._try_send(t.peer, {"t": "offer", "offer": json.loads(t.offer.encode())}):
                        carry = await _receive(inbox, delay)
                        delay = min(RETRY_MAX, delay * 2)
                        continue
                    reply = await _receive(inbox, 10.0)
                    while reply is not None and reply.get("t") == "pending":
                        if t.state != "pending":
                            self._set_state(t, "pending", "waiting for the receiver to accept")
                        reply = await _receive(inbox, None)
                    if reply is None or reply.get("t") == "wake":
                        continue  # no answer, or the peer came back: offer again
                kind = reply.get("t")
                if kind in ("decline", "cancel"):
                    self._set_state(t, "declined" if kind == "decline" else "cancelled", str(reply.get("reason", ""))[:500])
                elif kind == "done":
                    self._set_state(t, "done")
                elif kind == "accept":
                    if t.state != "active":
                        self._set_state(t, "active")
                    outcome = await self._stream_out(t, reply)
                    if outcome == "done":
                        self._set_state(t, "done")
                    elif outcome == "retry":
                        carry = await _receive(inbox, delay)
                        delay = min(RETRY_MAX, delay * 2)
                    else:
                        delay = RETRY_MIN
        t.worker = None

    async def _stream_out(self, t: Transfer, accept: dict[str, Any]) -> str:
        try:
            secret = base64.b64decode(accept["secret"], validate=True)
            token = bytes.fromhex(accept["token"])
            aes = accept.get("cipher") == "aes-256-gcm" and AES_GCM
        except (KeyError, ValueError, TypeError):
            self._refuse("bad_accept")
            return "retry"
        address = self.peers.bulk_address(t.peer)
        if address is None:
            return "retry"
        sources = [Source(Path(p), size, mtime, t.offer.chunk_size) for p, size, mtime in t.sources]
        t.meter = started = Meter(bytes_done=t.meter.bytes_done)
        try:
            await run_in_thread(lambda: send_files(address, token, secret, aes, sources, started), started)
        except SourceChanged as exc:
            self.bytes_sent += started.sent
            return await self._source_changed(t, exc)
        except BulkError as exc:
            self.bytes_sent += started.sent
            if t.state in TERMINAL:
                return "stopped"
            log.info("transfer %s to %s interrupted: %s; resuming", t.id[:8], t.peer_name or t.peer, exc)
            return "retry"
        self.bytes_sent += started.sent
        return "done"

    async def _source_changed(self, t: Transfer, exc: SourceChanged) -> str:
        """A file changed since the offer: hash it again, tell the receiver, start that file over."""
        index = exc.index
        path, _, _ = t.sources[index]
        log.info("transfer %s: %s changed since it was offered; sending it again", t.id[:8], path)
        try:
            files, _ = await trio.to_thread.run_sync(scan, [Path(path)])
            entry = await trio.to_thread.run_sync(hash_file, files[0], t.offer.chunk_size)
        except TransferError as exc2:
            self._set_state(t, "failed", str(exc2))
            await self._try_send(t.peer, {"t": "cancel", "id": t.id, "reason": f"the sender cannot read a file any more: {exc2}"})
            return "stopped"
        entry = OfferedFile(t.offer.files[index].path, entry.size, entry.chunks, entry.mode)
        files_now = list(t.offer.files)
        files_now[index] = entry
        t.offer = Offer(t.offer.id, tuple(files_now), t.offer.chunk_size)
        t.sources[index] = (path, files[0].size, files[0].mtime_ns)
        self._save(t, offer=True)
        if not await self._try_send(t.peer, {"t": "update", "id": t.id, "file": index, "entry": entry.to_json()}):
            return "retry"
        return "again"

    # -- receiving ---------------------------------------------------------------------------------
    async def _on_frame(self, link: PeerLink, data: bytes) -> None:
        await self._ready.wait()  # an offer must meet the transfers of an earlier run, loaded
        try:
            message = json.loads(data)
            kind = message["t"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self._refuse("malformed")
            return
        if kind == "offer":
            await self._on_offer(link, message)
            return
        t = self.transfers.get(str(message.get("id", "")))
        if t is None or t.peer != link.node_id:
            self._refuse("unknown_transfer")
            return
        if t.direction == "out":
            if t.inbox is not None and kind in ("pending", "accept", "decline", "cancel", "done"):
                try:
                    t.inbox.send_nowait(message)
                except trio.WouldBlock:
                    self._refuse("flooded")
            return
        if kind == "cancel" and t.state not in TERMINAL:
            self._set_state(t, "cancelled", str(message.get("reason", "the sender cancelled"))[:500])
            await self._cleanup_partial(t)
        elif kind == "update":
            await self._on_update(t, message)

    def _offer_budget(self, peer: str, files: int) -> str | None:
        """Why an offer of ``files`` files from ``peer`` is one too many, or None."""
        pending = [t for t in self.transfers.values() if t.direction == "in" and t.state == "pending"]
        theirs = [t for t in pending if t.peer == peer]
        if len(theirs) >= MAX_PENDING_OFFERS_PER_PEER:
            return f"refused: {len(theirs)} offers from you already wait for a decision"
        waiting = sum(len(t.offer.files) for t in theirs)
        if waiting + files > MAX_PENDING_FILES_PER_PEER:
            return f"refused: {waiting} files of yours already wait for a decision (at most {MAX_PENDING_FILES_PER_PEER})"
        if sum(len(t.offer.files) for t in pending) + files > MAX_PENDING_FILES:
            return f"refused: {MAX_PENDING_FILES} files from all peers already wait for a decision; try again later"
        return None

    def _forget_finished(self) -> None:
        """Keep the newest ``MAX_FINISHED`` finished transfers; forget the others, on disk too."""
        finished = [t for t in self.transfers.values() if t.state in TERMINAL]
        if len(finished) < MAX_FINISHED:
            return
        finished.sort(key=lambda t: t.finished or t.created)
        for t in finished[: len(finished) - MAX_FINISHED + 1]:
            del self.transfers[t.id]
            for suffix in (".json", ".offer"):
                (self.dir / f"{t.id}{suffix}").unlink(missing_ok=True)

    async def _on_offer(self, link: PeerLink, message: dict[str, Any]) -> None:
        raw = message.get("offer")
        raw_id, raw_files = (raw.get("id"), raw.get("files")) if isinstance(raw, dict) else (None, None)
        if not (isinstance(raw_id, str) and raw_id in self.transfers):  # a new offer, not one sent again
            refused = self._offer_budget(link.node_id, len(raw_files) if isinstance(raw_files, list) else 0)
            if refused:
                self._refuse("budget")
                await self._try_send(link.node_id, {"t": "decline", "id": str(raw_id)[:32], "reason": refused})
                return
        try:
            offer = Offer.decode(json.dumps(message.get("offer")).encode())
        except BadOffer as exc:
            self._refuse("bad_offer")
            await self._try_send(link.node_id, {"t": "decline", "id": str((message.get("offer") or {}).get("id", ""))[:32], "reason": f"a malformed offer: {exc}"})
            return
        t = self.transfers.get(offer.id)
        if t is not None:
            if t.peer != link.node_id or t.direction != "in":
                self._refuse("foreign_id")
                return
            await self._answer(t)
            return
        self._forget_finished()
        t = Transfer(id=offer.id, direction="in", peer=link.node_id, peer_name=self.peers.name_if_known(link.node_id) or "", offer=offer, state="pending")
        try:
            t.paths = await trio.to_thread.run_sync(lambda: check_offer(offer, self.downloads, limit=self.limit, reserve=_reserve(self.downloads)))
        except TransferError as exc:
            self.transfers[t.id] = t
            self._set_state(t, "declined", str(exc))
            await self._answer(t)
            return
        except OSError as exc:
            self.transfers[t.id] = t
            self._set_state(t, "declined", f"refused: the downloads folder {self.downloads} cannot be used: {exc.strerror}")
            await self._answer(t)
            return
        self.transfers[t.id] = t
        if link.node_id in self.auto_accept:
            await self.accept(t)
            return
        self._set_state(t, "pending", "")
        self.bus.publish("transfer.offered", t.record())
        await self._answer(t)

    async def _answer(self, t: Transfer) -> None:
        """Tell the sender where its offer stands (after its offer, or a decision here)."""
        if t.state == "pending":
            await self._try_send(t.peer, {"t": "pending", "id": t.id})
        elif t.state == "active":
            secret, token = secrets.token_bytes(SECRET_BYTES), secrets.token_bytes(TOKEN_BYTES)
            if (old := self._tokens.pop(t.id, None)) is not None:
                self.bulk.forget_bulk(old)
            try:
                self.bulk.expect_bulk(token, functools.partial(self._on_bulk, t=t, secret=secret, token=token), t.peer)
            except LinkError as exc:  # the peer holds its share of bulk connections: its next offer gets the accept
                log.info("transfer %s: %s", t.id[:8], exc)
                return
            self._tokens[t.id] = token
            link = self.links.open_link(t.peer)
            cipher = link.cipher if link is not None else "xchacha20-poly1305"
            await self._try_send(t.peer, {"t": "accept", "id": t.id, "secret": base64.b64encode(secret).decode(), "token": token.hex(), "cipher": cipher})
        elif t.state == "done":
            await self._try_send(t.peer, {"t": "done", "id": t.id})
        elif t.state == "declined":
            await self._try_send(t.peer, {"t": "decline", "id": t.id, "reason": t.reason})
        else:
            await self._try_send(t.peer, {"t": "cancel", "id": t.id, "reason": t.reason or t.state})

    async def accept(self, t: Transfer) -> None:
        if t.direction != "in" or t.state != "pending":
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"transfer {t.id[:8]} is {t.state}, not waiting for a decision")
        try:
            t.paths = await trio.to_thread.run_sync(lambda: check_offer(t.offer, self.downloads, limit=self.limit, reserve=_reserve(self.downloads)))
        except TransferError as exc:
            self._set_state(t, "declined", str(exc))
            await self._answer(t)
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
        self._set_state(t, "active")
        await self._prepare_in(t)
        await self._answer(t)

    async def decline(self, t: Transfer, reason: str) -> None:
        if t.direction != "in" or t.state != "pending":
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"transfer {t.id[:8]} is {t.state}, not waiting for a decision")
        self._set_state(t, "declined", reason or "declined by the receiver")
        await self._answer(t)

    async def cancel(self, t: Transfer) -> None:
        if t.state in TERMINAL:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"transfer {t.id[:8]} is already {t.state}")
        self._set_state(t, "cancelled", "cancelled here")
        if t.worker is not None:
            t.worker.cancel()
        if t.direction == "in":
            await self._cleanup_partial(t)
        await self._try_send(t.peer, {"t": "cancel", "id": t.id, "reason": f"cancelled by {'the sender' if t.direction == 'out' else 'the receiver'}"})

    def _partial(self, t: Transfer) -> Path:
        return self.downloads / PARTIAL_DIR / t.id

    async def _prepare_in(self, t: Transfer) -> None:
        """Where each file stands: finished (the done log), or verified chunks of its .part."""

        def scan_partial() -> tuple[list[FileProgress], set[int]]:
            partial = self._partial(t)
            partial.mkdir(parents=True, exist_ok=True)
            done: set[int] = set()
            log_path = partial / "done"
            if log_path.exists():
                for line in log_path.read_text().splitlines():
                    index = line.split("\t", 1)[0]
                    if index.isdigit():
                        done.add(int(index))
            progress = []
            existing = set(os.listdir(partial))
            for i, f in enumerate(t.offer.files):
                p = FileProgress(f, t.offer.chunk_size)
                if i in done:
                    p.restart_at(p.chunks)
                elif str(i) in existing:
                    p.restart_at(verified_prefix(partial / str(i), p))
                progress.append(p)
            return progress, done

        t.progress, t.done_files = await trio.to_thread.run_sync(scan_partial)
        t.meter = Meter(bytes_done=sum(p.position for p in t.progress))
        for i, p in enumerate(t.progress):
            if p.done and i not in t.done_files:
                await trio.to_thread.run_sync(self._finish, t, i)

    def _finish(self, t: Transfer, index: int) -> None:
        """Rename a complete, verified file into place (worker thread). A name already taken
        gets " (1)", " (2)"... before its extension, as browsers do. The folders on the way are
        walked from the downloads folder without following a symlink (``open_folder_beneath``),
        and the file is renamed into the folder's descriptor."""
        partial = str(self._partial(t))
        relative = t.paths[index] if index < len(t.paths) else safe_relative_path(t.offer.files[index].path)
        folder, _, name = relative.rpartition("/")
        folder_fd, folder = open_folder_beneath(str(self.downloads), folder)  # no symlink followed on the way
        try:
            candidate = free_name_in(folder_fd, name)
            part = os.path.join(partial, str(index))
            os.chmod(part, t.offer.files[index].mode & 0o777 & ~_UMASK)
            os.rename(part, candidate, dst_dir_fd=folder_fd)  # a link planted as the name is replaced, not followed
        finally:
            os.close(folder_fd)
        landed = f"{folder}/{candidate}" if folder else candidate
        if t.done_log is None or t.done_log.closed:
            t.done_log = open(os.path.join(partial, "done"), "a", buffering=1)  # a line at a time
        t.done_log.write(f"{index}\t{landed}\n")
        t.landed[index] = landed
        t.done_files.add(index)

    async def _cleanup_partial(self, t: Transfer) -> None:
        if t.worker is not None:
            t.meter.stop()
        await trio.to_thread.run_sync(lambda: shutil.rmtree(self._partial(t), ignore_errors=True))

    async def _on_update(self, t: Transfer, message: dict[str, Any]) -> None:
        """The sender's file changed: take its new entry (same name) and start that file over."""
        try:
            index = int(message["file"])
            entry = Offer.decode(
                json.dumps({"id": t.id, "chunk_size": t.offer.chunk_size, "files": [message["entry"]]}).encode()
            ).files[0]
        except (KeyError, ValueError, TypeError, BadOffer):
            self._refuse("bad_update")
            return
        if not 0 <= index < len(t.offer.files) or entry.path != t.offer.files[index].path or index in t.done_files or t.state != "active":
            self._refuse("bad_update")
            return
        files_now = list(t.offer.files)
        files_now[index] = entry
        new_offer = Offer(t.id, tuple(files_now), t.offer.chunk_size)
        if new_offer.total > self.limit:
            self._set_state(t, "cancelled", "the changed file makes the transfer larger than this node's limit")
            await self._cleanup_partial(t)
            await self._answer(t)
            return
        t.offer = new_offer
        self._save(t, offer=True)
        (self._partial(t) / str(index)).unlink(missing_ok=True)
        if t.progress:
            t.progress[index] = FileProgress(entry, t.offer.chunk_size)

    async def _on_bulk(self, stream: trio.SocketStream, t: Transfer, secret: bytes, token: bytes) -> None:
        """A bulk connection from the sender, with the token this node gave it: the data
        runs in a worker thread on the socket itself."""
        await self._ready.wait()
        if self._tokens.get(t.id) == token:
            del self._tokens[t.id]
        if t.state != "active" or len(t.progress) != len(t.offer.files):
            self._refuse("bulk_state")
            await trio.aclose_forcefully(stream)
            return
        if t.worker is not None:  # an older connection of this transfer: it is over
            t.meter.stop()
            t.worker.cancel()
            with trio.move_on_after(10):
                while t.worker is not None:
                    await trio.sleep(0.01)
        sock = socket.socket(fileno=stream.socket.detach())
        link = self.links.open_link(t.peer)
        aes = link is not None and link.cipher == "aes-256-gcm"
        sinks = [Sink(p, self._partial(t) / str(i), i in t.done_files) for i, p in enumerate(t.progress)]
        meter = t.meter = Meter(bytes_done=sum(p.position for p in t.progress))
        if not t._began[0]:
            t._began = (time.monotonic(), meter.bytes_done)
        with trio.CancelScope() as scope:
            t.worker = scope
            try:
                await self.bulk.bulk_threads.run(t.peer, lambda: receive_files(sock, secret, aes, sinks, meter, lambda i: self._finish(t, i)), meter)
            except SourceChanged as exc:
                log.info("transfer %s: file %d changed at the sender; waiting for its new version", t.id[:8], exc.index)
            except BulkError as exc:
                if t.state == "active":
                    log.info("transfer %s from %s interrupted: %s; it resumes when the sender comes back", t.id[:8], t.peer_name or t.peer, exc)
                    if "No space" in str(exc):
                        self._set_state(t, "failed", f"the downloads folder is full: {exc}")
                        await self._cleanup_partial(t)
                        await self._answer(t)
            else:
                self._set_state(t, "done")
                await trio.to_thread.run_sync(lambda: shutil.rmtree(self._partial(t), ignore_errors=True))
            finally:
                sock.close()
                if t.done_log is not None:
                    t.done_log.close()
                if t.worker is scope:
                    t.worker = None

    # -- progress ----------------------------------------------------------------------------------
    def _on_peer_state(self, node_id: str, state: Any) -> None:
        if state is not State.ALIVE:
            return
        for t in self.transfers.values():
            if t.peer == node_id and t.direction == "out" and t.inbox is not None and t.state in ("offered", "active"):
                try:
                    t.inbox.send_nowait({"t": "wake"})
                except trio.WouldBlock:
                    pass

    async def _report_progress(self) -> None:
        while True:
            await trio.sleep(PROGRESS_EVERY)
            now = time.monotonic()
            for t in list(self.transfers.values()):
                if t.state != "active":
                    continue
                done = t.meter.bytes_done
                last_at, last_bytes = t._last if t._last[0] else t._began
                if last_at:
                    instant = max(0, done - last_bytes) / max(1e-3, now - last_at)
                    t.rate = instant if t.rate == 0 else 0.7 * t.rate + 0.3 * instant
                t._last = (now, done)
                if done != last_bytes:
                    self.bus.publish("transfer.progress", t.record())

    # -- API ---------------------------------------------------------------------------------------
    def register_methods(self, server: api.Methods) -> None:
        async def transfer_send(params: dict[str, Any], caller: api.Principal) -> Any:
            peer = require(params, "peer", str)
            if "uploads" in params:  # files a page handed to this node (lannode.uploads)
                ids = require(params, "uploads", list)
                if not ids or not all(isinstance(i, str) for i in ids) or self.uploads is None:
                    raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"uploads" is a list of upload ids')
                named = [(self.uploads.complete_path(i), self.uploads.uploads[i].name) for i in ids]
                if len({name for _, name in named}) < len(named):
                    raise api.ApiError(api.ErrorCode.BAD_PARAMS, "two uploads have the same name; a transfer offers each name once")
                t, skipped = await self.send(peer, [], named=named)
                return {**t.record(), "skipped": skipped}
            else:
                if not caller.is_local:
                    raise api.ApiError(api.ErrorCode.FORBIDDEN, "a web page sends files it uploaded (\"uploads\"), not paths on this machine")
                paths = require(params, "paths", list)
                if not paths or not all(isinstance(p, str) for p in paths):
                    raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"paths" is a list of files and folders on this machine')
            t, skipped = await self.send(peer, paths)
            return {**t.record(), "skipped": skipped}

        async def transfer_list(params: dict[str, Any], caller: api.Principal) -> Any:
            return [t.record() for t in sorted(self.transfers.values(), key=lambda t: t.created)]

        async def transfer_get(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.find(require(params, "id", str)).record()

        async def transfer_accept(params: dict[str, Any], caller: api.Principal) -> Any:
            t = self.find(require(params, "id", str))
            await self.accept(t)
            return t.record()

        async def transfer_decline(params: dict[str, Any], caller: api.Principal) -> Any:
            t = self.find(require(params, "id", str))
            await self.decline(t, str(require(params, "reason", str, optional=True) or "")[:500])
            return t.record()

        async def transfer_cancel(params: dict[str, Any], caller: api.Principal) -> Any:
            t = self.find(require(params, "id", str))
            await self.cancel(t)
            return t.record()

        server.method(
            "transfer.send",
            transfer_send,
            'Offer {"paths": [...]} (files and folders here; local programs only) or {"uploads": [...]} (from upload.begin) to {"peer"}; progress comes as transfer.* events.',
        )
        server.method("transfer.list", transfer_list, "Every transfer, in and out, with state, bytes, rate and ETA.")
        server.method("transfer.get", transfer_get, 'One transfer by {"id"} (or a unique prefix).')
        server.method("transfer.accept", transfer_accept, 'Accept an offered transfer {"id"}; files land in the downloads folder.')
        server.method("transfer.decline", transfer_decline, 'Decline an offered transfer {"id", "reason"?}.')
        server.method("transfer.cancel", transfer_cancel, 'Cancel a transfer {"id"} either way; a receiver keeps no partial file.')


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _reserve(downloads: Path) -> int:
    """Free space to leave when accepting: 64 MB, or 5% of a small file system."""
    try:
        total = shutil.disk_usage(downloads if downloads.exists() else downloads.parent).total
    except OSError:
        return 64 << 20
    return min(64 << 20, total // 20)


async def _receive(inbox: "trio.MemoryReceiveChannel[dict[str, Any]]", timeout: float | None) -> dict[str, Any] | None:
    """The next message, or None after ``timeout`` seconds (None: wait as long as it takes)."""
    with trio.move_on_after(math.inf if timeout is None else timeout):
        return await inbox.receive()
    return None


