"""An aiortc participant driven from trio: this node as a front that pages call.

``open_participant`` registers a front with the local node (``rtc.register``),
starts the asyncio bridge and the engine, and pumps signaling both ways. On top of
it, the call protocol the page speaks (``ui/calls.js``), over each session's data
channel:

- a 1:1 call: ``{"t": "call", "id", "name"}`` rings, and is answered
  ``{"t": "call-accept", "id"}`` or ``{"t": "call-decline", "id", "reason"?}``;
  ``{"t": "call-cancel", "id"}`` stops the ringing on a person's other pages;
  ``{"t": "call-leave", "id"}`` hangs up;
- a room: its members are kept by the nodes (``room.join``, ``room.members``), and
  every participant opens a session with every other participant's front;
- a direct chat message: ``{"t": "chat", "body"}`` carries a message the author's
  node signed; the receiving side hands it to its node (``chat.deliver``).

``call_peer``, ``join_room`` and ``answer_calls`` are what ``lannode call`` and
the ``answer`` plugin run; ``send_direct`` is ``lannode chat send --direct``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from lannode.calls.bridge import AsyncioThread, open_bridge
from lannode.net.api_client import ApiClient, RemoteError

log = logging.getLogger("lannode.calls")

MAX_ROOM = 6  # ui/calls.js: a full mesh of at most six
ROOM_POLL = 1.5
RING_TIMEOUT = 45.0
CHANNEL_TIMEOUT = 15.0
STATUS_EVERY = 2.0


RECORD_SUFFIXES = (".webm", ".mkv", ".mp4")  # media.RECORD_FORMATS: VP8 + Opus, or H.264 + AAC


class CallError(Exception):
    pass


def check_record_path(path: Path) -> None:
    """Before anything heavy is imported: a file this participant can record to."""
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise CallError(f"{path}: record to .webm or .mkv (VP8 + Opus) or .mp4 (H.264 + AAC)")
    if not path.parent.is_dir():
        raise CallError(f"{path.parent}: no such folder to record into")


@dataclass(slots=True)
class CallSummary:
    target: str
    outcome: str  # ended, declined, unanswered, failed
    reason: str = ""
    seconds: float = 0.0
    participants: dict[str, str] = field(default_factory=dict)  # front -> name
    frames_sent: dict[str, int] = field(default_factory=dict)
    frames_received: dict[str, dict[str, int]] = field(default_factory=dict)
    recordings: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "outcome": self.outcome,
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
            "participants": self.participants,
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "recordings": self.recordings,
        }


@dataclass(frozen=True, slots=True)
class ApiEvent:
    """An event of the node's API other than signaling (chat.receipt, ...)."""

    topic: str
    data: Any


