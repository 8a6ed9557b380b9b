"""Files a front hands to its own node: what a browser page drops for a peer or puts on the drive.

A page cannot name a path on this machine (and must not: ``transfer.send`` with
paths and ``drive.put`` stay local-only), so it streams the file's bytes over its
API connection instead, and then names the upload. ``upload.begin {name, size}``
makes ``HOME/uploads/ID/NAME`` (the name cleaned as file drop cleans a peer's
names) and answers the id and how much is there already, so a page that reloads
mid-upload resumes where the node's copy ends. The bytes come either

* as the body of ``PUT /v1/uploads/ID`` on the API's port (header
  ``X-Lannode-Offset``; the page's CORS preflight is answered for its origin
  only). This is what pages use: Chromium streams a file body at 130+ MB/s here
  where its WebSocket sends top out near 45 MB/s, which would cap file drop; or
* as binary WebSocket messages, ``ID (16 bytes) | offset (8, big-endian) | data``,
  with an ``upload.progress`` event to the sending connection every few MiB and
  when the file is whole.

Bytes are written in order. It never writes outside ``HOME/uploads``, never past the
size declared at begin, only for the owner that began it (the page's origin, or
local programs), and one writer at a time; the file is created new and written without
following a symlink. Uploads untouched for a day are removed, unless a transfer still sends them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import trio

from lannode.core import api
from lannode.core.api import require
from lannode.core.transfer import UnsafeName, safe_relative_path
from lannode.events import EventBus

log = logging.getLogger("lannode.uploads")

HEADER = struct.Struct("!16sQ")
PROGRESS_BYTES = 4 << 20
WRITE_BATCH = 4 << 20  # body bytes gathered before one write in a worker thread
MAX_UPLOAD = 1 << 40
STALE_AFTER = 24 * 3600.0
HOUSEKEEPING = 600.0


class UploadError(Exception):
    pass


@dataclass
class Upload:
    id: str
    name: str
    size: int
    path: Path
    written: int
    owner: str  # the origin of the page that began it; "" for local programs
    reported: int = 0
    busy: bool = False  # a writer is at it

    @property
    def complete(self) -> bool:
        return self.written == self.size

    def record(self) -> dict[str, Any]:
        return {"upload": self.id, "name": self.name, "size": self.size, "offset": self.written, "complete": self.complete}


class UploadService:
    def __init__(self, home_path: Path, bus: EventBus) -> None:
        self.root = home_path / "uploads"
        self.bus = bus
        self.in_use: Callable[[Path], bool] = lambda path: False  # a transfer still sends it: keep it however old
        self.uploads: dict[str, Upload] = {}
        self.refused = 0
        self.bytes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(lambda: self.root.mkdir(mode=0o700, exist_ok=True))
        await trio.to_thread.run_sync(self._load)
        task_status.started()
        while True:
            await trio.to_thread.run_sync(self._remove_stale)
            await trio.sleep(HOUSEKEEPING)

    def _load(self) -> None:
        for meta in self.root.glob("*/upload.json"):
            try:
                info = json.loads(meta.read_text())
                path = meta.parent / "data" / str(info["name"]).rsplit("/", 1)[-1]
                self.uploads[info["id"]] = Upload(info["id"], info["name"], int(info["size"]), path, path.stat().st_size if path.exists() else 0, str(info.get("owner", "")))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring a broken upload in %s", meta.parent)

    def _remove_stale(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for upload in list(self.uploads.values()):
            if self.in_use(upload.path):
                continue
            try:
                age = now - upload.path.stat().st_mtime
            except OSError:
                age = STALE_AFTER
            if age >= STALE_AFTER:
                shutil.rmtree(upload.path.parent.parent, ignore_errors=True)
                self.uploads.pop(upload.id, None)

    # -- the API ---------------------------------------------------------------------------------
    async def begin(self, name: str, size: int, owner: str, resume: str | None) -> Upload:
        try:
            clean = safe_relative_path(name)  # "folder/sub/file.txt" keeps its folders, for file drop
        except UnsafeName as exc:
            raise UploadError(f"not a file name this node will write: {exc}") from None
        if not 0 <= size <= MAX_UPLOAD:
            raise UploadError(f"a size from 0 to {MAX_UPLOAD} bytes")
        old = self.uploads.get(resume or "")
        if old is not None and old.name == clean and old.size == size and old.owner == owner:
            return old
        upload_id = secrets.token_hex(16)
        folder = self.root / upload_id
        path = folder / "data" / clean.rsplit("/", 1)[-1]  # on disk by its own name; offered by the whole one

        def create() -> None:
            (folder / "data").mkdir(parents=True, mode=0o700)  # new folders: mkdir follows no link
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            (folder / "upload.json").write_text(json.dumps({"id": upload_id, "name": clean, "size": size, "owner": owner}))

        await trio.to_thread.run_sync(create)
        upload = self.uploads[upload_id] = Upload(upload_id, clean, size, path, 0, owner)
        return upload

    def complete_path(self, upload_id: str) -> Path:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no upload {upload_id}")
        if not upload.complete:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"upload {upload.name} has {upload.written} of {upload.size} bytes; send the rest first")
        return upload.path

    async def on_binary(self, caller: api.Principal, data: bytes) -> None:
        """One binary message from an API connection: a piece of an upload."""
        if len(data) < HEADER.size:
            return self._refuse(caller, None, "a binary message shorter than its header")
        raw_id, offset = HEADER.unpack_from(data)
        upload = self.uploads.get(raw_id.hex())
        if upload is None:
            return self._refuse(caller, raw_id.hex(), "no such upload (begin it with upload.begin)")
        piece = memoryview(data)[HEADER.size :]
        problem = self._check(upload, caller, offset, len(piece))
        if problem:
            return self._refuse(caller, upload.id, problem)
        upload.busy = True
        try:
            await trio.to_thread.run_sync(_write, upload.path, offset, [piece], offset + len(piece) == upload.size)
        finally:
            upload.busy = False
        upload.written += len(piece)
        self.bytes += len(piece)
        if upload.complete or upload.written - upload.reported >= PROGRESS_BYTES:
            upload.reported = upload.written
            self.bus.publish_to(caller.connection, "upload.progress", upload.record())

    def _check(self, upload: Upload, caller: api.Principal, offset: int, length: int) -> str | None:
        if upload.owner != (caller.origin or ""):
            return "this upload was begun by someone else"
        if upload.busy:
            return "another request is writing this upload now"
        if offset != upload.written or offset + length > upload.size:
            return f"bytes at {offset}, but the node has {upload.written} of {upload.size}"
        return None

    async def on_http(self, caller: api.Principal, upload_id: str, offset: int, body: AsyncIterator[bytes]) -> dict[str, Any]:
        """``PUT /v1/uploads/ID``: the body, from ``offset`` on. What arrived before a dropped
        connection is kept, so the page resumes from ``upload.status``."""
        upload = self.uploads.get(upload_id)
        if upload is None:
            self.refused += 1
            raise api.ApiError(api.ErrorCode.NOT_FOUND, "no such upload (begin it with upload.begin)")
        problem = self._check(upload, caller, offset, 0)
        if problem:
            self.refused += 1
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, problem)
        upload.busy = True
        try:
            batch: list[bytes] = []
            pending = 0
            async for chunk in _with_end(body):
                if chunk:
                    if upload.written + pending + len(chunk) > upload.size:
                        self.refused += 1
                        raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"more bytes than the {upload.size} declared")
                    batch.append(chunk)
                    pending += len(chunk)
                if pending and (pending >= WRITE_BATCH or not chunk):
                    at = upload.written
                    await trio.to_thread.run_sync(_write, upload.path, at, batch, at + pending == upload.size)
                    upload.written += pending
                    self.bytes += pending
                    batch, pending = [], 0
        finally:
            upload.busy = False
        return upload.record()

    def _refuse(self, caller: api.Principal, upload_id: str | None, reason: str) -> None:
        self.refused += 1
        self.bus.publish_to(caller.connection, "upload.error", {"upload": upload_id, "error": reason})

    def statistics(self) -> dict[str, Any]:
        return {"uploads": len(self.uploads), "bytes": self.bytes, "refused": self.refused}

    def register_methods(self, server: api.ByteMethods) -> None:
        async def upload_begin(params: dict[str, Any], caller: api.Principal) -> Any:
            try:
                upload = await self.begin(require(params, "name", str), require(params, "size", int), caller.origin or "", require(params, "resume", str, optional=True))
            except UploadError as exc:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None
            return upload.record()

        async def upload_status(params: dict[str, Any], caller: api.Principal) -> Any:
            upload = self.uploads.get(require(params, "upload", str))
            if upload is None:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, "no such upload")
            return upload.record()

        server.binary_handler = self.on_binary
        server.http_upload = self.on_http
        server.method("upload.begin", upload_begin, '{"name", "size", "resume"?}: start (or resume) handing a file to this node; then binary messages ID|offset|data.')
        server.method("upload.status", upload_status, '{"upload"}: how much of an upload the node has.')


def _write(path: Path, offset: int, pieces: list[bytes] | list[memoryview], last: bool) -> None:
    with os.fdopen(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as f:  # a link put in its place is not written through
        f.seek(offset)
        for piece in pieces:
            f.write(piece)
        if last:  # the whole file is here: make it survive a crash before anyone is told
            f.flush()
            os.fsync(f.fileno())


async def _with_end(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, then b"" to say they ended (so the last batch is written)."""
    async for chunk in chunks:
        yield chunk
    yield b""
