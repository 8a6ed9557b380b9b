"""What a gossip datagram carries: presence records and SWIM messages, sans-IO.

A datagram's payload (inside ``lannode.core.wire``'s signed, optionally sealed
frame) is a version byte followed by messages, each ``type (1) | length (2) |
body``. The length lets a reader skip a type it does not know, so a later
version can add messages without breaking older nodes. Integers are big-endian.

Who vouches for what:

* A ``Presence`` (node id via its public key, name, addresses, capabilities,
  incarnation) and a ``Left`` are signed by the node they describe, with a
  domain-separated Ed25519 signature, so any node may relay them and nobody can
  forge them. The id is derived from the key, so a record cannot claim another
  node's id.
* ``Suspect`` and ``Dead`` are claims of whoever sent the datagram (the datagram
  signature vouches for that); ``Ping``/``Ack``/``PingReq``/``Nack`` are
  point-to-point probe traffic.

Every length read from the wire is checked before use; malformed input raises
``RemoteProtocolError`` and never anything else. Decoding does not check
signatures (``Presence.verify``, ``Left.verify``): the membership checks a record
only when it is news, so a heartbeat that repeats a known record costs no
Ed25519 verification. No I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from nacl.signing import SigningKey

from lannode.core import wire
from lannode.core.ids import NODE_ID_BYTES, node_id_for, raw_node_id
from lannode.core.ids import node_id_from_raw as _id_from_raw

PAYLOAD_VERSION = 1
MAX_NAME_BYTES = 64
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

# Capabilities a node advertises in its presence, one bit each. Unknown bits
# from newer nodes are kept and passed on unchanged.
CAPABILITIES = ("links", "store", "chat", "calls", "drop", "drive", "mail")

PRESENCE_DOMAIN = b"lannode presence v1\x00"
LEFT_DOMAIN = b"lannode left v1\x00"

T_PRESENCE = 1
T_HELLO = 2
T_PING = 3
T_ACK = 4
T_PING_REQ = 5
T_NACK = 6
T_SUSPECT = 7
T_DEAD = 8
T_LEFT = 9
T_STORE = 10

_MSG = struct.Struct("!BH")
_SEQ = struct.Struct("!I")
_SEQ_TARGET = struct.Struct(f"!I{NODE_ID_BYTES}s")  # a Ping or PingReq: seq, target
_CLAIM = struct.Struct(f"!{NODE_ID_BYTES}sQ")
_PRESENCE_FIXED = struct.Struct("!32sQHB")  # key, incarnation, capabilities, address family
_PORTS = struct.Struct("!HH")  # gossip (UDP unicast), link (TCP)

Address = tuple[str, int]


class RemoteProtocolError(Exception):
    """A peer sent bytes that do not parse; the caller drops them, counted as "malformed"."""


def capability_bits(names: tuple[str, ...] | list[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << CAPABILITIES.index(name)
    return bits


def capability_names(bits: int) -> list[str]:
    return [name for i, name in enumerate(CAPABILITIES) if bits >> i & 1]


def _pack_host(host: str) -> bytes:
    try:
        return b"\x04" + ipaddress.IPv4Address(host).packed
    except ipaddress.AddressValueError:
        addr = ipaddress.ip_address(host)  # IPv6, or a mistake it names
        return bytes([addr.version]) + addr.packed


# -- records signed by their subject ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presence:
    """A node's own description of itself, signed; a higher incarnation wins."""

    public_key: bytes
    incarnation: int
    name: str
    host: str
    gossip_port: int
    link_port: int
    capabilities: int
    signature: bytes = b""
    node_id: str = field(init=False, repr=False, compare=False)  # of public_key: read for every record received
    _encoded: bytes = field(default=b"", init=False, repr=False, compare=False)  # encode(), once: a push-pull view has every member's

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_id", node_id_for(self.public_key))

    @property
    def gossip_address(self) -> Address:
        return (self.host, self.gossip_port)

    def _signed_part(self) -> bytes:
        name = self.name.encode()
        host = _pack_host(self.host)
        return (
            _PRESENCE_FIXED.pack(self.public_key, self.incarnation, self.capabilities, host[0])
            + host[1:]
            + _PORTS.pack(self.gossip_port, self.link_port)
            + bytes([len(name)])
            + name
        )

    def signed(self, key: SigningKey) -> "Presence":
        name = self.name.encode()
        if len(name) > MAX_NAME_BYTES:
            raise ValueError(f"a node name is at most {MAX_NAME_BYTES} bytes of UTF-8")
        signature = wire.sign(key, PRESENCE_DOMAIN + self._signed_part())
        return Presence(self.public_key, self.incarnation, self.name, self.host, self.gossip_port, self.link_port, self.capabilities, signature)

    def encode(self) -> bytes:
        encoded = self._encoded
        if not encoded:
            assert len(self.signature) == SIGNATURE_BYTES, "sign the presence before sending it"
            encoded = self._signed_part() + self.signature
            object.__setattr__(self, "_encoded", encoded)
        return encoded

    @classmethod
    def decode(cls, body: bytes) -> "Presence":
        reader = _Reader(body)
        public_key, incarnation, capabilities, family = reader.unpack(_PRESENCE_FIXED)
        if family == 4:
            host = "%d.%d.%d.%d" % tuple(reader.take(4))
        elif family == 6:
            host = str(ipaddress.IPv6Address(reader.take(16)))  # the compressed form, as ip_address() gives
        else:
            raise RemoteProtocolError(f"address family {family}")
        gossip_port, link_port = reader.unpack(_PORTS)
        name_length = reader.take(1)[0]
        if name_length > MAX_NAME_BYTES:
            raise RemoteProtocolError("name too long")
        try:
            name = reader.take(name_length).decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError("name is not UTF-8") from None
        if not name.isprintable():
            raise RemoteProtocolError("name has control characters")
        signature = reader.take(SIGNATURE_BYTES)
        reader.finish()
        return cls(public_key, incarnation, name, host, gossip_port, link_port, capabilities, signature)

    def verify(self) -> bool:
        """Whether the node this record describes signed it (the caller drops it if not)."""
        return _verifies(self.public_key, PRESENCE_DOMAIN + self._signed_part(), self.signature)


