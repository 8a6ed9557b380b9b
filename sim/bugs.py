"""Bugs planted on purpose in test copies of the core, for the fuzzer to find.

Each is a subclass of the real protocol object with one behaviour broken, chosen
with ``python -m sim fuzz --plant NAME``. The real core is never touched.
"""

from __future__ import annotations

from lannode.core.membership import Membership


class IgnoresRefutation(Membership):
    """Never refutes a suspicion of itself: a node that was merely slow stays dead for
    everyone (SWIM's refutation, section 4.2, removed)."""

    def _refute(self, incarnation: int) -> None:
        return


PLANTED: dict[str, type[Membership]] = {
    "refutation": IgnoresRefutation,
}
