"""Node ids, derived from public keys (sans-IO: the key files are ``lannode.identity``'s).

A node id is self-certifying: the lowercase base32 of the first 15 bytes of
BLAKE2b(public key), 24 characters. Anyone holding the public key can check that an
id belongs to it, so a record or link claiming an id under another key is a forgery.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any

NODE_ID_BYTES = 15
NODE_ID_LENGTH = 24  # base32 characters of NODE_ID_BYTES
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


@functools.lru_cache(maxsize=1 << 16)
def node_id_for(public_key: bytes) -> str:
    """The node id of a public key (cached: hot paths ask it for every message)."""
    return node_id_from_raw(hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES).digest())


@functools.lru_cache(maxsize=1 << 16)
def node_id_from_raw(raw: bytes) -> str:
    """The printed id for its 15 raw bytes (as carried on the wire)."""
    return base64.b32encode(raw).decode().lower()


@functools.lru_cache(maxsize=1 << 16)
def raw_node_id(node_id: str) -> bytes:
    """The 15 raw bytes of a printed node id; ValueError if it is not one (cached, as
    ``node_id_for``: every ping and claim names a node)."""
    raw = base64.b32decode(node_id.upper())
    if len(raw) != NODE_ID_BYTES:
        raise ValueError(f"not a node id: {node_id!r}")
    return raw


def is_node_id(value: Any) -> bool:
    """Whether ``value`` is a printed node id: 24 characters of lowercase base32."""
    return isinstance(value, str) and len(value) == NODE_ID_LENGTH and _ALPHABET.issuperset(value)
