"""Who is on the network and who is alive: SWIM with Lifeguard, sans-IO.

The object is fed received datagrams and ticks, with the time as an argument,
and hands back datagrams to send and events; it never touches a socket or reads
a clock, so the trio service (``lannode.net.gossip``) and the simulator in
``sim/`` drive the very same code. Datagrams go either to one node's unicast
address or to the multicast group (``Outgoing.address is None``).

How it works:

* **Discovery.** A starting node multicasts ``Hello`` with its signed presence
  a few times in its first second (``join_schedule``, so 10% loss still lets
  every node see it quickly); every node that hears it answers with its own
  presence by unicast. Each node multicasts its presence every
  ``presence_interval`` too (longer in a big group: the group's presence multicast
  stays within ``presence_budget``, as RTCP's reports do), which finds nodes again
  after a partition.
* **Failure detection (SWIM).** Every ``probe_interval`` a node pings one member
  (round robin over a shuffled list, suspects first). No ack within
  ``probe_timeout``: it asks ``indirect_checks`` others to ping the target for
  it. Still nothing by the end of the interval: it suspects the target and
  multicasts the suspicion. Others that hear it probe the suspect next; their
  failures are independent confirmations. A suspect that hears of its
  suspicion refutes it with a higher incarnation; a suspicion that outlives its
  timeout becomes dead. A node that stops cleanly multicasts a signed ``Left``.
* **Lifeguard.** Local health (0..``max_health``) grows when our own probes
  fail without the helpers' nacks, or when we must refute a suspicion of
  ourselves, and shrinks with each successful probe; probe interval and timeout
  scale by ``health + 1``, so a slow node stops accusing healthy ones. The
  suspicion timeout starts at ``suspicion_max_mult`` times the minimum
  (``suspicion_mult * max(1, log10(n)) * probe_interval``) and falls to the
  minimum as independent confirmations arrive (logarithmically).
* **Dissemination.** Claims are queued and piggybacked on every datagram until
  sent ``retransmit_mult * ceil(log10(n + 1))`` times; claims this node makes
  itself are also multicast every ``gossip_interval`` until then, because
  multicast reaches every node in one hop. Claims relayed for others travel
  only piggybacked, so one event does not make every node multicast it.
* **Evidence.** A node we hold suspect or dead that sends us a datagram is told
  so (at most once per ``evidence_interval``), so it can refute; this is what
  heals a partition.

Incarnations: a node's incarnation is ``boot epoch << 32`` plus its refutations
in this boot, so a restarted node always outranks its own earlier death or
departure without keeping any state but the epoch.

Trust: presence and left records are signed by their subject and checked before
use; suspect and dead claims are the word of the datagram's (authenticated)
sender. A member of the network may therefore accuse another falsely, and the
accused refutes; outsiders cannot take part at all when a network key is set.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, NamedTuple, Union

from nacl.signing import SigningKey

from lannode.core import messages as m
from lannode.core.admission import Admission
from lannode.core.broadcasts import BroadcastQueue
from lannode.core.wire import MAX_PAYLOAD, DatagramCodec, Dropped, LocalProtocolError

Address = tuple[str, int]
INCARNATION_BOOT_SHIFT = 32
MAX_EPOCH = (1 << (64 - INCARNATION_BOOT_SHIFT)) - 1  # so that epoch << 32 plus the boot's refutations fits the wire's u64
FORGET_CHECK_INTERVAL = 60.0
FAILURE_RATE_WEIGHT = 1 / 256  # how fast old probe outcomes fade from the failure rate
PRIOR_ROUNDS = 32  # the failure rate starts as 0 of this many rounds, so one early failure does not count for much
MAX_ROUNDS = 4  # failed probe rounds in a row that always make an accusation
CONFIRMERS = 2  # about this many times k nodes probe a new suspect to confirm it  # how often dead and left members are looked over for forgetting


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    probe_interval: float = 0.5
    probe_timeout: float = 0.2
    indirect_checks: int = 3
    suspicion_mult: float = 2.0
    suspicion_max_mult: float = 4.0
    gossip_interval: float = 0.2
    retransmit_mult: int = 3
    presence_interval: float = 2.0  # the shortest; a big group spaces them out (presence_budget)
    presence_budget: float = 8_000.0  # bits/s of presence multicast the whole group sends, at most
    join_schedule: tuple[float, ...] = (0.0, 0.1, 0.25, 0.45, 0.7, 1.0)
    leave_copies: int = 3
    max_health: int = 8
    max_members: int = 4096
    admission_rate: float = 20.0  # strangers a second that gossip datagrams from one host may add to the member table (a view exchange is not limited)
    admission_burst: float = 256.0  # ... and at once: a group of 250 starting together all fit
    admission_sources: int = 1024  # hosts whose admission budgets are kept; past that the one heard from longest ago goes
    settled_after: float = 600.0  # a member alive this long has a long history: never evicted to make room
    evidence_interval: float = 1.0
    forget_after: float = 24 * 3600.0  # dead and left members are forgotten after this
    max_relays: int = 256  # indirect probes we run for others at once
    accusation_budget: float = 1.0  # false accusations a second the group may make before nodes double-check
    hello_replies: int = 8  # about this many members answer a multicast Hello; the joiner fetches the rest
    sync_interval: float = 30.0  # the shortest time between two push-pull view exchanges of ours
    sync_budget: float = 4_000.0  # bits/s of push-pull exchange a node averages, at most (a big group syncs rarely)
    sync_timeout: float = 5.0  # a joiner whose view exchange got no answer asks another member after this


class State(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


_LIVE = {State.ALIVE: 1, State.SUSPECT: 1, State.DEAD: 0, State.LEFT: 0}  # counted in Membership._live

Claim = Literal["alive", "suspect", "dead", "left"]

# The state machine, one row per (state we hold, claim heard): how the claim's
# incarnation must compare with the one we hold, and the state it leads to.
# A pair that is not in the table is ignored. (SWIM, section 4.2.)
TRANSITIONS: dict[tuple[State, Claim], tuple[Literal[">", ">="], State]] = {
    (State.ALIVE, "alive"): (">", State.ALIVE),  # a newer record: name or address changed
    (State.SUSPECT, "alive"): (">", State.ALIVE),  # refuted
    (State.DEAD, "alive"): (">", State.ALIVE),  # refuted, or restarted
    (State.LEFT, "alive"): (">", State.ALIVE),  # restarted
    (State.ALIVE, "suspect"): (">=", State.SUSPECT),
    (State.SUSPECT, "suspect"): (">=", State.SUSPECT),  # a confirmation
    (State.ALIVE, "dead"): (">=", State.DEAD),
    (State.SUSPECT, "dead"): (">=", State.DEAD),
    (State.ALIVE, "left"): (">=", State.LEFT),
    (State.SUSPECT, "left"): (">=", State.LEFT),
    (State.DEAD, "left"): (">=", State.LEFT),
}


def _not_presence(message: m.Message) -> bool:
    return not isinstance(message, m.Presence)


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberStateChanged:
    node_id: str
    previous: State | None  # None: a node we did not know
    state: State


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """A member's presence changed (name, address, capabilities) without a state change."""

    node_id: str


