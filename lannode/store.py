"""The replicated metadata store as a service: persistence, gossip, anti-entropy and the API.

The CRDT itself is ``lannode.core.store.ReplicatedMap``. This module keeps it in
``store.sqlite`` in the home (WAL; a write is acknowledged to an API caller only
after it is committed), piggybacks this node's new entries on gossip, runs
Scuttlebutt anti-entropy with a random peer every ``sync_interval`` over the
peer link's store channel, purges old tombstones, and turns every change into an
API event ``store:KEY``. Values are JSON.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import trio

from lannode.clock import now_ms
from lannode.core import api, writers
from lannode.core.api import require
from lannode.core.link import CHANNEL_STORE
from lannode.core.messages import StoreEntry, capability_names
from lannode.core.store import (
    MAX_VALUE_BYTES,
    MSG_DELTA,
    MSG_DIGEST,
    BadEntry,
    Entry,
    ReplicatedMap,
    StoreError,
    decode_entry,
    decode_sync,
    encode_delta,
    encode_digest,
)
from lannode.events import EventBus
from lannode.files import create_private
from lannode.identity import Identity
from lannode.net.links import Link, LinkError
from lannode.peers.service import PeerService

log = logging.getLogger("lannode.store")

DELTA_CHUNK_BYTES = 4 << 20
GC_INTERVAL = 3600.0



class StoreDb:
    """The map on disk. Calls come from worker threads, one at a time (the service's lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        create_private(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, data BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS watermarks (origin BLOB PRIMARY KEY, version INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )

    def load(self) -> tuple[list[Entry], dict[bytes, int], dict[str, int], int]:
        """(entries, watermarks, meta, how many rows were set aside as unreadable): a row that
        does not parse is logged and left out, never a reason not to start."""
        entries = []
        unreadable = 0
        for key, data in self._db.execute("SELECT key, data FROM entries"):
            try:
                if not isinstance(data, bytes):
                    raise BadEntry(f"a {type(data).__name__}, not bytes")
                entry, end = decode_entry(data)
            except BadEntry as exc:
                unreadable += 1
                log.warning("store.sqlite: setting aside unreadable entry %r: %s", key, exc)
                continue
            entries.append(entry)
        marks = {}
        for origin, version in self._db.execute("SELECT origin, version FROM watermarks"):
            if isinstance(origin, bytes) and isinstance(version, int):
                marks[origin] = version
            else:
                unreadable += 1
        meta = {name: value for name, value in self._db.execute("SELECT name, value FROM meta") if isinstance(value, int)}
        return entries, marks, meta, unreadable

    def save(self, changed: list[Entry], purged: list[str], marks: dict[bytes, int], meta: dict[str, int]) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany("INSERT OR REPLACE INTO entries (key, data) VALUES (?, ?)", [(e.key, e.encode()) for e in changed])
                db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in purged])
                db.executemany("INSERT OR REPLACE INTO watermarks (origin, version) VALUES (?, ?)", list(marks.items()))
                db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", list(meta.items()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()


def entry_record(entry: Entry) -> dict[str, Any]:
    """An entry as the API shows it."""
    record: dict[str, Any] = {
        "key": entry.key,
        "deleted": entry.deleted,
        "origin": entry.origin_id,
        "version": entry.version,
        "timestamp": entry.timestamp,
    }
    if entry.value is not None:
        try:
            record["value"] = json.loads(entry.value)
        except ValueError:  # not JSON: written by something other than this API
            record["value"] = None
            record["raw"] = base64.b64encode(entry.value).decode()
    else:
        record["value"] = None
    return record


