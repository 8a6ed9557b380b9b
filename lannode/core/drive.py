"""A drive file's bytes, sans-IO: encrypted segments, erasure-coded into fragments.

**Keys and capabilities** (after Tahoe-LAFS's CHK files). Every file gets a fresh
32-byte key. Its id, the *storage index*, is a keyed hash of the key, so the nodes
that hold its fragments (and everyone who reads the manifest) learn the id but
never the key. The layout (size, k, m, segment size and each fragment's hash root)
hashes to the *layout hash*:

* the **read capability** ``lnd-r:KEY:LAYOUT-HASH`` decrypts;
* the **verify capability** ``lnd-v:ID:LAYOUT-HASH`` checks every fragment and
  rebuilds lost ones (the code works on ciphertext), but cannot decrypt.

**Segments.** The plaintext is cut into segments (1 MiB by default), each sealed
with XChaCha20-Poly1305 (nonce: the segment's number; additional data: the file's
id, the segment number and whether it is the last, so segments cannot be
reordered, swapped between files or cut off). A sealed segment is padded to a
multiple of k and cut into k data blocks; ``lannode.core.erasure`` adds m parity
blocks. Fragment i is block i of every segment, one after another, so a holder
stores one blob per file.

**Hashes.** Every block has a SHA-256; a fragment's root is SHA-256 over its block
hashes, and the layout lists the roots. A reader fetches a fragment's block hashes,
checks them against the root, then checks each block as it arrives: a corrupt or
lying holder is caught on its first bad block and another fragment used instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt, crypto_aead_xchacha20poly1305_ietf_encrypt
from nacl.exceptions import CryptoError

from lannode.core.erasure import Codec, ErasureError

KEY_BYTES = 32
ID_BYTES = 16
HASH_BYTES = 32
TAG_BYTES = 16
SEGMENT = 1 << 20
DEFAULT_K, DEFAULT_M = 4, 2


class DriveError(ValueError):
    """Bytes, capabilities or layouts that do not check out; the message says which."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def storage_index(key: bytes) -> str:
    """The file's id: derived from its key, which it does not reveal."""
    return hashlib.blake2b(key, digest_size=ID_BYTES, person=b"lannode drive id").hexdigest()


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str, size: int) -> bytes:
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        raise DriveError("a capability is base32") from None
    if len(raw) != size:
        raise DriveError("a capability of the wrong length")
    return raw


