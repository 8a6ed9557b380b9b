"""The fragments this node holds for the drive, on its own disk.

One file per fragment under ``HOME/fragments/``: ``ID.INDEX`` holds the blocks back
to back, and ``ID.INDEX.hashes`` the SHA-256 of each block. A fragment is written
to a ``.part`` file, each block checked against its hash as it comes, the list of
hashes checked against the root the layout names, and renamed into place only
when complete: a fragment on disk is always whole and was right when written. It is
checked again on every read (``read_block``) and by ``verify``, so a disk that rots
is caught. The store knows ids, indexes and sizes, never keys or names.

Nothing from a peer becomes a path unchecked: a file id is 32 hex digits and an
index a small integer, or ``FragmentError``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lannode.core.drive import HASH_BYTES, fragment_root
from lannode.core.erasure import MAX_FRAGMENTS

_ID = re.compile(r"[0-9a-f]{32}")


class FragmentError(Exception):
    """A fragment that cannot be stored or read; the message says why."""


@dataclass(frozen=True, slots=True)
class Held:
    file_id: str
    index: int
    size: int


def _check(file_id: str, index: int) -> None:
    if not isinstance(file_id, str) or not _ID.fullmatch(file_id):
        raise FragmentError("a file id is 32 hex digits")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_FRAGMENTS:
        raise FragmentError(f"a fragment index is 0 to {MAX_FRAGMENTS - 1}")


class FragmentStore:
    def __init__(self, root: Path, quota: int) -> None:
        self.root = root
        self.quota = quota
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.part"):  # a write cut short by a crash: never acknowledged
            stale.unlink(missing_ok=True)

    def _path(self, file_id: str, index: int) -> Path:
        _check(file_id, index)
        return self.root / f"{file_id}.{index}"

    def usage(self) -> int:
        return sum(h.size for h in self.held())

    def held(self) -> list[Held]:
        out = []
        for path in self.root.iterdir():
            name, _, index = path.name.partition(".")
            if _ID.fullmatch(name) and index.isdigit():
                out.append(Held(name, int(index), path.stat().st_size))
        return sorted(out, key=lambda h: (h.file_id, h.index))

    def has(self, file_id: str, index: int) -> bool:
        return self._path(file_id, index).exists()

    def writer(self, file_id: str, index: int, root: bytes, block_hashes: list[bytes], block_lengths: list[int]) -> "FragmentWriter":
        """Start storing a fragment whose blocks hash to ``block_hashes`` under ``root``;
        FragmentError if the hashes do not match the root or the quota has no room."""
        path = self._path(file_id, index)
        if len(block_hashes) != len(block_lengths) or any(len(h) != HASH_BYTES for h in block_hashes) or fragment_root(block_hashes) != root:
            raise FragmentError("the block hashes do not match the fragment's root")
        size = sum(block_lengths)
        if self.usage() + size > self.quota:
            raise FragmentError(f"no room: {size} bytes would pass this node's drive quota of {self.quota}")
        return FragmentWriter(path, block_hashes, block_lengths)

    def block_hashes(self, file_id: str, index: int) -> list[bytes]:
        path = self._path(file_id, index)
        try:
            raw = path.with_name(path.name + ".hashes").read_bytes()
        except FileNotFoundError:
            raise FragmentError(f"no fragment {file_id}.{index} here") from None
        return [raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]

    def read_block(self, file_id: str, index: int, segment: int, offset: int, length: int) -> bytes:
        """One block, checked against its hash; FragmentError if missing or corrupt."""
        hashes = self.block_hashes(file_id, index)
        if not 0 <= segment < len(hashes):
            raise FragmentError(f"no segment {segment} in fragment {file_id}.{index}")
        with open(self._path(file_id, index), "rb") as f:
            f.seek(offset)
            block = f.read(length)
        if len(block) != length or hashlib.sha256(block).digest() != hashes[segment]:
            raise FragmentError(f"fragment {file_id}.{index}, segment {segment}: corrupt on this disk")
        return block

    def verify(self, file_id: str, index: int, block_lengths: list[int]) -> bool:
        """Whether every block still matches its hash."""
        try:
            hashes = self.block_hashes(file_id, index)
            offset = 0
            for segment, length in enumerate(block_lengths):
                self.read_block(file_id, index, segment, offset, length)
                offset += length
            return len(hashes) == len(block_lengths)
        except (FragmentError, OSError):
            return False

    def delete(self, file_id: str, index: int) -> bool:
        path = self._path(file_id, index)
        existed = path.exists()
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".hashes").unlink(missing_ok=True)
        return existed


class FragmentWriter:
    """Blocks in order, each checked; ``commit`` renames the whole fragment into place."""

    def __init__(self, path: Path, block_hashes: list[bytes], block_lengths: list[int]) -> None:
        self.path = path
        self.hashes = block_hashes
        self.lengths = block_lengths
        self.part = path.with_name(path.name + ".part")
        self._file = open(self.part, "wb")
        self.written = 0

    def write(self, block: bytes) -> None:
        i = self.written
        if i >= len(self.hashes):
            raise FragmentError("more blocks than the fragment has")
        if len(block) != self.lengths[i] or hashlib.sha256(block).digest() != self.hashes[i]:
            self.abort()
            raise FragmentError(f"block {i} does not match its hash")
        self._file.write(block)
        self.written += 1

    def commit(self) -> None:
        if self.written != len(self.hashes):
            self.abort()
            raise FragmentError(f"{self.written} of {len(self.hashes)} blocks arrived")
        self._file.flush()
        os.fsync(self._file.fileno())  # a holder says "stored" only for what survives a power cut
        self._file.close()
        hashes = self.path.with_name(self.path.name + ".hashes")
        hashes.write_bytes(b"".join(self.hashes))
        os.replace(self.part, self.path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.part.unlink(missing_ok=True)
