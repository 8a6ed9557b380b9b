"""Who gets room in a full member table: admission per source host, and eviction order.

Anyone on the network can make throwaway keys and gossip a presence for each. The
member table has a fixed size (``MembershipConfig.max_members``), so strangers are
let in per host that brings them, and a full table gives room only at the expense
of members that have shown nothing yet:

* Each host may bring ``rate`` strangers a second (a token bucket of ``burst``), so
  a flood of keys from one machine fills the table slowly.
* A stranger stays an *unproven newcomer* of the host that brought it until it
  answers one of our probes or proves its key over a link (``proven``). Members
  that proved themselves or have a long history (``settled_after``) are never
  evicted.
* In a full table a stranger takes the place of, in this order: the member dead or
  gone longest (the caller's choice: it holds the states); else the newest unproven
  newcomer of the host that brought the most, if that host is not the stranger's
  own (``victim``). A flood from one host only ever displaces its own.

Sans-IO like the rest of core: the caller gives the time and owns the members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Admission:
    def __init__(self, *, rate: float, burst: float, sources: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = sources  # hosts whose buckets are kept; past that the one heard from longest ago starts afresh
        self._buckets: dict[str, tuple[float, float]] = {}  # per source host: (tokens, when)
        self._newcomers: dict[str, dict[str, None]] = {}  # per source host: its unproven newcomers, oldest first
        self._source: dict[str, str] = {}  # unproven newcomer -> the host that brought it

    def __len__(self) -> int:
        """How many unproven newcomers there are."""
        return len(self._source)

    @property
    def sources(self) -> int:
        """How many hosts' buckets are kept."""
        return len(self._buckets)

    def allowed(self, source: str, count: int, now: float) -> bool:
        """Whether host ``source`` may bring ``count`` strangers now (nothing is spent yet:
        ``spend`` once there is room for them)."""
        buckets = self._buckets
        tokens, then = buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if len(buckets) >= self.max_sources:
            del buckets[next(iter(buckets))]
        buckets[source] = (tokens, now)
        return tokens >= count

    def spend(self, source: str, count: int, now: float) -> None:
        tokens, _ = self._buckets.get(source, (self.burst, now))
        self._buckets[source] = (max(0.0, tokens - count), now)

    def note(self, node_ids: Iterable[str], source: str) -> None:
        """``node_ids`` joined the table on the word of ``source`` (a host, or a member's
        view): unproven newcomers of it until ``proven``. One already noted keeps its source."""
        unproven = self._newcomers.setdefault(source, {})
        for node_id in node_ids:
            if node_id not in self._source:
                self._source[node_id] = source
                unproven[node_id] = None
        if not unproven:
            del self._newcomers[source]

    def proven(self, node_id: str) -> None:
        """``node_id`` showed it holds its key, or left the table: never a victim from now on."""
        source = self._source.pop(node_id, None)
        if source is None:
            return
        unproven = self._newcomers[source]
        del unproven[node_id]
        if not unproven:
            del self._newcomers[source]

    forget = proven  # a member leaving the table is no longer anyone's newcomer either

    def victim(self, source: str, settled: Callable[[str], bool]) -> str | None:
        """The newcomer to evict for a stranger from ``source``, or None: the newest
        unproven newcomer of the host that brought the most of them, if that host is
        bigger than ``source`` would become. ``settled(node_id)`` says whether a member
        has a long history; a host whose newest newcomer has one has no victims at all."""
        newcomers = self._newcomers
        while newcomers:
            host = max(newcomers, key=lambda h: len(newcomers[h]))
            if host == source or len(newcomers[host]) <= len(newcomers.get(source, ())) + 1:
                return None
            node_id = next(reversed(newcomers[host]))
            if settled(node_id):
                for settled_id in newcomers.pop(host):
                    del self._source[settled_id]
                continue
            return node_id
        return None
