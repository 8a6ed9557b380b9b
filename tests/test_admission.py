"""Who gets room in a full member table (lannode/core/admission.py)."""

from __future__ import annotations

from lannode.core.admission import Admission


def _admission(**overrides: float) -> Admission:
    settings = {"rate": 20.0, "burst": 256.0, "sources": 1024, **overrides}
    return Admission(rate=settings["rate"], burst=settings["burst"], sources=int(settings["sources"]))


def test_a_host_brings_its_burst_at_once_then_strangers_at_its_rate() -> None:
    admission = _admission(rate=10.0, burst=100.0)
    assert admission.allowed("127.0.0.9", 100, now=0.0)
    admission.spend("127.0.0.9", 100, now=0.0)
    assert not admission.allowed("127.0.0.9", 1, now=0.05)  # half a token so far
    assert admission.allowed("127.0.0.9", 10, now=1.0)
    assert admission.allowed("127.0.0.7", 100, now=1.0)  # another host has its own bucket


def test_buckets_are_kept_for_a_bounded_number_of_hosts_the_longest_silent_going_first() -> None:
    admission = _admission(sources=3)
    for i, host in enumerate(("a", "b", "c", "d")):
        admission.allowed(host, 1, now=float(i))
        admission.spend(host, 256, now=float(i))
    assert admission.sources == 3
    assert admission.allowed("a", 256, now=3.0)  # "a" was dropped: it starts afresh with a full bucket
    assert not admission.allowed("d", 256, now=3.0)


def test_the_victim_is_the_newest_newcomer_of_the_biggest_other_host() -> None:
    admission = _admission()
    admission.note(["f1", "f2", "f3"], "flooder")
    admission.note(["n1"], "neighbour")
    assert admission.victim("stranger-host", settled=lambda node_id: False) == "f3"
    assert admission.victim("flooder", settled=lambda node_id: False) is None  # a flood only displaces its own
    assert len(admission) == 4


def test_proven_and_settled_members_are_never_victims() -> None:
    admission = _admission()
    admission.note(["f1", "f2"], "flooder")
    admission.proven("f2")
    assert admission.victim("other", settled=lambda node_id: False) is None  # one left: no bigger than "other" would become
    admission.note(["f3", "f4"], "flooder")
    assert admission.victim("other", settled=lambda node_id: node_id == "f4") is None
    assert len(admission) == 0  # the newest had a long history, so all of that host's have


def test_a_member_noted_twice_keeps_the_source_that_brought_it_first() -> None:
    admission = _admission()
    admission.note(["x"], "first")
    admission.note(["x", "y"], "second")
    admission.forget("x")
    assert len(admission) == 1
    assert admission.victim("third", settled=lambda node_id: False) is None  # "second" has one; not bigger than 0 + 1
