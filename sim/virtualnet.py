"""A virtual LAN in virtual time for the sans-IO core: membership and the replicated store.

Many nodes share one event queue, each a ``Membership`` (``lannode.core.membership``)
and, when asked, a ``ReplicatedMap`` (``lannode.core.store``): the very objects the
daemon runs. The segment carries datagrams with a ``LinkModel``: latency, loss,
duplication and reordering, for every pair or one pair; a multicast is one frame
that reaches every other node at the same moment (each may lose it, or get a
late or second copy); a partition drops everything between two groups. Nodes crash
(``kill``), stop cleanly, restart (same key and store, the next boot epoch) and
pause (a stopped process: deaf and idle, then late). The store's anti-entropy runs
as the daemon's does, with a random live peer every ``sync_interval``, over a
reliable link (TCP) that a partition cuts.

Nothing here sleeps or opens a socket, and every choice comes from one seeded
``random.Random``, so the same seed replays the same run bit for bit.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from lannode.core import messages as m
from lannode.core import wire
from lannode.core.membership import (
    Event,
    GroupView,
    Membership,
    MembershipConfig,
    State,
    StateSyncWanted,
    StoreEntryReceived,
)
from lannode.core.store import ReplicatedMap
from lannode.core.wire import MAX_DATAGRAM

Address = tuple[str, int]


# A memo needs to outlive one multicast's deliveries, no more: a small one stays in the
# CPU's caches (at 500,000 entries, the misses cost the hour of 100 nodes a sixth of its time).
MEMO_LIMIT = 1024


class SimulatedSignatures:
    """A stand-in for Ed25519 while simulating: a signature is the BLAKE2b-512 of the
    signer's seed, which only the simulator holds, and the message (64 bytes, like
    Ed25519's; BLAKE2 has no length extension, so a prefix key makes a MAC). A node's
    signature checks, a forgery or a changed byte does not, exactly as with Ed25519, for
    about a hundredth of the cost, so an hour of 100 nodes runs in seconds. Installed at
    the core's one seam (``wire.sign``, ``wire.signature_ok``);
    keys the simulator did not make (a test's own) still get real Ed25519."""

    def __init__(self) -> None:
        self.seeds: dict[bytes, bytes] = {}
        self._keys: dict[int, tuple[SigningKey, bytes, bytes]] = {}  # id(key) -> (key, seed, public key): bytes(key) is a Python call
        self._good: dict[bytes, tuple[bytes, bytes]] = {}  # signature -> the public key and message it was made for
        self.real_sign = wire.sign
        self.real_ok = wire.signature_ok

    def register(self, key: SigningKey) -> None:
        self.seeds[bytes(key.verify_key)] = bytes(key)

    def sign(self, key: SigningKey, message: bytes) -> bytes:
        known = self._keys.get(id(key))
        if known is None or known[0] is not key:
            if bytes(key.verify_key) not in self.seeds:
                return self.real_sign(key, message)
            known = self._keys[id(key)] = (key, bytes(key), bytes(key.verify_key))  # holding the key keeps its id its own
        signature = hashlib.blake2b(known[1] + message).digest()
        self._remember(signature, known[2], message)
        return signature

    def ok(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        good = self._good.get(signature)
        if good is not None and good[0] == public_key and good[1] == message:
            return True  # made here for this very message (or checked already: a multicast reaches many)
        seed = self.seeds.get(public_key)
        if seed is None:
            return self.real_ok(public_key, message, signature)
        if not hmac.compare_digest(hashlib.blake2b(seed + message).digest(), signature):
            return False
        self._remember(signature, public_key, message)
        return True

    def _remember(self, signature: bytes, public_key: bytes, message: bytes) -> None:
        if len(self._good) >= MEMO_LIMIT:
            self._good.clear()
        self._good[signature] = (public_key, message)


_SIMULATED: SimulatedSignatures | None = None


def simulated_signatures() -> SimulatedSignatures:
    """Install the stand-in (once per process) and return it."""
    global _SIMULATED
    if _SIMULATED is None:
        _SIMULATED = SimulatedSignatures()
        wire.sign = _SIMULATED.sign
        wire.signature_ok = _SIMULATED.ok
    return _SIMULATED


def share_decoded_payloads() -> Callable[[bytes, bytes | None], None]:
    """Open each multicast datagram and decode its payload once for the whole simulation,
    handing every receiver the same (immutable) result: a multicast reaches 99 nodes as the
    same bytes, and ``wire.open_datagram`` and ``decode_payload`` are pure functions of them.
    What each node does with them, replay windows and all, stays its own. Returns the
    function the network calls on each multicast before delivering it (a unicast is
    opened by its one receiver, as it would be anyway)."""
    decode = m.decode_payload
    prime = getattr(decode, "prime", None)
    if prime is not None:
        return prime  # type: ignore[no-any-return]
    open_datagram = wire.open_datagram
    opened: dict[tuple[bytes, bytes | None], wire.Opened | wire.Dropped] = {}
    memo: dict[bytes, tuple[m.Message, ...] | m.RemoteProtocolError] = {}

    def open_shared(data: bytes, network_key: bytes | None) -> wire.Opened:
        known = opened.get((data, network_key))
        if known is None:
            return open_datagram(data, network_key)
        if isinstance(known, wire.Dropped):
            raise known
        return known

    def shared(payload: bytes) -> list[m.Message]:
        known = memo.get(payload)
        if known is None:
            return decode(payload)
        if isinstance(known, m.RemoteProtocolError):
            raise known
        return list(known)

    def prime_one(data: bytes, network_key: bytes | None) -> None:
        key = (data, network_key)
        if key in opened:
            return
        if len(opened) >= MEMO_LIMIT:
            opened.clear()
            memo.clear()
        try:
            result = opened[key] = open_datagram(data, network_key)
        except wire.Dropped as exc:
            opened[key] = exc
            return
        try:
            memo[result.payload] = tuple(decode(result.payload))
        except m.RemoteProtocolError as exc:
            memo[result.payload] = exc

    shared.prime = prime_one  # type: ignore[attr-defined]
    wire.open_datagram = open_shared
    m.decode_payload = shared
    return prime_one


def memoize_signatures() -> None:
    """With real Ed25519: check each distinct (key, message, signature) once for the whole
    simulation. A multicast datagram reaches every node as the same bytes, and the check
    is a pure function of them. The daemon never does this (it sees each datagram once)."""
    check = wire.signature_ok
    if getattr(check, "memoized", False):
        return
    memo: dict[tuple[bytes, bytes, bytes], bool] = {}

    def memoized(public_key: bytes, message: bytes, signature: bytes) -> bool:
        key = (public_key, message, signature)
        known = memo.get(key)
        if known is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            known = memo[key] = check(public_key, message, signature)
        return known

    memoized.memoized = True  # type: ignore[attr-defined]
    wire.signature_ok = memoized


@dataclass
class LinkModel:
    """What the segment does to each datagram between two nodes."""

    loss: float = 0.0  # chance it is lost
    latency: tuple[float, float] = (0.0002, 0.002)  # uniform, seconds
    duplicate: float = 0.0  # chance it arrives twice
    reorder: float = 0.0  # chance it is held back, so later ones overtake it
    reorder_delay: float = 0.02  # how long a held-back datagram waits, at most


@dataclass
class SimNode:
    key: SigningKey
    name: str
    address: Address
    membership: Membership
    store: ReplicatedMap | None = None
    events: list[tuple[float, Event]] = field(default_factory=list)
    attached: bool = True
    paused: bool = False
    wake_token: int = 0  # only the newest scheduled wake-up runs
    wake_at: float = float("inf")
    sync_token: int = 0
    syncs: int = 0  # anti-entropy rounds its store completed since it started

    @property
    def node_id(self) -> str:
        return self.membership.node_id

    def state_of(self, other: "SimNode") -> State | None:
        member = self.membership.members.get(other.node_id)
        return member.state if member else None


class VirtualNetwork:
    def __init__(
        self,
        *,
        seed: int = 1,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0002, 0.002),
        network_key: bytes | None = None,
        config: MembershipConfig | None = None,
        real_crypto: bool = False,
        link: LinkModel | None = None,
        store: bool = False,
        sync_interval: float = 2.0,
        membership_class: type[Membership] = Membership,
    ) -> None:
        self.signatures = None if real_crypto else simulated_signatures()
        self._prime = share_decoded_payloads()
        if real_crypto:
            memoize_signatures()
        self.rng = random.Random(seed)
        self.link = link or LinkModel(loss=loss, latency=latency)
        self.link_overrides: dict[frozenset[Address], LinkModel] = {}
        self.network_key = network_key
        self.config = config or MembershipConfig()
        self.with_store = store
        self.sync_interval = sync_interval
        self.membership_class = membership_class
        self.now = 0.0
        self.nodes: dict[Address, SimNode] = {}
        self.blocked: set[frozenset[Address]] = set()
        self.largest_datagram = 0
        self.dropped_while_paused = 0
        self.on_event: Callable[[SimNode, Event], None] | None = None
        self._queue: list[tuple[float, int, Callable[..., None], tuple[object, ...]]] = []
        self._order = itertools.count()
        self._ports = itertools.count(40000)
        self._epochs: dict[bytes, int] = {}
        self._by_id: dict[str, SimNode] = {}
        self._stores: dict[bytes, ReplicatedMap] = {}  # a node's store outlives its process, as its SQLite does

    # the segment's loss everywhere; per pair: link_overrides
    @property
    def loss(self) -> float:
        return self.link.loss

    @loss.setter
    def loss(self, value: float) -> None:
        self.link.loss = value

    # -- building the network ----------------------------------------------------------------
    def add(self, name: str, *, key: SigningKey | None = None, address: Address | None = None, start: bool = True) -> SimNode:
        key = key or SigningKey(self.rng.randbytes(32))
        if self.signatures is not None:
            self.signatures.register(key)
        address = address or ("127.0.0.1", next(self._ports))  # in-memory only: never a socket
        epoch = self._epochs.get(bytes(key), 0) + 1  # one more boot of this key, as Home.next_epoch does
        self._epochs[bytes(key)] = epoch
        membership = self.membership_class(
            key,
            epoch=epoch,
            name=name,
            address=address,
            network_key=self.network_key,
            config=self.config,
            rng=random.Random(self.rng.random()),
        )
        store = None
        if self.with_store:
            store = self._stores.get(bytes(key))
            if store is None:
                store = self._stores[bytes(key)] = ReplicatedMap(key)
        node = SimNode(key, name, address, membership, store)
        self.nodes[address] = node
        self._by_id[node.node_id] = node
        if start:
            self._start(node, self.now)
        return node

    def add_warm(self, names: Iterable[str]) -> list[SimNode]:
        """Many nodes that already know each other (``Membership.warm_start``), as if the
        group had been running a while: a 10,000-node run starts converged rather than
        spend its first minutes joining, and the nodes share one view of the group (each
        copies a member before changing it). Each node's timers start at a random phase."""
        nodes = [self.add(name, start=False) for name in names]
        view = GroupView.of((n.membership.presence for n in nodes), self.now, self.rng)
        for node in nodes:
            node.membership.warm_start(view)
            self._start(node, self.now - self.config.probe_interval * self.rng.random())
        return nodes

    def _start(self, node: SimNode, at: float) -> None:
        node.membership.start(at)
        self._wake(node)
        if node.store is not None:
            self._schedule_sync(node)

    def kill(self, node: SimNode) -> None:
        """kill -9: it stops answering and sends nothing more."""
        node.attached = False
        self.nodes.pop(node.address, None)
        if self._by_id.get(node.node_id) is node:
            del self._by_id[node.node_id]

    def stop(self, node: SimNode) -> None:
        """A clean stop: it says goodbye, then goes."""
        node.membership.leave(self.now)
        self._flush(node)
        self.kill(node)

    def restart(self, node: SimNode) -> SimNode:
        if node.attached:
            self.kill(node)
        return self.add(node.name, key=node.key, address=node.address)

    def pause(self, node: SimNode) -> None:
        """SIGSTOP (a long GC pause, a laptop lid): deaf and idle; what arrives is lost."""
        node.paused = True

    def resume(self, node: SimNode) -> None:
        """SIGCONT: its timers fire late, all at once."""
        if node.paused:
            node.paused = False
            self._wake(node)

    def partition(self, group_a: Iterable[SimNode], group_b: Iterable[SimNode]) -> None:
        for a in group_a:
            for b in group_b:
                self.blocked.add(frozenset((a.address, b.address)))

    def heal(self) -> None:
        self.blocked.clear()

    def write(self, node: SimNode, key: str, value: bytes) -> None:
        """A store write at ``node``, spread as the daemon spreads it: on gossip, and by anti-entropy."""
        assert node.store is not None, "VirtualNetwork(store=True)"
        entry = node.store.put(key, value, self.now_ms)
        node.store.take_changes()
        node.membership.broadcast(f"store:{key}", m.StoreEntry(entry.encode()))
        self._flush(node)
        self._schedule_wake(node)

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)

    # -- running -----------------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, deadline: float, until: Callable[[], bool] | None = None) -> bool:
        """Run events up to ``deadline``; stop early (True) once ``until()`` holds."""
        queue, pop = self._queue, heapq.heappop
        while queue and queue[0][0] <= deadline:
            when, _, action, args = pop(queue)
            self.now = when
            action(*args)
            if until is not None and until():
                return True
        self.now = max(self.now, deadline)
        return until() if until is not None else False

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at simulated time ``when`` (a fault, a write, a check)."""
        self._at(max(when, self.now), action)

    def live(self) -> list[SimNode]:
        return list(self.nodes.values())

    def all_see(self, nodes: list[SimNode], state: State, targets: list[SimNode] | None = None) -> bool:
        targets = nodes if targets is None else targets
        return all(a.state_of(b) is state for a in nodes for b in targets if a is not b)

    # -- plumbing ----------------------------------------------------------------------------
    def _at(self, when: float, action: Callable[..., None], *args: object) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action, args))

    def _wake(self, node: SimNode) -> None:
        if not node.attached or node.paused:
            return
        membership = node.membership
        wakeup = membership.next_wakeup()
        if wakeup <= self.now:  # else a planned wake-up that came to nothing (an ack came in time)
            membership.tick(self.now)
            wakeup = membership.next_wakeup()
        if membership.has_output():
            self._flush(node)
        node.wake_at = math.inf
        self._schedule_wake(node, wakeup)

    def _schedule_wake(self, node: SimNode, wakeup: float | None = None) -> None:
        """Wake the node when it next has something to do: sooner than planned if a datagram
        brought a deadline closer; a later plan replaces an earlier one by its token."""
        wakeup = node.membership.next_wakeup() if wakeup is None else wakeup
        if wakeup >= node.wake_at:
            return
        node.wake_token += 1
        node.wake_at = wakeup
        self._at(max(wakeup, self.now + 1e-4), self._wake_if, node, node.wake_token)

    def _wake_if(self, node: SimNode, token: int) -> None:
        if node.wake_token == token:  # else a newer plan replaced this one
            self._wake(node)

    def _flush(self, node: SimNode) -> None:
        for event in node.membership.take_events():
            node.events.append((self.now, event))
            if isinstance(event, StoreEntryReceived) and node.store is not None:
                self._merge(node, event.data)
            elif isinstance(event, StateSyncWanted):
                self._push_pull(node, event.node_id)
            if self.on_event is not None:
                self.on_event(node, event)
        outgoing = node.membership.take_outgoing()
        if not outgoing:
            return
        for data, address in outgoing:
            size = len(data)
            if size > self.largest_datagram:
                self.largest_datagram = size
                assert size <= MAX_DATAGRAM, f"{size}-byte datagram"
            if address is None:
                self._multicast(node, data)
            else:
                target = self.nodes.get(address)
                if target is not None:
                    self._unicast(node, target, data)

    def _unicast(self, node: SimNode, target: SimNode, data: bytes) -> None:
        rng, link = self.rng, self.link
        if not (self.blocked or self.link_overrides or link.duplicate or link.reorder):  # the plain case: the same draws
            if link.loss and rng.random() < link.loss:
                return
            low, high = link.latency
            self._at(self.now + (low + (high - low) * rng.random()), self._deliver, (target,), data, node.address)
            return
        if self.blocked or self.link_overrides:
            pair = frozenset((node.address, target.address))
            if pair in self.blocked:
                return
            link = self.link_overrides.get(pair, link)
        if link.loss and rng.random() < link.loss:
            return
        copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
        low, high = link.latency
        for _ in range(copies):
            delay = low + (high - low) * rng.random()
            if link.reorder and rng.random() < link.reorder:
                delay += link.reorder_delay * rng.random()
            self._at(self.now + delay, self._deliver, (target,), data, node.address)

    def _multicast(self, node: SimNode, data: bytes) -> None:
        """One frame on the segment: every receiver that does not lose it gets it at the same
        moment (one event, however many receivers); duplicated or held-back copies arrive later."""
        rng, blocked, overrides, link = self.rng, self.blocked, self.link_overrides, self.link
        source = node.address
        self._prime(data, self.network_key)
        low, high = link.latency
        arrive = self.now + low + (high - low) * rng.random()
        together: list[SimNode] = []
        if not (blocked or overrides):  # the whole segment alike: the same draws, fewer lookups
            loss, reorder, duplicate, random_ = link.loss, link.reorder, link.duplicate, rng.random
            for target in self.nodes.values():
                if target is node or (loss and random_() < loss):
                    continue
                if reorder and random_() < reorder:
                    delay = low + (high - low) * random_() + link.reorder_delay * random_()
                    self._at(self.now + delay, self._deliver, (target,), data, source)
                else:
                    together.append(target)
                if duplicate and random_() < duplicate:
                    self._at(arrive + link.reorder_delay * random_(), self._deliver, (target,), data, source)
            if together:
                self._at(arrive, self._deliver, together, data, source)
            return
        for target in self.nodes.values():
            if target is node:
                continue
            own = link
            if blocked or overrides:
                pair = frozenset((source, target.address))
                if pair in blocked:
                    continue
                own = overrides.get(pair, link)
            if own.loss and rng.random() < own.loss:
                continue
            late = own is not link or (own.reorder and rng.random() < own.reorder)
            if late:
                delay = own.latency[0] + (own.latency[1] - own.latency[0]) * rng.random() + own.reorder_delay * rng.random()
                self._at(self.now + delay, self._deliver, (target,), data, source)
            else:
                together.append(target)
            if own.duplicate and rng.random() < own.duplicate:
                self._at(arrive + own.reorder_delay * rng.random(), self._deliver, (target,), data, source)
        if together:
            self._at(arrive, self._deliver, together, data, source)

    def _deliver(self, targets: Iterable[SimNode], data: bytes, source: Address) -> None:
        """A datagram reaches each of ``targets`` (one for a unicast, all that got a multicast)."""
        now = self.now
        for target in targets:
            if not target.attached:
                continue
            if target.paused:
                self.dropped_while_paused += 1
                continue
            membership = target.membership
            membership.datagram_received(data, source, now)
            if membership.has_output():
                self._flush(target)  # its answers go now; its timers keep their own wake-up
            wakeup = membership.next_wakeup()
            if wakeup < target.wake_at:
                self._schedule_wake(target, wakeup)

    # -- over links --------------------------------------------------------------------------
    def _peer(self, node_id: str) -> SimNode | None:
        peer = self._by_id.get(node_id)
        return peer if peer is not None and peer.attached else None

    def _push_pull(self, node: SimNode, node_id: str) -> None:
        """A membership view exchange over the link (TCP), as lannode/peers/service.py runs it: our
        view goes over, theirs comes back, each a round trip later; a partition, a crash or
        a pause on either side loses it (the protocol retries on its own)."""
        peer = self._peer(node_id)
        if peer is None or peer is node or frozenset((node.address, peer.address)) in self.blocked:
            return
        low, high = self.link.latency

        def deliver(source: SimNode, target: SimNode, data: bytes, reply: bool) -> None:
            if not (source.attached and target.attached) or target.paused or frozenset((source.address, target.address)) in self.blocked:
                return
            taken = target.membership.merge_state(data, source.node_id, self.now)
            if taken and reply:
                back = target.membership.state()
                self._at(self.now + self.rng.uniform(low, high), deliver, target, source, back, False)
            self._flush(target)
            self._schedule_wake(target)

        self._at(self.now + self.rng.uniform(low, high), deliver, node, peer, node.membership.state(), True)

    # -- the store's anti-entropy ------------------------------------------------------------
    def _merge(self, node: SimNode, data: bytes) -> None:
        assert node.store is not None
        node.store.merge_gossiped(data)
        node.store.take_changes()

    def _schedule_sync(self, node: SimNode) -> None:
        node.sync_token += 1
        self._at(self.now + self.sync_interval * self.rng.uniform(0.75, 1.25), self._sync_if, node, node.sync_token)

    def _sync_if(self, node: SimNode, token: int) -> None:
        if node.sync_token == token:
            self._sync(node)

    def _sync(self, node: SimNode) -> None:
        """One Scuttlebutt round with a random live peer, as lannode/store.py runs it: our
        digest goes over, their delta comes back, and the same the other way."""
        if not node.attached:
            return
        self._schedule_sync(node)
        if node.paused:
            return
        candidates = node.membership.alive_members()
        if not candidates:
            return
        chosen = self.rng.choice(candidates)
        peer = self._peer(chosen.node_id)
        if peer is None or peer.store is None or frozenset((node.address, peer.address)) in self.blocked:
            return  # no connection: the link cannot be made
        assert node.store is not None
        rtt = 2 * self.rng.uniform(*self.link.latency)
        mine, theirs = node.store.digest(), peer.store.digest()

        def exchange() -> None:
            for a, b, digest in ((peer, node, mine), (node, peer, theirs)):
                if not (a.attached and b.attached) or a.paused or b.paused or a.store is None or b.store is None:
                    continue
                entries = a.store.delta_for(digest)
                b.store.apply_delta(a.store.watermarks or {a.store.origin: 0}, entries)  # read, not kept: no copy
                b.store.take_changes()
                b.syncs += 1

        self._at(self.now + rtt, exchange)
