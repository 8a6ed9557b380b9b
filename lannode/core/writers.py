"""Who may write what in the replicated store, sans-IO: the rule every node checks on merge,
on a local write and on load.

Any node may sign an entry for any key, so without these rules one datagram from an
outsider could carry the tombstone of a drive file and every holder would delete its
fragment. The rules, by key:

* ``drive/n/NODE``, ``rooms/ROOM/NODE``: only NODE (a node's quota, a room member's entry).
* ``drive/m/FILE`` (a manifest): a new version keeps the manifest's owner and layout
  unless the owner writes it (a repair moves fragments, it never changes what the file
  is), and its tombstone is the owner's alone. A manifest we do not hold yet is taken
  from anyone: a node that joins late learns repaired manifests from their repairers.
* every other key: anyone (groups are signed operations of their own, ``core.groups``).

A rule sees the entry and the one we hold for its key; it returns why it refuses, or None.
"""

from __future__ import annotations

import json

from lannode.core.drive import MANIFEST_PREFIX, NODE_PREFIX, DriveError, Manifest
from lannode.core.store import Entry

ROOMS_PREFIX = "rooms/"


def refusal(entry: Entry, current: Entry | None) -> str | None:
    """Why ``entry`` may not replace ``current`` (None: it may)."""
    key = entry.key
    writer = entry.origin_id
    if key.startswith(NODE_PREFIX):
        return None if key[len(NODE_PREFIX) :] == writer else "a node's drive record is its own to write"
    if key.startswith(ROOMS_PREFIX):
        return None if key.rsplit("/", 1)[-1] == writer else "a room member's entry is its own to write"
    if key.startswith(MANIFEST_PREFIX):
        return _manifest_refusal(entry, current, writer)
    return None


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
