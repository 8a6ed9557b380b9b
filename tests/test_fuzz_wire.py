"""The wire fuzzer (``python -m sim fuzz-wire``) on a short budget: the core's parsers and
protocol objects take structure-aware hostile input with no exception escaping and their
invariants intact; and the fuzzer finds a bug when one is planted."""

from __future__ import annotations

import pytest

from lannode.core.membership import Membership
from lannode.core.store import ReplicatedMap
from sim import fuzz_wire


def test_twenty_thousand_hostile_inputs_leave_the_core_standing() -> None:
    result = fuzz_wire.run(20_000, seed=2026)
    assert result.inputs == 20_000 and set(result.per_target) == set(fuzz_wire.TARGETS)
    assert result.failures == [], result.failures[0].error


def test_the_fuzzer_finds_a_claim_taken_above_what_its_subject_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Membership, "_plausible", lambda self, subject, incarnation: True)
    result = fuzz_wire.run(2_000, seed=2026)
    assert any("above the" in f.error for f in result.failures)


def test_the_fuzzer_finds_a_store_clock_dragged_into_the_future(monkeypatch: pytest.MonkeyPatch) -> None:
    merge = ReplicatedMap.merge
    monkeypatch.setattr(ReplicatedMap, "merge", lambda self, entry, verified=False, now_ms=None: merge(self, entry, verified=verified))
    result = fuzz_wire.run(2_000, seed=2026)
    assert any("ms ahead" in f.error for f in result.failures)


def test_a_failure_replays_from_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Membership, "_plausible", lambda self, subject, incarnation: True)
    first = fuzz_wire.run(2_000, seed=2026)
    batch = first.failures[-1].index - first.failures[-1].index % fuzz_wire.BATCH
    again = fuzz_wire.run(fuzz_wire.BATCH, seed=2026, start=batch)
    assert [f.index for f in first.failures if f.index >= batch] == [f.index for f in again.failures]
