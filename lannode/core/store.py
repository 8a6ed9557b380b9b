"""The replicated metadata store: a last-writer-wins CRDT map with Scuttlebutt anti-entropy, sans-IO.

Every write is an ``Entry`` signed by the node that made it (its origin): key,
value (or a tombstone), the origin's own version counter, and a timestamp from a
hybrid logical clock (milliseconds; never behind any timestamp this node has
seen, so a write made after seeing another wins over it). Per key, the entry
with the highest ``(timestamp, origin public key)`` wins, on every node, in any
order of arrival: merging is commutative, associative and idempotent.

Entries spread two ways:

* **Piggybacked on gossip** (``encode_entry`` fits one in a datagram): fast, lossy.
* **Anti-entropy over peer links** (Scuttlebutt): a node sends its *digest* (per
  origin, the version up to which it has everything); the peer answers with every
  current entry above those versions and its own watermarks, and the exchange
  runs the other way too. A gossip-delivered entry raises an origin's watermark
  only when it is the next version, so a lost datagram leaves a gap that
  anti-entropy fills. Entries overwritten by a later write are not sent: the
  winner that replaced them is.

Tombstones keep a deleted key deleted; they are purged ``horizon`` after the
delete. A node that was away for longer than the horizon missed some purged
tombstones and would keep those keys alive locally (anti-entropy never sends a
peer versions it has seen, so they cannot spread). Such a node does a full
resync (``needs_full_resync``): it asks a peer for everything and then drops
what the peer has seen but no longer holds (``prune_after_snapshot``). Its own
writes the peer has not seen survive, so nothing acknowledged is lost, even
when the node is alone when it returns.

No I/O, no clock: time comes in as ``now_ms``; ``take_changes`` hands the service
what to persist and announce.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from nacl.signing import SigningKey

from lannode.core import wire
from lannode.core.ids import node_id_for

MAX_KEY_BYTES = 255
MAX_COUNTER = (1 << 63) - 1  # versions and timestamps: what SQLite's INTEGER holds
MAX_CLOCK_SKEW_MS = 3600 * 1000  # an entry stamped further ahead of our clock waits (CockroachDB's max offset, for LANs without NTP)
MAX_VALUE_BYTES = 64 * 1024
DEFAULT_HORIZON_MS = 7 * 24 * 3600 * 1000
ENTRY_DOMAIN = b"lannode store v1\x00"
FLAG_DELETED = 0x01

_FIXED = struct.Struct("!32sQQBB")  # origin key, version, timestamp, flags, key length
_VALUE_LEN = struct.Struct("!I")
_SIGNATURE = 64


class StoreError(Exception):
    """A write this node was asked to make is not allowed (too big, bad key)."""


class BadEntry(Exception):
    """A received entry that does not parse or whose signature is wrong."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes | None  # None: a tombstone
    origin: bytes  # the writer's public key
    version: int
    timestamp: int  # hybrid logical clock, ms
    signature: bytes = b""

    @property
    def deleted(self) -> bool:
        return self.value is None

    @property
    def origin_id(self) -> str:
        return node_id_for(self.origin)

    def rank(self) -> tuple[int, bytes]:
        return (self.timestamp, self.origin)

    def _signed_part(self) -> bytes:
        key = self.key.encode()
        value = self.value or b""
        return _FIXED.pack(self.origin, self.version, self.timestamp, FLAG_DELETED if self.value is None else 0, len(key)) + key + _VALUE_LEN.pack(len(value)) + value

    def signed(self, signing_key: SigningKey) -> "Entry":
        signature = wire.sign(signing_key, ENTRY_DOMAIN + self._signed_part())
        return Entry(self.key, self.value, self.origin, self.version, self.timestamp, signature)

    def verify(self) -> bool:
        return wire.signature_ok(self.origin, ENTRY_DOMAIN + self._signed_part(), self.signature)

    def encode(self) -> bytes:
        return self._signed_part() + self.signature


def check_key(key: str) -> None:
    raw = key.encode()
    if not raw or len(raw) > MAX_KEY_BYTES:
        raise StoreError(f"a key is 1 to {MAX_KEY_BYTES} bytes of UTF-8")
    if not key.isprintable():
        raise StoreError("a key may not hold control characters")


