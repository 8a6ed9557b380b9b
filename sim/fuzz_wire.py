"""Structure-aware fuzzing of what the sans-IO core reads from peers: ``python -m sim fuzz-wire``.

Each input is made from a seed: a valid message with extreme field values (0, 2**32 - 1,
2**63, 2**64 - 1 ...), a real encoding with bytes flipped, cut or spliced, or a run of
claims and entries. Inputs go to the parsers and protocol objects a peer's bytes reach:

* ``membership``: gossip datagrams, signed by throwaway keys (so mutated payloads get past
  the signature to the payload parser and the handlers), fed to a ``Membership``;
* ``view``: push-pull views for ``Membership.merge_state``;
* ``store``: gossiped entries and sync deltas for a ``ReplicatedMap`` with the writer rules;
* ``link``: bytes on a peer link, before and after a real handshake;
* ``chat``, ``groups``, ``transfer``, ``drive``: frames, operations, offers, bulk records,
  manifests and capabilities.

After every input the invariants are checked: no exception escapes but the parser's own
(``RemoteProtocolError``, ``BadEntry``, ``BadFrame``, ``BadOffer``, ``BadBulk``, ``DriveError``); the
victim's incarnation stays in its boot with room to refute, and it can always refute
again; the member table and replay guard stay within their budgets; the store's numbers
stay in range, its clock within the skew of now, and a local write still works.

State is kept for a batch of ``BATCH`` inputs and then made anew, so any failure replays
from its batch: ``python -m sim fuzz-wire --seed S --start N --inputs BATCH``.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from lannode.core import messages as m
from lannode.core.bulk import BadBulk, parse_bulk_hello
from lannode.core.chat import (
    MAX_COUNT,
    BadFrame,
    ChatMessage,
    MessageFrame,
    SyncFrame,
    decode_frame,
    encode_frame,
    make_message_id,
)
from lannode.core.drive import DriveError, Manifest, parse_cap
from lannode.core.groups import MAX_MEMBERS, fold, group_conversation, op_text, parse_op
from lannode.core.ids import node_id_for
from lannode.core.link import LinkConnection, Role
from lannode.core.membership import INCARNATION_BOOT_SHIFT, Membership, MembershipConfig
from lannode.core.store import (
    MAX_CLOCK_SKEW_MS,
    MAX_COUNTER,
    BadEntry,
    Entry,
    ReplicatedMap,
    decode_sync,
    encode_delta,
    encode_digest,
)
from lannode.core.transfer import BadOffer, Offer, parse_record
from lannode.core.wire import MAX_PAYLOAD, DatagramCodec
from lannode.core.writers import refusal

BATCH = 1000
TARGETS = ("membership", "view", "store", "link", "chat", "groups", "transfer", "drive")
EXTREMES = (0, 1, 2, 255, 256, 65535, 2**31 - 1, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1)
VICTIM_EPOCH = 5
NOW_MS = 1_790_000_000_000  # the store's wall clock in the fuzz: a date in 2026


class Violation(Exception):
    """An invariant that did not hold after an input."""


@dataclass(slots=True)
class Failure:
    index: int
    target: str
    error: str


@dataclass(slots=True)
class Result:
    seed: int
    inputs: int = 0
    per_target: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"seed": self.seed, "inputs": self.inputs, "per_target": self.per_target, "seconds": round(self.seconds, 2), "failures": [{"index": f.index, "target": f.target, "error": f.error} for f in self.failures]}


def _int(rng: random.Random, bits: int) -> int:
    top = (1 << bits) - 1
    roll = rng.random()
    if roll < 0.6:
        return min(rng.choice(EXTREMES), top)
    if roll < 0.8:
        return top - rng.randrange(4) if top > 4 else rng.randrange(top + 1)
    return rng.getrandbits(bits)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A real encoding, damaged: bytes flipped, cut, repeated or inserted."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if not buf or roll < 0.1:
            buf += rng.randbytes(rng.randint(1, 16))
        elif roll < 0.45:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif roll < 0.6:
            buf[rng.randrange(len(buf))] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif roll < 0.75:
            del buf[rng.randrange(len(buf)) :]
        elif roll < 0.9:
            at = rng.randrange(len(buf))
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            at = rng.randrange(len(buf))
            buf[at:at] = buf[at : at + rng.randint(1, 32)]
    return bytes(buf)


class _Batch:
    """The protocol objects one batch of inputs is fed to, and the attackers' keys."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.keys = [SigningKey(rng.randbytes(32)) for _ in range(4)]
        self.codecs = [DatagramCodec(key, epoch=rng.randrange(1, 2**32)) for key in self.keys]
        self.victim_key = SigningKey(rng.randbytes(32))
        config = MembershipConfig(max_members=64)
        self.victim = Membership(self.victim_key, epoch=VICTIM_EPOCH, name="victim", address=("127.0.9.1", 4000), link_port=4001, config=config, rng=random.Random(rng.random()))
        self.now = 1000.0
        self.victim.start(self.now)
        self.store = ReplicatedMap(SigningKey(rng.randbytes(32)), writers=refusal)
        self.store.put("drive/m/" + "a" * 32, b"{}", NOW_MS)
        self.ids = [self.victim.node_id, *(node_id_for(bytes(k.verify_key)) for k in self.keys), node_id_for(rng.randbytes(32))]
        self.link_capture = self._handshake()
        self.session: tuple[LinkConnection, LinkConnection] | None = None  # an open link whose records the dialer writes

    def _handshake(self) -> bytes:
        """What a dialer sends through a real handshake and one message: its hello, its
        proof, a sealed record (a fresh acceptor, with keys of its own, gets each damaged)."""
        dialer = LinkConnection(self.keys[0], Role.DIALER)
        acceptor = LinkConnection(self.victim_key, Role.LISTENER)
        capture = bytearray()
        for _ in range(4):
            sent = dialer.data_to_send()
            capture += sent
            if sent:  # b"" would tell it the stream ended
                acceptor.receive_data(sent)
            if reply := acceptor.data_to_send():
                dialer.receive_data(reply)
        if dialer.state.value == "open":
            dialer.send_message(2, b"hello")
            capture += dialer.data_to_send()
        return bytes(capture)

    # -- messages with extreme values ------------------------------------------------------
    def presence(self, i: int) -> m.Presence:
        rng = self.rng
        name = rng.choice(("mallory", "é" * 32, "x" * 64, "a\u200bb"))
        return m.Presence(bytes(self.keys[i].verify_key), _int(rng, 64), name, rng.choice(("127.0.9.2", "::1", "255.255.255.255")), _int(rng, 16), _int(rng, 16), _int(rng, 16)).signed(self.keys[i])

    def message(self) -> m.Message:
        rng = self.rng
        kind = rng.randrange(9)
        subject = rng.choice(self.ids)
        if kind == 0:
            return self.presence(rng.randrange(len(self.keys)))
        if kind == 1:
            i = rng.randrange(len(self.keys))
            return m.Left(self.ids[1 + i], _int(rng, 64)).signed(self.keys[i])
        if kind == 2:
            return m.Suspect(subject, _int(rng, 64))
        if kind == 3:
            return m.Dead(subject, _int(rng, 64))
        if kind == 4:
            return m.Ping(_int(rng, 32), subject)
        if kind == 5:
            return m.Ack(_int(rng, 32))
        if kind == 6:
            return m.PingReq(_int(rng, 32), subject)
        if kind == 7:
            return m.Nack(_int(rng, 32))
        return m.StoreEntry(self.entry().encode()) if rng.random() < 0.7 else m.Hello(direct=rng.random() < 0.5)

    def payload(self) -> bytes:
        parts: list[bytes] = []
        for _ in range(self.rng.randint(1, 5)):
            encoded = m.encode_message(self.message())
            if 1 + sum(map(len, parts)) + len(encoded) <= MAX_PAYLOAD:
                parts.append(encoded)
        payload = m.encode_payload(parts)
        if self.rng.random() < 0.3:
            payload = mutate(self.rng, payload)[:MAX_PAYLOAD]
        return payload

    def entry(self) -> Entry:
        rng = self.rng
        i = rng.randrange(len(self.keys))
        key = rng.choice(("drive/m/" + "a" * 32, f"drive/n/{self.ids[1 + i]}", f"drive/n/{self.victim.node_id}", f"rooms/r/{self.ids[1 + i]}", "groups/g/name", "k"))
        value = None if rng.random() < 0.3 else rng.choice((b"{}", b'"v"', json.dumps({"layout": {}, "holders": [], "owner": "x"}).encode(), rng.randbytes(8)))
        timestamp = NOW_MS + rng.randrange(-10**6, 10**6) if rng.random() < 0.4 else _int(rng, 64)
        version = max(1, _int(rng, 64))
        entry = Entry(key, value, bytes(self.keys[i].verify_key), version, timestamp)
        return entry.signed(self.keys[i])

    # -- one input for each target -------------------------------------------------------
    def membership(self) -> None:
        rng = self.rng
        who = rng.randrange(len(self.keys))
        if rng.random() < 0.1:
            data = rng.randbytes(rng.randint(0, 1500))
        else:
            data = self.codecs[who].encode(self.payload())
            if rng.random() < 0.1:
                data = mutate(rng, data)
        self.now += rng.random()
        self.victim.datagram_received(data, (f"127.0.9.{2 + rng.randrange(3)}", 4000 + who), self.now)
        self.victim.tick(self.now)
        self.victim.take_outgoing()
        self.victim.take_events()

    def view(self) -> None:
        rng = self.rng
        parts = [m.encode_message(self.message()) for _ in range(rng.randint(1, 6))]
        data = m.encode_payload(parts)
        if rng.random() < 0.3:
            data = mutate(rng, data)
        self.victim.merge_state(data, rng.choice(self.ids[1:]), self.now)

    def store_input(self) -> None:
        rng = self.rng
        if rng.random() < 0.6:
            data = self.entry().encode()
            self.store.merge_gossiped(mutate(rng, data) if rng.random() < 0.3 else data, NOW_MS)
            return
        entries = [self.entry() for _ in range(rng.randint(0, 3))]
        marks = {bytes(k.verify_key): _int(rng, 64) for k in self.keys[: rng.randint(0, 4)]}
        data = encode_delta(marks, entries) if rng.random() < 0.7 else encode_digest(marks, reply_wanted=True)
        if rng.random() < 0.4:
            data = mutate(rng, data)
        try:
            kind, _, got_marks, got = decode_sync(data)
        except BadEntry:
            return
        self.store.apply_delta(got_marks, got, NOW_MS)
        self.store.delta_for(got_marks)

    def link(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            self.link_records()
            return
        conn = LinkConnection(self.victim_key, Role.LISTENER)
        data = mutate(rng, self.link_capture) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 300))
        for at in range(0, len(data), max(1, rng.randint(1, 64))):
            conn.receive_data(data[at : at + 64])
        conn.events()
        conn.data_to_send()

    def link_records(self) -> None:
        """Records of an open link: unfinished messages on many channels, pings, close, odd
        sizes; the victim's buffers stay within their budget."""
        rng = self.rng
        if self.session is None or self.session[1].state.value != "open":
            dialer = LinkConnection(self.keys[1], Role.DIALER)
            acceptor = LinkConnection(self.victim_key, Role.LISTENER, max_message=64 * 1024, max_buffered=256 * 1024)
            for _ in range(3):
                if sent := dialer.data_to_send():  # (b"" would say the stream ended)
                    acceptor.receive_data(sent)
                if reply := acceptor.data_to_send():
                    dialer.receive_data(reply)
            acceptor.events()
            self.session = (dialer, acceptor)
        dialer, acceptor = self.session
        for _ in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.1:
                dialer.send_ping(rng.randbytes(rng.randint(0, 80)))
            else:
                dialer.send_record(rng.randint(1, 255), rng.randbytes(rng.choice((0, 1, 4096, 65536))), more=roll < 0.8)
        data = dialer.data_to_send()
        if rng.random() < 0.05:
            data = mutate(rng, data)
        acceptor.receive_data(data)
        acceptor.events()
        if acceptor.buffered > 256 * 1024:
            raise Violation(f"a link holds {acceptor.buffered} bytes of unfinished messages, over its budget")
        if rng.random() < 0.5:
            acceptor.data_to_send()  # a peer that reads now and then

    def chat(self) -> None:
        rng = self.rng
        key = self.keys[rng.randrange(len(self.keys))]
        message = ChatMessage(make_message_id(NOW_MS), "dm:" + "a" * 24, bytes(key.verify_key), _int(rng, 64) % (2**63), _int(rng, 64) % (2**63), _int(rng, 63), "hi").signed(key)
        frame = encode_frame(MessageFrame(message)) if rng.random() < 0.7 else encode_frame(SyncFrame("g:" + "b" * 32, {self.ids[1]: _int(rng, 53)}))
        try:
            decoded = decode_frame(mutate(rng, frame) if rng.random() < 0.6 else frame)
        except BadFrame:
            return
        if isinstance(decoded, MessageFrame):
            got = decoded.message
            if not (0 <= got.seq <= MAX_COUNT and 0 <= got.lamport <= MAX_COUNT and 0 <= got.sent_at <= MAX_COUNT):
                raise Violation(f"a chat message out of range was taken: seq {got.seq}, lamport {got.lamport}")

    def groups(self) -> None:
        rng = self.rng
        key = self.keys[0]
        cut = rng.choice((None, {}, {self.ids[1]: _int(rng, 64)}, {self.ids[2]: -1}, {"x": 1}, [1], {self.ids[1]: True}))
        body = json.dumps({"op": rng.choice(("create", "invite", "remove", "rename", "leave", "x")), "name": rng.choice((None, "n", "x" * 300, 3)), "members": rng.choice(([], [self.ids[1]], ["x"], None, [1] * 3)), "cut": cut})
        if rng.random() < 0.4:
            body = mutate(rng, body.encode()).decode("utf-8", "replace")
        message = ChatMessage(make_message_id(NOW_MS), "g:" + "b" * 32, bytes(key.verify_key), 1, 1, 1, body, kind="group").signed(key)
        try:
            parse_op(message)
        except BadFrame:
            pass
        self.group_fold()

    def group_fold(self) -> None:
        """A group's operations by its creator and two members, with cuts and seqs of any
        size, in any order: the fold ends within bounds and never raises."""
        rng = self.rng
        creator, *others = self.keys[:3]
        ids = [node_id_for(bytes(k.verify_key)) for k in others]
        gid = "c" * 32
        conversation = group_conversation(gid)

        def op(key: SigningKey, text: str, message_id: str | None = None) -> ChatMessage:
            return ChatMessage(message_id or make_message_id(NOW_MS), conversation, bytes(key.verify_key), _int(rng, 53), _int(rng, 53), 0, text, "group")

        ops = [op(creator, op_text("create", name="g", members=ids), gid)]
        for _ in range(rng.randint(0, 6)):
            who = rng.choice((creator, *others))
            kind = rng.choice(("invite", "remove", "leave", "rename"))
            members = [rng.choice(ids)]
            cut = {members[0]: _int(rng, 53)} if kind == "remove" and rng.random() < 0.7 else None
            ops.append(op(who, op_text(kind, name="n" if kind == "rename" else None, members=members if kind in ("invite", "remove") else (), cut=cut)))
        rng.shuffle(ops)
        equivocal = {(rng.choice(ids), _int(rng, 53))} if rng.random() < 0.3 else set()
        state = fold(gid, ops, equivocal)
        if state is not None and (not state.members <= state.ever or len(state.members) > MAX_MEMBERS or not set(state.cuts) <= state.removed):
            raise Violation(f"a group fold out of bounds: {len(state.members)} members, cuts {state.cuts}")

    def transfer(self) -> None:
        rng = self.rng
        offer = json.dumps({"id": "c" * 32, "chunk_size": _int(rng, 64), "files": [{"name": rng.choice(("a.txt", "../x", "/etc/passwd", "a/b/c", "\x00", "")), "size": _int(rng, 64), "root": "00" * 32, "chunks": _int(rng, 32)}]}).encode()
        for parse, data in ((Offer.decode, offer), (parse_bulk_hello, rng.randbytes(rng.randint(0, 40))), (parse_record, bytes([rng.randrange(4)]) + rng.randbytes(rng.randint(0, 40)))):
            try:
                parse(mutate(rng, data) if rng.random() < 0.5 else data)
            except (BadOffer, BadBulk):
                pass

    def drive(self) -> None:
        rng = self.rng
        manifest = {"layout": {"file_id": "a" * 32, "size": _int(rng, 64), "k": _int(rng, 8), "m": _int(rng, 8), "segment": _int(rng, 32)}, "holders": [self.ids[1]] * rng.randint(0, 4), "version": _int(rng, 64), "owner": self.ids[1], "created": rng.choice((0, 1e308, float("nan")))}
        text = json.dumps(manifest).encode()
        try:
            Manifest.from_json(json.loads(mutate(rng, text) if rng.random() < 0.5 else text))
        except (DriveError, ValueError):  # ValueError: json.loads of damaged text
            pass
        try:
            parse_cap(mutate(rng, b"lnd-r:" + b"a" * 52 + b":" + b"b" * 52).decode("utf-8", "replace"))
        except DriveError:
            pass

    # -- invariants ------------------------------------------------------------------------
    def check(self) -> None:
        victim = self.victim
        incarnation = victim.presence.incarnation
        if incarnation >> INCARNATION_BOOT_SHIFT != VICTIM_EPOCH:
            raise Violation(f"the victim's incarnation {incarnation:#x} left its boot")
        if len(victim.members) > victim.config.max_members:
            raise Violation(f"{len(victim.members)} members, over the limit of {victim.config.max_members}")
        if len(victim.codec.replays.senders) > victim.codec.replays.max_senders:
            raise Violation("the replay guard is over its budget")
        admission = victim.admission
        if len(admission) > len(victim.members) or admission.sources > victim.config.admission_sources:
            raise Violation(f"admission out of bounds: {len(admission)} newcomers of {len(victim.members)} members, {admission.sources} hosts")
        for member in victim.members.values():
            if not 0 <= member.incarnation < 1 << 64:
                raise Violation(f"a member at incarnation {member.incarnation}")
            if member.incarnation > member.presence.incarnation and member.state.value != "left":
                raise Violation(f"a member held {member.state.value} at {member.incarnation:#x}, above the {member.presence.incarnation:#x} it signed")
        store = self.store
        if store.clock > NOW_MS + MAX_CLOCK_SKEW_MS:
            raise Violation(f"the store's clock ran {store.clock - NOW_MS} ms ahead")
        for entry in store.entries.values():
            if not (1 <= entry.version <= MAX_COUNTER and 0 <= entry.timestamp <= MAX_COUNTER):
                raise Violation(f"a store entry out of range: version {entry.version}, timestamp {entry.timestamp}")

    def check_at_end(self) -> None:
        """The victim can still refute, and the store can still be written."""
        victim = self.victim
        before = victim.presence.incarnation
        codec = self.codecs[1]
        victim.datagram_received(codec.encode(m.encode_payload([m.encode_message(m.Suspect(victim.node_id, before))])), ("127.0.9.2", 4001), self.now)
        if victim.presence.incarnation != before + 1:
            raise Violation(f"the victim did not refute a suspicion at its incarnation ({before:#x} -> {victim.presence.incarnation:#x})")
        self.store.put("fuzz/after", b"1", NOW_MS)


