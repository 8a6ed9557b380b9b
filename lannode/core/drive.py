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

**Hashes.** Every block has a BLAKE3 hash; a fragment's root is SHA-256 over its block
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import AbstractSet, Any, Mapping

import numpy as np
from blake3 import blake3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

from lannode.core.erasure import Codec, ErasureError
from lannode.core.ids import is_node_id
from lannode.core.link import TAG_BYTES

KEY_BYTES = 32
ID_BYTES = 16
HASH_BYTES = 32
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


MAX_SEGMENTS = 1 << 22  # 4 TiB in 1 MiB segments: a shape beyond this is refused before any list is made


def fragment_size(size: int, k: int, segment: int) -> int:
    """The sum of ``block_lengths``, without making the list."""
    segments = max(1, -(-size // segment))
    full = -(-(segment + TAG_BYTES) // k)
    last = -(-(size - (segments - 1) * segment + TAG_BYTES) // k)
    return full * (segments - 1) + last


def block_lengths(size: int, k: int, segment: int) -> list[int]:
    """The length of each block of a fragment of a ``size``-byte file: the same in every
    fragment, so a holder knows them from the size, k and segment size alone."""
    segments = max(1, -(-size // segment))
    full = -(-(segment + TAG_BYTES) // k)
    last = -(-(size - (segments - 1) * segment + TAG_BYTES) // k)
    return [full] * (segments - 1) + [last]


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

    def block_lengths(self) -> list[int]:
        return block_lengths(self.size, self.k, self.segment)

    def fragment_length(self) -> int:
        return sum(self.block_lengths())

    def to_json(self) -> dict[str, Any]:
        return {"id": self.file_id, "size": self.size, "k": self.k, "m": self.m, "segment": self.segment, "roots": [r.hex() for r in self.roots]}

    @classmethod
    def from_json(cls, data: Any) -> "Layout":
        try:
            layout = cls(str(data["id"]), int(data["size"]), int(data["k"]), int(data["m"]), int(data["segment"]), tuple(bytes.fromhex(r) for r in data["roots"]))
        except (KeyError, TypeError, ValueError):
            raise DriveError("a malformed layout") from None
        if layout.size < 0 or not 1 <= layout.segment <= 64 << 20 or len(layout.roots) != layout.k + layout.m or any(len(r) != HASH_BYTES for r in layout.roots) or layout.segments > MAX_SEGMENTS:
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


def block_hash(block: bytes | bytearray | memoryview) -> bytes:
    """A block's hash: BLAKE3, which runs at 2.5 x SHA-256 here; every byte of every
    fragment is hashed by its putter, its holder and its reader, so this decides speed."""
    return blake3(block).digest()


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
        """Seal and code segment ``index`` (in order); its k + m blocks."""
        if index != self._next:
            raise DriveError(f"segment {index} out of order (expected {self._next})")
        blocks, hashes = self.code(index, plaintext)
        self.take(index, hashes)
        return blocks

    def code(self, index: int, plaintext: bytes) -> tuple[list[bytes], list[bytes]]:
        """Segment ``index``'s blocks and their hashes. Keeps no state, so worker threads
        may code several segments at once; hand the hashes to ``take`` in order."""
        shape = self.shape
        if not 0 <= index < shape.segments:
            raise DriveError(f"no segment {index} in a file of {shape.segments}")
        if len(plaintext) != shape.sealed_length(index) - TAG_BYTES:
            raise DriveError(f"segment {index} has {len(plaintext)} bytes, not {shape.sealed_length(index) - TAG_BYTES}")
        last = index == shape.segments - 1
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, _ad(self.file_id, index, last), _nonce(index), self.key)
        width = shape.block_length(index)
        padded = np.zeros(width * shape.k, dtype=np.uint8)
        padded[: len(sealed)] = np.frombuffer(sealed, dtype=np.uint8)
        data = [padded[i * width : (i + 1) * width] for i in range(shape.k)]
        blocks = [d.tobytes() for d in data] + [p.tobytes() for p in self.codec.encode(data)]
        return blocks, [block_hash(block) for block in blocks]

    def take(self, index: int, hashes: list[bytes]) -> None:
        if index != self._next:
            raise DriveError(f"segment {index} out of order (expected {self._next})")
        self._next += 1
        for i, digest in enumerate(hashes):
            self.hashes[i].append(digest)

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
    if block_hash(block) != block_hashes[index]:
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
        k = self.layout.k
        if all(i in blocks for i in range(k)):  # the data blocks themselves: nothing to decode or copy
            return [bytes(blocks[i]) for i in range(k)]
        try:
            return [d.tobytes() for d in self.codec.decode({i: np.frombuffer(b, dtype=np.uint8) for i, b in blocks.items()})]
        except ErasureError as exc:
            raise DriveError(f"segment {index}: {exc}") from None


# -- manifests: what the replicated store says about a file -----------------------------------------

MANIFEST_PREFIX = "drive/m/"  # drive/m/FILE-ID -> a Manifest (public: ids, sizes, holders)
SHARE_PREFIX = "drive/s/"  # drive/s/NODE-ID/FILE-ID -> a name and read cap, sealed to that node
NODE_PREFIX = "drive/n/"  # drive/n/NODE-ID -> that node's quota and usage


@dataclass(frozen=True, slots=True)
class Manifest:
    """A file as every node sees it: its layout, which node holds each fragment, and a
    version that repair raises. Names and keys are not in it (see ``seal_share``)."""

    layout: Layout
    holders: tuple[str, ...]  # node id per fragment index
    version: int
    owner: str
    created: float

    @property
    def file_id(self) -> str:
        return self.layout.file_id

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout.to_json(), "holders": list(self.holders), "version": self.version, "owner": self.owner, "created": self.created}

    @classmethod
    def from_json(cls, data: Any) -> "Manifest":
        try:
            manifest = cls(Layout.from_json(data["layout"]), tuple(data["holders"]), int(data["version"]), str(data["owner"]), float(data["created"]))
        except (KeyError, TypeError, ValueError):
            raise DriveError("a malformed manifest") from None
        if len(manifest.holders) != manifest.layout.k + manifest.layout.m or not all(is_node_id(h) for h in manifest.holders) or not is_node_id(manifest.owner):
            raise DriveError("a manifest whose holders do not add up")
        return manifest

    def moved(self, index: int, holder: str) -> "Manifest":
        holders = list(self.holders)
        holders[index] = holder
        return Manifest(self.layout, tuple(holders), self.version + 1, self.owner, self.created)


# -- placement --------------------------------------------------------------------------------------


class PlacementError(DriveError):
    """Not enough nodes (or room) to place a file's fragments; the message says what is short."""


def place(count: int, free: Mapping[str, int], fragment_bytes: int, *, holding: Mapping[str, int] | None = None, allow_fewer: bool = False) -> list[str]:
    """Pick a node for each of ``count`` fragments of ``fragment_bytes`` from ``free``
    (node id -> free bytes), balanced by free space: each fragment goes to the node with
    the most room left that holds no fragment of this file yet (``holding``: node ->
    fragments of the file it holds already). Distinct nodes, or PlacementError; with
    ``allow_fewer``, nodes take a second fragment (the fewest first) when there are not
    enough of them, which survives fewer losses and is the caller's explicit choice."""
    room = {node: left for node, left in free.items() if left >= fragment_bytes}
    held = dict(holding or {})
    distinct = [node for node in room if not held.get(node)]
    if len(distinct) < count and not allow_fewer:
        have = f"{len(distinct)} node{'s' if len(distinct) != 1 else ''}"
        raise PlacementError(
            f"{count} fragments need {count} distinct nodes with {fragment_bytes} bytes free each; "
            f"{have} {'has' if len(distinct) == 1 else 'have'} room (start more nodes, lower k + m, or allow fewer nodes)"
        )
    if not room:
        raise PlacementError(f"no node has {fragment_bytes} bytes free for a fragment")
    chosen: list[str] = []
    for _ in range(count):
        candidates = [node for node in room if room[node] >= fragment_bytes]
        if not candidates:
            raise PlacementError(f"the nodes ran out of room after {len(chosen)} of {count} fragments")
        node = min(candidates, key=lambda n: (held.get(n, 0), -room[n], n))
        chosen.append(node)
        held[node] = held.get(node, 0) + 1
        room[node] -= fragment_bytes
    return chosen


# -- repair and orphans: what a node decides from its own view ------------------------------------
# The trio service (lannode/drive/service.py) and the simulator (sim/drivesim.py) both ask these.


class Unrepairable(DriveError):
    """Fewer than k of a file's fragments are left: nothing can rebuild it."""


def repairer_of(file_id: str, alive: Iterable[str]) -> str:
    """The alive node that repairs a file whose holder is gone: every node that sees the
    same alive nodes picks the same one, without talking (a hash of file and node)."""
    return min(alive, key=lambda node: hashlib.blake2b(f"{file_id}/{node}".encode(), digest_size=8).digest())


def plan_repair(manifest: Manifest, *, me: str, alive: AbstractSet[str], gone_for: Callable[[str], float], grace: float, mine: AbstractSet[int] = frozenset()) -> list[int]:
    """The fragments of ``manifest`` this node should rebuild now: ``mine`` (named here but
    lost or spoiled: they go back onto this node), and, if this node is the file's repairer,
    those whose holder has been gone longer than ``grace`` and second fragments on one node
    when a node holding none is alive (they go elsewhere). Empty when there is nothing for it
    to do; Unrepairable when fewer than k fragments would be left."""
    gone = {i for i, node in enumerate(manifest.holders) if node != me and gone_for(node) > grace}
    # A repair made while few nodes were up may have put two fragments on one node (it had
    # to); once a node without any is up, one of them moves there, or the file stays one
    # loss weaker than its k + m promise.
    seen: set[str] = set()
    doubled = []
    for i, node in enumerate(manifest.holders):
        if node in seen and i not in gone:
            doubled.append(i)
        seen.add(node)
    spare = len(set(alive) - seen)
    moves = set(doubled[:spare]) if spare else set()
    if (gone or moves) and repairer_of(manifest.file_id, alive) != me:
        gone, moves = set(), set()
    bad = gone | set(mine)
    if moves and len(manifest.holders) - len(bad | moves) >= manifest.layout.k:
        bad |= moves
    if bad and len(manifest.holders) - len(bad) < manifest.layout.k:
        raise Unrepairable(f"{manifest.file_id[:8]} has {len(manifest.holders) - len(bad)} of the {manifest.layout.k} fragments it needs")
    return sorted(bad)


def why_drop(manifest: Manifest | None, *, removed: bool, me: str, index: int, age: float, orphan_grace: float, busy: bool) -> str | None:
    """Why a node should delete the fragment ``index`` of a file it holds, or None to keep it:
    at once if the file was removed; after ``orphan_grace`` if no manifest names it here (a
    put that died, or a fragment repair moved elsewhere), unless the node is still busy with
    the file (a repair) or has not heard the store's news since it started (``busy``)."""
    if removed:
        return "its file was removed"
    if manifest is not None and index < len(manifest.holders) and manifest.holders[index] == me:
        return None
    if age < orphan_grace or busy:
        return None
    return "no manifest names it here"


class DriveDecisions:
    """What one node decides about the drive from its own view, sans-IO: which holders
    have been gone how long, which fragments it should rebuild now, which to delete, and
    what a rebuild makes of a manifest. The trio service (lannode/drive/service.py) and
    the simulator (sim/drivesim.py) each hold one per node and do the I/O it asks for."""

    def __init__(self, me: str, *, grace: float, orphan_grace: float) -> None:
        self.me = me
        self.grace = grace
        self.orphan_grace = orphan_grace
        self.gone_since: dict[str, float] = {}  # holders away, since this node noticed
        self.repairing: set[str] = set()  # file ids being rebuilt here now
        self.unrepairable = 0  # repair passes that found a file beyond rebuilding

    def peer_state(self, node: str, *, alive: bool, now: float) -> None:
        """The membership says ``node`` is alive, or not."""
        if alive:
            self.gone_since.pop(node, None)
        else:
            self.gone_since.setdefault(node, now)

    def gone_for(self, node: str, *, alive: AbstractSet[str], now: float) -> float:
        """Seconds ``node`` has been away (0 if alive); counted from when this node first
        noticed, at the latest from its own start."""
        if node in alive:
            self.gone_since.pop(node, None)
            return 0.0
        return now - self.gone_since.setdefault(node, now)

    def repairs(self, manifests: Iterable[Manifest], *, alive: AbstractSet[str], now: float, missing_here: Callable[[str, int], bool]) -> list[tuple[Manifest, list[int], set[int]]]:
        """The rebuilds this node should start now: (manifest, the fragments to rebuild,
        those of them that go back onto this node). ``missing_here(file, index)``: a
        fragment named here that this node no longer holds whole."""
        out = []
        for manifest in manifests:
            file_id = manifest.file_id
            if file_id in self.repairing:
                continue
            mine = {i for i, holder in enumerate(manifest.holders) if holder == self.me and missing_here(file_id, i)}
            try:
                bad = plan_repair(manifest, me=self.me, alive=alive, gone_for=lambda node: self.gone_for(node, alive=alive, now=now), grace=self.grace, mine=mine)
            except Unrepairable:
                self.unrepairable += 1
                continue
            if bad:
                out.append((manifest, bad, mine))
        return out

    def drop(self, manifest: Manifest | None, *, file_id: str, removed: bool, index: int, age: float, synced: bool) -> str | None:
        """Why to delete the held fragment ``index`` of ``file_id`` (``why_drop``), or None;
        a file being rebuilt here, or a node that has not heard the store since it started
        (not ``synced``), keeps what it holds."""
        busy = file_id in self.repairing or not synced
        return why_drop(manifest, removed=removed, me=self.me, index=index, age=age, orphan_grace=self.orphan_grace, busy=busy)


def rebuilt(current: Manifest, targets: Mapping[int, str]) -> Manifest:
    """The manifest once fragments ``targets`` (index -> node) are rebuilt where they say;
    ``current`` itself if that changes nothing."""
    updated = current
    for index, node in targets.items():
        if updated.holders[index] != node:
            updated = updated.moved(index, node)
    return updated


# -- shares: names and read caps, readable only by the nodes they are for ------------------------------


def seal_share(recipient: bytes, record: Mapping[str, Any]) -> str:
    """``record`` (name, read cap, ...) sealed to the node whose Ed25519 public key is
    ``recipient``: an anonymous sealed box to its X25519 form, so only that node opens it."""
    box = SealedBox(VerifyKey(recipient).to_curve25519_public_key())
    return base64.b64encode(box.encrypt(json.dumps(dict(record), separators=(",", ":")).encode())).decode()


BOX_SHARE_PREFIX = "g1:"  # a share sealed to a guest's X25519 box key (seal_share_for_box)
BOX_SHARE_INFO = b"lannode drive share v1"


def seal_share_for_box(box_key: bytes, record: Mapping[str, Any]) -> str:
    """``record`` sealed to a guest's X25519 key with what a browser's WebCrypto can open:
    an ephemeral X25519 key, HKDF-SHA256 of the shared secret (salt: both public keys),
    AES-256-GCM. ``g1:`` + base64(ephemeral public key | nonce | ciphertext)."""
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(box_key))
    public = ephemeral.public_key().public_bytes_raw()
    key = HKDF(hashes.SHA256(), 32, salt=public + box_key, info=BOX_SHARE_INFO).derive(shared)
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, json.dumps(dict(record), separators=(",", ":")).encode(), None)
    return BOX_SHARE_PREFIX + base64.b64encode(public + nonce + sealed).decode()


def open_share(signing_key: SigningKey, sealed: str) -> dict[str, Any]:
    """A share sealed to this node; DriveError if it is not one (or not for us)."""
    try:
        plain = SealedBox(signing_key.to_curve25519_private_key()).decrypt(base64.b64decode(sealed, validate=True))
        record = json.loads(plain)
    except (CryptoError, ValueError, TypeError):
        raise DriveError("a share that does not open with this node's key") from None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str) or not isinstance(record.get("cap"), str):
        raise DriveError("a share without a name and a capability")
    return record