def decode_entry(data: bytes, offset: int = 0) -> tuple[Entry, int]:
    """One entry from ``data`` at ``offset`` and the offset after it; BadEntry if malformed.
    The signature is not checked here (``Entry.verify``)."""
    end = offset + _FIXED.size
    if end > len(data):
        raise BadEntry("truncated entry")
    origin, version, timestamp, flags, key_length = _FIXED.unpack_from(data, offset)
    if not 1 <= version <= MAX_COUNTER or timestamp > MAX_COUNTER:
        raise BadEntry(f"version {version} or timestamp {timestamp} out of range")
    if flags & ~FLAG_DELETED:
        raise BadEntry(f"unknown entry flags {flags:#x}")
    key_end = end + key_length
    if key_end + _VALUE_LEN.size > len(data):
        raise BadEntry("truncated key")
    try:
        key = data[end:key_end].decode()
    except UnicodeDecodeError:
        raise BadEntry("key is not UTF-8") from None
    (value_length,) = _VALUE_LEN.unpack_from(data, key_end)
    if value_length > MAX_VALUE_BYTES:
        raise BadEntry(f"value of {value_length} bytes")
    value_end = key_end + _VALUE_LEN.size + value_length
    if value_end + _SIGNATURE > len(data):
        raise BadEntry("truncated value")
    if flags & FLAG_DELETED and value_length:
        raise BadEntry("a tombstone with a value")
    value = None if flags & FLAG_DELETED else bytes(data[key_end + _VALUE_LEN.size : value_end])
    signature = bytes(data[value_end : value_end + _SIGNATURE])
    if not key or not key.isprintable():
        raise BadEntry("bad key")
    return Entry(key, value, origin, version, timestamp, signature), value_end + _SIGNATURE


# -- digests and deltas on the wire (over peer links) --------------------------------------------

_COUNT = struct.Struct("!I")
_WATERMARK = struct.Struct("!32sQ")
MSG_DIGEST, MSG_DELTA = 1, 2
MAX_ORIGINS = 65536


def encode_digest(digest: dict[bytes, int], *, reply_wanted: bool) -> bytes:
    return bytes([MSG_DIGEST, int(reply_wanted)]) + _encode_watermarks(digest)


def encode_delta(watermarks: dict[bytes, int], entries: list[Entry]) -> bytes:
    return bytes([MSG_DELTA, 0]) + _encode_watermarks(watermarks) + _COUNT.pack(len(entries)) + b"".join(e.encode() for e in entries)


def _encode_watermarks(marks: dict[bytes, int]) -> bytes:
    return _COUNT.pack(len(marks)) + b"".join(_WATERMARK.pack(origin, version) for origin, version in sorted(marks.items()))


