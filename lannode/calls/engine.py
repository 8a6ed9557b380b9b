"""The peer connections of an aiortc participant: the asyncio side of the bridge.

One ``Session`` is one RTCPeerConnection with one front of a peer node, the same
thing ``ui/rtc.js`` calls a Session, and it behaves the same way on the wire:

- the data channel is negotiated by both ends as id 0, label "lannode";
- offers and answers follow perfect negotiation: the front with the smaller id is
  polite. aiortc cannot roll back a local offer, so a polite session whose first
  offer crossed the other side's starts over with a fresh connection and answers
  theirs; this node only ever makes a session's first offer (a page renegotiates,
  this side answers), so nothing that was connected is thrown away;
- ICE uses host candidates only (no STUN server: nothing leaves the room); aiortc
  puts all of its candidates in the SDP, the page trickles its own.

The engine never decides who may call or what a call is: the trio side
(``participant``) does, and tells the engine to open, close, send or start sending
media. What the engine sees it reports through ``emit``: ``Signal`` to send, and
``ChannelOpen``, ``ChannelMessage`` and ``SessionClosed``.
Media stays on this side: incoming tracks go to a sink, never across the bridge.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from lannode.calls.events import ChannelMessage, ChannelOpen, SessionClosed, Signal

log = logging.getLogger("lannode.calls")

MAX_MESSAGE_BYTES = 256 * 1024
MAX_SESSIONS = 32  # peer connections at once: each holds sockets and a DTLS context
PREFERRED = {"video": ("video/VP8", "video/rtx"), "audio": ("audio/opus",)}  # what Chromium and aiortc share reliably


class Source(Protocol):
    """What this node sends: a fresh track of each kind it has, for each session."""

    def tracks(self) -> list[MediaStreamTrack]: ...


class Sink(Protocol):
    """Where received tracks go (counted, recorded); all of one negotiation at once."""

    def add(self, front: str, tracks: list[MediaStreamTrack]) -> None: ...

    def remove(self, front: str) -> None: ...


class Session:
    def __init__(self, engine: "Engine", node: str, front: str, media_lines: bool = False) -> None:
        self.engine = engine
        self.node = node
        self.front = front
        self.media_lines = media_lines  # offer audio and video from the start (this node calls)
        self.media = False  # send this node's tracks (in a call with this front)
        self.making_offer = False
        self.ignore_offer = False
        self.offered_ever = False
        self.closed = False
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.received: set[MediaStreamTrack] = set()
        self.pc = self._new_connection()
        self.worker = asyncio.ensure_future(self._work())

    @property
    def polite(self) -> bool:
        return self.engine.front < self.front

    def _new_connection(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("lannode", negotiated=True, id=0, ordered=True)
        self.channel = channel

        @channel.on("open")
        def on_open() -> None:
            if channel is self.channel:
                self.engine.emit(ChannelOpen(self.node, self.front))

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if channel is not self.channel or not isinstance(message, str) or len(message) > MAX_MESSAGE_BYTES:
                return  # binary (a page's file chunks) is not for this node
            try:
                data = json.loads(message)
            except ValueError:
                self.engine.rejected += 1
                return
            if isinstance(data, dict):
                self.engine.emit(ChannelMessage(self.node, self.front, data))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is self.pc and pc.connectionState in ("failed", "closed") and not self.closed:
                await self.engine.close(self.front, tell=False, reason=pc.connectionState)

        if self.media_lines:
            # audio and video lines from the first offer, sending nothing until the call is
            # accepted (then the tracks go in without another negotiation)
            for kind in ("audio", "video"):
                transceiver = pc.addTransceiver(kind, direction="sendrecv")
                codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType in PREFERRED[kind]]
                transceiver.setCodecPreferences(codecs)
        if self.media:
            self._add_tracks(pc)
        return pc

    def _add_tracks(self, pc: RTCPeerConnection) -> None:
        """Send this node's tracks: into this side's transceivers or those a page offered
        (aiortc's addTrack fills a transceiver of the kind that has no track), else new ones
        that the page's next offer takes up."""
        source = self.engine.source
        if source is None:
            return
        sending = {t.sender.track.kind for t in pc.getTransceivers() if t.sender.track is not None}
        for track in source.tracks():
            if track.kind in sending:
                track.stop()
                continue
            pc.addTrack(track)

    # -- the work, one signal at a time ----------------------------------------------------------
    async def _work(self) -> None:
        while True:
            kind, data = await self.inbox.get()
            try:
                if kind == "offer-now":
                    await self._offer()
                else:
                    await self._on_signal(kind, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a page's odd SDP must not end the node's other sessions
                self.engine.rejected += 1
                log.warning("session with front %s: %s refused: %s", self.front, kind, exc)
                if self.pc.remoteDescription is None and kind == "offer":
                    # nothing was ever agreed: don't keep a connection (and its socket) for it
                    asyncio.ensure_future(self.engine.close(self.front, True, "refused"))
                    return

    async def _offer(self) -> None:
        self.making_offer = True
        try:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            self.offered_ever = True
            self._say("offer", _description(self.pc.localDescription))
        finally:
            self.making_offer = False

    async def _on_signal(self, kind: str, data: Any) -> None:
        if kind in ("offer", "answer"):
            if not isinstance(data, dict) or not isinstance(data.get("sdp"), str) or data.get("type") != kind:
                raise ValueError(f"a malformed {kind}")
            collision = kind == "offer" and (self.making_offer or self.pc.signalingState != "stable")
            self.ignore_offer = not self.polite and collision
            if self.ignore_offer:
                return  # impolite: they roll back and answer ours
            if collision:
                # polite, and aiortc cannot roll back: start over and answer theirs (our offer
                # was this session's first, so nothing connected is lost)
                old = self.pc
                self.pc = self._new_connection()
                await old.close()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=kind))
            if kind == "offer":
                if self.media:
                    self._add_tracks(self.pc)
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                self._say("answer", _description(self.pc.localDescription))
            self._new_tracks()
        elif kind == "candidate":
            await self._add_candidate(data)
        elif kind == "hangup":
            await self.engine.close(self.front, tell=False, reason="hung up")

    async def _add_candidate(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ValueError("a malformed candidate")
        text = data.get("candidate")
        if not isinstance(text, str) or not text:
            return  # end of candidates
        candidate: RTCIceCandidate = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
        candidate.sdpMid = data.get("sdpMid")
        candidate.sdpMLineIndex = data.get("sdpMLineIndex")
        try:
            await self.pc.addIceCandidate(candidate)
        except Exception:
            if not self.ignore_offer:
                raise

    def _new_tracks(self) -> None:
        tracks = [t.receiver.track for t in self.pc.getTransceivers() if t.receiver.track is not None and t.receiver.track not in self.received and t.currentDirection in ("recvonly", "sendrecv")]
        if tracks:
            self.received.update(tracks)
            if self.engine.sink is not None:
                self.engine.sink.add(self.front, tracks)

    def _say(self, kind: str, data: Any) -> None:
        self.engine.emit(Signal(self.node, self.front, kind, data))

    async def close(self) -> None:
        self.closed = True
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)
        await self.pc.close()