@dataclass(frozen=True, slots=True)
class Left:
    """A node's signed word that it left on purpose at this incarnation."""

    node_id: str
    incarnation: int
    signature: bytes = b""

    def _signed_part(self) -> bytes:
        return _CLAIM.pack(raw_node_id(self.node_id), self.incarnation)

    def signed(self, key: SigningKey) -> "Left":
        return Left(self.node_id, self.incarnation, wire.sign(key, LEFT_DOMAIN + self._signed_part()))

    def encode(self) -> bytes:
        return self._signed_part() + self.signature

    @classmethod
    def decode(cls, body: bytes) -> "Left":
        reader = _Reader(body)
        raw, incarnation = reader.unpack(_CLAIM)
        signature = reader.take(SIGNATURE_BYTES)
        reader.finish()
        return cls(_id_from_raw(raw), incarnation, signature)

    def verify(self, public_key: bytes) -> bool:
        return _verifies(public_key, LEFT_DOMAIN + self._signed_part(), self.signature)


# -- messages vouched for by the datagram's sender ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """I have just joined: send me your presence (by unicast). A multicast Hello is answered
    by a sample of the group (the joiner then fetches the whole view over a link); ``direct``
    (a unicast introduction, ``Membership.contact``) is always answered. The body is one
    flags byte, or none (no flags); later flags are ignored by this version."""

    direct: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # node id; a node that is not the target does not answer


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Probe ``target`` for me and Ack (or Nack) my ``seq``.

    The helper probes the address *it* knows for the target, never one named in
    the request, so a PingReq cannot aim our datagrams at an arbitrary host.
    """

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: I asked the target for you and heard nothing (so *you* are fine)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Dead:
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """An entry of the replicated store riding along (``lannode.core.store`` reads it;
    it carries its writer's own signature)."""

    data: bytes


Message = Union[Presence, Left, Hello, Ping, Ack, PingReq, Nack, Suspect, Dead, StoreEntry]


def encode_ping(seq: int, target: str) -> bytes:
    """``encode_message(Ping(seq, target))``, without making the Ping: a node sends several a second."""
    return _PING_HEAD + _SEQ_TARGET.pack(seq, raw_node_id(target))


def encode_ack(seq: int) -> bytes:
    """``encode_message(Ack(seq))``, without making the Ack."""
    return _ACK_HEAD + _SEQ.pack(seq)