def decode_sync(data: bytes) -> tuple[int, bool, dict[bytes, int], list[Entry]]:
    """(kind, reply_wanted, watermarks, entries) of a digest or delta; BadEntry if malformed."""
    if len(data) < 2 + _COUNT.size:
        raise BadEntry("truncated sync message")
    kind, reply_wanted = data[0], bool(data[1])
    if kind not in (MSG_DIGEST, MSG_DELTA):
        raise BadEntry(f"sync message kind {kind}")
    (count,) = _COUNT.unpack_from(data, 2)
    offset = 2 + _COUNT.size
    if count > MAX_ORIGINS or offset + count * _WATERMARK.size > len(data):
        raise BadEntry("bad watermark count")
    marks = {}
    for _ in range(count):
        origin, version = _WATERMARK.unpack_from(data, offset)
        if version > MAX_COUNTER:
            raise BadEntry(f"watermark {version} out of range")
        marks[origin] = version
        offset += _WATERMARK.size
    entries: list[Entry] = []
    if kind == MSG_DELTA:
        if offset + _COUNT.size > len(data):
            raise BadEntry("truncated delta")
        (n,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        for _ in range(n):
            entry, offset = decode_entry(data, offset)
            entries.append(entry)
    if offset != len(data):
        raise BadEntry("trailing bytes")
    return kind, reply_wanted, marks, entries


# -- the map -------------------------------------------------------------------------------------


WriterRule = Callable[["Entry", "Entry | None"], "str | None"]  # why an entry may not replace the one held (lannode.core.writers)


class ReplicatedMap:
    def __init__(self, signing_key: SigningKey, *, horizon_ms: int = DEFAULT_HORIZON_MS, writers: WriterRule | None = None) -> None:
        self._key = signing_key
        self.writers = writers
        self.origin = bytes(signing_key.verify_key)
        self.horizon_ms = horizon_ms
        self.entries: dict[str, Entry] = {}
        self.watermarks: dict[bytes, int] = {}  # per origin: every version up to this is known
        self.clock = 0
        self.rejected = 0  # entries dropped: bad signature, or malformed
        self.ahead = 0  # entries dropped for a timestamp too far ahead of our clock (they come again later)
        self.refused = 0  # entries dropped because their writer may not write that key (``writers``)
        self._changes: list[Entry] = []
        # False only when no entry has a version above its origin's watermark: then a digest
        # equal to our watermarks lacks nothing (the common case between converged nodes)
        self._beyond_marks = False

    # -- local writes ----------------------------------------------------------------------------
    def put(self, key: str, value: bytes, now_ms: int) -> Entry:
        if len(value) > MAX_VALUE_BYTES:
            raise StoreError(f"a value is at most {MAX_VALUE_BYTES} bytes")
        return self._write(key, value, now_ms)

    def delete(self, key: str, now_ms: int) -> Entry | None:
        current = self.entries.get(key)
        if current is None or current.deleted:
            return None
        return self._write(key, None, now_ms)

    def _write(self, key: str, value: bytes | None, now_ms: int) -> Entry:
        check_key(key)
        if self.writers is not None:
            draft = Entry(key, value, self.origin, 1, self.clock)
            if (reason := self.writers(draft, self.entries.get(key))) is not None:
                raise StoreError(f"{key}: {reason}")
        version = self.watermarks.get(self.origin, 0) + 1
        if version > MAX_COUNTER or self.clock >= MAX_COUNTER:
            raise StoreError("this node's store versions or clock are exhausted")
        self.clock = max(now_ms, self.clock + 1)
        entry = Entry(key, value, self.origin, version, self.clock).signed(self._key)
        self.watermarks[self.origin] = version
        self.entries[key] = entry
        self._changes.append(entry)
        return entry

    # -- reading ---------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        return None if entry is None or entry.deleted else entry

    def items(self, prefix: str = "") -> list[Entry]:
        return sorted((e for k, e in self.entries.items() if k.startswith(prefix) and not e.deleted), key=lambda e: e.key)

    # -- merging ---------------------------------------------------------------------------------
    def merge(self, entry: Entry, *, verified: bool = False, now_ms: int | None = None) -> bool:
        """Take an entry from elsewhere; True if it changed the map. Bad signatures are counted
        and dropped, and so (given ``now_ms``, our wall clock) is an entry stamped more than
        ``MAX_CLOCK_SKEW_MS`` ahead of it: its clock would drag ours along. It is not taken
        into the watermarks either, so anti-entropy brings it again once our clock is near."""
        if now_ms is not None and entry.timestamp > now_ms + MAX_CLOCK_SKEW_MS:
            self.ahead += 1
            return False
        current = self.entries.get(entry.key)
        # the very entry we hold was checked when it came (gossip brings each several times)
        if not verified and not (current is not None and current == entry) and not entry.verify():
            self.rejected += 1
            return False
        self.clock = max(self.clock, entry.timestamp)
        mark = self.watermarks.get(entry.origin, 0)
        if entry.version == mark + 1:
            self.watermarks[entry.origin] = entry.version
        if current is not None and current.rank() >= entry.rank():
            return False
        if current is not None and current.signature == entry.signature:
            return False
        if self.writers is not None and self.writers(entry, current) is not None:
            self.refused += 1  # seen and refused, as every node refuses it: not a gap to fill
            return False
        self.entries[entry.key] = entry
        self._changes.append(entry)
        if entry.version > self.watermarks.get(entry.origin, 0):
            self._beyond_marks = True  # it came before versions we still lack
        return True

    def merge_gossiped(self, data: bytes, now_ms: int | None = None) -> bool:
        """An entry as it rides on gossip (one encoded entry, nothing after it); a malformed
        one is counted and dropped. True if it changed the map."""
        try:
            entry, end = decode_entry(data)
            if end != len(data):
                raise BadEntry("trailing bytes")
        except BadEntry:
            self.rejected += 1
            return False
        return self.merge(entry, now_ms=now_ms)

    def digest(self) -> dict[bytes, int]:
        return dict(self.watermarks)

    def delta_for(self, digest: dict[bytes, int]) -> list[Entry]:
        """Every current entry the holder of ``digest`` may lack, oldest version first per origin."""
        if digest == self.watermarks and not self._holds_beyond_marks():
            return []  # it knows every version we know of, and we hold none past that
        wanted = [e for e in self.entries.values() if e.version > digest.get(e.origin, 0)]
        return sorted(wanted, key=lambda e: (e.origin, e.version))

    def _holds_beyond_marks(self) -> bool:
        if self._beyond_marks:
            marks = self.watermarks
            self._beyond_marks = any(e.version > marks.get(e.origin, 0) for e in self.entries.values())
        return self._beyond_marks

    def apply_delta(self, watermarks: dict[bytes, int], entries: list[Entry], now_ms: int | None = None) -> int:
        """Merge a peer's complete delta; then its watermarks are ours too. Returns how many changed."""
        refused_before = self.rejected + self.ahead
        changed = sum(self.merge(entry, now_ms=now_ms) for entry in entries) if entries else 0
        if watermarks == self.watermarks:
            return changed
        if self.rejected + self.ahead == refused_before:  # a delta with a refused entry teaches us nothing
            for origin, version in watermarks.items():
                if version > self.watermarks.get(origin, 0):
                    self.watermarks[origin] = version
        return changed

    # -- housekeeping ----------------------------------------------------------------------------
    def gc(self, now_ms: int) -> list[str]:
        """Purge tombstones older than the horizon; the keys that went."""
        cutoff = now_ms - self.horizon_ms
        old = [k for k, e in self.entries.items() if e.deleted and e.timestamp < cutoff]
        for key in old:
            del self.entries[key]
        return old

    def needs_full_resync(self, last_sync_ms: int | None, now_ms: int) -> bool:
        return last_sync_ms is not None and now_ms - last_sync_ms > self.horizon_ms

    def prune_after_snapshot(self, watermarks: dict[bytes, int], keys_in_snapshot: set[str]) -> list[str]:
        """After merging a peer's *full* snapshot: drop entries the peer has seen and no longer
        holds (their tombstones were purged while we were away). Our own newer writes, and
        anything the peer has not seen, stay. Returns the keys dropped."""
        gone = [k for k, e in self.entries.items() if k not in keys_in_snapshot and e.version <= watermarks.get(e.origin, 0)]
        for key in gone:
            del self.entries[key]
        return gone

    def load(self, entries: list[Entry], watermarks: dict[bytes, int], clock: int, now_ms: int | None = None) -> list[Entry]:
        """Restore persisted state (already verified when it was first merged). What a store
        written before its numbers were checked may hold out of range is set aside rather
        than stop the start: a watermark past ``MAX_COUNTER`` falls back to 0, and (given
        ``now_ms``) an entry stamped more than ``MAX_CLOCK_SKEW_MS`` ahead of it is left out
        and the clock held to that bound. Anti-entropy fills in what is missing. Returns the
        entries set aside."""
        limit = MAX_COUNTER if now_ms is None else now_ms + MAX_CLOCK_SKEW_MS
        writers = self.writers
        kept = [e for e in entries if e.timestamp <= limit and (writers is None or writers(e, None) is None)]
        self.entries = {e.key: e for e in kept}
        self.watermarks = {origin: version for origin, version in watermarks.items() if 0 <= version <= MAX_COUNTER}
        self._beyond_marks = True  # until looked at
        self.clock = min(max(clock, 0), limit)
        held = set(map(id, kept))
        return [e for e in entries if id(e) not in held]

    def take_changes(self) -> list[Entry]:
        changes, self._changes = self._changes, []
        return changes
