"""A node's identity: an Ed25519 key pair and the node id derived from it.

The node id is self-certifying: the lowercase base32 of the first 15 bytes of
BLAKE2b(public key), 24 characters. Anyone holding the public key can check that
an id belongs to it, so a record or link claiming an id under another key is a
forgery. The private key never leaves ``node.key`` (0600) in the home.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from lannode.files import write_private

NODE_ID_BYTES = 15
KEY_FILE = "node.key"
PUBLIC_FILE = "node.pub"


class IdentityError(Exception):
    """A key file that cannot be used; the message is for a person."""


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=1 << 16)
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


@dataclass(frozen=True, slots=True)
class Identity:
    signing_key: SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.verify_key

    @property
    def node_id(self) -> str:
        return node_id_for(self.public_key)

    @classmethod
    def load_or_create(cls, home: Path) -> "Identity":
        key_path = home / KEY_FILE
        if not key_path.exists():
            key = SigningKey.generate()
            write_private(key_path, base64.b64encode(bytes(key)) + b"\n")
            write_private(home / PUBLIC_FILE, base64.b64encode(bytes(key.verify_key)) + b"\n", mode=0o644)
            return cls(key)
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            os.chmod(key_path, 0o600)
        try:
            seed = base64.b64decode(key_path.read_bytes().strip(), validate=True)
        except (ValueError, OSError) as exc:
            raise IdentityError(f"{key_path}: not a lannode key file ({exc})") from None
        if len(seed) != 32:
            raise IdentityError(f"{key_path}: not a lannode key file (expected a 32-byte seed)")
        return cls(SigningKey(seed))
