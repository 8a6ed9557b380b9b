"""The guests the network knows: the ``guests/HOST/GUEST`` entries of the replicated store.

Every node reads the same entries, so every node agrees on who hosts which guest;
``core.writers`` let only the host write them, and only with the record the guest
signed. Parsed records are kept by the entry's signature, so asking is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lannode.core.guests import GuestError, GuestRecord
from lannode.core.store import Entry, ReplicatedMap
from lannode.core.writers import GUESTS_PREFIX, guest_of

MAX_PARSED = 16384  # records kept parsed; past that the cache starts afresh


@dataclass(frozen=True, slots=True)
class KnownGuest:
    record: GuestRecord
    online: bool  # a page of it is open on its host now

    @property
    def node_id(self) -> str:
        return self.record.node_id

    @property
    def host(self) -> str:
        return self.record.host


class GuestDirectory:
    def __init__(self, store: ReplicatedMap) -> None:
        self.store = store
        self._parsed: dict[bytes, KnownGuest | None] = {}  # entry signature -> what it says

    def _of(self, entry: Entry) -> KnownGuest | None:
        if entry.signature in self._parsed:
            return self._parsed[entry.signature]
        try:
            known: KnownGuest | None = KnownGuest(guest_of(entry), bool(json.loads(entry.value or b"{}")["online"]))
        except (GuestError, ValueError, KeyError, TypeError):
            known = None  # the store's rules refuse such entries: one here is from before a rule
        if len(self._parsed) > MAX_PARSED:
            self._parsed.clear()
        self._parsed[entry.signature] = known
        return known

    def all(self) -> list[KnownGuest]:
        return [known for entry in self.store.items(GUESTS_PREFIX) if (known := self._of(entry)) is not None]

    def get(self, guest_id: str, host: str | None = None) -> KnownGuest | None:
        if host is not None:
            entry = self.store.get(f"{GUESTS_PREFIX}{host}/{guest_id}")
            return self._of(entry) if entry is not None else None
        for known in self.all():
            if known.node_id == guest_id:
                return known
        return None

    def host_of(self, guest_id: str) -> str | None:
        known = self.get(guest_id)
        return known.host if known is not None else None

    def key_of(self, guest_id: str) -> bytes | None:
        known = self.get(guest_id)
        return known.record.guest_key if known is not None else None
