"""File drop between two nodes, sans-IO: safe names, the offer, chunk hashes, data frames.

A transfer offers files (a folder is its files, with their relative paths) and
the receiver accepts, declines, or auto-accepts. Each file is cut into chunks of
``chunk_size`` bytes; the offer carries each chunk's SHA-256, and the file's
``root`` is SHA-256 over the size and those chunk hashes. A receiver checks every
chunk as it arrives and renames the file into place when the root of what it
verified equals the offered root: the whole file is checked without reading it
a second time (a hash list, as BitTorrent's pieces), and after a crash the
partial file is checked chunk by chunk to find where to resume.

Names from a peer are hostile until proven otherwise. ``safe_relative_path``
refuses anything that could leave the downloads folder or that no filesystem
should get (absolute paths, ``..``, empty or ``.`` components, backslashes, NUL
and control characters, unencodable text, over-long components and paths) and
renames Windows device names (``CON``, ``NUL.txt``, ``COM1``...) by prefixing an
underscore, since a Linux receiver could write them but a user copying them on
could not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

CHUNK_SIZE = 1 << 20
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_FILES = 100_000
MAX_OFFER_BYTES = 12 * 1024 * 1024
WINDOWS_DEVICES = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(10)])
HASH_BYTES = 32


class UnsafeName(ValueError):
    """A file name from a peer that will not be written; the message says why."""


class BadOffer(ValueError):
    """An offer or transfer frame that does not parse."""


def safe_relative_path(name: Any) -> str:
    """The relative POSIX path to write ``name`` at, or UnsafeName."""
    if not isinstance(name, str) or not name:
        raise UnsafeName("a file name must be non-empty text")
    shown = repr(name[:80])
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(f"{shown} is not valid text") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafeName(f"{shown}... is longer than {MAX_PATH_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeName(f"{shown} contains NUL or control characters")
    if "\\" in name:
        raise UnsafeName(f"{shown} contains a backslash")
    if name.startswith("/"):
        raise UnsafeName(f"{shown} is an absolute path")
    parts = name.split("/")
    safe = []
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeName(f"{shown} has an empty, '.' or '..' component")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise UnsafeName(f"{shown} has a component longer than {MAX_COMPONENT_BYTES} bytes")
        stem = part.split(".", 1)[0].rstrip(" ").upper()
        if stem in WINDOWS_DEVICES:
            part = "_" + part
        safe.append(part)
    return "/".join(safe)


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def file_root(size: int, chunk_hashes: list[bytes] | tuple[bytes, ...]) -> bytes:
    """A file's hash: SHA-256 over its size and its chunks' SHA-256 hashes."""
    h = hashlib.sha256(b"lannode file v1\x00" + struct.pack(">Q", size))
    for chunk in chunk_hashes:
        h.update(chunk)
    return h.digest()


def hash_chunk(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class OfferedFile:
    path: str  # relative, "/"-separated, as the sender names it (checked again by the receiver)
    size: int
    chunks: tuple[bytes, ...]  # one SHA-256 per chunk
    mode: int = 0o644

    @property
    def root(self) -> bytes:
        return file_root(self.size, self.chunks)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mode": self.mode, "chunks": base64.b64encode(b"".join(self.chunks)).decode()}


@dataclass(frozen=True, slots=True)
class Offer:
    id: str  # 32 hex digits
    files: tuple[OfferedFile, ...]
    chunk_size: int = CHUNK_SIZE

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "chunk_size": self.chunk_size, "files": [f.to_json() for f in self.files]}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Offer":
        """Parse an offer; names are checked for shape here and for safety by the receiver."""
        if len(data) > MAX_OFFER_BYTES:
            raise BadOffer(f"an offer of {len(data)} bytes")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BadOffer("an offer is JSON") from None
        if not isinstance(body, dict):
            raise BadOffer("an offer is an object")
        offer_id = body.get("id")
        if not isinstance(offer_id, str) or len(offer_id) != 32 or any(c not in "0123456789abcdef" for c in offer_id):
            raise BadOffer("an offer id is 32 hex digits")
        chunk_size = body.get("chunk_size")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or not 4096 <= chunk_size <= 16 << 20:
            raise BadOffer("chunk_size is 4 KiB to 16 MiB")
        files = body.get("files")
        if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
            raise BadOffer(f"an offer has 1 to {MAX_FILES} files")
        parsed = []
        for item in files:
            if not isinstance(item, dict):
                raise BadOffer("a file is an object")
            path, size, mode, chunks = item.get("path"), item.get("size"), item.get("mode", 0o644), item.get("chunks")
            if not isinstance(path, str) or len(path) > MAX_PATH_BYTES:
                raise BadOffer("a file's path is text")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 50:
                raise BadOffer("a file's size is a non-negative integer")
            if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
                raise BadOffer("a file's mode is 0 to 0o777")
            try:
                raw = base64.b64decode(chunks, validate=True) if isinstance(chunks, str) else None
            except ValueError:
                raw = None
            expected = chunk_count(size, chunk_size)
            if raw is None or len(raw) != expected * HASH_BYTES:
                raise BadOffer(f"{path!r}: expected {expected} chunk hashes")
            parsed.append(OfferedFile(path, size, tuple(raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)), mode))
        return cls(offer_id, tuple(parsed), chunk_size)


# -- data frames ---------------------------------------------------------------------------------
# A chunk travels as one binary message: a fixed header, then the chunk's bytes. The link
# has already authenticated and decrypted it; the receiver still checks its hash, which is
# what makes a resumed or corrupted-on-disk file safe.

_DATA = struct.Struct(">B16sIQ")  # kind, transfer id, file index, chunk index
KIND_DATA = 1


def encode_chunk_header(transfer_id: str, file_index: int, chunk_index: int) -> bytes:
    return _DATA.pack(KIND_DATA, bytes.fromhex(transfer_id), file_index, chunk_index)


def decode_chunk(data: bytes | memoryview) -> tuple[str, int, int, memoryview]:
    if len(data) < _DATA.size:
        raise BadOffer("a truncated chunk")
    kind, raw_id, file_index, chunk_index = _DATA.unpack_from(data)
    if kind != KIND_DATA:
        raise BadOffer(f"unknown data frame kind {kind}")
    return raw_id.hex(), file_index, chunk_index, memoryview(data)[_DATA.size :]


CHUNK_HEADER_BYTES = _DATA.size


@dataclass(slots=True)
class FileProgress:
    """What a receiver holds of one file: the verified chunks, contiguous from the start
    (a chunk is written only after it verifies, and chunks of a file arrive in order)."""

    file: OfferedFile
    chunk_size: int
    verified: int = 0  # chunks 0..verified-1 are on disk and match

    @property
    def chunks(self) -> int:
        return chunk_count(self.file.size, self.chunk_size)

    @property
    def done(self) -> bool:
        return self.verified >= self.chunks

    @property
    def bytes_done(self) -> int:
        return min(self.file.size, self.verified * self.chunk_size)

    def expected_length(self, index: int) -> int:
        if self.file.size == 0:
            return 0
        return min(self.chunk_size, self.file.size - index * self.chunk_size)

    def accept_chunk(self, index: int, data: bytes | memoryview) -> bool:
        """Whether this chunk is the next one and matches its hash (then it counts as verified
        once written). A chunk out of order or corrupt is refused: the sender resends from
        ``verified``."""
        if index != self.verified or index >= self.chunks:
            return False
        if len(data) != self.expected_length(index) or hash_chunk(data) != self.file.chunks[index]:
            return False
        return True