@dataclass(frozen=True, slots=True)
class Layout:
    """What every holder and reader of a file agrees on; its hash is in both capabilities."""

    file_id: str
    size: int
    k: int
    m: int
    segment: int
    roots: tuple[bytes, ...]  # one per fragment, k data then m parity

    @property
    def segments(self) -> int:
        return max(1, -(-self.size // self.segment))

    def sealed_length(self, index: int) -> int:
        return min(self.segment, self.size - index * self.segment) + TAG_BYTES

    def block_length(self, index: int) -> int:
        return -(-self.sealed_length(index) // self.k)

    def fragment_length(self) -> int:
        return sum(self.block_length(i) for i in range(self.segments))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.file_id, "size": self.size, "k": self.k, "m": self.m, "segment": self.segment, "roots": [r.hex() for r in self.roots]}

    @classmethod
    def from_json(cls, data: Any) -> "Layout":
        try:
            layout = cls(str(data["id"]), int(data["size"]), int(data["k"]), int(data["m"]), int(data["segment"]), tuple(bytes.fromhex(r) for r in data["roots"]))
        except (KeyError, TypeError, ValueError):
            raise DriveError("a malformed layout") from None
        if layout.size < 0 or not 1 <= layout.segment <= 64 << 20 or len(layout.roots) != layout.k + layout.m or any(len(r) != HASH_BYTES for r in layout.roots):
            raise DriveError("a layout that does not add up")
        Codec(layout.k, layout.m)  # k and m in range, or ErasureError
        return layout

    def digest(self) -> bytes:
        return hashlib.sha256(b"lannode drive layout v1\x00" + json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()).digest()


@dataclass(frozen=True, slots=True)
class ReadCap:
    key: bytes
    layout_hash: bytes

    @property
    def file_id(self) -> str:
        return storage_index(self.key)

    def verify_cap(self) -> "VerifyCap":
        return VerifyCap(self.file_id, self.layout_hash)

    def __str__(self) -> str:
        return f"lnd-r:{_b32(self.key)}:{_b32(self.layout_hash)}"


@dataclass(frozen=True, slots=True)
class VerifyCap:
    file_id: str
    layout_hash: bytes

    def __str__(self) -> str:
        return f"lnd-v:{self.file_id}:{_b32(self.layout_hash)}"


def parse_cap(text: str) -> ReadCap | VerifyCap:
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise DriveError("a capability looks like lnd-r:KEY:HASH or lnd-v:ID:HASH")
    kind, first, layout = parts
    if kind == "lnd-r":
        return ReadCap(_unb32(first, KEY_BYTES), _unb32(layout, HASH_BYTES))
    if kind == "lnd-v":
        if len(first) != 2 * ID_BYTES or any(c not in "0123456789abcdef" for c in first):
            raise DriveError("a file id is 32 hex digits")
        return VerifyCap(first, _unb32(layout, HASH_BYTES))
    raise DriveError(f"unknown capability kind {kind!r}")


def check_layout(layout: Layout, cap: ReadCap | VerifyCap) -> None:
    """DriveError unless ``layout`` is the one the capability names."""
    if layout.digest() != cap.layout_hash or layout.file_id != cap.file_id:
        raise DriveError("the layout is not the one this capability names")


def _nonce(index: int) -> bytes:
    return index.to_bytes(24, "little")


def _ad(file_id: str, index: int, last: bool) -> bytes:
    return bytes.fromhex(file_id) + struct.pack(">QB", index, last)


def fragment_root(block_hashes: list[bytes] | tuple[bytes, ...]) -> bytes:
    h = hashlib.sha256(b"lannode drive fragment v1\x00")
    for block in block_hashes:
        h.update(block)
    return h.digest()


class Encoder:
    """Feed the plaintext a segment at a time (``segment(i, bytes)`` in order); get each
    segment's k + m blocks back; ``finish()`` gives the layout and the block hashes."""

    def __init__(self, key: bytes, size: int, k: int = DEFAULT_K, m: int = DEFAULT_M, segment: int = SEGMENT) -> None:
        if len(key) != KEY_BYTES or size < 0:
            raise DriveError("a key is 32 bytes and a size is not negative")
        self.key = key
        self.file_id = storage_index(key)
        self.codec = Codec(k, m)
        self.shape = Layout(self.file_id, size, k, m, segment, tuple(bytes(HASH_BYTES) for _ in range(k + m)))
        self.hashes: list[list[bytes]] = [[] for _ in range(k + m)]
        self._next = 0

    def segment(self, index: int, plaintext: bytes) -> list[bytes]:
        shape = self.shape
        if index != self._next or index >= shape.segments:
            raise DriveError(f"segment {index} out of order (expected {self._next})")
        if len(plaintext) != shape.sealed_length(index) - TAG_BYTES:
            raise DriveError(f"segment {index} has {len(plaintext)} bytes, not {shape.sealed_length(index) - TAG_BYTES}")
        self._next += 1
        last = index == shape.segments - 1
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, _ad(self.file_id, index, last), _nonce(index), self.key)
        width = shape.block_length(index)
        padded = np.zeros(width * shape.k, dtype=np.uint8)
        padded[: len(sealed)] = np.frombuffer(sealed, dtype=np.uint8)
        data = [padded[i * width : (i + 1) * width] for i in range(shape.k)]
        blocks = [d.tobytes() for d in data] + [p.tobytes() for p in self.codec.encode(data)]
        for i, block in enumerate(blocks):
            self.hashes[i].append(hashlib.sha256(block).digest())
        return blocks

    def finish(self) -> tuple[Layout, ReadCap]:
        if self._next != self.shape.segments:
            raise DriveError(f"{self._next} of {self.shape.segments} segments fed")
        shape = self.shape
        layout = Layout(shape.file_id, shape.size, shape.k, shape.m, shape.segment, tuple(fragment_root(h) for h in self.hashes))
        return layout, ReadCap(self.key, layout.digest())


def check_block_hashes(layout: Layout, fragment: int, block_hashes: list[bytes]) -> None:
    """DriveError unless a holder's list of block hashes is the one the layout's root commits to."""
    if len(block_hashes) != layout.segments or fragment_root(block_hashes) != layout.roots[fragment]:
        raise DriveError(f"fragment {fragment}: its block hashes do not match the layout")


def check_block(block_hashes: list[bytes], fragment: int, index: int, block: bytes) -> None:
    if hashlib.sha256(block).digest() != block_hashes[index]:
        raise DriveError(f"fragment {fragment}, segment {index}: a corrupt block")


class Decoder:
    """Rebuild segments from any k of their blocks (each already checked with
    ``check_block``); with the read capability's key, decrypt them too."""

    def __init__(self, layout: Layout, key: bytes | None = None) -> None:
        self.layout = layout
        self.key = key
        self.codec = Codec(layout.k, layout.m)
        if key is not None and storage_index(key) != layout.file_id:
            raise DriveError("this key is not the file's")

    def sealed(self, index: int, blocks: Mapping[int, bytes]) -> bytes:
        """The sealed segment (ciphertext): needs no key."""
        return b"".join(self._data(index, blocks))[: self.layout.sealed_length(index)]

    def segment(self, index: int, blocks: Mapping[int, bytes]) -> bytes:
        """The plaintext of a segment; DriveError if it does not decrypt."""
        if self.key is None:
            raise DriveError("reading needs the read capability")
        last = index == self.layout.segments - 1
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(self.sealed(index, blocks), _ad(self.layout.file_id, index, last), _nonce(index), self.key)
        except CryptoError:
            raise DriveError(f"segment {index} does not decrypt: the wrong key, or blocks of another file") from None

    def rebuild(self, index: int, blocks: Mapping[int, bytes]) -> list[bytes]:
        """All k + m blocks of a segment from any k of them: repair, which needs no key."""
        data = self._data(index, blocks)
        return data + [p.tobytes() for p in self.codec.encode([np.frombuffer(d, dtype=np.uint8) for d in data])]

    def _data(self, index: int, blocks: Mapping[int, bytes]) -> list[bytes]:
        width = self.layout.block_length(index)
        if any(len(b) != width for b in blocks.values()):
            raise DriveError(f"segment {index}: a block of the wrong length")
        try:
            return [d.tobytes() for d in self.codec.decode({i: np.frombuffer(b, dtype=np.uint8) for i, b in blocks.items()})]
        except ErasureError as exc:
            raise DriveError(f"segment {index}: {exc}") from None