class Engine:
    def __init__(self, front: str, emit: Callable[[Any], None], *, source: Source | None = None, sink: Sink | None = None) -> None:
        self.front = front
        self.emit = emit
        self.source = source
        self.sink = sink
        self.sessions: dict[str, Session] = {}
        self.rejected = 0

    def _session(self, node: str, front: str, media_lines: bool = False) -> Session:
        session = self.sessions.get(front)
        if session is None:
            session = self.sessions[front] = Session(self, node, front, media_lines)
        return session

    async def open(self, node: str, front: str, media: bool) -> None:
        """A session with a peer's front, offered from here (unless one is open already);
        ``media``: with audio and video lines, for ``start_media`` to fill."""
        if front not in self.sessions:
            self._session(node, front, media).inbox.put_nowait(("offer-now", None))

    async def signal(self, node: str, front: str, kind: str, data: Any) -> None:
        """A signaling message from a peer's front; an offer from a front unknown here opens a session."""
        if kind == "hello":
            return  # they look for fronts here; they will offer
        session = self.sessions.get(front)
        if session is None:
            if kind != "offer":
                return  # a late candidate or hangup of a session closed here
            if len(self.sessions) >= MAX_SESSIONS:
                self.rejected += 1
                self.emit(Signal(node, front, "hangup", {"reason": "too many sessions"}))
                return
            session = self._session(node, front)
        session.inbox.put_nowait((kind, data))

    async def start_media(self, front: str) -> None:
        """Send this node's tracks to this front: at once where the lines are negotiated,
        else from the page's next offer (a page that accepts adds its tracks and offers)."""
        session = self.sessions.get(front)
        if session is not None and not session.media:
            session.media = True
            session._add_tracks(session.pc)

    async def send(self, front: str, message: dict[str, Any]) -> bool:
        session = self.sessions.get(front)
        if session is None or session.channel.readyState != "open":
            return False
        session.channel.send(json.dumps(message, separators=(",", ":"), ensure_ascii=False))
        return True

    async def flush(self, front: str, timeout: float = 2.0) -> None:
        """Wait until what was sent on the channel has left this side (before closing)."""
        session = self.sessions.get(front)
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while session is not None and session.channel.readyState == "open" and session.channel.bufferedAmount > 0 and loop.time() < until:
            await asyncio.sleep(0.02)

    async def close(self, front: str, tell: bool = True, reason: str = "closed") -> None:
        session = self.sessions.pop(front, None)
        if session is None:
            return
        if tell:
            session._say("hangup", {})
        if self.sink is not None:
            self.sink.remove(front)
        self.emit(SessionClosed(front, reason))
        await session.close()

    async def shutdown(self) -> None:
        for front in list(self.sessions):
            await self.close(front, tell=False, reason="shut down")


def _description(description: RTCSessionDescription | None) -> dict[str, str]:
    assert description is not None
    return {"type": description.type, "sdp": description.sdp}