class Participant:
    def __init__(
        self,
        client: ApiClient,
        bridge: AsyncioThread,
        report: Callable[[Any], None],
        front: str,
        node: dict[str, Any],
        on_status: Callable[[str, dict[str, Any]], None],
        default_source: str | None,
    ) -> None:
        self.client = client
        self.bridge = bridge
        self._report = report  # handed to the engine: what it sees crosses back to trio
        self.default_source = default_source  # the source an answering participant opens on its first offer
        self.recorded: list[str] = []
        self.front = front
        self.node_id: str = node["node_id"]
        self.name: str = node["name"]
        self.on_status = on_status
        self.engine: Any = None
        self.source: Any = None
        self.receiver: Any = None
        self.recording_to: dict[str, Path] = {}  # front -> file, read by the receiver on the asyncio side
        self.names: dict[str, str] = {}  # node id -> name
        send, receive = trio.open_memory_channel[Any](math.inf)
        self._events_in, self.events = send, receive
        self.scope: trio.CancelScope | None = None  # what hang_up() ends: the ringing, or the call
        self.hung_up = False

    def hang_up(self) -> None:
        """The person at this end hangs up (Ctrl-C): the call ends cleanly, telling the others."""
        self.hung_up = True
        if self.scope is not None:
            self.scope.cancel()

    # -- plumbing ----------------------------------------------------------------------------------
    async def start_engine(self, source: str | None) -> None:
        """Import aiortc and av (only now), open the source and make the engine."""

        async def make() -> None:
            from lannode.calls import engine, media

            try:
                self.source = media.open_source(source) if source else None
            except media.SourceError as exc:
                raise CallError(str(exc)) from None
            self.receiver = media.Receiver(self.recording_to.get)
            self.engine = engine.Engine(self.front, self._report, source=self.source, sink=self.receiver)

        await self.bridge.run(make)

    async def engine_call(self, method: str, *args: Any) -> Any:
        return await self.bridge.run(getattr(self.engine, method), *args)

    async def _pump_api(self) -> None:
        async for topic, data in self.client.events():
            if topic != "rtc.signal":
                self._events_in.send_nowait(ApiEvent(topic, data))
                continue
            if not isinstance(data, dict) or not data.get("from_front"):
                continue
            if self.engine is None:
                if data.get("kind") != "offer":
                    continue
                try:
                    await self.start_engine(self.default_source)
                except CallError as exc:
                    log.error("cannot take calls: %s", exc)
                    continue
            self.names.setdefault(data["from"], data.get("from_name") or data["from"][:8])
            await self.engine_call("signal", data["from"], data["from_front"], data["kind"], data.get("data"))

    async def _pump_engine(self, reports: trio.MemoryReceiveChannel[Any]) -> None:
        from lannode.calls.events import SessionClosed, Signal

        async for item in reports:
            if isinstance(item, Signal):
                try:
                    await self.client.call("rtc.signal", peer=item.node, kind=item.kind, data=item.data, to_front=item.front)
                except RemoteError as exc:
                    log.info("signal %s to front %s: %s", item.kind, item.front, exc.message)
                    if item.kind != "hangup" and self.engine is not None:
                        await self.engine_call("close", item.front, False, "unreachable")
                continue
            if isinstance(item, SessionClosed):
                self.recording_to.pop(item.front, None)
            self._events_in.send_nowait(item)

    async def peer_name(self, node_id: str) -> str:
        if node_id not in self.names:
            for peer in await self.client.call("peer.list"):
                self.names[peer["node_id"]] = peer["name"]
        return self.names.get(node_id, node_id[:8])

    async def send(self, front: str, message: dict[str, Any]) -> bool:
        sent: bool = await self.engine_call("send", front, message)
        return sent

    async def close(self, front: str, tell: bool = True) -> None:
        await self.engine_call("close", front, tell, "left")

    async def counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        async def read() -> tuple[dict[str, int], dict[str, dict[str, int]]]:
            sent = dict(self.source.sent) if self.source is not None else {}
            return sent, self.receiver.counts() if self.receiver is not None else {}

        return await self.bridge.run(read)

    async def shutdown(self) -> None:
        async def stop() -> list[str]:
            if self.engine is not None:
                await self.engine.shutdown()
            if self.receiver is not None:
                self.receiver.close()
            if self.source is not None:
                self.source.stop()
            return list(self.receiver.files) if self.receiver is not None else []

        self.recorded = await self.bridge.run(stop)

    async def status_loop(self, summary: CallSummary, started: float) -> None:
        while True:
            await trio.sleep(STATUS_EVERY)
            sent, received = await self.counts()
            summary.frames_sent, summary.frames_received = sent, received
            self.on_status("call.progress", {"seconds": round(time.monotonic() - started, 1), "frames_sent": sent, "frames_received": received})


@asynccontextmanager
async def open_participant(client: ApiClient, *, source: str | None, on_status: Callable[[str, dict[str, Any]], None], engine_now: bool = True) -> AsyncIterator[Participant]:
    """A registered front with its engine; ``engine_now=False`` waits for the first
    offer to import aiortc (the answer plugin: a node nobody calls never loads it)."""
    node = await client.call("node.status")
    async with open_bridge() as (bridge, reports, report):
        front = (await client.call("rtc.register"))["front"]
        participant = Participant(client, bridge, report, front, node, on_status, source)
        await client.subscribe("rtc.*")
        if engine_now:
            await participant.start_engine(source)  # a source that will not open fails here, plainly
        async with trio.open_nursery() as nursery:
            nursery.start_soon(participant._pump_api)
            nursery.start_soon(participant._pump_engine, reports)
            try:
                yield participant
            finally:
                with trio.CancelScope(shield=True):
                    await participant.shutdown()
                nursery.cancel_scope.cancel()