@dataclass(frozen=True, slots=True)
class StoreEntryReceived:
    """A replicated-store entry arrived piggybacked on gossip; the store checks it."""

    data: bytes
    sender: str


@dataclass(frozen=True, slots=True)
class StateSyncWanted:
    """Exchange whole views with this member over a reliable link (push-pull, as memberlist
    does): send it ``state()``, give what it sends back to ``merge_state``; it does the same
    with ours. This is how a joiner learns the group when only a sample answers its Hello,
    and, now and then, how views that drifted apart are mended."""

    node_id: str


Event = Union[MemberStateChanged, MemberUpdated, StoreEntryReceived, StateSyncWanted]


class Outgoing(NamedTuple):
    """A datagram for the caller to send (a tuple: one is made for every datagram)."""

    data: bytes
    address: Address | None  # None: the multicast group



# -- state ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Suspicion:
    started: float
    min_timeout: float
    max_timeout: float
    expected: int  # independent confirmations that bring the timeout down to the minimum
    accusers: set[str]

    def deadline(self) -> float:
        confirmations = len(self.accusers) - 1
        if self.expected <= 0 or confirmations >= self.expected:
            return self.started + self.min_timeout
        fraction = math.log(confirmations + 1) / math.log(self.expected + 1)
        return self.started + max(self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * fraction)


@dataclass(slots=True)
class Member:
    presence: m.Presence
    state: State
    incarnation: int  # of the claim that set the state (>= presence.incarnation)
    since: float  # when it entered this state
    last_seen: float  # last datagram straight from it
    suspicion: Suspicion | None = None
    told_at: float = -math.inf
    shared: bool = False  # part of a view several nodes began with (warm_start): copied before a change

    @property
    def node_id(self) -> str:
        return self.presence.node_id


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    direct_deadline: float
    end: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    attempt: int = 1  # the how-manieth round in a row at this target (the earlier ones failed)


@dataclass(slots=True)
class _Relay:
    requester: Address
    seq: int
    deadline: float


@dataclass(slots=True)
class _Counters:
    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0
    probes: int = 0
    probe_failures: int = 0
    refutations: int = 0
    rechecks: int = 0
    syncs: int = 0  # views merged from a push-pull exchange
    sync_bytes_sent: int = 0
    sync_bytes_received: int = 0
    evicted: int = 0  # unproven newcomers forgotten to make room in a full table


@dataclass(slots=True)
class GroupView:
    """A converged view of a group that many nodes can begin with (``Membership.warm_start``)."""

    members: dict[str, Member]  # every one alive and shared
    live: int
    order: list[str]  # a shuffled probe order; each node begins its first round at its own place in it

    @classmethod
    def of(cls, presences: Iterable[m.Presence], now: float, rng: random.Random) -> GroupView:
        members = {p.node_id: Member(p, State.ALIVE, p.incarnation, since=now, last_seen=now, shared=True) for p in presences}
        order = list(members)
        rng.shuffle(order)
        return cls(members, len(members), order)


# -- the protocol object -------------------------------------------------------------------------