def encode_message(message: Message) -> bytes:
    """One message with its type and length, ready to go in a payload."""
    if type(message) is Ping:  # the probes first
        return encode_ping(message.seq, message.target)
    if type(message) is Ack:
        return encode_ack(message.seq)
    body: bytes
    if isinstance(message, Presence):
        kind, body = T_PRESENCE, message.encode()
    elif isinstance(message, Left):
        kind, body = T_LEFT, message.encode()
    elif isinstance(message, Hello):
        kind, body = T_HELLO, b"\x01" if message.direct else b""
    elif isinstance(message, Nack):
        kind, body = T_NACK, _SEQ.pack(message.seq)
    elif isinstance(message, PingReq):
        kind, body = T_PING_REQ, _SEQ_TARGET.pack(message.seq, raw_node_id(message.target))
    elif isinstance(message, Suspect):
        kind, body = T_SUSPECT, _CLAIM.pack(raw_node_id(message.node_id), message.incarnation)
    elif isinstance(message, Dead):
        kind, body = T_DEAD, _CLAIM.pack(raw_node_id(message.node_id), message.incarnation)
    elif isinstance(message, StoreEntry):
        kind, body = T_STORE, message.data
    else:  # pragma: no cover - the Union is closed
        raise TypeError(message)
    return _MSG.pack(kind, len(body)) + body


_PING_HEAD = _MSG.pack(T_PING, _SEQ_TARGET.size)
_ACK_HEAD = _MSG.pack(T_ACK, _SEQ.size)


def encode_payload(encoded_messages: list[bytes]) -> bytes:
    return _VERSION_BYTE + b"".join(encoded_messages)


_VERSION_BYTE = bytes([PAYLOAD_VERSION])


PAYLOAD_HEADER_BYTES = 1


def decode_payload(payload: bytes) -> list[Message]:
    """All messages in a payload; unknown types are skipped, anything malformed raises."""
    if not payload:
        raise RemoteProtocolError("empty payload")
    if payload[0] != PAYLOAD_VERSION:
        raise RemoteProtocolError(f"payload version {payload[0]}")
    messages: list[Message] = []
    append, unpack_header = messages.append, _MSG.unpack_from
    pos, end = 1, len(payload)
    while pos < end:
        if end - pos < 3:
            raise RemoteProtocolError("truncated message")
        kind, length = unpack_header(payload, pos)
        pos += 3 + length
        if pos > end:
            raise RemoteProtocolError("truncated message")
        decoded = _decode_message(kind, payload[pos - length : pos])
        if decoded is not None:
            append(decoded)
    return messages


# Presence records decoded lately, by their bytes: a node's heartbeat repeats the record
# it sent before, and handing back the very object lets the membership see it holds it
# already (``is``) without comparing field by field. Records are immutable.
PRESENCE_CACHE = 8192
_presences: dict[bytes, Presence] = {}


def _decode_message(kind: int, body: bytes) -> Message | None:
    """One message's body, whose length the payload vouched for: a fixed-size body must
    be exactly its size."""
    size = len(body)
    if kind == T_PRESENCE:
        presence = _presences.get(body)
        if presence is None:
            if len(_presences) >= PRESENCE_CACHE:
                _presences.clear()
            presence = _presences[body] = Presence.decode(body)
        return presence
    if kind == T_ACK or kind == T_NACK:
        if size != 4:
            raise RemoteProtocolError(f"a sequence number is 4 bytes, not {size}")
        seq = int.from_bytes(body, "big")
        return Ack(seq) if kind == T_ACK else Nack(seq)
    if kind == T_PING or kind == T_PING_REQ:
        if size != _SEQ_TARGET.size:
            raise RemoteProtocolError(f"a probe is {_SEQ_TARGET.size} bytes, not {size}")
        seq, raw = _SEQ_TARGET.unpack(body)
        return Ping(seq, _id_from_raw(raw)) if kind == T_PING else PingReq(seq, _id_from_raw(raw))
    if kind == T_SUSPECT or kind == T_DEAD:
        if size != _CLAIM.size:
            raise RemoteProtocolError(f"a claim is {_CLAIM.size} bytes, not {size}")
        raw, incarnation = _CLAIM.unpack(body)
        return Suspect(_id_from_raw(raw), incarnation) if kind == T_SUSPECT else Dead(_id_from_raw(raw), incarnation)
    if kind == T_STORE:
        return StoreEntry(body)
    if kind == T_LEFT:
        return Left.decode(body)
    if kind == T_HELLO:
        return Hello(direct=bool(body[0] & 1)) if body else Hello()
    return None  # a newer node's message: skip it


# -- helpers -------------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads from a received buffer."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError("truncated message")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise RemoteProtocolError("trailing bytes")


def _verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    return wire.signature_ok(public_key, message, signature)  # looked up each time: sim/ may wrap it
