"""Bugs planted on purpose in test copies of the core, for the fuzzer to find.

Each is a subclass of the real protocol object with one behaviour broken, chosen
with ``python -m sim fuzz --plant NAME``. The real core is never touched.
"""

from __future__ import annotations

from lannode.core.drive import Manifest
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

    def decide_drop(self, manifest: Manifest | None, **facts: object) -> str | None:
        age, grace = facts["age"], facts["orphan_grace"]
        assert isinstance(age, float) and isinstance(grace, float)
        return "old" if age >= grace and not facts["busy"] else None


PLANTED: dict[str, type[Membership]] = {
    "refutation": IgnoresRefutation,
}
PLANTED_DRIVE: dict[str, type[DriveWorld]] = {
    "orphans": DropsWhatItHolds,
}
