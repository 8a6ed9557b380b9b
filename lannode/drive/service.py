"""The shared drive as a service: put, get, share, ls, rm, verify and repair, over the
peer links and the replicated store.

What lives where:

* **The store** (replicated to every node): ``drive/m/ID`` is a file's manifest
  (layout, holder of each fragment, version; no name, no key), ``drive/s/NODE/ID``
  a name and read capability sealed to one node (``lannode.core.drive.seal_share``),
  ``drive/n/NODE`` a node's quota and usage, which placement reads. ``rm`` deletes
  the manifest: a store tombstone, so every holder drops its fragment.
* **Each node's disk**: the fragments it holds (``lannode.drive.fragments``).
* **Link channel 6**: requests between daemons, answered by ``rid``: ``put`` (a
  holder makes room and hands out a one-time bulk token), ``get`` (a holder hands
  out a token to read a fragment from a segment on), ``check`` (a holder verifies
  a fragment on its disk). The bytes go over bulk connections (``lannode.drive.fragment_io``).

A put writes its manifest only after every holder has fsynced its fragment, so a
putter killed mid-put leaves fragments no manifest names; holders drop those
after ``drive.orphan_grace``. A holder whose fragment rots deletes it and
rebuilds it from k others (sampled in the background, or at once when a read or
``drive verify`` finds it). A holder gone longer than ``drive.grace`` has its
fragments rebuilt on other nodes by one node, the *repairer*, picked per file
from the alive nodes by a hash, so that every node agrees on it without talking.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, BinaryIO, Callable

import trio

from lannode.config import Config
from lannode.core import api
from lannode.core.drive import (
    DEFAULT_K,
    DEFAULT_M,
    MANIFEST_PREFIX,
    NODE_PREFIX,
    SEGMENT,
    SHARE_PREFIX,
    DriveDecisions,
    DriveError,
    Encoder,
    Manifest,
    PlacementError,
    ReadCap,
    check_layout,
    fragment_size,
    new_key,
    open_share,
    parse_cap,
    place,
    rebuilt,
    seal_share,
    seal_share_for_box,
)
from lannode.core.erasure import BACKEND as erasure_backend
from lannode.core.erasure import Codec, ErasureError
from lannode.core.membership import State
from lannode.core.store import Entry
from lannode.drive.fragment_io import (
    BlockSource,
    GetReport,
    Holding,
    LocalSource,
    Outlet,
    PutFailed,
    RemoteSource,
    get_file,
    put_file,
    repair_file,
)
from lannode.drive.fragments import FragmentError, FragmentStore
from lannode.drive.requests import Requests, Unavailable
from lannode.events import PROGRESS_EVERY, EventBus
from lannode.files import leaf_name, part_name, write_new_beneath
from lannode.identity import Identity
from lannode.net.bulk import BulkError, Meter, run_in_thread
from lannode.peers.service import PeerService
from lannode.store import StoreService
from lannode.uploads import UploadService

log = logging.getLogger("lannode.drive")

PUT_ATTEMPTS = 2  # a holder that fails mid-put: once more, without it
HOUSEKEEPING = 2.0  # seconds between passes over the fragments held here (tombstones, orphans)


@dataclass(slots=True)
class Operation:
    """A put, get or repair in progress, for progress events."""

    op: str
    kind: str
    name: str
    total: int
    meter: Meter = field(default_factory=Meter)
    began: float = field(default_factory=time.monotonic)

    def record(self, done: bool = False) -> dict[str, Any]:
        elapsed = max(1e-3, time.monotonic() - self.began)
        done_bytes = self.total if done else min(self.total, self.meter.bytes_done)
        rate = done_bytes / elapsed
        return {
            "op": self.op,
            "kind": self.kind,
            "name": self.name,
            "bytes": done_bytes,
            "total": self.total,
            "rate": round(rate),
            "eta": 0 if done else (round((self.total - done_bytes) / rate, 1) if rate > 0 else None),
            "done": done,
        }


class DriveService:
    def __init__(
        self,
        home_path: Path,
        config: Config,
        identity: Identity,
        peers: PeerService,
        store: StoreService,
        bus: EventBus,
        groups: Callable[[str], set[str]] | None = None,
        uploads: UploadService | None = None,
        downloads: Path | None = None,
    ) -> None:
        self.uploads = uploads  # files a page handed to this node, for drive.put {"upload"}
        self.downloads = downloads or home_path / "downloads"  # where drive.get {"to": "downloads"} saves
        self.me = identity.node_id
        self.identity = identity
        self.peers = peers
        self.store = store
        self.bus = bus
        self.groups = groups  # "#group" -> its members (the chat service's groups)
        self.fragments = FragmentStore(home_path / "fragments", int(config.get("drive.quota")))
        self.grace = float(config.get("drive.grace"))
        self.verify_interval = float(config.get("drive.verify_interval"))
        self.repair_interval = float(config.get("drive.repair_interval"))
        self.orphan_grace = float(config.get("drive.orphan_grace"))
        self.stall_timeout = float(config.get("drive.stall_timeout"))
        self.counters: Counter[str] = Counter()
        self.decisions = DriveDecisions(identity.node_id, grace=self.grace, orphan_grace=self.orphan_grace)
        self._repairing = self.decisions.repairing  # file ids being repaired here now
        self.requests = Requests(peers, self.fragments, self.counters, stall_timeout=self.stall_timeout)
        self._needs_repair = self.requests.needs_repair  # fragments here found corrupt or missing
        self._shares: dict[bytes, dict[str, Any] | None] = {}  # share entry signature -> its opened record
        self._operations: dict[str, Operation] = {}
        self._published: dict[str, Any] | None = None
        self._nursery: trio.Nursery | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._verify_at = 0
        peers.state_listeners.append(self._on_peer_state)

    # -- life ----------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._trio_token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.requests.start(nursery)
            await self._publish_status()
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._verifier)
            nursery.start_soon(self._repairer)
            nursery.start_soon(self._report_progress)
            task_status.started()
            await trio.sleep_forever()

    def statistics(self) -> dict[str, Any]:
        return {
            "fragments": self.fragments.count(),
            "bytes": self.fragments.usage(),
            "quota": self.fragments.quota,
            "files": len(self._manifests()),
            "erasure": erasure_backend,  # "isa-l" or "numpy": see lannode.core.erasure
            "counters": dict(self.counters) | ({"unrepairable": self.decisions.unrepairable} if self.decisions.unrepairable else {}),
        }

    # -- the store's view ------------------------------------------------------------------------------
    def _manifests(self) -> dict[str, Manifest]:
        out = {}
        for entry in self.store.map.items(MANIFEST_PREFIX):
            manifest = self._manifest_of(entry)
            if manifest is not None:
                out[manifest.file_id] = manifest
        return out

    def _manifest_of(self, entry: Entry | None) -> Manifest | None:
        if entry is None or entry.value is None:
            return None
        try:
            manifest = Manifest.from_json(json.loads(entry.value))
        except (ValueError, DriveError):
            self.counters["bad_manifest"] += 1
            return None
        if entry.key != MANIFEST_PREFIX + manifest.file_id:
            self.counters["bad_manifest"] += 1
            return None
        return manifest

    def _manifest(self, file_id: str) -> Manifest | None:
        return self._manifest_of(self.store.map.get(MANIFEST_PREFIX + file_id))

    def _my_shares(self) -> dict[str, dict[str, Any]]:
        """file id -> {name, cap, owner, by} for every share sealed to this node."""
        out = {}
        prefix = f"{SHARE_PREFIX}{self.me}/"
        for entry in self.store.map.items(prefix):
            if entry.signature not in self._shares:
                try:
                    self._shares[entry.signature] = open_share(self.identity.signing_key, json.loads(entry.value or b"null"))
                except (DriveError, ValueError, TypeError):
                    self._shares[entry.signature] = None
                    self.counters["bad_share"] += 1
            record = self._shares[entry.signature]
            if record is not None:
                out[entry.key[len(prefix) :]] = record
        return out

    def _node_status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for entry in self.store.map.items(NODE_PREFIX):
            node = entry.key[len(NODE_PREFIX) :]
            if entry.origin_id != node:
                continue  # only a node speaks for its own disk
            try:
                value = json.loads(entry.value or b"null")
                out[node] = {"quota": int(value["quota"]), "used": int(value["used"]), "fragments": int(value["fragments"]), "public_key": entry.origin}
            except (ValueError, KeyError, TypeError):
                self.counters["bad_node_status"] += 1
        return out

    def _alive(self) -> set[str]:
        membership = self.peers.membership
        alive = {self.me}
        if membership is not None:
            alive |= {node for node, member in membership.members.items() if member.state is State.ALIVE}
        return alive

    def _name_of(self, node: str) -> str:
        return self.peers.name_of(node)

    def _public_key(self, node: str) -> bytes | None:
        if node == self.me:
            return self.identity.public_key
        if (guest_key := self.peers.key_of(node)) is not None:
            return guest_key
        membership = self.peers.membership
        member = membership.members.get(node) if membership else None
        if member is not None:
            return member.presence.public_key
        status = self._node_status().get(node)
        return status["public_key"] if status else None

    async def _publish_status(self) -> None:
        held = await trio.to_thread.run_sync(self.fragments.rescan)
        status = {"quota": self.fragments.quota, "used": sum(h.size for h in held), "fragments": len(held)}
        if status != self._published:
            await self.store.put(NODE_PREFIX + self.me, status)
            self._published = status

    def _on_peer_state(self, node: str, state: State) -> None:
        self.decisions.peer_state(node, alive=state is State.ALIVE, now=trio.current_time())

    # -- put -----------------------------------------------------------------------------------------------
    async def put(self, path: Path, *, k: int = DEFAULT_K, m: int = DEFAULT_M, name: str | None = None, share: list[str] | None = None, allow_fewer: bool = False, op: str = "") -> dict[str, Any]:
        try:
            Codec(k, m)
        except ErasureError as exc:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
        try:
            st = path.stat()
        except OSError as exc:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"cannot read {path}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"{path} is not a file")
        name = name or path.name
        recipients = self._recipients(share or [])
        fragment_bytes = fragment_size(st.st_size, k, SEGMENT)
        operation = self._begin(op, "put", name, st.st_size)
        avoid: set[str] = set()
        try:
            for attempt in range(PUT_ATTEMPTS):
                encoder = Encoder(new_key(), st.st_size, k, m, SEGMENT)  # a fresh key (and id) per attempt
                outlets = await self._outlets(list(range(k + m)), encoder.file_id, (st.st_size, k, m, SEGMENT), fragment_bytes, holding={}, allow_fewer=allow_fewer, avoid=avoid)
                operation.meter = Meter()
                try:
                    layout, cap = await run_in_thread(lambda: put_file(path, encoder, outlets, operation.meter, stall=self.stall_timeout), operation.meter)
                    break
                except PutFailed as exc:
                    if exc.node == self.me or attempt + 1 == PUT_ATTEMPTS:
                        raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"the put failed: {exc}") from None
                    # what the other holders stored is an orphan now, collected after drive.orphan_grace
                    log.warning("drive: putting %s: %s; starting again without %s", name, exc, self._name_of(exc.node))
                    avoid.add(exc.node)
                    self.counters["put_retried"] += 1
                except (DriveError, BulkError) as exc:
                    raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"the put failed: {exc}") from None
        finally:
            self._end(operation)
        manifest = Manifest(layout, tuple(o.node for o in sorted(outlets, key=lambda o: o.index)), 1, self.me, round(time.time(), 3))
        await self.store.put(MANIFEST_PREFIX + layout.file_id, manifest.to_json())
        record = {"name": name, "cap": str(cap), "owner": self.me, "by": self.me, "at": round(time.time(), 3)}
        for node in sorted({self.me, *recipients}):
            await self._write_share(node, layout.file_id, record)
        await self._publish_status()
        self.counters["put"] += 1
        log.info("drive: put %s (%s, %d bytes, k=%d m=%d)", name, layout.file_id[:8], layout.size, k, m)
        return {**self._listing(manifest, {layout.file_id: record}), "read_cap": str(cap), "verify_cap": str(cap.verify_cap())}

    async def _outlets(
        self, indexes: list[int], file_id: str, shape: tuple[int, int, int, int], fragment_bytes: int, *, holding: dict[str, int], allow_fewer: bool, avoid: AbstractSet[str] = frozenset()
    ) -> list[Outlet]:
        """A holder for each fragment index, each asked to make room: placement first, then
        the next best node for any that refuses or cannot be reached; none in ``avoid``."""
        size, k, m, segment = shape
        alive = self._alive()
        free = {node: s["quota"] - s["used"] for node, s in self._node_status().items() if node in alive}
        free[self.me] = self.fragments.free()
        refused: dict[str, str] = {node: f"{self._name_of(node)} failed during this put" for node in avoid}
        outlets: list[Outlet] = []
        held = dict(holding)

        def plan(count: int) -> list[str]:
            try:
                return place(count, {n: f for n, f in free.items() if n not in refused}, fragment_bytes, holding=held, allow_fewer=allow_fewer)
            except PlacementError as exc:
                why = "; ".join(refused.values())
                raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"cannot place the fragments: {exc}" + (f" ({why})" if why else "")) from None

        try:
            for index, node in zip(indexes, plan(len(indexes))):
                while True:
                    try:
                        outlet = await self._open_outlet(node, index, file_id, shape)
                        break
                    except (Unavailable, FragmentError) as exc:
                        refused[node] = str(exc)
                        log.info("drive: %s; placing fragment %d elsewhere", exc, index)
                        node = plan(1)[0]
                outlets.append(outlet)
                held[node] = held.get(node, 0) + 1
                free[node] -= fragment_bytes
        except BaseException:
            for outlet in outlets:
                if outlet.writer is not None:
                    outlet.writer.abort()
            raise
        return outlets

    async def _open_outlet(self, node: str, index: int, file_id: str, shape: tuple[int, int, int, int]) -> Outlet:
        size, k, m, segment = shape
        if node == self.me:
            return Outlet(index, node, writer=self.fragments.writer(file_id, index, size, k, m, segment))
        address = self.peers.link_address(node)
        if address is None:
            raise Unavailable(f"no address known for {self._name_of(node)}")
        reply = await self.requests.request(node, {"t": "put", "id": file_id, "index": index, "size": size, "k": k, "m": m, "segment": segment})
        return Outlet(index, node, address, bytes.fromhex(reply["token"]), bytes.fromhex(reply["secret"]), bool(reply.get("aes")))

    def _recipients(self, share: list[str]) -> set[str]:
        nodes: set[str] = set()
        for target in share:
            if target.startswith("#"):
                if self.groups is None:
                    raise api.ApiError(api.ErrorCode.UNAVAILABLE, "groups are not available on this node")
                nodes |= self.groups(target)
            else:
                nodes.add(self.peers.resolve_id(target))
        for node in nodes:
            guest = self.peers.guests.get(node) if self.peers.guests is not None else None
            if guest is not None and not guest.record.box_key:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"{guest.record.name} joined from a browser without a key for drive shares (X25519)")
        missing = [n for n in nodes if self._public_key(n) is None]
        if missing:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no public key known for {', '.join(missing)}: they have not been seen on this network yet")
        return nodes

    async def _write_share(self, node: str, file_id: str, record: dict[str, Any]) -> None:
        guest = self.peers.guests.get(node) if self.peers.guests is not None else None
        if guest is not None:  # a guest's page opens its shares itself
            await self.store.put(f"{SHARE_PREFIX}{node}/{file_id}", seal_share_for_box(guest.record.box_key, record))
            return
        public_key = self._public_key(node)
        assert public_key is not None
        await self.store.put(f"{SHARE_PREFIX}{node}/{file_id}", seal_share(public_key, record))

    def shared_with(self, node: str) -> list[dict[str, Any]]:
        """The files shared with ``node`` (a guest), each with its share as sealed to it: the
        guest's page opens it (name and read capability); this node cannot."""
        prefix = f"{SHARE_PREFIX}{node}/"
        rows = []
        for entry in self.store.map.items(prefix):
            manifest = self._manifest(entry.key[len(prefix) :])
            if manifest is not None:
                rows.append({**self._listing(manifest, {}), "readable": True, "sealed": json.loads(entry.value or b'""')})
        return rows

    # -- finding a file ------------------------------------------------------------------------------------
    def resolve(self, text: str) -> tuple[Manifest, dict[str, Any] | None]:
        """A file by read capability, id (or a unique prefix of 4+) or its name in a share
        to this node; with the share record if this node has one."""
        text = text.strip()
        shares = self._my_shares()
        if text.startswith("lnd-"):
            try:
                cap = parse_cap(text)
            except DriveError as exc:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
            manifest = self._manifest(cap.file_id)
            if manifest is None:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no file {cap.file_id} in the drive (removed, or not replicated here yet)")
            record = shares.get(cap.file_id) or ({"name": cap.file_id, "cap": text} if isinstance(cap, ReadCap) else None)
            return manifest, record
        manifests = self._manifests()
        file_id = api.resolve(
            text,
            list(manifests),
            id_of=lambda i: i,
            name_of=lambda i: (shares.get(i) or {}).get("name"),
            what="file",
            what_plural="files",
            not_found=f"no file {text!r} in the drive (lannode drive ls lists them)",
        )
        return manifests[file_id], shares.get(file_id)

    def _listing(self, manifest: Manifest, shares: dict[str, dict[str, Any]]) -> dict[str, Any]:
        layout = manifest.layout
        alive = self._alive()
        record = shares.get(manifest.file_id)
        live = sum(1 for i, node in enumerate(manifest.holders) if node in alive and (manifest.file_id, i) not in self._needs_repair)
        return {
            "id": manifest.file_id,
            "name": record["name"] if record else None,
            "size": layout.size,
            "k": layout.k,
            "m": layout.m,
            "live": live,
            "health": f"{live}/{layout.k + layout.m}",
            "readable": record is not None,
            "owner": manifest.owner,
            "owner_name": self._name_of(manifest.owner),
            "version": manifest.version,
            "created": manifest.created,
            "holders": [{"index": i, "node": node, "name": self._name_of(node), "alive": node in alive} for i, node in enumerate(manifest.holders)],
        }

    def ls(self) -> list[dict[str, Any]]:
        shares = self._my_shares()
        rows = [self._listing(m, shares) for m in self._manifests().values()]
        return sorted(rows, key=lambda r: (r["name"] is None, r["name"] or "", r["id"]))

    # -- get -----------------------------------------------------------------------------------------------
    async def get(self, text: str, out: Path | None, *, op: str = "") -> dict[str, Any]:
        """Fetch and decrypt a file to ``out`` (a local program's path: a folder takes the
        file's name), or, with None, to a new file in the downloads folder, written beneath
        it without following a symlink (``write_new_beneath``)."""
        manifest, record = self.resolve(text)
        if record is None:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, f"this node has no read capability for {manifest.file_id}: ask its owner ({self._name_of(manifest.owner)}) to share it")
        cap = parse_cap(record["cap"])
        if not isinstance(cap, ReadCap):
            raise api.ApiError(api.ErrorCode.FORBIDDEN, "a verify capability cannot read a file")
        try:
            check_layout(manifest.layout, cap)
        except DriveError as exc:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
        name = leaf_name(str(record["name"] or manifest.file_id))
        if out is not None and out.is_dir():
            out = out / name
        operation = self._begin(op, "get", record["name"], manifest.layout.size)
        report = GetReport()
        landed: list[Path] = []
        try:
            holdings = self._holdings(manifest)

            def fetch(f: BinaryIO) -> None:
                get_file(manifest.layout, cap, holdings, f, operation.meter, report)

            def work() -> None:
                if out is None:
                    landed.append(write_new_beneath(self.downloads, name, fetch))
                    return
                part = out.with_name(part_name(out.name))
                try:
                    with open(part, "wb") as f:
                        fetch(f)
                    os.replace(part, out)
                finally:
                    part.unlink(missing_ok=True)
                landed.append(out)

            await run_in_thread(work, operation.meter)
        except OSError as exc:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"cannot write {out or self.downloads / name}: {exc.strerror or exc}") from None
        except (DriveError, BulkError) as exc:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"the get failed: {exc}") from None
        finally:
            self._end(operation)
            self._note_failures(manifest, report)
        self.counters["get"] += 1
        return {
            "id": manifest.file_id,
            "name": record["name"],
            "size": manifest.layout.size,
            "path": str(landed[0]),
            "from": [{"index": i, "node": n, "name": self._name_of(n)} for i, n in report.used],
            "failed": [{"index": i, "node": n, "name": self._name_of(n), "why": why} for i, n, why in report.failed],
        }

    def _holdings(self, manifest: Manifest, *, skip: AbstractSet[int] = frozenset()) -> list[Holding]:
        """Every fragment worth trying, best first: data fragments (k of them need no
        decoding, which costs more CPU than a loopback or gigabit link saves), this node's
        own before others; then parity; holders known to be away go last."""
        alive = self._alive()
        order = sorted(
            (i for i in range(len(manifest.holders)) if i not in skip),
            key=lambda i: (manifest.holders[i] not in alive, i >= manifest.layout.k, manifest.holders[i] != self.me, i),
        )
        holdings = []
        for index in order:
            node = manifest.holders[index]
            holdings.append(Holding(index, node, functools.partial(self._open_source, manifest, index, node)))
        return holdings

    def _open_source(self, manifest: Manifest, index: int, node: str, start: int) -> BlockSource:
        """In a worker thread: a source of fragment ``index``'s blocks from ``start``."""
        file_id = manifest.file_id
        if node == self.me:
            return LocalSource(manifest.layout, self.fragments.open(file_id, index), start)
        address = self.peers.link_address(node)
        if address is None:
            raise DriveError(f"no address known for {self._name_of(node)}")
        try:
            reply = trio.from_thread.run(self.requests.request, node, {"t": "get", "id": file_id, "index": index, "start": start}, trio_token=self._trio_token)
        except Unavailable as exc:
            raise DriveError(str(exc)) from None
        return RemoteSource(manifest.layout, index, start, address, bytes.fromhex(reply["token"]), bytes.fromhex(reply["secret"]), bool(reply.get("aes")))

    def _note_failures(self, manifest: Manifest, report: GetReport) -> None:
        for index, node, why in report.failed:
            if node == self.me and "corrupt" in why:
                self.requests.found_bad(manifest.file_id, index, why)

    # -- progress ------------------------------------------------------------------------------------------
    def _begin(self, op: str, kind: str, name: str, total: int) -> Operation:
        operation = Operation(op or secrets.token_hex(8), kind, name, total)
        self._operations[operation.op] = operation
        return operation

    def _end(self, operation: Operation) -> None:
        self._operations.pop(operation.op, None)
        self.bus.publish("drive.progress", operation.record(done=True))

    async def _report_progress(self) -> None:
        while True:
            await trio.sleep(PROGRESS_EVERY)
            for operation in list(self._operations.values()):
                self.bus.publish("drive.progress", operation.record())

    # -- rm and share --------------------------------------------------------------------------------------
    async def rm(self, text: str) -> dict[str, Any]:
        manifest, record = self.resolve(text)
        if record is None:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, f"only a node the file was shared with may remove it; {manifest.file_id} was not shared with this one")
        await self.store.delete(MANIFEST_PREFIX + manifest.file_id)
        for entry in self.store.map.items(SHARE_PREFIX):
            if entry.key.endswith("/" + manifest.file_id):
                await self.store.delete(entry.key)
        await self._drop_unwanted()
        self.counters["rm"] += 1
        return {"id": manifest.file_id, "name": record["name"], "removed": True}

    async def share(self, text: str, targets: list[str], *, name: str | None = None, by: str | None = None) -> dict[str, Any]:
        """Give ``targets`` the name and read capability of a file this node can read (or of
        the capability ``text``; ``name`` and ``by`` then say what a guest who shares it calls
        it, and that it was the guest)."""
        manifest, record = self.resolve(text)
        if record is None:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, f"this node cannot share {manifest.file_id}: it was not shared with it")
        recipients = self._recipients(targets)
        shared = {**record, **({"name": name} if name else {}), "by": by or self.me, "at": round(time.time(), 3)}
        for node in sorted(recipients):
            await self._write_share(node, manifest.file_id, shared)
        return {"id": manifest.file_id, "name": record["name"], "shared_with": [{"node": n, "name": self._name_of(n)} for n in sorted(recipients)]}

    # -- verify and repair ---------------------------------------------------------------------------------
    async def verify(self, text: str | None = None) -> list[dict[str, Any]]:
        """Ask every holder to check its fragment of each file (or of one)."""
        manifests = [self.resolve(text)[0]] if text else list(self._manifests().values())
        results = []
        for manifest in manifests:
            states: list[dict[str, Any]] = [{}] * len(manifest.holders)

            async def check(index: int, node: str, manifest: Manifest = manifest, states: list[dict[str, Any]] = states) -> None:
                if node == self.me:
                    state = await self.requests.check_here(manifest.file_id, index)
                else:
                    try:
                        state = str((await self.requests.request(node, {"t": "check", "id": manifest.file_id, "index": index}))["state"])
                    except (Unavailable, KeyError):
                        state = "unreachable"
                states[index] = {"index": index, "node": node, "name": self._name_of(node), "state": state}

            async with trio.open_nursery() as nursery:
                for index, node in enumerate(manifest.holders):
                    nursery.start_soon(check, index, node)
            ok = sum(1 for s in states if s["state"] == "ok")
            results.append({"id": manifest.file_id, "k": manifest.layout.k, "m": manifest.layout.m, "ok": ok, "health": f"{ok}/{len(states)}", "fragments": states})
        return results

    async def repair(self, text: str | None = None) -> list[dict[str, Any]]:
        """Check every fragment (of one file or all) and rebuild those not ok, now."""
        out = []
        for result in await self.verify(text):
            manifest = self._manifest(result["id"])
            if manifest is None:
                continue
            bad = {f["index"]: f["state"] for f in result["fragments"] if f["state"] != "ok"}
            if not bad:
                out.append({"id": manifest.file_id, "repaired": [], "health": result["health"]})
                continue
            # a holder that is there but lost or spoiled its fragment takes it back; others are replaced
            keep = {i for i, state in bad.items() if state in ("missing", "corrupt")}
            moved = await self._rebuild(manifest, bad=sorted(bad), same_holder=keep)
            out.append({"id": manifest.file_id, "repaired": moved, "health": f"{len(manifest.holders)}/{len(manifest.holders)}"})
        return out

    async def _rebuild(self, manifest: Manifest, *, bad: list[int], same_holder: set[int]) -> list[dict[str, Any]]:
        """Rebuild fragments ``bad`` from the others, onto their holder (``same_holder``)
        or onto other nodes; then a new manifest version names the new holders."""
        file_id = manifest.file_id
        if file_id in self._repairing:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"{file_id[:8]} is being repaired already")
        self._repairing.add(file_id)
        try:
            layout = manifest.layout
            shape = (layout.size, layout.k, layout.m, layout.segment)
            fragment_bytes = layout.fragment_length()
            outlets = []
            for index in bad:
                if index in same_holder:
                    try:
                        outlets.append(await self._open_outlet(manifest.holders[index], index, file_id, shape))
                        continue
                    except (Unavailable, FragmentError) as exc:
                        log.info("drive: %s; placing fragment %d elsewhere", exc, index)
                others = [n for i, n in enumerate(manifest.holders) if i not in bad] + [o.node for o in outlets]
                holding = Counter(others)
                outlets += await self._outlets([index], file_id, shape, fragment_bytes, holding=dict(holding), allow_fewer=True)
            operation = self._begin("", "repair", file_id, layout.size)
            report = GetReport()
            try:
                holdings = self._holdings(manifest, skip=set(bad))
                await run_in_thread(lambda: repair_file(layout, holdings, outlets, operation.meter, report, stall=self.stall_timeout), operation.meter)
            except (DriveError, BulkError) as exc:
                raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"repairing {file_id[:8]} failed: {exc}") from None
            finally:
                self._end(operation)
            current = self._manifest(file_id)
            if current is None:  # removed meanwhile: what was rebuilt is an orphan now
                return []
            for outlet in outlets:
                self._needs_repair.discard((file_id, outlet.index))
            updated = rebuilt(current, {outlet.index: outlet.node for outlet in outlets})
            if updated is not current:
                await self.store.put(MANIFEST_PREFIX + file_id, updated.to_json())
            await self._publish_status()
            self.counters["repaired"] += len(outlets)
            log.info("drive: rebuilt %s fragment%s %s", file_id[:8], "s" if len(outlets) > 1 else "", ", ".join(f"{o.index} on {self._name_of(o.node)}" for o in outlets))
            return [{"index": o.index, "node": o.node, "name": self._name_of(o.node)} for o in outlets]
        finally:
            self._repairing.discard(file_id)

    async def _repairer(self) -> None:
        while True:
            await trio.sleep(min(self.repair_interval, self.grace))
            await self._repair_pass()

    async def _repair_pass(self) -> None:
        def missing_here(file_id: str, index: int) -> bool:
            # found bad, or not on this disk (lost with a disk, or deleted by hand)
            return (file_id, index) in self._needs_repair or (not self.fragments.has(file_id, index) and not self.fragments.writing(file_id, index))

        for manifest, bad, mine in self.decisions.repairs(list(self._manifests().values()), alive=self._alive(), now=trio.current_time(), missing_here=missing_here):
            try:
                await self._rebuild(manifest, bad=bad, same_holder=mine)
            except api.ApiError as exc:
                log.warning("drive: %s", exc.message)

    async def _verifier(self) -> None:
        """Check one held fragment every ``verify_interval``, round robin."""
        while True:
            await trio.sleep(self.verify_interval)
            held = await trio.to_thread.run_sync(self.fragments.held)
            if not held:
                continue
            h = held[self._verify_at % len(held)]
            self._verify_at += 1
            manifest = self._manifest(h.file_id)
            if manifest is not None and h.index < len(manifest.holders) and manifest.holders[h.index] == self.me:
                if await self.requests.check_here(h.file_id, h.index) == "ok":
                    self.counters["verified"] += 1

    # -- housekeeping: tombstones and orphans -------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING)
            await self._drop_unwanted()
            await self._publish_status()

    async def _drop_unwanted(self) -> None:
        """Delete fragments of removed files at once, and after ``orphan_grace`` those no
        manifest names here (a put that died, or a fragment repair moved elsewhere)."""
        held = await trio.to_thread.run_sync(self.fragments.held)
        now = time.time()
        for h in held:
            entry = self.store.map.entries.get(MANIFEST_PREFIX + h.file_id)
            removed = entry is not None and entry.deleted
            manifest = None if removed else self._manifest_of(entry)
            why = self.decisions.drop(manifest, file_id=h.file_id, removed=removed, index=h.index, age=now - h.mtime, synced=bool(self.store.syncs))
            if why is None:
                continue
            await trio.to_thread.run_sync(self.fragments.delete, h.file_id, h.index)
            self.counters["dropped"] += 1
            log.info("drive: dropped fragment %s.%d: %s", h.file_id[:8], h.index, why)

    # -- API ---------------------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        alive = self._alive()
        rows = []
        for node, s in self._node_status().items():
            rows.append({"node": node, "name": self._name_of(node), "alive": node in alive, "fragments": s["fragments"], "bytes": s["used"], "quota": s["quota"], "free": max(0, s["quota"] - s["used"])})
        return sorted(rows, key=lambda r: (r["name"], r["node"]))

    def info(self, text: str) -> dict[str, Any]:
        """One file's listing, with its read and verify capabilities where this node has them."""
        manifest, record = self.resolve(text)
        listing = self._listing(manifest, {manifest.file_id: record} if record else {})
        cap = parse_cap(record["cap"]) if record else None
        return {**listing, "read_cap": record["cap"] if record else None, "verify_cap": str(cap.verify_cap()) if isinstance(cap, ReadCap) else None}

    def register_methods(self, server: api.Methods) -> None:
        from lannode.drive.methods import register  # the drive.* surface, kept apart

        register(self, server)
