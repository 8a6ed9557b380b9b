"""Links to and from guests, carried over their hosts' links (link channel 8).

A guest has no link of its own: its host carries what it sends and receives. On
the wire that is an *envelope* on ``CHANNEL_GUEST`` of the link between two
daemons: the sender's id, the recipient's id, the channel the payload belongs to,
and the payload (a chat frame, say), unchanged. A service never sees envelopes: it
asks a view of the ``Router`` for a link to an id, and gets a real ``Link`` when
both ends are daemons, or a ``RoutedLink`` that looks the same to it when either end
is a guest: one carried over the host's link, or, when both ends live on this
node (a guest and its host, two guests of one host), handed over in memory.

Who may say what. An envelope from the daemon at the other end of link L is taken
when its sender is L's own node speaking to a guest of ours, or a guest that the
replicated store says L hosts (the guest's own signed record names L); and when
its recipient is this node or a guest it hosts. Anything else is dropped and
counted. A host can still lie about what its guest *says*: that is why a link to
a guest is marked not ``vouched``, and a service checks the guest's signature on
anything that matters (chat checks every message's).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from lannode.core.ids import NODE_ID_LENGTH, is_node_id
from lannode.core.link import CHANNEL_GUEST
from lannode.net.links import Link, LinkError, LinkManager, PeerLink

log = logging.getLogger("lannode.guests")

RoutedHandler = Callable[[PeerLink, bytes], Awaitable[None]]
HEAD = 2 * NODE_ID_LENGTH + 1


def envelope(sender: str, recipient: str, channel: int, payload: bytes) -> bytes:
    return sender.encode() + recipient.encode() + bytes([channel]) + payload


class RoutedLink:
    """A link as a service sees it, with a guest at one end or both."""

    def __init__(self, router: Router, local: str, remote: str, public_key: bytes, via: Link | None, *, vouched: bool) -> None:
        self.router = router
        self.local = local
        self.node_id = remote
        self.public_key = public_key
        self.via = via  # the real link that carries it; None when both ends live on this node
        self.vouched = vouched
        self.cipher = via.cipher if via is not None else "local"

    @property
    def is_open(self) -> bool:
        return self.via is None or self.via.is_open

    async def send(self, channel: int, data: bytes) -> None:
        if self.via is None:
            await self.router.hand_over(self.local, self.node_id, channel, data)
        else:
            await self.via.send(CHANNEL_GUEST, envelope(self.local, self.node_id, channel, data))

    def send_nowait(self, channel: int, data: bytes) -> bool:
        if self.via is None:
            return False  # handed over by ``send``, in the caller's task and order
        return self.via.send_nowait(CHANNEL_GUEST, envelope(self.local, self.node_id, channel, data))


class Router:
    """Where envelopes go. ``host_of(id)`` says which node hosts a guest (None for a
    node, or an id nobody hosts); ``key_of(id)`` a guest's public key."""

    def __init__(self, links: LinkManager, me: str, my_key: bytes, host_of: Callable[[str], str | None], key_of: Callable[[str], bytes | None]) -> None:
        self.links = links
        self.me = me
        self.my_key = my_key
        self.host_of = host_of
        self.key_of = key_of
        self.handlers: dict[str, dict[int, RoutedHandler]] = {me: {}}  # this node and the guests it hosts
        self.counters: Counter[str] = Counter()
        links.handle(CHANNEL_GUEST, self._on_envelope)

    def view(self, identity: str) -> LinksView:
        self.handlers.setdefault(identity, {})
        return LinksView(self, identity)

    def drop(self, identity: str) -> None:
        """A guest this node hosted is gone: nothing more reaches it."""
        if identity != self.me:
            self.handlers.pop(identity, None)

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    async def _on_envelope(self, link: Link, data: bytes) -> None:
        if len(data) < HEAD:
            self.counters["malformed"] += 1
            return
        try:
            sender, recipient = data[:NODE_ID_LENGTH].decode(), data[NODE_ID_LENGTH : 2 * NODE_ID_LENGTH].decode()
        except UnicodeDecodeError:
            sender = recipient = ""
        if not is_node_id(sender) or not is_node_id(recipient):
            self.counters["malformed"] += 1
            return
        handlers = self.handlers.get(recipient)
        if handlers is None:
            self.counters["unknown_recipient"] += 1
            return
        if sender == link.node_id:
            key, vouched = link.public_key, True
            if recipient == self.me:
                self.counters["not_routed"] += 1  # a node speaks to us on its link, not in an envelope
                return
        else:
            guest_key = self.key_of(sender)
            if self.host_of(sender) != link.node_id or guest_key is None:
                self.counters["not_its_guest"] += 1
                return
            key, vouched = guest_key, False
        handler = handlers.get(data[2 * NODE_ID_LENGTH])
        if handler is None:
            self.counters["no_handler"] += 1
            return
        self.counters["received"] += 1
        await handler(RoutedLink(self, recipient, sender, key, link, vouched=vouched), data[HEAD:])

    async def hand_over(self, sender: str, recipient: str, channel: int, data: bytes) -> None:
        """From one identity on this node to another: the recipient's handler runs now,
        in the sender's task, so what one sends arrives in order."""
        handler = self.handlers.get(recipient, {}).get(channel)
        key = self.my_key if sender == self.me else self.key_of(sender)
        if handler is None or key is None:
            raise LinkError(f"{recipient} takes nothing here now")
        self.counters["handed_over"] += 1
        try:
            await handler(RoutedLink(self, recipient, sender, key, None, vouched=sender == self.me), data)
        except LinkError:
            raise
        except Exception:  # the receiving end's bug is not the sender's failure
            log.exception("a message handed over from %s to %s failed", sender, recipient)
            self.counters["handler_errors"] += 1


class LinksView:
    """The links of one identity on this node (the node itself, or a guest it hosts),
    with the interface services use: ``handle``, ``link_to``, ``open_link``."""

    def __init__(self, router: Router, identity: str) -> None:
        self.router = router
        self.identity = identity

    def handle(self, channel: int, handler: RoutedHandler) -> None:
        self.router.handlers.setdefault(self.identity, {})[channel] = handler
        if self.identity == self.router.me:
            self.router.links.handle(channel, handler)

    def open_link(self, remote: str) -> PeerLink | None:
        route = self._route(remote)
        if isinstance(route, RoutedLink) or route is None:
            return route
        link = self.router.links.open_link(route)
        return None if link is None else self._wrap(remote, link)

    async def link_to(self, remote: str) -> PeerLink:
        route = self._route(remote)
        if isinstance(route, RoutedLink):
            return route
        if route is None:
            raise LinkError(f"no route to {remote}: its host is not known")
        return self._wrap(remote, await self.router.links.link_to(route))

    def _route(self, remote: str) -> RoutedLink | str | None:
        """A link handed over in memory, or the node whose link carries it (None: no way)."""
        router = self.router
        if remote in router.handlers and remote != self.identity:
            key = router.my_key if remote == router.me else router.key_of(remote)
            return RoutedLink(router, self.identity, remote, key, None, vouched=remote == router.me) if key is not None else None
        host = router.host_of(remote)
        if host is not None:
            return host
        return remote  # a node: its own link

    def _wrap(self, remote: str, link: Link) -> PeerLink:
        if self.identity == self.router.me and link.node_id == remote:
            return link  # node to node: the link itself
        key = link.public_key if link.node_id == remote else self.router.key_of(remote)
        if key is None:
            raise LinkError(f"no key known for {remote}")
        return RoutedLink(self.router, self.identity, remote, key, link, vouched=link.node_id == remote)
