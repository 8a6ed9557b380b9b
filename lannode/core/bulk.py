"""Bulk connections, sans-IO: the hello, the keys, the record kinds and sizes.

Bulk bytes (file drop's files, the drive's fragments) never travel inside a peer
link's own TCP stream: a chunk queued there would sit in the kernel's buffers ahead
of every chat message and signal. After a request over the link, the side that will
be connected to sends the other (over the link, so encrypted and authenticated) a
fresh 32-byte secret and a one-time token. The other opens a second TCP connection to
its link port and sends the bulk hello; both sides derive one key per direction from
the secret (keyed BLAKE2b) and exchange the link's AEAD records. A connection per
secret and counters from 0 mean no nonce is ever used twice with a key.
"""

from __future__ import annotations

import hashlib
import struct

from lannode.core.link import TAG_BYTES

BULK_MAGIC = b"LNB"
BULK_VERSION = 1
_BULK_HELLO = struct.Struct(">3sB16s")  # magic, version, token
BULK_HELLO_BYTES = _BULK_HELLO.size
TOKEN_BYTES = 16
SECRET_BYTES = 32

R_DATA, R_ACK, R_CONTROL = 1, 2, 3  # a record's first byte: data, an acknowledgement, a JSON control message
RECORD_DATA = 256 * 1024  # data bytes per record, at most
MAX_RECORD = RECORD_DATA + 64 + TAG_BYTES  # a whole sealed record, headers and tag included


class BadBulk(ValueError):
    """A bulk connection's hello or keys that will not do."""


def bulk_hello(token: bytes) -> bytes:
    return _BULK_HELLO.pack(BULK_MAGIC, BULK_VERSION, token)


def parse_bulk_hello(data: bytes) -> bytes:
    """The token of a bulk hello; BadBulk if it is not one."""
    if len(data) != _BULK_HELLO.size:
        raise BadBulk("a truncated bulk hello")
    magic, version, token = _BULK_HELLO.unpack(data)
    if magic != BULK_MAGIC or version != BULK_VERSION:
        raise BadBulk(f"not a lannode bulk connection (version {version})")
    return bytes(token)


def bulk_keys(secret: bytes) -> tuple[bytes, bytes]:
    """(sender to receiver, receiver to sender) keys for one bulk connection."""
    if len(secret) != SECRET_BYTES:
        raise BadBulk("a bulk secret is 32 bytes")
    return tuple(  # type: ignore[return-value]
        hashlib.blake2b(b"", key=secret, person=person, digest_size=32).digest() for person in (b"lannode bulk s2r", b"lannode bulk r2s")
    )
