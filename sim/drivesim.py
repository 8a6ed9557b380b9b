"""The drive on the virtual network: placement, repair and orphan collection under churn.

Each simulated node has a disk of fragments that outlives its process (as ``fragments/``
in its home does) and runs what ``lannode/drive/service.py`` runs, deciding with the same sans-IO
functions from ``lannode.core.drive`` and its own view of the world:

* **put**: ``place`` over the nodes its membership holds alive, with their free space; a
  holder that cannot be reached is replaced by the next best, as an outlet that refuses is;
  the manifest goes into the node's replicated store and spreads as the daemon's does.
* **repair**, every ``repair_interval``: ``plan_repair`` on each manifest in its own store,
  with "gone for" counted from its own membership events; a rebuild reads k fragments from
  holders it can reach, takes ``fragment_bytes / rate`` to move one fragment, writes the
  new fragments (onto nodes chosen by ``place``) and then a new manifest version.
* **orphans**, every ``HOUSEKEEPING``: ``why_drop`` on each fragment on its disk.

What no node can see is checked against the truth: a file is *readable* when k of the
fragments its newest manifest names sit on running holders' disks. The invariants:

* **no drive file unreadable while at least k of its holders are up** (a holder that lost or
  wrongly dropped its fragment is the bug this catches);
* **repair restores k + m**: ``repair_within`` seconds after the last fault, every file's
  newest manifest names k + m distinct running holders, each with its fragment.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lannode.core.drive import (
    HASH_BYTES,
    MANIFEST_PREFIX,
    DriveDecisions,
    Layout,
    Manifest,
    PlacementError,
    place,
    rebuilt,
)
from lannode.core.membership import Event, MemberStateChanged, State
from lannode.core.store import Entry
from sim.virtualnet import SimNode, VirtualNetwork

HOUSEKEEPING = 2.0  # as lannode/drive/service.py


@dataclass
class DriveSettings:
    files: int = 10
    k: int = 4
    m: int = 2
    grace: float = 60.0  # a holder gone this long has its fragments rebuilt elsewhere
    repair_interval: float = 10.0
    orphan_grace: float = 120.0
    fragment_bytes: int = 16 << 20
    quota_bytes: int = 1 << 30
    rate: float = 50e6  # bytes a second a rebuild moves
    repair_within: float = 180.0  # after the last fault, every file is back at k + m


@dataclass
class _NodeDrive:
    decisions: DriveDecisions  # the node's own view, as the service holds it
    token: int = 0  # the SimNode its timers run for; a restart begins new ones


class DriveWorld:
    def __init__(self, net: VirtualNetwork, settings: DriveSettings, *, note: Callable[[str], None] = lambda text: None, names: dict[str, str] | None = None) -> None:
        assert net.with_store, "the drive keeps its manifests in the replicated store"
        self.net = net
        self.s = settings
        self.note = note
        self.names = names if names is not None else {}
        self.disks: dict[str, dict[tuple[str, int], float]] = {}  # node id -> (file, index) -> when written
        self.state: dict[str, _NodeDrive] = {}
        self.files: list[str] = []
        self.counters: Counter[str] = Counter()
        self.samples = 0
        self.readable_samples = 0

    # -- the nodes' own work ------------------------------------------------------------------
    def attach(self, node: SimNode) -> None:
        """A node (re)started: its timers begin; what it noticed before is forgotten."""
        old = self.state.get(node.node_id)
        state = self.state[node.node_id] = _NodeDrive(self._decisions(node.node_id), token=(old.token if old else 0) + 1)
        self.disks.setdefault(node.node_id, {})
        for period, work in ((self.s.repair_interval, self._repair_pass), (HOUSEKEEPING, self._housekeeping)):
            self.net.at(self.net.now + period * self.net.rng.uniform(0.5, 1.0), functools.partial(self._every, node, state.token, period, work))

    def _every(self, node: SimNode, token: int, period: float, work: Callable[[SimNode, _NodeDrive], None]) -> None:
        """A timer of one process of ``node``: it stops with that process (its successor runs
        its own), and a paused process skips its turns."""
        state = self.state.get(node.node_id)
        if not node.attached or state is None or state.token != token:
            return
        self.net.at(self.net.now + period, functools.partial(self._every, node, token, period, work))
        if not node.paused:
            work(node, state)

    def _decisions(self, me: str) -> DriveDecisions:
        return DriveDecisions(me, grace=self.s.grace, orphan_grace=self.s.orphan_grace)

    def on_event(self, node: SimNode, event: Event) -> None:
        if isinstance(event, MemberStateChanged):
            state = self.state.setdefault(node.node_id, _NodeDrive(self._decisions(node.node_id)))
            state.decisions.peer_state(event.node_id, alive=event.state is State.ALIVE, now=self.net.now)

    def put(self, node: SimNode) -> str | None:
        """A put at ``node``: its fragments placed and written, its manifest stored. None if
        it could not be placed."""
        k, m = self.s.k, self.s.m
        file_id = f"{self.net.rng.getrandbits(128):032x}"
        refused: set[str] = set()
        holders: list[str] = []
        free = self._free(node)
        held: dict[str, int] = {}
        try:
            for _ in range(k + m):
                while True:
                    (chosen,) = place(1, {n: f for n, f in free.items() if n not in refused}, self.s.fragment_bytes, holding=held)
                    if self._reachable(node, chosen):
                        break
                    refused.add(chosen)
                holders.append(chosen)
                held[chosen] = 1
                free[chosen] -= self.s.fragment_bytes
        except PlacementError:
            self.counters["puts_failed"] += 1
            return None
        for index, holder in enumerate(holders):
            self.disks[holder][(file_id, index)] = self.net.now
        layout = Layout(file_id, self.s.fragment_bytes * k, k, m, 1 << 20, tuple(bytes(HASH_BYTES) for _ in range(k + m)))
        self._write_manifest(node, Manifest(layout, tuple(holders), 1, node.node_id, self.net.now))
        self.files.append(file_id)
        self.counters["puts"] += 1
        self.note(f"{node.name} puts {file_id[:8]} on {' '.join(self._name(h) for h in holders)}")
        return file_id

    def _repair_pass(self, node: SimNode, state: _NodeDrive) -> None:
        disk = self.disks[node.node_id]
        decisions = state.decisions
        before = decisions.unrepairable
        plans = decisions.repairs(self._manifests(node).values(), alive=self._alive(node), now=self.net.now, missing_here=lambda file_id, index: (file_id, index) not in disk)
        self.counters["unrepairable"] += decisions.unrepairable - before
        for manifest, bad, mine in plans:
            self._rebuild(node, state, manifest, bad, mine)

    def _rebuild(self, node: SimNode, state: _NodeDrive, manifest: Manifest, bad: list[int], mine: set[int]) -> None:
        me, file_id = node.node_id, manifest.file_id
        sources = [i for i, holder in enumerate(manifest.holders) if i not in bad and self._reachable(node, holder) and (file_id, i) in self.disks[holder]]
        if len(sources) < manifest.layout.k:
            self.counters["repairs_short"] += 1
            return
        free = self._free(node)
        holding = Counter(holder for i, holder in enumerate(manifest.holders) if i not in bad)
        targets: dict[int, str] = {}
        for index in bad:
            if index in mine:
                targets[index] = me
                continue
            try:
                (chosen,) = place(1, {n: f for n, f in free.items() if self._reachable(node, n)}, self.s.fragment_bytes, holding=holding, allow_fewer=True)
            except PlacementError:
                self.counters["repairs_unplaced"] += 1
                return
            targets[index] = chosen
            holding[chosen] += 1
            free[chosen] -= self.s.fragment_bytes
        state.decisions.repairing.add(file_id)
        seconds = self.s.fragment_bytes * (manifest.layout.k + len(bad)) / self.s.rate

        def done() -> None:
            state.decisions.repairing.discard(file_id)
            if not node.attached or self.state.get(me) is not state or node.paused:  # that process is gone, or stopped
                self.counters["repairs_interrupted"] += 1
                return
            if any(not self._reachable(node, target) for target in targets.values()):
                self.counters["repairs_failed"] += 1  # an outlet went away: the next pass tries again
                return
            for index, target in targets.items():
                self.disks[target][(file_id, index)] = self.net.now
            current = self._manifests(node).get(file_id)
            if current is None:
                return  # removed meanwhile: what was written is an orphan now
            updated = rebuilt(current, targets)
            if updated is not current:
                self._write_manifest(node, updated)
            self.counters["repaired_fragments"] += len(targets)
            self.note(f"{node.name} rebuilt {file_id[:8]} " + " ".join(f"{i}->{self._name(t)}" for i, t in sorted(targets.items())))

        self.net.at(self.net.now + seconds, done)

    def _housekeeping(self, node: SimNode, state: _NodeDrive) -> None:
        if node.store is None:
            return
        me = node.node_id
        for (file_id, index), written in list(self.disks[me].items()):
            entry = node.store.entries.get(MANIFEST_PREFIX + file_id)
            removed = entry is not None and entry.deleted
            manifest = None if removed else _manifest_of(entry)
            why = self.decide_drop(state.decisions, manifest, file_id=file_id, removed=removed, index=index, age=self.net.now - written, synced=bool(node.syncs))
            if why is not None:
                del self.disks[me][(file_id, index)]
                self.counters["dropped"] += 1
                self.note(f"{node.name} drops {file_id[:8]}.{index}: {why}")

    def decide_drop(self, decisions: DriveDecisions, manifest: Manifest | None, **facts: Any) -> str | None:
        """The node's own decision (``DriveDecisions.drop``); a planted bug replaces it (sim/bugs.py)."""
        return decisions.drop(manifest, **facts)

    # -- the truth ----------------------------------------------------------------------------
    def newest(self, running: list[SimNode]) -> dict[str, Manifest]:
        """Each file's newest manifest among the running nodes' stores."""
        best: dict[str, Entry] = {}
        for node in running:
            assert node.store is not None
            for file_id in self.files:
                entry = node.store.entries.get(MANIFEST_PREFIX + file_id)
                if entry is not None and not entry.deleted and (file_id not in best or entry.rank() > best[file_id].rank()):
                    best[file_id] = entry
        out = {}
        for file_id, entry in best.items():
            manifest = _manifest_of(entry)
            if manifest is not None:
                out[file_id] = manifest
        return out

    def health(self, manifest: Manifest, up: set[str]) -> tuple[int, int]:
        """(holders up, fragments on the disks of holders up) for a manifest."""
        holders = sum(1 for holder in manifest.holders if holder in up)
        present = sum(1 for i, holder in enumerate(manifest.holders) if holder in up and (manifest.file_id, i) in self.disks.get(holder, {}))
        return holders, present

    def check(self, running: list[SimNode]) -> list[str]:
        """Files unreadable although k of their holders are up (a sample of availability too)."""
        up = {n.node_id for n in running if not n.paused}
        problems = []
        for file_id, manifest in self.newest(running).items():
            holders, present = self.health(manifest, up)
            self.samples += 1
            if present >= manifest.layout.k:
                self.readable_samples += 1
            elif holders >= manifest.layout.k:
                problems.append(f"{file_id[:8]} is unreadable: {holders} of its holders are up but only {present} hold their fragment")
        return problems

    def unhealthy(self, running: list[SimNode]) -> list[str]:
        """Files not at k + m fragments on distinct running holders."""
        up = {n.node_id for n in running if not n.paused}
        newest = self.newest(running)
        out = []
        for file_id in self.files:
            manifest = newest.get(file_id)
            if manifest is None:
                out.append(f"{file_id[:8]} has no manifest")
                continue
            holders, present = self.health(manifest, up)
            distinct = len(set(manifest.holders))
            if present < len(manifest.holders) or distinct < len(manifest.holders):
                out.append(f"{file_id[:8]} at {present}/{len(manifest.holders)} on {distinct} distinct holders")
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _alive(self, node: SimNode) -> set[str]:
        return {node.node_id} | {x for x, member in node.membership.members.items() if member.state is State.ALIVE}

    def _free(self, node: SimNode) -> dict[str, int]:
        """Free space of the nodes ``node`` holds alive (the daemon reads it from their
        gossiped status; here it is the truth)."""
        used = {n: len(d) * self.s.fragment_bytes for n, d in self.disks.items()}
        return {n: self.s.quota_bytes - used.get(n, 0) for n in self._alive(node)}

    def _reachable(self, node: SimNode, other: str) -> bool:
        """Whether ``node`` can open a link to ``other`` now: it runs, is not paused, and no
        partition lies between them."""
        peer = self.net._peer(other)
        if peer is None or peer.paused:
            return False
        return peer is node or frozenset((node.address, peer.address)) not in self.net.blocked

    def _manifests(self, node: SimNode) -> dict[str, Manifest]:
        assert node.store is not None
        out = {}
        for entry in node.store.items(MANIFEST_PREFIX):
            manifest = _manifest_of(entry)
            if manifest is not None:
                out[manifest.file_id] = manifest
        return out

    def _write_manifest(self, node: SimNode, manifest: Manifest) -> None:
        self.net.write(node, MANIFEST_PREFIX + manifest.file_id, json.dumps(manifest.to_json()).encode())

    def _name(self, node_id: str) -> str:
        return self.names.get(node_id, node_id[:6])


_PARSED: dict[bytes, Manifest | None] = {}


def _manifest_of(entry: Entry | None) -> Manifest | None:
    """The manifest in a store entry, as the service reads it (parsed once per distinct value:
    every node holds the same bytes)."""
    if entry is None or entry.deleted or entry.value is None:
        return None
    value = entry.value
    if value not in _PARSED:
        if len(_PARSED) > 100_000:
            _PARSED.clear()
        try:
            _PARSED[value] = Manifest.from_json(json.loads(value))
        except (ValueError, TypeError):
            _PARSED[value] = None
    return _PARSED[value]