# -- a 1:1 call ------------------------------------------------------------------------------------
async def call_peer(p: Participant, peer: str, *, duration: float | None, record: Path | None, ring_timeout: float = RING_TIMEOUT) -> CallSummary:
    from lannode.calls.events import ChannelMessage, ChannelOpen, SessionClosed

    summary = CallSummary(target=peer, outcome="failed")
    try:
        hello = await p.client.call("rtc.signal", peer=peer, kind="hello", data={})
    except RemoteError as exc:
        raise CallError(f"nobody to ring: {exc.message}") from None
    node, fronts = hello["peer"], list(hello["delivered_to"])
    name = await p.peer_name(node)
    summary.target = name
    if not fronts:
        raise CallError(f"{name} has no lannode page open, so there is nobody to ring")
    if record is not None:
        for front in fronts:
            p.recording_to[front] = record
    for front in fronts:
        await p.engine_call("open", node, front, True)
    call_id = str(uuid.uuid4())
    ringing, declined = set(fronts), ""
    accepted: str | None = None
    p.on_status("call.ringing", {"peer": node, "name": name, "pages": len(fronts)})
    with trio.move_on_after(ring_timeout) as p.scope:
        async for event in p.events:
            if isinstance(event, ChannelOpen) and event.front in ringing:
                await p.send(event.front, {"t": "call", "id": call_id, "name": p.name})
            elif isinstance(event, ChannelMessage) and event.front in ringing and event.data.get("id") == call_id:
                if event.data.get("t") == "call-accept":
                    accepted = event.front
                    break
                if event.data.get("t") == "call-decline":
                    ringing.discard(event.front)
                    declined = str(event.data.get("reason") or "")
            elif isinstance(event, SessionClosed) and event.front in ringing:
                ringing.discard(event.front)
                declined = declined or f"the connection {event.reason}"
            if not ringing:
                break
    for front in ringing - {accepted}:
        await p.send(front, {"t": "call-cancel", "id": call_id})
        await p.close(front)
        p.recording_to.pop(front, None)
    if accepted is None:
        if p.hung_up:
            summary.outcome, summary.reason = "ended", "hung up before an answer"
        elif declined or not ringing:
            summary.outcome, summary.reason = "declined", declined
        else:
            summary.outcome, summary.reason = "unanswered", f"no answer within {ring_timeout:g} s"
        return summary
    summary.participants = {accepted: name}
    await p.engine_call("start_media", accepted)
    p.on_status("call.accepted", {"peer": node, "name": name, "front": accepted})
    started = time.monotonic()
    summary.outcome, summary.reason = "ended", "the time was up"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(p.status_loop, summary, started)
        with trio.move_on_after(duration if duration is not None else math.inf) as p.scope:
            async for event in p.events:
                if isinstance(event, ChannelMessage) and event.front == accepted and event.data.get("t") == "call-leave":
                    summary.reason = f"{name} hung up"
                    break
                if isinstance(event, SessionClosed) and event.front == accepted:
                    summary.reason = f"the connection {event.reason}"
                    break
        nursery.cancel_scope.cancel()
    if p.hung_up:
        summary.reason = "hung up here"
    summary.seconds = time.monotonic() - started
    summary.frames_sent, summary.frames_received = await p.counts()
    await p.send(accepted, {"t": "call-leave", "id": call_id})
    await p.engine_call("flush", accepted)
    await p.close(accepted)
    return summary


# -- a meeting room --------------------------------------------------------------------------------
async def join_room(p: Participant, room: str, *, duration: float | None, record: Path | None) -> CallSummary:
    from lannode.calls.events import ChannelMessage, SessionClosed

    members = (await p.client.call("room.members", room=room))["members"]
    others = [m for m in members if m["node_id"] != p.node_id]
    if len(others) >= MAX_ROOM:
        raise CallError(f"room {room} is full: a mesh call holds at most {MAX_ROOM} people")
    summary = CallSummary(target=room, outcome="ended", reason="the time was up")
    in_room: dict[str, str] = {}  # front -> node
    await p.client.call("room.join", room=room)
    p.on_status("room.joined", {"room": room, "members": len(others) + 1})
    started = time.monotonic()

    def record_file(front: str, name: str) -> Path | None:
        if record is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:32] or "peer"
        return record.with_name(f"{record.stem}-{safe}-{front[:6]}{record.suffix}")

    async def poll() -> None:
        while True:
            try:
                listed = (await p.client.call("room.members", room=room))["members"]
            except RemoteError:
                listed = None
            if listed is not None:
                fronts = {f: m["node_id"] for m in listed if m["node_id"] != p.node_id for f in m.get("fronts", [])}
                for front, node in fronts.items():
                    if front not in in_room:
                        in_room[front] = node
                        name = await p.peer_name(node)
                        summary.participants[front] = name
                        if (path := record_file(front, name)) is not None:
                            p.recording_to[front] = path
                        p.on_status("room.member", {"front": front, "name": name, "state": "joined"})
                        await p.engine_call("open", node, front, True)
                        await p.engine_call("start_media", front)
                for front in set(in_room) - set(fronts):
                    del in_room[front]
                    p.on_status("room.member", {"front": front, "name": summary.participants.get(front, ""), "state": "left"})
                    await p.close(front, False)
            await trio.sleep(ROOM_POLL)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            nursery.start_soon(p.status_loop, summary, started)
            with trio.move_on_after(duration if duration is not None else math.inf) as p.scope:
                async for event in p.events:
                    if isinstance(event, ChannelMessage) and event.front in in_room and event.data.get("t") == "call-leave":
                        await p.close(event.front, False)
                    elif isinstance(event, SessionClosed) and event.front in in_room:
                        del in_room[event.front]  # the next poll opens it again if that page is still in the room
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            summary.reason = "left here" if p.hung_up else summary.reason
            summary.seconds = time.monotonic() - started
            summary.frames_sent, summary.frames_received = await p.counts()
            for front in list(in_room):
                await p.send(front, {"t": "call-leave", "id": f"room:{room}"})
            try:
                await p.client.call("room.leave", room=room)
            except RemoteError:
                pass
            for front in list(in_room):
                await p.engine_call("flush", front)
                await p.close(front)
    return summary