class StoreService:
    def __init__(self, home_path: Path, identity: Identity, peers: PeerService, bus: EventBus, *, sync_interval: float = 2.0, horizon_ms: int | None = None) -> None:
        self.map = ReplicatedMap(identity.signing_key, horizon_ms=horizon_ms) if horizon_ms else ReplicatedMap(identity.signing_key)
        self.map.writers = functools.partial(writers.refusal, lookup=self.map.get)
        self.db = StoreDb(home_path / "store.sqlite")
        self.peers = peers
        self.bus = bus
        self.sync_interval = sync_interval
        self.last_sync: int | None = None
        self.syncs = 0
        self.sync_failures = 0
        self.rejected_messages = 0
        self.set_aside = 0  # persisted entries not loaded: unreadable, or stamped far in the future
        self.resynced = False
        self._stale = False  # away longer than the horizon: the next sync is a full snapshot
        self._snapshot_from: str | None = None
        self._snapshot_keys: set[str] = set()
        self._lock = trio.Lock()
        self._dirty = trio.Event()
        self._purged: list[str] = []
        self._saved_marks: dict[bytes, int] = {}
        self._saved_meta: dict[str, int] = {}
        peers.on_store_entry = self._on_gossip_entry
        peers.links.handle(CHANNEL_STORE, self._on_sync_message)

    # -- life ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        entries, marks, meta, unreadable = await trio.to_thread.run_sync(self.db.load)
        future = self.map.load(entries, marks, meta.get("clock", 0), now_ms())
        self.set_aside = unreadable + len(future)
        for entry in future:
            log.warning("store.sqlite: setting aside %r (stamped %d ms ahead of this clock, or by a writer it does not belong to)", entry.key, entry.timestamp - now_ms())
        self.last_sync = meta.get("last_sync")
        if self.map.needs_full_resync(self.last_sync, now_ms()):
            log.warning("this node was away longer than the tombstone horizon: its next sync is a full resync")
            self._stale = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._persister)
                nursery.start_soon(self._anti_entropy)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._persist()
                self.db.close()

    async def _persister(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            await self._persist()

    async def _persist(self) -> list[Entry]:
        async with self._lock:
            changes = self.map.take_changes()
            purged, self._purged = self._purged, []
            meta = {"clock": self.map.clock}
            if self.last_sync is not None:
                meta["last_sync"] = self.last_sync
            marks = dict(self.map.watermarks)
            if changes or purged or marks != self._saved_marks or meta != self._saved_meta:
                await trio.to_thread.run_sync(lambda: self.db.save(changes, purged, marks, meta))
                self._saved_marks, self._saved_meta = marks, meta
        for entry in changes:
            self.bus.publish(f"store:{entry.key}", entry_record(entry))
        return changes

    async def _anti_entropy(self) -> None:
        last_gc = trio.current_time()
        while True:
            await trio.sleep(self.sync_interval * random.uniform(0.75, 1.25))
            peer = self._pick_peer()
            if peer is not None:
                try:
                    link = await self.peers.links.link_to(peer)
                    digest = self.map.digest()
                    if self._stale:  # ask for everything, then prune what the peer no longer has
                        digest, self._snapshot_from, self._snapshot_keys = {}, peer, set()
                    await link.send(CHANNEL_STORE, encode_digest(digest, reply_wanted=True))
                except LinkError as exc:
                    self.sync_failures += 1
                    log.debug("anti-entropy with %s: %s", peer, exc)
            if trio.current_time() - last_gc > GC_INTERVAL:
                last_gc = trio.current_time()
                self._purged += self.map.gc(now_ms())
                self._dirty.set()

    def _pick_peer(self) -> str | None:
        membership = self.peers.membership
        if membership is None:
            return None
        candidates = [x.node_id for x in membership.alive_members() if "store" in capability_names(x.presence.capabilities) and x.presence.link_port]
        return random.choice(candidates) if candidates else None

    # -- receiving -------------------------------------------------------------------------------
    def _on_gossip_entry(self, data: bytes, sender: str) -> None:
        if self.map.merge_gossiped(data, now_ms()):
            self._dirty.set()

    async def _on_sync_message(self, link: Link, data: bytes) -> None:
        try:
            kind, reply_wanted, marks, entries = decode_sync(data)
        except BadEntry as exc:
            self.rejected_messages += 1
            log.debug("bad store sync message from %s: %s", link.node_id, exc)
            return
        if kind == MSG_DIGEST:
            for message in self._deltas_for(marks):
                await link.send(CHANNEL_STORE, message)
            if reply_wanted:
                await link.send(CHANNEL_STORE, encode_digest(self.map.digest(), reply_wanted=False))
            return
        assert kind == MSG_DELTA
        changed = self.map.apply_delta(marks, entries, now_ms())
        snapshot = self._stale and link.node_id == self._snapshot_from
        if snapshot:
            self._snapshot_keys.update(e.key for e in entries)
        if marks:  # the last chunk of a delta: we are in step with this peer
            self.syncs += 1
            self.last_sync = now_ms()
            if snapshot:
                pruned = self.map.prune_after_snapshot(marks, self._snapshot_keys)
                self._purged += pruned
                self._stale, self._snapshot_from, self._snapshot_keys = False, None, set()
                self.resynced = True
                log.info("full resync with %s done; dropped %d entries deleted while we were away", link.node_id, len(pruned))
        if changed or marks:
            await self._persist()

    def _deltas_for(self, digest: dict[bytes, int]) -> list[bytes]:
        entries = self.map.delta_for(digest)
        chunks: list[list[Entry]] = [[]]
        size = 0
        for entry in entries:
            encoded = len(entry.key) + len(entry.value or b"") + 200
            if size + encoded > DELTA_CHUNK_BYTES and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += encoded
        # every chunk but the last carries no watermarks: they hold only once all entries are in
        messages = [encode_delta({}, chunk) for chunk in chunks[:-1]]
        marks = self.map.digest() or {self.map.origin: 0}
        messages.append(encode_delta(marks, chunks[-1]))
        return messages

    # -- writing ---------------------------------------------------------------------------------
    async def put(self, key: str, value: Any) -> Entry:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > MAX_VALUE_BYTES:
            raise StoreError(f"the value is {len(encoded)} bytes as JSON; at most {MAX_VALUE_BYTES}")
        entry = self.map.put(key, encoded, now_ms())
        await self._after_write(entry)
        return entry

    async def delete(self, key: str) -> Entry | None:
        entry = self.map.delete(key, now_ms())
        if entry is not None:
            await self._after_write(entry)
        return entry

    async def _after_write(self, entry: Entry) -> None:
        await self._persist()  # committed before the caller hears "done"
        membership = self.peers.membership
        if membership is not None and membership.broadcast(f"store:{entry.key}", StoreEntry(entry.encode())):
            self.peers.gossip.pump()

    def statistics(self) -> dict[str, Any]:
        live = sum(1 for e in self.map.entries.values() if not e.deleted)
        return {
            "entries": live,
            "tombstones": len(self.map.entries) - live,
            "origins": len(self.map.watermarks),
            "syncs": self.syncs,
            "sync_failures": self.sync_failures,
            "rejected": self.map.rejected + self.rejected_messages,
            "ahead": self.map.ahead,
            "refused": self.map.refused,
            "set_aside": self.set_aside,
            "last_sync": self.last_sync / 1000 if self.last_sync else None,
            "resynced": self.resynced,
        }

    # -- API -------------------------------------------------------------------------------------
    def register_methods(self, server: api.Methods) -> None:
        async def store_put(params: dict[str, Any], caller: api.Principal) -> Any:
            key = require(params, "key", str)
            if "value" not in params:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, 'missing parameter "value"')
            try:
                entry = await self.put(key, params["value"])
            except StoreError as exc:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
            return entry_record(entry)

        async def store_delete(params: dict[str, Any], caller: api.Principal) -> Any:
            key = require(params, "key", str)
            try:
                entry = await self.delete(key)
            except StoreError as exc:
                raise api.ApiError(api.ErrorCode.FORBIDDEN, str(exc)) from None
            if entry is None:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no key {key!r}")
            return entry_record(entry)

        async def store_get(params: dict[str, Any], caller: api.Principal) -> Any:
            key = require(params, "key", str)
            entry = self.map.get(key)
            if entry is None:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no key {key!r}")
            return entry_record(entry)

        async def store_list(params: dict[str, Any], caller: api.Principal) -> Any:
            prefix = require(params, "prefix", str, optional=True) or ""
            return [entry_record(e) for e in self.map.items(prefix)]

        def watch_topics(params: dict[str, Any]) -> list[str]:
            prefix = require(params, "prefix", str, optional=True) or ""
            if len(prefix) + 7 > api.MAX_TOPIC_PATTERN:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, "prefix too long")
            return [f"store:{prefix}*"]

        server.method("store.put", store_put, '{"key", "value"}: write a JSON value; replicated to every node.')
        server.method("store.delete", store_delete, '{"key"}: delete a key (a tombstone replicates the delete).')
        server.method("store.get", store_get, '{"key"}: the current value, its origin, version and timestamp.')
        server.method("store.list", store_list, '{"prefix"?}: every live entry under the prefix, sorted by key.')
        server.subscription("store.watch", '{"prefix"?}: receive a "store:KEY" event for every change under the prefix.', watch_topics)
        server.subscription("store.unwatch", '{"prefix"?}: stop watching the prefix.', watch_topics, unsubscribe=True)

