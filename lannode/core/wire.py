"""Gossip datagrams on the wire, sans-IO: framing, signatures, sealing and replay.

Every gossip datagram is at most ``MAX_DATAGRAM`` (1,400) bytes, so it is never
IP-fragmented on an Ethernet LAN. Layout, all integers big-endian::

    header   magic "LN" (2) | version (1) | flags (1)
    inner    sender public key (32) | epoch (8) | counter (8) | length (2) | payload | Ed25519 signature (64)

The signature covers the header and the inner bytes before it. The sender's node
id is derived from its public key (``lannode.identity.node_id_for``), so a
datagram cannot claim another node's id. With a network key (32 bytes, shared by
the members) the inner part is sealed: ``header | nonce (24) | XChaCha20-Poly1305
(inner, additional data = header)``, and a datagram that is not sealed with the
key is dropped, so outsiders can neither read nor join.

Replays: ``epoch`` is the sender's boot counter (persisted in its home, one more
each start) and ``counter`` counts its datagrams within the boot. A receiver keeps,
per sender, the newest epoch and a 64-wide window of counters, as IPsec does: a
datagram from an older epoch, below the window, or already seen is dropped.

A peer's bad datagram raises ``Dropped`` with a reason from ``DROP_REASONS``; it
never raises anything else. This module must never do I/O or read the clock.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from typing import NamedTuple

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_sign_BYTES,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from lannode.core.ids import node_id_for
from lannode.core.link import TAG_BYTES

MAX_DATAGRAM = 1400
VERSION = 1
MAGIC = b"LN"
FLAG_SEALED = 0x01
KNOWN_FLAGS = FLAG_SEALED
NETWORK_KEY_BYTES = 32
NONCE_BYTES = 24
REPLAY_WINDOW = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1

_HEADER = struct.Struct("!2sBB")
_INNER = struct.Struct("!32sQQH")
SIGNATURE_BYTES = crypto_sign_BYTES
OVERHEAD_PLAIN = _HEADER.size + _INNER.size + SIGNATURE_BYTES
OVERHEAD_SEALED = OVERHEAD_PLAIN + NONCE_BYTES + TAG_BYTES
MAX_PAYLOAD = MAX_DATAGRAM - OVERHEAD_SEALED  # the same budget sealed or not

DROP_REASONS = (
    "truncated",  # shorter than its own framing says
    "oversized",  # more than MAX_DATAGRAM bytes
    "magic",  # not a lannode datagram
    "version",  # a wire version we do not speak
    "flags",  # flags we do not know
    "unsealed",  # we hold a network key; the datagram was not sealed with one
    "sealed",  # sealed, and we hold no network key
    "decrypt",  # sealed with another key, or tampered with
    "signature",  # the signature does not match the sender's key
    "own",  # our own datagram, looped back by multicast
    "replay",  # seen before, or older than what we have seen
    # the payload, checked by the membership (lannode.core.membership)
    "malformed",  # the payload does not parse
    "forged",  # a record signed by someone other than the node it describes
    "full",  # a new member while the member table is at its limit
    "implausible",  # a claim about a node at an incarnation that node never signed
    "exhausted",  # a refutation would leave this boot's incarnations (2**32 of them)
    "admission",  # a stranger beyond the new members admitted per second
)



def sign(key: SigningKey, message: bytes) -> bytes:
    """The Ed25519 signature of ``message``: what gossip datagrams, presence and left
    records and store entries are signed with. With ``signature_ok``, the seam where sim/
    puts its stand-in (``sim.virtualnet.simulated_signatures``)."""
    return key.sign(message).signature


def signature_ok(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``public_key`` made this Ed25519 ``signature`` of ``message``: the one check
    that gossip datagrams, presence and left records and store entries go through."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, CryptoError):
        return False
    return True

class LocalProtocolError(Exception):
    """We were asked to do something the protocol does not allow (our bug)."""


class Dropped(Exception):
    """A datagram we will not accept; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in DROP_REASONS
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


MAX_SENDERS = 8192  # the replay guard's table: twice the member table's limit


