"""A virtual LAN in virtual time for the sans-IO membership (``lannode.core.membership``).

Many ``Membership`` objects share one event queue: datagrams are delivered after
a small random latency, multicast reaches every other attached node, loss is a
per-delivery coin toss, and a partition drops everything between two groups.
Nothing here sleeps or opens a socket, so minutes of protocol run in seconds and
the same seed gives the same run. Tests and benchmarks drive the real protocol
objects through it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from lannode.core import messages as m
from lannode.core import wire
from lannode.core.membership import Event, Membership, MembershipConfig, State
from lannode.core.wire import MAX_DATAGRAM

Address = tuple[str, int]


MEMO_LIMIT = 500_000


class SimulatedSignatures:
    """A stand-in for Ed25519 while simulating: a signature is a keyed BLAKE2b of the
    message (64 bytes, like Ed25519's) under the signer's seed, which only the simulator
    holds. A node's signature checks, a forgery or a changed byte does not, exactly as
    with Ed25519, for about a hundredth of the cost, so an hour of 100 nodes runs in
    seconds. Installed at the core's one seam (``wire.sign``, ``wire.signature_ok``);
    keys the simulator did not make (a test's own) still get real Ed25519."""

    def __init__(self) -> None:
        self.seeds: dict[bytes, bytes] = {}
        self.real_sign = wire.sign
        self.real_ok = wire.signature_ok

    def register(self, key: SigningKey) -> None:
        self.seeds[bytes(key.verify_key)] = bytes(key)

    def sign(self, key: SigningKey, message: bytes) -> bytes:
        seed = bytes(key)
        if bytes(key.verify_key) not in self.seeds:
            return self.real_sign(key, message)
        return hashlib.blake2b(message, key=seed, digest_size=64).digest()

    def ok(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        seed = self.seeds.get(public_key)
        if seed is None:
            return self.real_ok(public_key, message, signature)
        return hmac.compare_digest(hashlib.blake2b(message, key=seed, digest_size=64).digest(), signature)


_SIMULATED: SimulatedSignatures | None = None


def simulated_signatures() -> SimulatedSignatures:
    """Install the stand-in (once per process) and return it."""
    global _SIMULATED
    if _SIMULATED is None:
        _SIMULATED = SimulatedSignatures()
        wire.sign = _SIMULATED.sign
        wire.signature_ok = _SIMULATED.ok
    return _SIMULATED


def share_decoded_payloads() -> None:
    """Decode each distinct payload once for the whole simulation and hand every receiver
    the same (immutable) messages: a multicast reaches 99 nodes as the same bytes, and
    ``decode_payload`` is a pure function of them. What each node does with the messages,
    replay windows and all, stays its own."""
    decode = m.decode_payload
    if getattr(decode, "shared", False):
        return
    memo: dict[bytes, tuple[m.Message, ...] | m.RemoteProtocolError] = {}

    def shared(payload: bytes) -> list[m.Message]:
        known = memo.get(payload)
        if known is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            try:
                known = memo[payload] = tuple(decode(payload))
            except m.RemoteProtocolError as exc:
                known = memo[payload] = exc
        if isinstance(known, m.RemoteProtocolError):
            raise known
        return list(known)

    shared.shared = True  # type: ignore[attr-defined]
    m.decode_payload = shared


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
class SimNode:
    key: SigningKey
    name: str
    address: Address
    membership: Membership
    events: list[tuple[float, Event]] = field(default_factory=list)
    attached: bool = True
    wake_token: int = 0  # only the newest scheduled wake-up runs
    wake_at: float = float("inf")

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
    ) -> None:
        self.signatures = None if real_crypto else simulated_signatures()
        share_decoded_payloads()
        if real_crypto:
            memoize_signatures()
        self.rng = random.Random(seed)
        self.loss = loss
        self.latency = latency
        self.network_key = network_key
        self.config = config or MembershipConfig()
        self.now = 0.0
        self.nodes: dict[Address, SimNode] = {}
        self.blocked: set[frozenset[Address]] = set()
        self.largest_datagram = 0
        self.on_send: Callable[[SimNode, bytes, Address | None], None] | None = None
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._ports = itertools.count(40000)
        self._epochs: dict[bytes, int] = {}

    # -- building the network ----------------------------------------------------------------
    def add(self, name: str, *, key: SigningKey | None = None, address: Address | None = None) -> SimNode:
        key = key or SigningKey(self.rng.randbytes(32))
        if self.signatures is not None:
            self.signatures.register(key)
        address = address or ("127.0.0.1", next(self._ports))  # in-memory only: never a socket
        epoch = self._epochs.get(bytes(key), 0) + 1  # one more boot of this key, as Home.next_epoch does
        self._epochs[bytes(key)] = epoch
        membership = Membership(
            key,
            epoch=epoch,
            name=name,
            address=address,
            network_key=self.network_key,
            config=self.config,
            rng=random.Random(self.rng.random()),
        )
        node = SimNode(key, name, address, membership)
        self.nodes[address] = node
        membership.start(self.now)
        self._wake(node)
        return node

    def kill(self, node: SimNode) -> None:
        """kill -9: it stops answering and sends nothing more."""
        node.attached = False
        self.nodes.pop(node.address, None)

    def stop(self, node: SimNode) -> None:
        """A clean stop: it says goodbye, then goes."""
        node.membership.leave(self.now)
        self._flush(node)
        self.kill(node)

    def restart(self, node: SimNode) -> SimNode:
        if node.attached:
            self.kill(node)
        return self.add(node.name, key=node.key, address=node.address)

    def partition(self, group_a: Iterable[SimNode], group_b: Iterable[SimNode]) -> None:
        for a in group_a:
            for b in group_b:
                self.blocked.add(frozenset((a.address, b.address)))

    def heal(self) -> None:
        self.blocked.clear()

    # -- running -----------------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, deadline: float, until: Callable[[], bool] | None = None) -> bool:
        """Run events up to ``deadline``; stop early (True) once ``until()`` holds."""
        while self._queue and self._queue[0][0] <= deadline:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
            if until is not None and until():
                return True
        self.now = max(self.now, deadline)
        return until() if until is not None else False

    def live(self) -> list[SimNode]:
        return list(self.nodes.values())

    def all_see(self, nodes: list[SimNode], state: State, targets: list[SimNode] | None = None) -> bool:
        targets = nodes if targets is None else targets
        return all(a.state_of(b) is state for a in nodes for b in targets if a is not b)

    # -- plumbing ----------------------------------------------------------------------------
    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def _wake(self, node: SimNode) -> None:
        if not node.attached:
            return
        node.membership.tick(self.now)
        self._flush(node)
        node.wake_at = float("inf")
        self._schedule_wake(node)

    def _schedule_wake(self, node: SimNode) -> None:
        """Wake the node when it next has something to do: sooner than planned if a datagram
        brought a deadline closer; a later plan replaces an earlier one by its token."""
        wakeup = node.membership.next_wakeup()
        if wakeup >= node.wake_at:
            return
        node.wake_token += 1
        node.wake_at = wakeup
        token = node.wake_token
        self._at(max(wakeup, self.now + 1e-4), lambda: self._wake(node) if node.wake_token == token else None)

    def _flush(self, node: SimNode) -> None:
        for event in node.membership.take_events():
            node.events.append((self.now, event))
        for out in node.membership.take_outgoing():
            self.largest_datagram = max(self.largest_datagram, len(out.data))
            assert len(out.data) <= MAX_DATAGRAM, f"{len(out.data)}-byte datagram"
            if self.on_send is not None:
                self.on_send(node, out.data, out.address)
            if out.address is None:
                targets = [n for n in self.nodes.values() if n is not node]
            else:
                target = self.nodes.get(out.address)
                targets = [target] if target is not None else []
            for target in targets:
                if self.rng.random() < self.loss:
                    continue
                if frozenset((node.address, target.address)) in self.blocked:
                    continue
                delay = self.rng.uniform(*self.latency)
                self._at(self.now + delay, self._deliver_action(target, out.data, node.address))

    def _deliver_action(self, target: SimNode, data: bytes, source: Address) -> Callable[[], None]:
        def deliver() -> None:
            if not target.attached:
                return
            target.membership.datagram_received(data, source, self.now)
            self._flush(target)  # its answers go now; its timers keep their own wake-up
            self._schedule_wake(target)

        return deliver
