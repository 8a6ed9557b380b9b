"""The claims a node has yet to spread, each sent a limited number of times (memberlist's
TransmitLimitedQueue, sans-IO).

A claim is about one node (its presence, a suspicion, a death, a goodbye); a newer
claim about the same node replaces the one queued. Every datagram a node sends
carries as many queued claims as fit (piggybacking), news about the datagram's
destination first (Lifeguard's buddy system), then those sent least; a claim that
has gone out ``limit`` times leaves the queue. A node's own claims are also marked
``multicast``: they go out in gossip rounds to the whole group until they leave.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Broadcast:
    about: str  # node id; a newer claim about the same node replaces this one
    data: bytes  # one encoded message
    multicast: bool  # ours to spread: also multicast it every gossip interval
    transmits: int = 0


class BroadcastQueue:
    def __init__(self) -> None:
        self._queued: dict[str, Broadcast] = {}
        self.multicasts = 0  # of the queued, those of ours that also go out in gossip rounds

    def __len__(self) -> int:
        return len(self._queued)

    def queue(self, about: str, data: bytes, *, multicast: bool) -> None:
        """Queue a claim about node ``about``, in place of any queued about it."""
        old = self._queued.get(about)
        self.multicasts += multicast - (old is not None and old.multicast)
        self._queued[about] = Broadcast(about, data, multicast)

    def drop(self, about: str) -> None:
        """Forget what is queued about a node that is forgotten."""
        gone = self._queued.pop(about, None)
        self.multicasts -= gone is not None and gone.multicast

    def take(self, space: int, *, about: str | None, multicast_round: bool, limit: int) -> list[bytes]:
        """The claims to piggyback on a datagram with ``space`` bytes free, sent to node
        ``about`` (None: the group); those now sent ``limit`` times leave the queue."""
        chosen: list[bytes] = []
        order = sorted(self._queued.values(), key=lambda b: (b.about != about, not (multicast_round and b.multicast), b.transmits))
        for broadcast in order:
            if len(broadcast.data) > space:
                continue
            chosen.append(broadcast.data)
            space -= len(broadcast.data)
            broadcast.transmits += 1
            if broadcast.transmits >= limit:
                del self._queued[broadcast.about]
                self.multicasts -= broadcast.multicast
        return chosen
