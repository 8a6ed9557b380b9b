"""Whom this node has dealt with: trust on first use, safety codes, new-identity warnings.

A peer is **new** until this node's person first deals with it (pings it, and in
later versions messages it or sends it a file) over an authenticated link; then
it is **pinned**: its node id and public key are kept in ``peers.json`` in the
home. Links the daemon opens on its own (store anti-entropy) pin nobody, so a
stranger cannot become "known" just by being on the network.
A person who compared the safety code with the other person (``lannode trust``)
makes it **verified**. The node id is derived from the key, so one id cannot
change keys; what can happen is that a *name* people know shows up under a new
id (a reinstalled machine, or an impostor). That is never merged with the old
peer: it is a new identity, and the node raises a warning event naming both.

The safety code is derived from both public keys, in sorted order, so both people
see the same 20 digits; matching codes mean each side holds the other's real key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from lannode.files import write_private

log = logging.getLogger("lannode.trust")

TRUST_LEVELS = ("new", "pinned", "verified")
SAFETY_DIGITS = 20


def safety_code(key_a: bytes, key_b: bytes) -> str:
    """20 digits in groups of five, the same on both sides (about 66 bits)."""
    digest = hashlib.blake2b(b"".join(sorted((key_a, key_b))), digest_size=32, person=b"lannode-safety").digest()
    number = int.from_bytes(digest, "big") % 10**SAFETY_DIGITS
    digits = f"{number:0{SAFETY_DIGITS}d}"
    return " ".join(digits[i : i + 5] for i in range(0, SAFETY_DIGITS, 5))


def normalize_code(code: str) -> str:
    return "".join(ch for ch in code if ch.isdigit())


class TrustStore:
    """``peers.json``: pinned peers by node id. Written atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peers: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("peers"), dict):
                self.peers = {k: v for k, v in data["peers"].items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # never lose pins silently: keep the broken file aside and start afresh
            aside = path.with_name(path.name + f".broken-{int(time.time())}")
            path.rename(aside)
            log.warning("%s was unreadable (%s); moved it to %s", path, exc, aside)

    def level(self, node_id: str) -> str:
        entry = self.peers.get(node_id)
        return str(entry.get("trust", "pinned")) if entry else "new"

    def pin(self, node_id: str, public_key: bytes, name: str) -> bool:
        """Pin a peer we completed a link with; True if it was new to us."""
        entry = self.peers.get(node_id)
        if entry is not None:
            if entry.get("name") != name:
                entry["name"] = name
                self._save()
            return False
        self.peers[node_id] = {"public_key": base64.b64encode(public_key).decode(), "name": name, "trust": "pinned", "pinned_at": round(time.time(), 3)}
        self._save()
        return True

    def verify(self, node_id: str, public_key: bytes, name: str) -> None:
        self.pin(node_id, public_key, name)
        self.peers[node_id]["trust"] = "verified"
        self.peers[node_id]["verified_at"] = round(time.time(), 3)
        self._save()

    def same_name_elsewhere(self, node_id: str, name: str) -> str | None:
        """A pinned peer with this name under another node id, if any."""
        for pinned_id, entry in self.peers.items():
            if pinned_id != node_id and entry.get("name") == name:
                return pinned_id
        return None

    def _save(self) -> None:
        write_private(self.path, json.dumps({"peers": self.peers}, indent=1, sort_keys=True).encode())