class ReplayGuard:
    """Per sender: the newest epoch, the highest counter and a bitmap of the last 64.

    The table holds at most ``max_senders``; past that the sender heard from longest ago
    goes (counted in ``evicted``), so throwaway keys cannot grow it without bound. A
    sender that went could have a datagram of its last 64 replayed once: a member's
    heartbeat or claim, which the membership takes as it took the original."""

    def __init__(self, max_senders: int = MAX_SENDERS) -> None:
        self.senders: dict[bytes, tuple[int, int, int]] = {}  # in the order last heard from
        self.max_senders = max_senders
        self.evicted = 0

    def accept(self, sender: bytes, state: tuple[int, int, int]) -> None:
        """Store what ``check`` returned, once the datagram's signature checked out."""
        senders = self.senders
        if senders.pop(sender, None) is None and len(senders) >= self.max_senders:
            del senders[next(iter(senders))]
            self.evicted += 1
        senders[sender] = state

    def check(self, sender: bytes, epoch: int, counter: int) -> tuple[int, int, int]:
        """Raise Dropped("replay") for a replay; otherwise return what the sender's state
        becomes with this datagram, for the caller to store in ``senders`` once the
        signature checks out (and nothing came from ``sender`` in between): one call per
        datagram, since every datagram received comes through here."""
        state = self.senders.get(sender)
        if state is None:
            return (epoch, counter, 1)
        known_epoch, highest, seen = state
        if epoch != known_epoch:
            if epoch < known_epoch:
                raise Dropped("replay", f"epoch {epoch} is older than {known_epoch}")
            return (epoch, counter, 1)
        if counter > highest:  # the usual case: the next one
            shift = counter - highest
            return (epoch, counter, (seen << shift | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1)
        behind = highest - counter
        if behind >= REPLAY_WINDOW:
            raise Dropped("replay", f"counter {counter} is below the window")
        if seen >> behind & 1:
            raise Dropped("replay", f"counter {counter} was seen")
        return (epoch, highest, seen | 1 << behind)


class DatagramCodec:
    """Encodes our datagrams and checks everyone else's.

    ``epoch`` must grow with every start of the node (the daemon keeps it in the
    home); ``network_key`` is None for an open network.
    """

    def __init__(self, signing_key: SigningKey, *, epoch: int, network_key: bytes | None = None) -> None:
        if network_key is not None and len(network_key) != NETWORK_KEY_BYTES:
            raise LocalProtocolError(f"a network key is {NETWORK_KEY_BYTES} bytes")
        if not 0 <= epoch < 1 << 64:
            raise LocalProtocolError("epoch out of range")
        self._signing_key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.epoch = epoch
        self.network_key = network_key
        self._counter = 0
        self._header = _HEADER.pack(MAGIC, VERSION, FLAG_SEALED if network_key else 0)
        self.replays = ReplayGuard()
        self.dropped: Counter[str] = Counter()

    # -- sending ------------------------------------------------------------
    def encode(self, payload: bytes, *, nonce: bytes | None = None) -> bytes:
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        self._counter += 1
        header = self._header
        signed = header + _INNER.pack(self.public_key, self.epoch, self._counter, len(payload)) + payload
        if self.network_key is None:
            return signed + sign(self._signing_key, signed)
        inner = signed[_HEADER.size :] + sign(self._signing_key, signed)
        nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(inner, header, nonce, self.network_key)
        return header + nonce + sealed

    # -- receiving ----------------------------------------------------------
    def decode(self, data: bytes) -> Opened:
        """Check a received datagram; count and raise Dropped if it is not good."""
        try:
            opened = open_datagram(data, self.network_key)
            sender = opened.public_key
            if sender == self.public_key:
                raise Dropped("own")
            replays = self.replays
            after = replays.check(sender, opened.epoch, opened.counter)  # before the costly check
            if not signature_ok(sender, opened.signed, opened.signature):
                raise Dropped("signature")
        except Dropped as exc:
            self.dropped[exc.reason] += 1
            raise
        replays.accept(sender, after)
        return opened


class Opened(NamedTuple):
    """A datagram's parts once its framing checks out (and its seal opened), before the
    receiver's own checks: whether it is its own, a replay, and signed. (A tuple: one is
    made for every datagram received, and a frozen dataclass costs a call per field.)"""

    public_key: bytes
    epoch: int
    counter: int
    payload: bytes
    signed: bytes
    signature: bytes
    node_id: str  # of public_key


def open_datagram(data: bytes, network_key: bytes | None) -> Opened:
    """Check a datagram's framing and open its seal: a pure function of the bytes and the
    network key (sim/ decodes a multicast once for all its receivers); raises Dropped."""
    if len(data) > MAX_DATAGRAM:
        raise Dropped("oversized", f"{len(data)} bytes")
    if len(data) < _HEADER.size:
        raise Dropped("truncated", "no header")
    magic, version, flags = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Dropped("magic")
    if version != VERSION:
        raise Dropped("version", f"version {version}")
    if flags & ~KNOWN_FLAGS:
        raise Dropped("flags", f"flags {flags:#x}")
    header = data[: _HEADER.size]
    sealed = bool(flags & FLAG_SEALED)
    if network_key is not None and not sealed:
        raise Dropped("unsealed")
    if network_key is None and sealed:
        raise Dropped("sealed")
    if sealed:
        assert network_key is not None
        if len(data) < _HEADER.size + NONCE_BYTES + TAG_BYTES:
            raise Dropped("truncated", "no nonce")
        nonce = data[_HEADER.size : _HEADER.size + NONCE_BYTES]
        try:
            inner = crypto_aead_xchacha20poly1305_ietf_decrypt(data[_HEADER.size + NONCE_BYTES :], header, nonce, network_key)
        except CryptoError:
            raise Dropped("decrypt") from None
        base = 0
    else:
        inner, base = data, _HEADER.size  # read in place: no copy of the inner part
    size = len(inner) - base
    if size < _INNER.size + SIGNATURE_BYTES:
        raise Dropped("truncated", "no sender")
    public_key, epoch, counter, length = _INNER.unpack_from(inner, base)
    if size != _INNER.size + length + SIGNATURE_BYTES:
        raise Dropped("truncated", "length does not match")
    start = base + _INNER.size
    end = start + length
    signed = header + inner[:end] if sealed else data[:end]
    return Opened(public_key, epoch, counter, inner[start:end], signed, inner[end:], node_id_for(public_key))


