"""The node's view of other nodes: gossip membership, peer links and trust, as one service.

It starts the link listener first (presence announces the link port), then the
gossip; it turns membership and link happenings into API events, and serves
the API methods about peers: ``peer.list``, ``peer.ping`` and ``peer.trust``.
A peer is named by its name or by a unique prefix of its node id (``lannode.core.api.resolve``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

from lannode import __version__
from lannode.config import Config
from lannode.core import api
from lannode.core.api import require
from lannode.core.link import CHANNEL_MEMBERS
from lannode.core.membership import Event as MembershipEvent
from lannode.core.membership import (
    Member,
    Membership,
    MemberStateChanged,
    State,
    StateSyncWanted,
    StoreEntryReceived,
)
from lannode.core.messages import capability_names
from lannode.events import EventBus
from lannode.guests.directory import GuestDirectory
from lannode.home import Home
from lannode.identity import Identity
from lannode.net.dnssd import DnsSdService, Found, network_tag
from lannode.net.gossip import GossipService, GossipSettings, describe, wall_time_of
from lannode.net.links import Link, LinkError, LinkManager, LinkSettings, PeerLink
from lannode.peers.trust import TrustStore, normalize_code, safety_code

log = logging.getLogger("lannode.peers")

REPLY_WANTED = 1


class PeerIndex(Protocol):
    """Who is who: ids by name, keys and names by id (``PeerService``; a guest's view of it)."""

    def resolve_id(self, text: str) -> str: ...

    def key_of(self, node_id: str) -> bytes | None: ...

    def name_of(self, node_id: str) -> str: ...


def register_trust(server: api.Methods, my_key: bytes, trust: TrustStore, peers: PeerIndex, publish: Callable[[dict[str, Any]], None]) -> None:
    """``peer.safety_code`` and ``peer.trust`` for one identity (this node, or a guest it
    hosts: ``my_key`` and ``trust`` are then the guest's), about any node or guest."""

    def who(params: dict[str, Any]) -> tuple[str, bytes, str]:
        node_id = peers.resolve_id(require(params, "peer", str))
        key = peers.key_of(node_id)
        if key is None or key == my_key:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, "no safety code with yourself")
        return node_id, key, peers.name_of(node_id)

    async def peer_safety_code(params: dict[str, Any], caller: api.Principal) -> Any:
        node_id, key, name = who(params)
        return {"node_id": node_id, "name": name, "safety_code": safety_code(my_key, key), "trust": trust.level(node_id)}

    async def peer_trust(params: dict[str, Any], caller: api.Principal) -> Any:
        node_id, key, name = who(params)
        code = safety_code(my_key, key)
        given = params.get("code")
        if given is not None:
            if not isinstance(given, str):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"code" must be a string of digits')
            if normalize_code(given) != normalize_code(code):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, "the safety codes differ: this is not the node the other person sees; it stays unverified")
        trust.verify(node_id, key, name)
        publish({"node_id": node_id, "name": name, "trust": "verified"})
        return {"node_id": node_id, "name": name, "safety_code": code, "trust": "verified"}

    server.method("peer.safety_code", peer_safety_code, '{"peer"}: the safety code to compare with the other person, and the trust so far.')
    # Open to the node's own web UI (its origin token), which is the person at this machine.
    server.method("peer.trust", peer_trust, '{"peer", "code"?}: the safety code; marks the peer verified (refused if a given code differs).')


