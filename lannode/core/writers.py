"""Who may write what in the replicated store, sans-IO: the rule every node checks on merge,
on a local write and on load.

Any node may sign an entry for any key, so without these rules one datagram from an
outsider could carry the tombstone of a drive file and every holder would delete its
fragment. The rules, by key:

* ``drive/n/NODE``: only NODE (a node's quota). ``rooms/ROOM/NODE``: only NODE, or, for
  a guest, the host its ``guests/HOST/GUEST`` entry names (a room member's entry).
* ``drive/m/FILE`` (a manifest): a new version keeps the manifest's owner and layout
  unless the owner writes it (a repair moves fragments, it never changes what the file
  is), and its tombstone is the owner's alone. A manifest we do not hold yet is taken
  from anyone: a node that joins late learns repaired manifests from their repairers.
* ``guests/HOST/GUEST``: only HOST, and only with the record GUEST signed naming HOST
  (``core.guests.GuestRecord``): a host announces and drops its own guests, and no
  node can claim another's guest, nor make one up. ``door/HOST``: only HOST (its
  guest door's address and certificate fingerprint).
* every other key: anyone (groups are signed operations of their own, ``core.groups``).

A rule sees the entry and the one we hold for its key; it returns why it refuses, or None.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lannode.core.drive import MANIFEST_PREFIX, NODE_PREFIX, DriveError, Manifest
from lannode.core.guests import GuestError, GuestRecord
from lannode.core.store import Entry

ROOMS_PREFIX = "rooms/"
GUESTS_PREFIX = "guests/"
DOOR_PREFIX = "door/"


def refusal(entry: Entry, current: Entry | None, lookup: Callable[[str], Entry | None] | None = None) -> str | None:
    """Why ``entry`` may not replace ``current`` (None: it may). ``lookup`` reads the
    entry held for another key (the map's ``get``), for rules that need one."""
    key = entry.key
    writer = entry.origin_id
    if key.startswith(NODE_PREFIX):
        return None if key[len(NODE_PREFIX) :] == writer else "a node's drive record is its own to write"
    if key.startswith(ROOMS_PREFIX):
        member = key.rsplit("/", 1)[-1]
        if member == writer or (lookup is not None and lookup(f"{GUESTS_PREFIX}{writer}/{member}") is not None):
            return None
        return "a room member's entry is its own (or its host's) to write"
    if key.startswith(MANIFEST_PREFIX):
        return _manifest_refusal(entry, current, writer)
    if key.startswith(GUESTS_PREFIX):
        return _guest_refusal(entry, writer)
    if key.startswith(DOOR_PREFIX):
        return None if key[len(DOOR_PREFIX) :] == writer else "a node's guest door is its own to announce"
    return None


def _guest_refusal(entry: Entry, writer: str) -> str | None:
    parts = entry.key.split("/")
    if len(parts) != 3 or parts[1] != writer:
        return "a host announces only its own guests"
    if entry.value is None:
        return None
    try:
        record = guest_of(entry)
    except GuestError as exc:
        return str(exc)
    if record.host != writer or record.node_id != parts[2]:
        return "the guest's record names another host or another guest"
    return None


def guest_of(entry: Entry) -> GuestRecord:
    """The guest record a ``guests/HOST/GUEST`` entry carries: ``{"record": ..., "online": bool}``."""
    try:
        value = json.loads(entry.value or b"null")
    except (ValueError, RecursionError):
        raise GuestError("malformed", "not JSON") from None
    if not isinstance(value, dict) or not isinstance(value.get("online"), bool):
        raise GuestError("malformed", "a guest entry is {record, online}")
    return GuestRecord.from_json(value.get("record"))


def _manifest_refusal(entry: Entry, current: Entry | None, writer: str) -> str | None:
    held = _manifest(current)
    if held is None:
        return None
    if entry.value is None:
        return None if writer == held.owner else "only the file's owner deletes it"
    new = _manifest(entry)
    if new is None:
        return "not a manifest"
    if writer != held.owner and (new.owner != held.owner or new.layout != held.layout):
        return "a repair keeps the file's owner and layout"
    return None


def _manifest(entry: Entry | None) -> Manifest | None:
    if entry is None or entry.value is None:
        return None
    try:
        return Manifest.from_json(json.loads(entry.value))
    except (ValueError, DriveError, RecursionError):
        return None
