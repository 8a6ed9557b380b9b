"""The signaling broker and meeting rooms: WebRTC between browser fronts with no server.

A **front** is an API connection (a browser tab of the web UI, or any program)
that called ``rtc.register``; it gets a front id and keeps it until its
connection closes. ``rtc.signal`` carries an offer, answer, ICE candidate or
hang-up from one front to a peer node's fronts: the daemon sends it over the
authenticated peer link (so the DTLS fingerprints inside an SDP are
authenticated end to end), the peer's daemon hands it to the front named in
``to_front``, or to all of its fronts when none is named, as an ``rtc.signal``
event sent to that connection alone, and answers which fronts got it. The caller
learns at once, as an error, if the peer is not alive, has no front open, or
has no such front.

**Meeting rooms** are kept in the replicated store, under
``rooms/ROOM/NODE-ID``: joining writes this node's entry (name, fronts), leaving
deletes it, and ``room.members`` lists the entries of nodes that are alive. So
every node sees who is in which room; the media itself flows between the fronts.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from typing import Any, Protocol

import trio

from lannode.core import api
from lannode.core.api import require
from lannode.core.link import CHANNEL_SIGNAL
from lannode.events import EventBus
from lannode.net.links import LinkError, Links, PeerLink, Replies
from lannode.store import StoreService

log = logging.getLogger("lannode.rtc")

KINDS = ("hello", "offer", "answer", "candidate", "hangup")  # hello: a front looks for the peer's fronts, to offer to each
MAX_SIGNAL_BYTES = 64 * 1024
REPLY_TIMEOUT = 5.0
MAX_ROOM_BYTES = 64


class RtcPeers(Protocol):
    """Who can be called (``PeerService``; a guest's view of it)."""

    def resolve_id(self, text: str) -> str: ...

    def name_of(self, node_id: str) -> str: ...

    def state_of(self, node_id: str) -> str: ...


class RtcService:
    """Signaling and rooms for one identity: this node, or a guest it hosts (then its
    fronts are the guest's pages, and its links go through the host: ``links``)."""

    def __init__(self, me: str, name: str, peers: RtcPeers, links: Links, store: StoreService, bus: EventBus, server: api.Methods) -> None:
        self.me = me
        self.name = name
        self.peers = peers
        self.links = links
        self.store = store
        self.bus = bus
        self.fronts: dict[str, int] = {}  # front id -> API connection number
        self.rejected = 0
        self.delivered = 0
        self._request_ids = itertools.count(1)
        self._replies = Replies()  # our signals' answers
        self._rooms_of_fronts: dict[str, set[str]] = {}  # front ("" for the node itself) -> rooms it joined
        self._nursery: trio.Nursery | None = None
        links.handle(CHANNEL_SIGNAL, self._on_frame)
        server.on_disconnect.append(self._connection_closed)
        self.register_methods(server)

    def attach(self, nursery: trio.Nursery) -> None:
        """Where rooms are left when a front's connection closes (a tab closed mid-call)."""
        self._nursery = nursery

    # -- fronts ----------------------------------------------------------------------------------
    def _connection_closed(self, connection: int) -> None:
        for front, conn in list(self.fronts.items()):
            if conn == connection:
                del self.fronts[front]
                for room in self._rooms_of_fronts.pop(front, set()):  # a closed tab leaves its rooms
                    if self._nursery is not None:
                        self._nursery.start_soon(self.leave, room, front)

    def _front_of(self, caller: api.Principal) -> str | None:
        return next((front for front, conn in self.fronts.items() if conn == caller.connection), None)

    # -- sending ---------------------------------------------------------------------------------
    async def signal(self, caller: api.Principal, peer_text: str, kind: str, data: Any, to_front: str | None) -> dict[str, Any]:
        if kind not in KINDS:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f'"kind" is one of {", ".join(KINDS)}')
        peer = self.peers.resolve_id(peer_text)
        name = self.peers.name_of(peer)
        state = self.peers.state_of(peer)
        if state != "alive":
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"{name} is {state}, not reachable now")
        request_id = next(self._request_ids)
        frame = {"t": "sig", "rid": request_id, "kind": kind, "data": data, "to_front": to_front, "from_front": self._front_of(caller), "from_name": self.name}
        encoded = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()
        if len(encoded) > MAX_SIGNAL_BYTES:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"a signaling message is at most {MAX_SIGNAL_BYTES} bytes")
        try:
            link = await self.links.link_to(peer)
            reply = await self._replies.request(link, CHANNEL_SIGNAL, request_id, encoded, REPLY_TIMEOUT)
        except LinkError as exc:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, str(exc)) from None
        if reply is None:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"{name} did not answer within {REPLY_TIMEOUT:g} s")
        if reply.get("error"):
            raise api.ApiError(api.ErrorCode.NOT_FOUND, str(reply["error"]))
        return {"peer": peer, "delivered_to": reply.get("fronts", [])}

    # -- receiving -------------------------------------------------------------------------------
    async def _on_frame(self, link: PeerLink, data: bytes) -> None:
        try:
            frame = json.loads(data)
            if not isinstance(frame, dict) or frame.get("t") not in ("sig", "sig_reply") or not isinstance(frame.get("rid"), int):
                raise ValueError("not a signaling frame")
        except (ValueError, UnicodeDecodeError):
            self.rejected += 1
            return
        if frame["t"] == "sig_reply":
            self._replies.deliver(frame["rid"], frame)
            return
        reply: dict[str, Any] = {"t": "sig_reply", "rid": frame["rid"]}
        kind, to_front, from_front = frame.get("kind"), frame.get("to_front"), frame.get("from_front")
        if kind not in KINDS or not (to_front is None or isinstance(to_front, str)) or not (from_front is None or isinstance(from_front, str)):
            self.rejected += 1
            reply["error"] = "a malformed signaling message"
        elif to_front is not None and to_front not in self.fronts:
            reply["error"] = f"no front {to_front} is open on {self.name} (it may have closed)"
        elif to_front is None and not self.fronts:
            reply["error"] = f"nobody has lannode open on {self.name}"
        else:
            targets = [to_front] if to_front is not None else list(self.fronts)
            event = {"from": link.node_id, "from_name": str(frame.get("from_name", ""))[:64], "from_front": from_front, "kind": kind, "data": frame.get("data"), "to_front": to_front}
            reply["fronts"] = [front for front in targets if self.bus.publish_to(self.fronts[front], "rtc.signal", {**event, "to_front": front})]
            self.delivered += len(reply["fronts"])
        await link.send(CHANNEL_SIGNAL, json.dumps(reply, separators=(",", ":")).encode())

    # -- rooms -----------------------------------------------------------------------------------
    def _room_entry(self, room: str) -> dict[str, Any] | None:
        entry = self.store.map.get(f"rooms/{room}/{self.me}")
        if entry is None or entry.value is None:
            return None
        value: dict[str, Any] = json.loads(entry.value)
        return value

    async def join(self, room: str, front: str | None = None) -> dict[str, Any]:
        """This node joins; a front that joins is listed, so the room's other pages call it (and
        not this node's other tabs)."""
        _check_room(room)
        entry = self._room_entry(room) or {"name": self.name, "joined_at": int(time.time() * 1000), "fronts": []}
        if front is not None and front not in entry["fronts"]:
            entry["fronts"] = sorted([*entry["fronts"], front])
        await self.store.put(f"rooms/{room}/{self.me}", entry)
        self._rooms_of_fronts.setdefault(front or "", set()).add(room)
        return await self.members(room)

    async def leave(self, room: str, front: str | None = None) -> None:
        """The front leaves (the node, when it was the last one or no front is given)."""
        _check_room(room)
        entry = self._room_entry(room)
        rest = [f for f in (entry or {}).get("fronts", []) if f != front] if front is not None else []
        if entry is not None and rest:
            await self.store.put(f"rooms/{room}/{self.me}", {**entry, "fronts": rest})
        else:
            await self.store.delete(f"rooms/{room}/{self.me}")
        self._rooms_of_fronts.get(front or "", set()).discard(room)

    async def members(self, room: str) -> dict[str, Any]:
        _check_room(room)
        members = []
        for entry in self.store.map.items(f"rooms/{room}/"):
            node_id = entry.key.rsplit("/", 1)[1]
            if node_id != self.me and self.peers.state_of(node_id) != "alive":
                continue  # gone without leaving: not in the room any more
            value = json.loads(entry.value or b"{}")
            members.append({"node_id": node_id, "name": value.get("name"), "fronts": value.get("fronts", []), "joined_at": value.get("joined_at")})
        return {"room": room, "members": members}

    def statistics(self) -> dict[str, Any]:
        return {"fronts": len(self.fronts), "delivered": self.delivered, "rejected": self.rejected}

    # -- API -------------------------------------------------------------------------------------
    def register_methods(self, server: api.Methods) -> None:
        async def rtc_register(params: dict[str, Any], caller: api.Principal) -> Any:
            front = self._front_of(caller)
            if front is None:
                front = secrets.token_hex(8)
                self.fronts[front] = caller.connection
            return {"front": front, "node_id": self.me}

        async def rtc_signal(params: dict[str, Any], caller: api.Principal) -> Any:
            if "data" not in params:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, 'missing parameter "data"')
            return await self.signal(
                caller,
                require(params, "peer", str),
                require(params, "kind", str),
                params["data"],
                require(params, "to_front", str, optional=True),
            )

        async def rtc_fronts(params: dict[str, Any], caller: api.Principal) -> Any:
            return {"fronts": sorted(self.fronts)}

        async def room_join(params: dict[str, Any], caller: api.Principal) -> Any:
            return await self.join(require(params, "room", str), self._front_of(caller))

        async def room_leave(params: dict[str, Any], caller: api.Principal) -> Any:
            await self.leave(require(params, "room", str), self._front_of(caller))
            return {"left": True}

        async def room_members(params: dict[str, Any], caller: api.Principal) -> Any:
            return await self.members(require(params, "room", str))

        server.method("rtc.register", rtc_register, "Make this connection a front that can receive rtc.signal events; returns its front id.")
        server.method("rtc.signal", rtc_signal, '{"peer", "kind": hello|offer|answer|candidate|hangup, "data", "to_front"?}: deliver to the peer\'s front(s).')
        server.method("rtc.fronts", rtc_fronts, "The fronts open on this node.")
        server.method("room.join", room_join, '{"room"}: this node joins a meeting room; returns the members.')
        server.method("room.leave", room_leave, '{"room"}: this node leaves the room.')
        server.method("room.members", room_members, '{"room"}: the alive nodes in a room, with their fronts.')


def _check_room(room: str) -> None:
    if not room or len(room.encode()) > MAX_ROOM_BYTES or "/" in room or not room.isprintable():
        raise api.ApiError(api.ErrorCode.BAD_PARAMS, f"a room name is 1 to {MAX_ROOM_BYTES} bytes, printable, without '/'")