# -- answering ---------------------------------------------------------------------------------------
async def answer_calls(p: Participant, *, allowed: list[str], record_dir: Path | None) -> None:
    """Answer calls from verified peers named in ``allowed`` (names or node ids), one at a
    time; decline everyone else. Direct chat messages are handed to the node."""
    from lannode.calls.events import ChannelMessage, SessionClosed

    current: tuple[str, str] | None = None  # (front, call id)
    async for event in p.events:
        if isinstance(event, ChannelMessage):
            data = event.data
            if data.get("t") == "chat":
                try:
                    await p.client.call("chat.deliver", body=data.get("body"))
                except RemoteError as exc:
                    log.warning("a direct chat message was refused: %s", exc.message)
            elif data.get("t") == "call":
                call_id = str(data.get("id", ""))[:64]
                verdict = await _may_answer(p, event.node, allowed)
                if current is not None:
                    await p.send(event.front, {"t": "call-decline", "id": call_id, "reason": "busy"})
                elif verdict:
                    await p.send(event.front, {"t": "call-decline", "id": call_id, "reason": verdict})
                    p.on_status("call.declined", {"peer": event.node, "reason": verdict})
                else:
                    current = (event.front, call_id)
                    if record_dir is not None:
                        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in await p.peer_name(event.node))[:32]
                        p.recording_to[event.front] = record_dir / f"call-{time.strftime('%Y%m%d-%H%M%S')}-{name}.webm"
                    await p.engine_call("start_media", event.front)
                    await p.send(event.front, {"t": "call-accept", "id": call_id})
                    p.on_status("call.accepted", {"peer": event.node, "name": await p.peer_name(event.node), "front": event.front})
            elif data.get("t") == "call-leave" and current is not None and event.front == current[0]:
                await p.close(event.front)
                current = None
                p.on_status("call.ended", {"peer": event.node})
        elif isinstance(event, SessionClosed) and current is not None and event.front == current[0]:
            current = None
            p.on_status("call.ended", {"front": event.front, "reason": event.reason})


async def _may_answer(p: Participant, node_id: str, allowed: list[str]) -> str:
    """Why this caller is not answered automatically, or "" when it is."""
    peers = {peer["node_id"]: peer for peer in await p.client.call("peer.list")}
    peer = peers.get(node_id)
    if peer is None:
        return "not a known peer"
    if not any(a == node_id or a == peer["name"] or (len(a) >= 8 and node_id.startswith(a)) for a in allowed):
        return "this node answers only the people its owner listed"
    if peer["trust"] != "verified":
        return "this node answers only verified peers"
    return ""


# -- chat over a data channel ------------------------------------------------------------------------
async def send_direct(p: Participant, peer: str, text: str, *, wait: float = 5.0) -> dict[str, Any]:
    """Store and send a message, and carry it to the peer's page over a data channel too.
    The link's copy waits 2 s for the page's receipt and goes anyway if none comes."""
    from lannode.calls.events import ChannelOpen

    path, why, node = "link", "", peer
    await p.client.subscribe("chat.receipt")
    try:
        hello = await p.client.call("rtc.signal", peer=peer, kind="hello", data={})
        node, fronts = hello["peer"], list(hello["delivered_to"])
    except RemoteError as exc:
        fronts, why = [], exc.message
    record: dict[str, Any] = await p.client.call("chat.send", peer=node, text=text, direct=bool(fronts))
    if fronts:
        for front in fronts:
            await p.engine_call("open", node, front, False)
        with trio.move_on_after(wait):
            async for event in p.events:
                if isinstance(event, ChannelOpen) and event.front in fronts:
                    if await p.send(event.front, {"t": "chat", "body": record["body"]}):
                        await p.engine_call("flush", event.front)
                        path = "direct"
                        break
        if path != "direct":
            why = f"no data channel opened within {wait:g} s"
        else:  # the page hands it to its node, which acknowledges over the link
            with trio.move_on_after(wait):
                async for event in p.events:
                    if isinstance(event, ApiEvent) and event.topic == "chat.receipt" and event.data.get("id") == record["id"]:
                        record["delivered_at"] = event.data.get("at")
                        break
        for front in fronts:
            await p.close(front)
    record.pop("body", None)
    return {**record, "path": path, **({"why_not_direct": why} if why else {})}