class PeerService:
    def __init__(self, home: Home, config: Config, identity: Identity, name: str, interface: str, epoch: int, network_key: bytes | None, bus: EventBus) -> None:
        self.identity = identity
        self.name = name
        self.interface = interface
        self.epoch = epoch
        self.network_key = network_key
        self.bus = bus
        self.config = config
        self._link_port = 0
        self.capabilities: list[str] = ["links"]  # what this node runs, announced in its presence (the daemon adds its services')
        self.on_store_entry: Callable[[bytes, str], None] | None = None  # set by the store service
        self.state_listeners: list[Callable[[str, State], None]] = []  # (node id, new state), for other services
        self.trust = TrustStore(home.path / "peers.json")
        self.guests: GuestDirectory | None = None  # the guests the network knows (set by the daemon, from the store)
        self.address = ""  # the address gossip and links use, once running
        self.links = LinkManager(
            identity.signing_key,
            identity.node_id,
            self.link_address,
            network_key=network_key,
            settings=LinkSettings(stall_timeout=config.get("links.stall_timeout")),
            on_established=self._on_link,
        )
        self.gossip = GossipService(
            self._membership_for,
            GossipSettings(interface, config.get("gossip.group"), config.get("gossip.port"), config.get("gossip.unicast_port")),
            self._on_membership_event,
        )
        self.links.handle(CHANNEL_MEMBERS, self._on_view)
        self._nursery: trio.Nursery | None = None
        self.view_exchanges = 0  # views we sent asking for theirs
        self.view_exchange_failures = 0
        self.dnssd: DnsSdService | None = None
        if config.get("zeroconf.enabled"):
            self.dnssd = DnsSdService(
                node_id=identity.node_id,
                name=name,
                version=__version__,
                net=network_tag(network_key, config.get("gossip.port")),
                on_found=self._on_dnssd_found,
            )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            link_port = await nursery.start(self.links.serve, self.interface or "0.0.0.0", self.config.get("links.port"))
            self._link_port = link_port
            host, port = await nursery.start(self.gossip.run)
            self.address = host
            log.info("gossip on %s:%d (group %s:%d), links on port %d", host, port, self.config.get("gossip.group"), self.config.get("gossip.port"), link_port)
            if self.dnssd is not None:  # in the background: readiness never waits for zeroconf
                nursery.start_soon(self.dnssd.run, host, port, link_port)
            task_status.started()

    def leave(self) -> None:
        self.gossip.leave()

    # -- views ---------------------------------------------------------------------------------
    @property
    def membership(self) -> Membership | None:
        return self.gossip.membership

    def peer_list(self) -> list[dict[str, Any]]:
        membership = self.membership
        if membership is None:
            return []
        members = sorted(membership.members.values(), key=lambda x: (x.presence.name, x.node_id))
        return [self._record(member) for member in members] + self._guest_records()

    def _door_of(self, node_id: str) -> dict[str, str] | None:
        """A node's guest door as it announced it (``door/NODE``, an entry only it may write,
        signed by it): its address and its certificate's fingerprint, for anyone to compare."""
        entry = self.guests.store.get(f"door/{node_id}") if self.guests is not None else None
        try:
            value = json.loads(entry.value or b"null") if entry is not None else None
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not isinstance(value.get("fingerprint"), str):
            return None
        return {"url": value["url"][:200], "fingerprint": value["fingerprint"][:100]}

    def _guest_records(self) -> list[dict[str, Any]]:
        """The guests the network knows, as people: reachable while a page of theirs is open
        on a host that is up; "away" otherwise (what is sent to them waits on the host)."""
        if self.guests is None:
            return []
        records = []
        for guest in sorted(self.guests.all(), key=lambda g: (g.record.name, g.node_id)):
            record: dict[str, Any] = {
                "node_id": guest.node_id,
                "name": guest.record.name,
                "state": self.state_of(guest.node_id),
                "guest_via": guest.host,
                "guest_via_name": self.name_of(guest.host),
                "capabilities": ["chat", "calls"],
                "trust": self.trust.level(guest.node_id),
                "link": None,
                "warning": None,
            }
            if record["trust"] == "new" and (pinned := self.trust.same_name_elsewhere(guest.node_id, guest.record.name)):
                record["warning"] = f"new identity: the name {guest.record.name!r} belongs to pinned node {pinned}"
            records.append(record)
        return records

    def _record(self, member: Member) -> dict[str, Any]:
        p = member.presence
        link = self.links.links.get(member.node_id)
        record: dict[str, Any] = {
            "node_id": member.node_id,
            "name": p.name,
            "state": member.state.value,
            "addresses": {"gossip": f"{p.host}:{p.gossip_port}", "link": f"{p.host}:{p.link_port}" if p.link_port else None},
            "capabilities": capability_names(p.capabilities),
            "incarnation": member.incarnation,
            "trust": self.trust.level(member.node_id),
            "link": {"cipher": link.cipher} if link is not None and link.is_open else None,
            "since": round(wall_time_of(member.since), 3),
            "last_seen": round(wall_time_of(member.last_seen), 3),
            "warning": None,
            "guest_door": self._door_of(member.node_id),
        }
        if record["trust"] == "new" and (pinned := self.trust.same_name_elsewhere(member.node_id, p.name)):
            record["warning"] = f"new identity: the name {p.name!r} belongs to pinned node {pinned}"
        return record

    def name_of(self, node_id: str) -> str:
        """A node's name as its presence says, this node's own, or the id's start if unknown."""
        return self.name_if_known(node_id) or node_id[:8]

    def name_if_known(self, node_id: str) -> str | None:
        """The name of this node, a member, or a guest the network knows; None for a stranger."""
        if node_id == self.identity.node_id:
            return self.name
        member = self.membership.members.get(node_id) if self.membership else None
        if member is not None:
            return member.presence.name
        guest = self.guests.get(node_id) if self.guests is not None else None
        return guest.record.name if guest is not None else None

    def key_of(self, node_id: str) -> bytes | None:
        """The public key of this node, a member, or a guest the network knows."""
        if node_id == self.identity.node_id:
            return self.identity.public_key
        member = self.membership.members.get(node_id) if self.membership else None
        if member is not None:
            return member.presence.public_key
        guest = self.guests.get(node_id) if self.guests is not None else None
        return guest.record.guest_key if guest is not None else None

    def state_of(self, node_id: str) -> str:
        """"alive" for this node, a member as its state says, a guest "alive" while a page of
        it is open on a host that is alive and "away" otherwise; "unknown" for anyone else."""
        if node_id == self.identity.node_id:
            return "alive"
        membership = self.membership
        member = membership.members.get(node_id) if membership else None
        if member is not None:
            return member.state.value
        guest = self.guests.get(node_id) if self.guests is not None else None
        if guest is None:
            return "unknown"
        return "alive" if guest.online and guest.host != node_id and self.state_of(guest.host) == "alive" else "away"

    def states(self) -> list[tuple[str, State]]:
        """Every member and the state we hold it in (for a service that starts late)."""
        membership = self.membership
        return [(member.node_id, member.state) for member in membership.members.values()] if membership else []

    def resolve_id(self, text: str) -> str:
        """A member's or a guest's node id, by id, name or unique id prefix (``api.resolve``)."""
        membership = self.membership
        people = [(member.node_id, member.presence.name) for member in membership.members.values()] if membership else []
        if self.guests is not None:
            people += [(guest.node_id, guest.record.name) for guest in self.guests.all()]
        found: tuple[str, str] = api.resolve(
            text,
            people,
            id_of=lambda x: x[0],
            name_of=lambda x: x[1],
            what="peer",
            what_plural="peers",
            not_found=f"no peer named {text!r} or with a node id starting so (lannode peers lists them)",
        )
        return found[0]

    def resolve(self, text: str) -> Member:
        """A member by node id, name or unique node id prefix (``api.resolve``)."""
        membership = self.membership
        members = list(membership.members.values()) if membership else []
        return api.resolve(
            text,
            members,
            id_of=lambda x: x.node_id,
            name_of=lambda x: x.presence.name,
            what="peer",
            what_plural="peers",
            not_found=f"no peer named {text!r} or with a node id starting so (lannode peers lists them)",
        )

    # -- API -----------------------------------------------------------------------------------
    def register_methods(self, server: api.Methods) -> None:
        async def peer_list(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.peer_list()

        async def peer_ping(params: dict[str, Any], caller: api.Principal) -> Any:
            member = self.resolve(require(params, "peer", str))
            try:
                link = await self.links.link_to(member.node_id)
                rtt = await link.ping()
            except LinkError as exc:
                raise api.ApiError(api.ErrorCode.UNAVAILABLE, str(exc)) from None
            self.pin(link)
            return {"node_id": member.node_id, "name": member.presence.name, "rtt_ms": round(rtt * 1000, 3), "cipher": link.cipher}

        server.method("peer.list", peer_list, "Every node this one knows: id, name, state, addresses, trust, link, last_seen.")
        server.method("peer.ping", peer_ping, '{"peer"}: round trip over the encrypted peer link (dialing it if need be).')
        register_trust(server, self.identity.public_key, self.trust, self, lambda record: self.bus.publish("peer.trust", record))

    # -- wiring --------------------------------------------------------------------------------
    def _membership_for(self, address: tuple[str, int]) -> Membership:
        return Membership(
            self.identity.signing_key,
            epoch=self.epoch,
            name=self.name,
            address=address,
            link_port=self._link_port,
            capabilities=self.capabilities,
            network_key=self.network_key,
        )

    def _on_dnssd_found(self, found: Found) -> None:
        membership = self.membership
        if membership is None:
            return
        member = membership.members.get(found.node_id)
        if member is None or member.state is not State.ALIVE:
            log.debug("zeroconf found %s (%s) at %s:%d; saying hello", found.name, found.node_id, *found.gossip)
            self.gossip.contact(found.gossip)

    def bulk_address(self, node_id: str) -> tuple[str, int] | None:
        """Where to open a bulk connection for ``node_id``: a member's link port, or, for a
        guest, its host's (the host takes its guests' bulk connections)."""
        address = self.link_address(node_id)
        guest = self.guests.get(node_id) if address is None and self.guests is not None else None
        if guest is None or guest.host == node_id:
            return address
        if guest.host == self.identity.node_id:
            return (self.address, self._link_port) if self._link_port else None
        return self.link_address(guest.host)

    def link_address(self, node_id: str) -> tuple[str, int] | None:
        membership = self.membership
        member = membership.members.get(node_id) if membership else None
        if member is None or not member.presence.link_port:
            return None
        return (member.presence.host, member.presence.link_port)

    def _on_membership_event(self, event: MembershipEvent) -> None:
        membership = self.membership
        assert membership is not None
        if isinstance(event, StoreEntryReceived):
            if self.on_store_entry is not None:
                self.on_store_entry(event.data, event.sender)
            return
        if isinstance(event, StateSyncWanted):
            if self._nursery is not None:
                self._nursery.start_soon(self._exchange_views, event.node_id)
            return
        topic, data = describe(event, membership)
        if topic == "peer.state":
            log.info("peer %s (%s): %s -> %s", data.get("name"), event.node_id, data["previous"], data["state"])
        self.bus.publish(topic, data)
        if isinstance(event, MemberStateChanged):
            for listener in self.state_listeners:
                listener(event.node_id, event.state)
        if isinstance(event, MemberStateChanged) and event.previous is None:
            name = str(data.get("name", ""))
            pinned = self.trust.same_name_elsewhere(event.node_id, name)
            if pinned is not None and self.trust.level(event.node_id) == "new":
                log.warning("a new identity uses the name %r of pinned peer %s: %s", name, pinned, event.node_id)
                self.bus.publish("peer.identity_warning", {"node_id": event.node_id, "name": name, "pinned_node_id": pinned})

    # -- membership view exchange (push-pull) ---------------------------------------------------
    async def _exchange_views(self, node_id: str) -> None:
        """Send our whole view to ``node_id`` over its link; its own comes back (``_on_view``).
        A failure costs nothing but the exchange: the membership asks again later."""
        membership = self.membership
        if membership is None:
            return
        try:
            link = await self.links.link_to(node_id)
            await link.send(CHANNEL_MEMBERS, bytes([REPLY_WANTED]) + membership.state())
            self.view_exchanges += 1
        except LinkError as exc:
            self.view_exchange_failures += 1
            log.debug("membership view exchange with %s: %s", node_id, exc)

    async def _on_view(self, link: Link, data: bytes) -> None:
        membership = self.membership
        if membership is None or not data:
            return
        taken = membership.merge_state(data[1:], link.node_id, trio.current_time())
        self.gossip.pump()
        if not taken:
            log.debug("refused a membership view from %s", link.node_id)
        elif data[0] & REPLY_WANTED:
            try:
                await link.send(CHANNEL_MEMBERS, bytes([0]) + membership.state())
            except LinkError as exc:
                log.debug("membership view back to %s: %s", link.node_id, exc)

    def pin(self, link: PeerLink) -> None:
        """This node's person dealt with the peer (pinged, messaged, sent a file): pin it on first use.
        Links the node opens by itself (anti-entropy) pin nobody."""
        membership = self.membership
        member = membership.members.get(link.node_id) if membership else None
        name = member.presence.name if member else ""
        if self.trust.pin(link.node_id, link.public_key, name):
            log.info("pinned %s (%s) on first use", name, link.node_id)

    def _on_link(self, link: Link) -> None:
        membership = self.membership
        member = membership.members.get(link.node_id) if membership else None
        if membership is not None:
            membership.proven(link.node_id)  # its key is proved: never evicted for a newcomer
        name = member.presence.name if member else ""
        self.bus.publish("peer.link", {"node_id": link.node_id, "name": name, "state": "open", "cipher": link.cipher, "trust": self.trust.level(link.node_id)})
