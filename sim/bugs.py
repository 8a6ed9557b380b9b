"""Bugs planted on purpose in test copies of the core, for the fuzzer to find.

Each is a subclass of the real protocol object with one behaviour broken, chosen
with ``python -m sim fuzz --plant NAME``. The real core is never touched.
"""

from __future__ import annotations

from typing import Any

from lannode.core.drive import DriveDecisions, Manifest
from lannode.core.membership import Membership
from sim.drivesim import DriveWorld


class IgnoresRefutation(Membership):
    """Never refutes a suspicion of itself: a node that was merely slow stays dead for
    everyone (SWIM's refutation, section 4.2, removed)."""

    def _refute(self, incarnation: int) -> None:
        return


class DropsWhatItHolds(DriveWorld):
    """Orphan collection that forgets to ask whether the manifest names the fragment here:
    every fragment older than the orphan grace goes, and files die with k holders up."""

    def decide_drop(self, decisions: DriveDecisions, manifest: Manifest | None, **facts: Any) -> str | None:
        busy = facts["file_id"] in decisions.repairing or not facts["synced"]
        return "old" if facts["age"] >= decisions.orphan_grace and not busy else None


PLANTED: dict[str, type[Membership]] = {
    "refutation": IgnoresRefutation,
}
PLANTED_DRIVE: dict[str, type[DriveWorld]] = {
    "orphans": DropsWhatItHolds,
}
