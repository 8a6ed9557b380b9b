"""A node's identity: its Ed25519 key pair, kept in the home, and the node id derived
from it (``lannode.core.ids``). The private key never leaves ``node.key`` (0600).
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nacl.signing import SigningKey, VerifyKey

from lannode.core.ids import node_id_for
from lannode.files import write_private

KEY_FILE = "node.key"
PUBLIC_FILE = "node.pub"


class Author(Protocol):
    """Who writes: a node (it signs here) or a guest (its page signs: ``signing_key`` is None)."""

    @property
    def node_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    @property
    def signing_key(self) -> SigningKey | None: ...


class IdentityError(Exception):
    """A key file that cannot be used; the message is for a person."""


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