def run(inputs: int, *, seed: int = 1, start: int = 0, on_batch: Callable[[int], None] | None = None) -> Result:
    """Feed ``inputs`` inputs, from input ``start`` (a multiple of BATCH) of ``seed``."""
    result = Result(seed=seed)
    began = time.monotonic()
    index = start - start % BATCH
    end = start + inputs
    while index < end:
        batch = _Batch(random.Random(f"{seed}:{index // BATCH}"))
        steps: dict[str, Callable[[], None]] = {
            "membership": batch.membership, "view": batch.view, "store": batch.store_input, "link": batch.link,
            "chat": batch.chat, "groups": batch.groups, "transfer": batch.transfer, "drive": batch.drive,
        }  # fmt: skip
        weights = (40, 8, 20, 6, 10, 4, 6, 6)
        for _ in range(min(BATCH, end - index)):
            target = batch.rng.choices(TARGETS, weights)[0]
            try:
                steps[target]()
                batch.check()
            except Exception:
                result.failures.append(Failure(index, target, traceback.format_exc(limit=6)))
            result.per_target[target] = result.per_target.get(target, 0) + 1
            result.inputs += 1
            index += 1
        try:
            batch.check_at_end()
        except Exception:
            result.failures.append(Failure(index - 1, "end of batch", traceback.format_exc(limit=6)))
        if on_batch is not None:
            on_batch(result.inputs)
    result.seconds = time.monotonic() - began
    return result