class Membership:
    def __init__(
        self,
        signing_key: SigningKey,
        *,
        epoch: int,
        name: str,
        address: Address,
        link_port: int = 0,
        capabilities: Iterable[str] = (),
        network_key: bytes | None = None,
        config: MembershipConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 <= epoch <= MAX_EPOCH:
            raise LocalProtocolError(f"a boot epoch is 0 to {MAX_EPOCH}, not {epoch}")
        self.config = config or MembershipConfig()
        self.codec = DatagramCodec(signing_key, epoch=epoch, network_key=network_key)
        self._key = signing_key
        self._rng = rng or random.Random()
        self.presence = m.Presence(
            public_key=bytes(signing_key.verify_key),
            incarnation=epoch << INCARNATION_BOOT_SHIFT,
            name=name,
            host=address[0],
            gossip_port=address[1],
            link_port=link_port,
            capabilities=m.capability_bits(tuple(capabilities)),
        ).signed(signing_key)
        self.node_id = self.presence.node_id
        self._presence_message = m.encode_message(self.presence)  # sent often; encoded once per change
        self.members: dict[str, Member] = {}
        self.health = 0
        self.leaving = False
        self.counters = _Counters()
        self._outgoing: list[Outgoing] = []
        self._events: list[Event] = []
        self._broadcasts = BroadcastQueue()
        self._seq = self._rng.randrange(1 << 32)
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_soon: list[str] = []
        self._recheck: tuple[str, int] | None = None  # (target, rounds it failed): probed again before it is accused
        self._rounds = 0.0  # our probe rounds and how many failed, both fading (FAILURE_RATE_WEIGHT)
        self._failed_rounds = 0.0
        self._relays: dict[int, _Relay] = {}
        self._started: float | None = None
        self._joins_sent = 0
        self._next_join = math.inf  # the next Hello of our join_schedule
        self._next_probe = math.inf
        self._next_presence = math.inf
        self._next_gossip = math.inf
        self._last_gossip = -math.inf
        self._next_forget = -math.inf
        self._next_sync = math.inf
        self._answered: dict[str, float] = {}  # node -> when we last answered its stale claim about us
        self._next_mend = -math.inf  # a view exchange to mend a healed partition, at most one per sync_timeout
        self._join_sync: float | None = None  # from then on, the first member to talk to us gets a view exchange
        self._presence_bytes = 300  # the size of our presence datagram, until we have sent one
        # kept in step with members, so a tick costs the same with 10 members or 10,000
        self._live = 0  # members alive or suspect
        self._suspects: dict[str, Member] = {}  # members with a running suspicion
        self._gone: set[str] = set()  # members dead or left: the only ones ever forgotten
        self._alive: tuple[Member, ...] | None = None  # alive_members(), until a member comes, goes or changes state
        self.admission = Admission(rate=self.config.admission_rate, burst=self.config.admission_burst, sources=self.config.admission_sources)

    # -- the public surface ------------------------------------------------------------------
    def start(self, now: float) -> None:
        self._started = now
        self._next_probe = now + self.config.probe_interval
        self._next_presence = now + self._jittered(self._presence_interval())
        self._next_gossip = now
        self._next_forget = now + FORGET_CHECK_INTERVAL
        self._next_sync = now + self._jittered(self._sync_interval())
        if self._joins_sent < len(self.config.join_schedule):  # joining, not warm-started
            self._next_join = now + self.config.join_schedule[self._joins_sent]
            self._join_sync = now
            # Beyond the Hellos, our presence rides the gossip rounds like any claim of ours:
            # at 30% loss one node in a thousand misses all six Hellos, and nothing else would
            # tell it of us for minutes (our presence multicast is rare in a big group).
            self._queue(self.node_id, self._presence_message, multicast=True)

    def warm_start(self, view: GroupView) -> None:
        """Begin with a view of the group instead of learning it by joining: how the simulator
        starts 10,000 nodes at once (``sim.virtualnet``). The view's ``Member`` objects are
        shared by every node that begins with it; each node copies a member before it changes
        it, so 10,000 nodes hold one view plus their own differences, not 10^8 members. Such
        a node does not announce itself: the group already knows it."""
        if self._started is not None:
            raise LocalProtocolError("warm_start() after start()")
        self.members = view.members.copy()
        self._alive = None
        self._live = view.live
        me = self.members.pop(self.node_id, None)
        if me is not None:
            self._live -= _LIVE[me.state]
        turn = self._rng.randrange(len(view.order) or 1)  # where in the shared order our first round begins
        self._probe_order = view.order[turn:] + view.order[:turn]
        self._joins_sent = len(self.config.join_schedule)

    def datagram_received(self, data: bytes, address: Address, now: float) -> None:
        counters = self.counters
        counters.datagrams_received += 1
        counters.bytes_received += len(data)
        codec = self.codec
        try:
            datagram = codec.decode(data)
        except Dropped:
            return
        try:
            messages = m.decode_payload(datagram.payload)
        except Exception:  # RemoteProtocolError; and a decoder bug must not take the node down
            codec.dropped["malformed"] += 1
            return
        sender = datagram.node_id
        checked = self._check_records(messages, sender)
        if isinstance(checked, str):
            codec.dropped[checked] += 1
            return
        strangers = checked
        if strangers:
            refused = self._admit(strangers, address[0], now)
            if refused:
                codec.dropped[refused] += 1
                return
        if len(messages) > 1:
            messages.sort(key=_not_presence)  # presence records first; otherwise in the order sent
        handlers = self._HANDLERS
        for message in messages:
            handlers[type(message)](self, message, sender, address, now)
        if strangers:
            self._note_newcomers(strangers, address[0])
        member = self.members.get(sender)
        if member is not None:
            member = self._writable(member)
            member.last_seen = now
            if member.state is not State.ALIVE:
                self._tell_about_itself(member, now)
            elif self._join_sync is not None and now >= self._join_sync and not any(type(x) is m.Hello for x in messages):
                # the first member to talk to us, unless it is joining itself (it will ask someone)
                self._join_sync = now + self.config.sync_timeout  # until merge_state: then another
                self._events.append(StateSyncWanted(sender))

    def tick(self, now: float) -> None:
        if self._started is None:
            raise LocalProtocolError("tick() before start()")
        if self.leaving or now < self.next_wakeup():
            return  # nothing is due: the daemon ticks after every batch it receives
        if now >= self._next_join:
            self._send_joins(now)
        if now >= self._next_presence:
            self._multicast([self._presence_message])
            self._presence_bytes = len(self._outgoing[-1].data)
            self._next_presence = now + self._jittered(self._presence_interval())
        self._run_probe(now)
        self._run_relays(now)
        self._run_suspicions(now)
        if now >= self._next_gossip:
            if self._broadcasts.multicasts:
                self._multicast([])
                self._last_gossip = now
                self._next_gossip = now + self.config.gossip_interval
            else:
                self._next_gossip = math.inf  # no rounds while there is nothing to spread (_queue)
        if now >= self._next_forget:
            self._next_forget = now + FORGET_CHECK_INTERVAL
            self._forget(now)
        if now >= self._next_sync:
            self._next_sync = now + self._jittered(self._sync_interval())
            partner = self._pick_alive(1, exclude=self.node_id)
            if partner:
                self._events.append(StateSyncWanted(partner[0].node_id))

    def leave(self, now: float) -> None:
        """Say goodbye: the signed Left goes out ``leave_copies`` times; then stop."""
        if self.leaving:
            return
        self.leaving = True
        left = m.Left(self.node_id, self.presence.incarnation).signed(self._key)
        for _ in range(self.config.leave_copies):
            self._send(None, [m.encode_message(left)], piggyback=False)

    def broadcast(self, about: str, message: m.Message) -> bool:
        """Spread a message of ours (a store entry): multicast and piggybacked, like our own
        claims. A newer one with the same ``about`` replaces it. False if it cannot fit a datagram."""
        data = m.encode_message(message)
        if len(data) > MAX_PAYLOAD - m.PAYLOAD_HEADER_BYTES:
            return False
        self._queue(about, data, multicast=True)
        return True

    def contact(self, address: Address) -> None:
        """Introduce ourselves to a node found another way (zeroconf, a link, the user)."""
        self._send(address, [m.encode_message(m.Hello(direct=True)), self._presence_message], piggyback=False)

    def state(self) -> bytes:
        """Our whole view for a push-pull exchange (``StateSyncWanted``): our presence, then
        each member's signed presence, a suspect or dead one's followed by that claim. Members
        that left are not passed on."""
        parts = [self._presence_message]
        for member in self.members.values():
            if member.state is State.LEFT:
                continue
            parts.append(m.encode_message(member.presence))
            if member.state is State.SUSPECT:
                parts.append(m.encode_message(m.Suspect(member.node_id, member.incarnation)))
            elif member.state is State.DEAD:
                parts.append(m.encode_message(m.Dead(member.node_id, member.incarnation)))
        data = m.encode_payload(parts)
        self.counters.sync_bytes_sent += len(data)
        return data

    def merge_state(self, data: bytes, sender: str, now: float) -> bool:
        """Take in a member's whole view, from a push-pull exchange over a link authenticated
        as ``sender``. Members we did not know join our view quietly (the group knows them
        already: no gossip about them), except those the sender holds dead. A member we hold
        alive that the sender holds suspect or dead becomes the sender's suspicion, not a
        death: one view's verdicts are not taken on trust (memberlist does the same), and
        the subject refutes if it lives; so do we, if it is us. False, with nothing taken,
        if it does not parse or a record in it is forged."""
        self.counters.sync_bytes_received += len(data)
        try:
            messages = m.decode_payload(data)
        except m.RemoteProtocolError:
            self.codec.dropped["malformed"] += 1
            return False
        checked = self._check_records(messages, sender)
        if isinstance(checked, str):
            self.codec.dropped[checked] += 1
            return False
        self.counters.syncs += 1
        self._join_sync = None
        self.proven(sender)
        source = "view:" + sender  # what a view brings is that member's newcomers, evicted as a host's are
        strangers: list[str] = []
        for i, message in enumerate(messages):
            if isinstance(message, m.Presence):
                subject = message.node_id
                if subject == self.node_id:
                    continue
                if subject not in self.members:
                    following = messages[i + 1] if i + 1 < len(messages) else None
                    if isinstance(following, m.Dead) and following.node_id == subject:
                        continue  # dead to the sender and unknown to us: nothing to learn
                    if len(self.members) >= self.config.max_members and not self._evict_one(source, now):
                        self.codec.dropped["full"] += 1
                        continue
                    strangers.append(subject)
                self._on_claim(subject, "alive", message.incarnation, now, presence=message, relayed=subject != sender, quiet=True)
            elif isinstance(message, (m.Suspect, m.Dead)):
                if not self._plausible(message.node_id, message.incarnation):
                    continue
                if message.node_id == self.node_id:
                    self._refute(message.incarnation)
                elif message.node_id in self.members:
                    self._on_claim(message.node_id, "suspect", message.incarnation, now, accuser=sender, relayed=True)
        if strangers:
            self._note_newcomers(strangers, source)
        return True

    def next_wakeup(self) -> float:
        """The time tick() next has something to do: before it, tick() does nothing (and
        returns at once), and housekeeping (forgetting long-dead members) waits for a tick
        that has. Asked after every datagram, so it compares rather than calls min()."""
        if self._started is None or self.leaving:
            return math.inf
        soonest = self._next_probe
        if self._next_presence < soonest:
            soonest = self._next_presence
        if self._next_sync < soonest:
            soonest = self._next_sync
        if self._next_join < soonest:
            soonest = self._next_join
        probe = self._probe
        if probe is not None:
            due = probe.end if probe.indirect_sent or probe.end < probe.direct_deadline else probe.direct_deadline
            if due < soonest:
                soonest = due
        if self._relays:
            for relay in self._relays.values():
                soonest = min(soonest, relay.deadline)
        if self._suspects:
            for member in self._suspects.values():
                if member.suspicion is not None:
                    soonest = min(soonest, member.suspicion.deadline())
        if self._broadcasts.multicasts and self._next_gossip < soonest:
            soonest = self._next_gossip
        return soonest

    def has_output(self) -> bool:
        """Whether take_outgoing() or take_events() would hand anything back."""
        return bool(self._outgoing or self._events)

    def take_outgoing(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def alive_members(self) -> tuple[Member, ...]:
        """The members held alive (not suspect, dead or left), in the order we met them:
        kept until one comes, goes or changes state (the store picks a sync partner from
        them every few seconds)."""
        alive = self._alive
        if alive is None:
            members = self.members
            if self._live == len(members) and not self._suspects:  # every member is: no look at each
                alive = tuple(members.values())
            else:
                alive = tuple([x for x in members.values() if x.state is State.ALIVE])
            self._alive = alive
        return alive

    def live_members(self) -> list[Member]:
        return [x for x in self.members.values() if x.state in (State.ALIVE, State.SUSPECT)]

    def live_count(self) -> int:
        """How many members are alive or suspect (kept as they change: no scan)."""
        return self._live

    def statistics(self) -> dict[str, object]:
        states = {state.value: 0 for state in State}
        for member in self.members.values():
            states[member.state.value] += 1
        c = self.counters
        return {
            "members": states,
            "health": self.health,
            "incarnation": self.presence.incarnation,
            "datagrams_sent": c.datagrams_sent,
            "bytes_sent": c.bytes_sent,
            "datagrams_received": c.datagrams_received,
            "bytes_received": c.bytes_received,
            "probes": c.probes,
            "probe_failures": c.probe_failures,
            "refutations": c.refutations,
            "rechecks": c.rechecks,
            "syncs": c.syncs,
            "sync_bytes_sent": c.sync_bytes_sent,
            "sync_bytes_received": c.sync_bytes_received,
            "queued_broadcasts": len(self._broadcasts),
            "evicted": c.evicted,
            "newcomers": len(self.admission),
            "dropped": dict(sorted(self.codec.dropped.items())),
            "replay_senders": len(self.codec.replays.senders),
            "replay_senders_max": self.codec.replays.max_senders,
            "replay_evicted": self.codec.replays.evicted,
        }

    # -- receiving ---------------------------------------------------------------------------
    def _check_records(self, messages: list[m.Message], sender: str) -> str | list[str]:
        """Check every signed record before acting on any: a forgery drops the datagram.
        Why not, or the strangers (node ids we hold no member for) whose presence it brings."""
        members = self.members
        strangers: list[str] = []
        for message in messages:
            kind = type(message)
            if kind is m.Presence:
                assert isinstance(message, m.Presence)
                subject = message.node_id
                known = members.get(subject)
                if known is not None and (known.presence is message or known.presence == message):
                    continue  # the record we hold, already checked
                if subject != self.node_id and not message.verify():
                    return "forged"
                if known is None and subject != self.node_id:
                    strangers.append(subject)
            elif kind is m.Left:
                assert isinstance(message, m.Left)
                known = members.get(message.node_id)
                if known is not None and not message.verify(known.presence.public_key):
                    return "forged"
        return strangers

    # -- admission: who gets room in the member table (core/admission.py) ---------------------
    def _admit(self, strangers: list[str], source: str, now: float) -> str | None:
        """Room for the strangers a gossip datagram from host ``source`` brings, or why not."""
        admission = self.admission
        if not admission.allowed(source, len(strangers), now):
            return "admission"
        room = self.config.max_members - len(self.members)
        for _ in range(len(strangers) - room):
            if not self._evict_one(source, now):
                return "full"
        admission.spend(source, len(strangers), now)
        return None

    def _evict_one(self, source: str, now: float) -> bool:
        """Forget one member to make room for a stranger from ``source``: the one dead or
        gone longest, else the victim ``Admission`` names."""
        if self._gone:
            self._drop_member(min(self._gone, key=lambda node_id: self.members[node_id].since))
            return True
        members = self.members
        settled_after = self.config.settled_after

        def settled(node_id: str) -> bool:
            member = members[node_id]
            return now - member.since >= settled_after and member.state is State.ALIVE

        node_id = self.admission.victim(source, settled)
        if node_id is None:
            return False
        self.counters.evicted += 1
        previous = members[node_id].state
        self._drop_member(node_id)
        self._events.append(MemberStateChanged(node_id, previous, State.DEAD))
        return True

    def _note_newcomers(self, strangers: list[str], source: str) -> None:
        """The strangers a datagram from ``source`` brought that are members now."""
        self.admission.note((node_id for node_id in strangers if node_id in self.members), source)

    def proven(self, node_id: str) -> None:
        """``node_id`` showed it holds its key: it answered our probe, or a link authenticated
        it (the caller says so). From now on it is never evicted to make room."""
        self.admission.proven(node_id)

    def _drop_member(self, node_id: str) -> None:
        """Forget a member: dead or gone for ``forget_after``, or evicted to make room."""
        member = self.members.pop(node_id)
        self.admission.forget(node_id)
        self._alive = None
        self._live -= _LIVE[member.state]
        self._gone.discard(node_id)
        self._suspects.pop(node_id, None)
        self._broadcasts.drop(node_id)

    # One handler per message type (``_HANDLERS``, at the end), each given the datagram's
    # authenticated sender, the address it came from and the time.
    def _on_presence(self, message: m.Presence, sender: str, address: Address, now: float) -> None:
        subject = message.node_id
        member = self.members.get(subject)
        if member is not None and message.incarnation <= member.incarnation:
            return  # every "alive" transition needs a newer incarnation (TRANSITIONS): a heartbeat
        if subject != self.node_id:
            self._on_claim(subject, "alive", message.incarnation, now, presence=message, relayed=subject != sender)

    def _on_hello(self, message: m.Hello, sender: str, address: Address, now: float) -> None:
        # A multicast Hello reaches everyone: were all to answer, a joiner of 10,000 would
        # get 60,000 datagrams in its first second. About ``hello_replies`` do; the joiner
        # fetches the whole view from the first of them (StateSyncWanted).
        if message.direct or self._rng.random() * self._live < self.config.hello_replies:
            member = self.members.get(sender)
            reply_to = member.presence.gossip_address if member is not None else address
            self._send(reply_to, [self._presence_message])

    def _on_ping(self, message: m.Ping, sender: str, address: Address, now: float) -> None:
        if message.target == self.node_id:
            self._send(address, [m.encode_ack(message.seq)], about=sender)


    def _on_nack(self, message: m.Nack, sender: str, address: Address, now: float) -> None:
        if self._probe is not None and self._probe.seq == message.seq:
            self._probe.nacks += 1

    def _on_accusation(self, message: m.Suspect | m.Dead, sender: str, address: Address, now: float) -> None:
        claim: Claim = "suspect" if type(message) is m.Suspect else "dead"
        if not self._plausible(message.node_id, message.incarnation):
            return
        if message.node_id == self.node_id:
            if message.incarnation < self.presence.incarnation:
                self._answer_stale_claim(sender, address, now)
            else:
                self._refute(message.incarnation)
        else:
            self._on_claim(message.node_id, claim, message.incarnation, now, accuser=sender, relayed=True)

    def _plausible(self, subject: str, incarnation: int) -> bool:
        """Whether an accusation's incarnation is one its subject signed: at most that of the
        subject's presence we hold (ours, if it is about us). One above it is refused and
        counted: it would put the subject past its own refutations (at 2**64 - 1, for good).
        A member that refuted where we did not hear it is suspected at its new incarnation
        only once its presence reaches us, which the refutation's multicast brings."""
        member = self.members.get(subject)
        signed = self.presence.incarnation if subject == self.node_id else member.presence.incarnation if member is not None else None
        if signed is not None and incarnation > signed:
            self.codec.dropped["implausible"] += 1
            return False
        return True

    def _on_left(self, message: m.Left, sender: str, address: Address, now: float) -> None:
        if message.node_id != self.node_id and message.node_id in self.members:
            self._on_claim(message.node_id, "left", message.incarnation, now, left=message)

    def _on_store_entry(self, message: m.StoreEntry, sender: str, address: Address, now: float) -> None:
        self._events.append(StoreEntryReceived(message.data, sender))


    def _on_claim(
        self,
        node_id: str,
        claim: Claim,
        incarnation: int,
        now: float,
        *,
        presence: m.Presence | None = None,
        accuser: str | None = None,
        left: m.Left | None = None,
        relayed: bool = False,
        quiet: bool = False,
    ) -> None:
        member = self.members.get(node_id)
        if member is None:
            if presence is None:
                return  # a claim about a node we never saw: nothing to hold it against
            self.members[node_id] = Member(presence, State.ALIVE, incarnation, since=now, last_seen=now)
            self._alive = None
            self._live += 1
            self._probe_order.insert(self._rng.randrange(len(self._probe_order) + 1), node_id)
            self._events.append(MemberStateChanged(node_id, None, State.ALIVE))
            if relayed and not quiet:
                self._queue(node_id, m.encode_message(presence), multicast=False)
            return
        rule = TRANSITIONS.get((member.state, claim))
        if rule is None:
            return
        needed, new_state = rule
        if not (incarnation > member.incarnation if needed == ">" else incarnation >= member.incarnation):
            return
        member = self._writable(member)
        previous = member.state
        if presence is not None:
            member.presence = presence
        same_boot = member.incarnation >> INCARNATION_BOOT_SHIFT == incarnation >> INCARNATION_BOOT_SHIFT
        member.incarnation = incarnation
        if new_state is State.SUSPECT:
            if previous is State.SUSPECT and member.suspicion is not None:
                if accuser is not None:
                    member.suspicion.accusers.add(accuser)
            else:
                member.suspicion = self._new_suspicion(now, accuser or self.node_id)
                self._suspects[node_id] = member
                # see for ourselves: a failure confirms it. Only a few need to (Lifeguard's
                # k confirmations bring the timeout to its minimum); were every node to probe
                # and multicast its confirmation, one crash would cost n * n datagrams.
                if accuser == self.node_id or self._rng.random() < CONFIRMERS * max(1, member.suspicion.expected) / max(1, self._live):
                    self._probe_soon.append(node_id)
        else:
            member.suspicion = None
            self._suspects.pop(node_id, None)
        if new_state is not previous:
            if previous is State.DEAD and new_state is State.ALIVE and same_boot:
                self._mend(node_id, now)  # it lived through our verdict: cut off, or paused
            self._live += _LIVE[new_state] - _LIVE[previous]
            if _LIVE[new_state]:
                self._gone.discard(node_id)
            else:
                self._gone.add(node_id)
            member.state = new_state
            self._alive = None
            member.since = now
            self._events.append(MemberStateChanged(node_id, previous, new_state))
        elif presence is not None:
            self._events.append(MemberUpdated(node_id))
        # pass the news on
        if left is not None:
            self._queue(node_id, m.encode_message(left), multicast=False)
        elif presence is not None:
            if not quiet:
                self._queue(node_id, m.encode_message(presence), multicast=False)
        elif claim in ("suspect", "dead") and (new_state is not previous or not relayed):
            message: m.Message = m.Suspect(node_id, incarnation) if claim == "suspect" else m.Dead(node_id, incarnation)
            # Our own word is multicast while it counts: an accusation while it is one of the
            # confirmations that matter, a death by a few of the many whose timers run out at
            # about the same moment. Past that it rides on what we send anyway: otherwise one
            # crash costs n * n datagrams.
            if claim == "suspect":
                spread = member.suspicion is None or len(member.suspicion.accusers) <= member.suspicion.expected + 1
            else:
                spread = self._rng.random() < CONFIRMERS * max(1, self.config.indirect_checks) / max(1, self._live)
            self._queue(node_id, m.encode_message(message), multicast=not relayed and spread)

    def _mend(self, node_id: str, now: float) -> None:
        """A member we held dead is back in the same boot: a partition healed. What each
        side declared while apart did not reach the other (a death multicast into a
        partition is lost, and nobody repeats it), so a few of those who see it come back
        exchange views with it; deaths in them become suspicions on the other side."""
        if now < self._next_mend or self._rng.random() >= CONFIRMERS * self.config.indirect_checks / max(1, self._live):
            return
        self._next_mend = now + self.config.sync_timeout
        self._events.append(StateSyncWanted(node_id))

    def _writable(self, member: Member) -> Member:
        """The member to change: itself, or, for one that ``warm_start`` shares with other
        nodes (the simulator's ten thousand), our own copy of it first. The one place the
        copy-on-write shows: everything that changes a member asks here."""
        return self._own(member) if member.shared else member

    def _own(self, member: Member) -> Member:
        """Our own copy of a member shared with other nodes (``warm_start``), before a change."""
        mine = replace(member, shared=False)
        self.members[mine.node_id] = mine
        self._alive = None
        if mine.node_id in self._suspects:
            self._suspects[mine.node_id] = mine
        return mine

    def _new_suspicion(self, now: float, accuser: str) -> Suspicion:
        live = self._live + 1
        minimum = self.config.suspicion_mult * max(1.0, math.log10(live)) * self.config.probe_interval
        expected = max(0, min(self.config.indirect_checks, live - 2))
        return Suspicion(now, minimum, minimum * self.config.suspicion_max_mult, expected, {accuser})

    def _answer_stale_claim(self, sender: str, address: Address, now: float) -> None:
        """Someone still holds us suspect or dead at an incarnation we refuted already: our
        refutation never reached it (at 30% loss every copy can miss one node). Send it our
        presence directly, at most once per ``evidence_interval`` per node."""
        if self.leaving or now - self._answered.get(sender, -math.inf) < self.config.evidence_interval:
            return
        self._answered[sender] = now
        member = self.members.get(sender)
        self._send(member.presence.gossip_address if member is not None else address, [self._presence_message], piggyback=False)

    def _refute(self, incarnation: int) -> None:
        """Outrank a claim about us at ``incarnation``. The callers hand only claims at or
        below the incarnation we hold (one above it, we never signed: ``_on_accusation``),
        so a refutation is always our incarnation plus one, and it stays within this boot:
        the boot's 2**32 incarnations run out only after as many refutations."""
        ours = self.presence.incarnation
        if self.leaving or incarnation < ours:
            return
        if (ours + 1) >> INCARNATION_BOOT_SHIFT != ours >> INCARNATION_BOOT_SHIFT:
            self.codec.dropped["exhausted"] += 1
            return
        self.counters.refutations += 1
        self.health = min(self.config.max_health, self.health + 1)
        self._announce_new_incarnation(ours + 1)

    def _announce_new_incarnation(self, incarnation: int) -> None:
        self.presence = replace(self.presence, incarnation=incarnation).signed(self._key)
        self._presence_message = m.encode_message(self.presence)
        self._queue(self.node_id, self._presence_message, multicast=True)

    def _tell_about_itself(self, member: Member, now: float) -> None:
        """It talks to us while we hold it suspect or dead: tell it, so it can refute."""
        if member.state not in (State.SUSPECT, State.DEAD):
            return
        if now - member.told_at < self.config.evidence_interval:
            return
        member.told_at = now
        claim: m.Message = m.Suspect(member.node_id, member.incarnation) if member.state is State.SUSPECT else m.Dead(member.node_id, member.incarnation)
        self._send(member.presence.gossip_address, [m.encode_message(claim)], piggyback=False)

    # -- probing -----------------------------------------------------------------------------
    def _next_target(self) -> str | None:
        while self._probe_soon:
            node_id = self._probe_soon.pop(0)
            member = self.members.get(node_id)
            if member is not None and member.state is State.SUSPECT:
                return node_id
        for _ in range(2):
            while self._probe_order:
                node_id = self._probe_order.pop()
                member = self.members.get(node_id)
                if member is not None and member.state in (State.ALIVE, State.SUSPECT):
                    return node_id
            self._probe_order = [x.node_id for x in self.live_members()]
            self._rng.shuffle(self._probe_order)
        return None

    def _run_probe(self, now: float) -> None:
        probe = self._probe
        scale = self.health + 1
        if probe is not None and not probe.indirect_sent and now >= probe.direct_deadline:
            probe.indirect_sent = True
            helpers = self._pick_alive(self.config.indirect_checks, exclude=probe.target)
            probe.expected_nacks = len(helpers)
            for helper in helpers:
                self._send(helper.presence.gossip_address, [m.encode_message(m.PingReq(probe.seq, probe.target))])
            # and once more ourselves: a lost ping or ack should not be all it takes
            target = self.members.get(probe.target)
            if target is not None:
                self._send(target.presence.gossip_address, [m.encode_ping(probe.seq, probe.target)], about=probe.target)
        if probe is not None and now >= probe.end:
            self._probe = None
            self._probe_failed(probe, now)
        if now >= self._next_probe:
            self._next_probe = now + self.config.probe_interval * scale
            if self._probe is None:
                again = self.members.get(self._recheck[0]) if self._recheck is not None else None
                failed = self._recheck[1] if self._recheck is not None else 0
                self._recheck = None
                if again is not None and again.state in (State.ALIVE, State.SUSPECT):
                    self._start_probe(again.node_id, now, scale, attempt=failed + 1)
                else:
                    next_target = self._next_target()
                    if next_target is not None:
                        self._start_probe(next_target, now, scale)

    def _start_probe(self, target: str, now: float, scale: int, attempt: int = 1) -> None:
        member = self.members[target]
        seq = self._next_seq()
        self.counters.probes += 1
        self._probe = _Probe(
            target,
            seq,
            started=now,
            direct_deadline=now + self.config.probe_timeout * scale,
            end=now + self.config.probe_interval * scale,
            attempt=attempt,
        )
        self._send(member.presence.gossip_address, [m.encode_ping(seq, target)], about=target)

    def _on_ack(self, message: m.Ack, sender: str, address: Address, now: float) -> None:
        seq = message.seq
        probe = self._probe
        if probe is not None and probe.seq == seq:
            self._probe = None
            if sender == probe.target:
                self.admission.proven(sender)
            self.health = max(0, self.health - 1)
            self._count_round(failed=False)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.requester, [m.encode_ack(relay.seq)])

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self.counters.probe_failures += 1
        if probe.expected_nacks:
            missed = probe.expected_nacks - probe.nacks
        else:
            missed = 1
        self.health = min(self.config.max_health, self.health + missed)
        member = self.members.get(probe.target)
        if member is None or member.state not in (State.ALIVE, State.SUSPECT):
            return
        if member.state is State.ALIVE:
            # the rate of false failures is what we estimate: a target others already suspect
            # (probed to confirm it) says more about itself than about the network
            self._count_round(failed=True)
        if member.state is State.ALIVE and probe.attempt < self._rounds_to_accuse():
            self._recheck = (probe.target, probe.attempt)  # one more round before we accuse it
            self.counters.rechecks += 1
            return
        # our own accusation (a confirmation when others already suspect it) is always spread
        self._on_claim(probe.target, "suspect", member.incarnation, now, accuser=self.node_id)

    def _on_ping_req(self, request: m.PingReq, sender: str, requester: Address, now: float) -> None:
        member = self.members.get(request.target)
        if member is None or request.target == self.node_id or len(self._relays) >= self.config.max_relays:
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(requester, request.seq, now + self.config.probe_timeout)
        self._send(member.presence.gossip_address, [m.encode_ping(seq, request.target)], about=request.target)

    def _run_relays(self, now: float) -> None:
        if not self._relays:
            return
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                self._send(relay.requester, [m.encode_message(m.Nack(relay.seq))])

    def _run_suspicions(self, now: float) -> None:
        if not self._suspects:
            return
        for member in list(self._suspects.values()):
            if member.suspicion is not None and now >= member.suspicion.deadline():
                self._on_claim(member.node_id, "dead", member.incarnation, now)

    def _forget(self, now: float) -> None:
        self._answered = {node: at for node, at in self._answered.items() if now - at < self.config.evidence_interval}
        for node_id in list(self._gone):
            member = self.members[node_id]
            if now - member.since > self.config.forget_after:
                self._drop_member(node_id)

    # -- sending -----------------------------------------------------------------------------
    def _send_joins(self, now: float) -> None:
        """The Hello due at ``_next_join`` (tick() calls this once ``now`` reaches it)."""
        assert self._started is not None
        schedule = self.config.join_schedule
        self._joins_sent += 1
        while self._joins_sent < len(schedule) and now >= self._started + schedule[self._joins_sent]:
            self._joins_sent += 1  # a late tick: one datagram for all the missed slots
        self._next_join = self._started + schedule[self._joins_sent] if self._joins_sent < len(schedule) else math.inf
        self._multicast([m.encode_message(m.Hello()), self._presence_message])

    def _multicast(self, messages: list[bytes]) -> None:
        self._send(None, messages, multicast_round=True)

    def _send(self, address: Address | None, messages: list[bytes], *, about: str | None = None, piggyback: bool = True, multicast_round: bool = False) -> None:
        if piggyback and self._broadcasts:
            messages = messages + self._piggyback(MAX_PAYLOAD - m.PAYLOAD_HEADER_BYTES - sum(map(len, messages)), about, multicast_round)
        data = self.codec.encode(m.encode_payload(messages))
        counters = self.counters
        counters.datagrams_sent += 1
        counters.bytes_sent += len(data)
        self._outgoing.append(Outgoing(data, address))

    def _queue(self, about: str, data: bytes, *, multicast: bool) -> None:
        self._broadcasts.queue(about, data, multicast=multicast)
        if multicast:  # soon, but never more than four multicast rounds per gossip interval
            self._next_gossip = min(self._next_gossip, self._last_gossip + self.config.gossip_interval / 4)

    def _retransmit_limit(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(self._live + 2)))

    def _piggyback(self, space: int, about: str | None, multicast_round: bool) -> list[bytes]:
        if not self._broadcasts:
            return []
        return self._broadcasts.take(space, about=about, multicast_round=multicast_round, limit=self._retransmit_limit())

    # -- small helpers -----------------------------------------------------------------------
    def _presence_interval(self) -> float:
        """RTCP's rule (RFC 3550, 6.2): every member multicasts its presence, so the interval
        grows with the group and the group's total stays within ``presence_budget``; what a
        node receives of it is then flat, 10 members or 10,000. The group still sends
        ``presence_budget`` worth (about three a second), so one from the other side of a
        healed partition arrives as soon as with a small group. Presence is only the
        background repair of membership: changes spread as claims, multicast at once."""
        group = self._live + 1
        return max(self.config.presence_interval, group * self._presence_bytes * 8 / self.config.presence_budget)

    def _sync_interval(self) -> float:
        """A push-pull exchange moves two whole views (about 140 bytes a member) each way, and
        a node takes part in about two per interval (its own, and one it is picked for): the
        interval grows with the group so that stays within ``sync_budget``, as presence does."""
        view_bits = (self._live + 1) * 140 * 8
        return max(self.config.sync_interval, 4 * view_bits / self.config.sync_budget)

    def _count_round(self, *, failed: bool) -> None:
        keep = 1 - FAILURE_RATE_WEIGHT
        self._rounds = self._rounds * keep + 1
        self._failed_rounds = self._failed_rounds * keep + failed

    def _rounds_to_accuse(self) -> int:
        """How many probe rounds in a row a target must fail before we accuse it. Each false
        accusation costs the whole group two multicast rounds (the suspicion, the refutation),
        and the group makes them at about live / probe_interval * f^r, where f is the share of
        our rounds that fail and r this number. At 10% loss f is about 0.15%: one round keeps
        20 nodes well within ``accusation_budget`` but would cost 10,000 nodes 30 accusations
        a second; two rounds bring that to 0.05. So r is the fewest rounds that keep the
        group within budget (at most MAX_ROUNDS); each extra round finds a real failure one
        probe interval later, and only where the group is big or the network bad."""
        rate = self._live / self.config.probe_interval
        failing = self._failed_rounds / (self._rounds + PRIOR_ROUNDS)
        rounds = 1
        while rounds < MAX_ROUNDS and rate * failing**rounds > self.config.accusation_budget:
            rounds += 1
        return rounds

    def _pick_alive(self, count: int, *, exclude: str) -> list[Member]:
        """Up to ``count`` distinct alive members other than ``exclude``, at random, without
        walking all of them when there are many."""
        ids = self._probe_order
        if len(ids) >= 4 * count:
            chosen: dict[str, Member] = {}
            for _ in range(8 * count):
                member = self.members.get(ids[self._rng.randrange(len(ids))])
                if member is not None and member.state is State.ALIVE and member.node_id != exclude:
                    chosen[member.node_id] = member
                    if len(chosen) == count:
                        return list(chosen.values())
        helpers = [x for x in self.alive_members() if x.node_id != exclude]
        return self._rng.sample(helpers, min(count, len(helpers)))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _jittered(self, interval: float) -> float:
        return interval * self._rng.uniform(0.8, 1.2)

    # what datagram_received calls for each message, by its type
    _HANDLERS: ClassVar[dict[type, Callable[[Membership, Any, str, Address, float], None]]] = {
        m.Presence: _on_presence,
        m.Hello: _on_hello,
        m.Ping: _on_ping,
        m.Ack: _on_ack,
        m.Nack: _on_nack,
        m.PingReq: _on_ping_req,
        m.Suspect: _on_accusation,
        m.Dead: _on_accusation,
        m.Left: _on_left,
        m.StoreEntry: _on_store_entry,
    }

__all__ = [
    "Event",
    "GroupView",
    "Member",
    "MemberStateChanged",
    "MemberUpdated",
    "Membership",
    "MembershipConfig",
    "Outgoing",
    "State",
    "StateSyncWanted",
    "StoreEntryReceived",
    "TRANSITIONS",
]
