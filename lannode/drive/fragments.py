"""The fragments this node holds for the drive, on its own disk.

Two files per fragment under ``HOME/fragments/``: ``ID.INDEX`` holds the blocks back
to back, and ``ID.INDEX.meta`` the file's shape (size, k, m, segment size), the
fragment's root and the BLAKE3 hash of each block. A fragment arrives as a stream of
bytes into a ``.part`` file; the holder cuts it into blocks by the shape, hashes
each block as its last byte arrives, and at the end checks that its own hashes
give the root the putter names (the root the manifest will carry). Only then is it
fsynced and renamed into place: a fragment on disk is always whole and was right
when written. It is checked again on every read (``FragmentReader.block``) and by
``verify``, so a disk that rots is caught. The store knows ids, indexes and sizes,
never keys or names.

Nothing from a peer becomes a path unchecked: a file id is 32 hex digits and an
index a small integer, or ``FragmentError``.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from blake3 import blake3

from lannode.core.drive import (
    HASH_BYTES,
    MAX_SEGMENTS,
    block_hash,
    block_lengths,
    fragment_root,
    fragment_size,
)
from lannode.core.erasure import MAX_FRAGMENTS

_ID = re.compile(r"[0-9a-f]{32}")
_META = struct.Struct(">4sQBBI32s")  # magic, file size, k, m, segment size, root; then the block hashes
_MAGIC = b"LNF1"
MAX_SEGMENT = 64 << 20


class FragmentError(Exception):
    """A fragment that cannot be stored or read; the message says why."""


@dataclass(frozen=True, slots=True)
class Held:
    file_id: str
    index: int
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    size: int  # of the whole file
    k: int
    m: int
    segment: int
    root: bytes
    hashes: tuple[bytes, ...]

    @property
    def lengths(self) -> list[int]:
        return block_lengths(self.size, self.k, self.segment)


def check_id(file_id: str, index: int) -> None:
    if not isinstance(file_id, str) or not _ID.fullmatch(file_id):
        raise FragmentError("a file id is 32 hex digits")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_FRAGMENTS:
        raise FragmentError(f"a fragment index is 0 to {MAX_FRAGMENTS - 1}")


def check_shape(size: int, k: int, m: int, segment: int) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (size, k, m, segment)):
        raise FragmentError("a fragment's shape is whole numbers")
    if size < 0 or not 1 <= segment <= MAX_SEGMENT or k < 1 or m < 0 or k + m > MAX_FRAGMENTS:
        raise FragmentError("a fragment's shape that does not add up")
    if -(-size // segment) > MAX_SEGMENTS:
        raise FragmentError(f"a file of more than {MAX_SEGMENTS} segments")


class FragmentStore:
    def __init__(self, root: Path, quota: int) -> None:
        self.root = root
        self.quota = quota
        self._lock = threading.RLock()  # writer() asks usage() while it holds it
        self._reserved = 0  # bytes of fragments being written now
        self._writing: set[tuple[str, int]] = set()
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.part"):  # a write cut short by a crash: never acknowledged
            stale.unlink(missing_ok=True)
        self._sizes: dict[tuple[str, int], int] = {}  # what is held, kept up to date so that no check lists the folder
        self.rescan()

    def _path(self, file_id: str, index: int) -> Path:
        check_id(file_id, index)
        return self.root / f"{file_id}.{index}"

    def usage(self) -> int:
        with self._lock:  # a worker thread may be committing meanwhile
            return sum(self._sizes.values())

    def count(self) -> int:
        return len(self._sizes)

    def rescan(self) -> list[Held]:
        """What the folder holds, read from disk (a fragment deleted by hand is noticed here)."""
        held = self.held()
        with self._lock:
            self._sizes = {(h.file_id, h.index): h.size for h in held}
        return held

    def _stored(self, which: tuple[str, int], size: int | None) -> None:
        with self._lock:
            if size is None:
                self._sizes.pop(which, None)
            else:
                self._sizes[which] = size

    def free(self) -> int:
        return max(0, self.quota - self.usage() - self._reserved)

    def held(self) -> list[Held]:
        out = []
        for path in self.root.iterdir():
            name, _, index = path.name.partition(".")
            if _ID.fullmatch(name) and index.isdigit():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                out.append(Held(name, int(index), st.st_size, st.st_mtime))
        return sorted(out, key=lambda h: (h.file_id, h.index))

    def has(self, file_id: str, index: int) -> bool:
        return self._path(file_id, index).exists()

    def writer(self, file_id: str, index: int, size: int, k: int, m: int, segment: int) -> "FragmentWriter":
        """Start storing fragment ``index`` of a file of this shape; FragmentError if the
        shape is nonsense or the quota has no room for it."""
        path = self._path(file_id, index)
        check_shape(size, k, m, segment)
        need = fragment_size(size, k, segment)
        with self._lock:
            if (file_id, index) in self._writing:
                raise FragmentError(f"fragment {file_id}.{index} is being written already")
            if self.usage() + self._reserved + need > self.quota:
                raise FragmentError(f"no room: {need} bytes would pass this node's drive quota of {self.quota}")
            self._reserved += need
            self._writing.add((file_id, index))
        return FragmentWriter(self, path, (size, k, m, segment), block_lengths(size, k, segment), (file_id, index))

    def writing(self, file_id: str, index: int) -> bool:
        return (file_id, index) in self._writing

    def _release(self, size: int, which: tuple[str, int]) -> None:
        with self._lock:
            self._reserved -= size
            self._writing.discard(which)

    def info(self, file_id: str, index: int) -> FragmentInfo:
        path = self._path(file_id, index)
        try:
            raw = path.with_name(path.name + ".meta").read_bytes()
        except FileNotFoundError:
            raise FragmentError(f"no fragment {file_id}.{index} here") from None
        if len(raw) < _META.size:
            raise FragmentError(f"fragment {file_id}.{index}: its record is cut short")
        magic, size, k, m, segment, root = _META.unpack_from(raw)
        hashes = raw[_META.size :]
        if magic != _MAGIC or len(hashes) % HASH_BYTES:
            raise FragmentError(f"fragment {file_id}.{index}: an unreadable record")
        info = FragmentInfo(size, k, m, segment, root, tuple(hashes[i : i + HASH_BYTES] for i in range(0, len(hashes), HASH_BYTES)))
        if len(info.hashes) != len(info.lengths) or fragment_root(info.hashes) != root:
            raise FragmentError(f"fragment {file_id}.{index}: its record is corrupt on this disk")
        return info

    def open(self, file_id: str, index: int) -> "FragmentReader":
        info = self.info(file_id, index)
        try:
            return FragmentReader(file_id, index, info, open(self._path(file_id, index), "rb"))
        except FileNotFoundError:
            raise FragmentError(f"no fragment {file_id}.{index} here") from None

    def verify(self, file_id: str, index: int) -> bool:
        """Whether the fragment is here and every block still matches its hash."""
        try:
            with self.open(file_id, index) as reader:
                for segment in range(len(reader.info.hashes)):
                    reader.block(segment)
            return True
        except (FragmentError, OSError):
            return False

    def delete(self, file_id: str, index: int) -> bool:
        path = self._path(file_id, index)
        existed = path.exists()
        path.with_name(path.name + ".meta").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        self._stored((file_id, index), None)
        return existed


class FragmentWriter:
    """The fragment's bytes in order, in pieces of any size; ``commit(root)`` checks them
    and renames the whole fragment into place. Used from one thread."""

    def __init__(self, store: FragmentStore, path: Path, shape: tuple[int, int, int, int], lengths: list[int], which: tuple[str, int]) -> None:
        self.store = store
        self.which = which
        self.path = path
        self.shape = shape
        self.lengths = lengths
        self.total = sum(lengths)
        self.part = path.with_name(path.name + ".part")
        self._file = open(self.part, "wb")
        try:
            os.posix_fallocate(self._file.fileno(), 0, self.total)  # the disk's room, taken now: ENOSPC here, not mid-put
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                self._file.close()
                self.part.unlink(missing_ok=True)
                store._release(self.total, which)
                raise FragmentError(f"no room on this disk for {self.total} bytes: {exc.strerror}") from None
        self.hashes: list[bytes] = []
        self._hash = blake3()
        self._left = lengths[0]  # bytes still to come of the current block
        self.written = 0
        self._open = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self.written + len(view) > self.total:
            self.abort()
            raise FragmentError(f"more bytes than the fragment's {self.total}")
        self._file.write(view)
        self.written += len(view)
        while view:
            take = min(self._left, len(view))
            self._hash.update(view[:take])
            view = view[take:]
            self._left -= take
            if self._left == 0:
                self.hashes.append(self._hash.digest())
                self._hash = blake3()
                self._left = self.lengths[len(self.hashes)] if len(self.hashes) < len(self.lengths) else 0

    def commit(self, root: bytes) -> None:
        """FragmentError (and nothing kept) unless every byte came and the blocks hash to ``root``."""
        try:
            if self.written != self.total:
                raise FragmentError(f"{self.written} of {self.total} bytes arrived")
            if fragment_root(self.hashes) != root:
                raise FragmentError("the fragment's blocks do not hash to the root it was put under")
            self._file.flush()
            os.fsync(self._file.fileno())  # a holder says "stored" only for what survives a power cut
            self._file.close()
            size, k, m, segment = self.shape
            meta = self.path.with_name(self.path.name + ".meta")
            with open(meta, "wb") as f:
                f.write(_META.pack(_MAGIC, size, k, m, segment, root) + b"".join(self.hashes))
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.part, self.path)
            self.store._stored(self.which, self.total)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            self.abort()
            raise
        self._done()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.part.unlink(missing_ok=True)
        self._done()

    def _done(self) -> None:
        if self._open:
            self._open = False
            self.store._release(self.total, self.which)


class FragmentReader:
    """Blocks of a stored fragment, each checked against its hash as it is read."""

    def __init__(self, file_id: str, index: int, info: FragmentInfo, file: BinaryIO) -> None:
        self.file_id = file_id
        self.index = index
        self.info = info
        self._file = file
        lengths = info.lengths
        self.lengths = lengths
        self.offsets = [0] * len(lengths)
        for i in range(1, len(lengths)):
            self.offsets[i] = self.offsets[i - 1] + lengths[i - 1]

    def block(self, segment: int) -> bytes:
        if not 0 <= segment < len(self.lengths):
            raise FragmentError(f"no segment {segment} in fragment {self.file_id}.{self.index}")
        length = self.lengths[segment]
        data = os.pread(self._file.fileno(), length, self.offsets[segment])
        if len(data) != length or block_hash(data) != self.info.hashes[segment]:
            raise FragmentError(f"fragment {self.file_id}.{self.index}, segment {segment}: corrupt on this disk")
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FragmentReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
