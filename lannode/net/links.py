"""Peer links over TCP: the trio side of ``lannode.core.link``.

The ``LinkManager`` listens on the node's link port, dials peers on demand at the
address their signed presence gives, and keeps at most one open link per peer.
When two nodes dial each other at the same moment both links complete; each side
then keeps the one dialed by the smaller node id, so they agree without talking.

A ``Link`` has a writer task that interleaves channels record by record (64 KiB
each), lower channel numbers first within a round, so a bulk transfer on a high
channel never holds up chat on a low one; ``send`` waits when a channel already
has ``queue_limit`` messages queued, or the link ``queue_bytes`` bytes in all
(backpressure). A link that has sent nothing for ``keepalive`` seconds sends a
ping; one that hears nothing for ``idle_timeout`` seconds is closed, and so is one
whose peer takes none of our bytes for ``stall_timeout`` seconds ("stalled"): a
peer that asks and never reads holds at most ``queue_bytes`` of ours, and not for
long. Messages are handed to the handler registered for their channel; a handler
that blocks holds up that link's reader (and so, through TCP, the peer), so
handlers queue work rather than do it. A handler's exception is counted
(``handler_errors``) and the link goes on.

Unfinished messages are held within ``max_buffered`` bytes per link (the sans-IO
connection refuses a peer past it) and ``total_buffered`` across all links: a link
whose peer would take the node past that is closed ("budget").

A failed dial is not retried before a backoff (0.5 s, doubling to 30 s) has
passed; a link that breaks while there is nothing to send is simply dialed again
the next time something is sent. Links refused for a bad identity or signature
are counted by reason in ``statistics()``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from nacl.signing import SigningKey

from lannode.core.bulk import BULK_HELLO_BYTES, BULK_MAGIC, BadBulk, parse_bulk_hello
from lannode.core.link import (
    DEFAULT_MAX_BUFFERED,
    MAX_RECORD_DATA,
    LinkClosed,
    LinkConnection,
    LinkEstablished,
    LinkState,
    MessageReceived,
    Pong,
    Role,
)
from lannode.net.bulk import PeerThreads
from lannode.net.fastio import DirectStream

log = logging.getLogger("lannode.links")

MessageHandler = Callable[["Link", bytes], Awaitable[None]]
READ_SIZE = 256 * 1024
WRITE_BATCH = 256 * 1024


class LinkError(Exception):
    """A link could not be opened or broke; the message is for a person."""


@dataclass(slots=True)
class _Outgoing:
    data: bytes
    offset: int = 0


@dataclass
class LinkSettings:
    keepalive: float = 5.0
    idle_timeout: float = 15.0
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    queue_limit: int = 64  # messages queued per channel
    queue_bytes: int = 32 * 1024 * 1024  # bytes queued per link, all channels (one bigger message still goes alone)
    stall_timeout: float = 30.0  # a peer that takes none of our bytes this long is cut off
    max_buffered: int = DEFAULT_MAX_BUFFERED  # bytes of a peer's unfinished messages held per link
    total_buffered: int = 256 * 1024 * 1024  # ... and across all links
    max_links: int = 1024  # open links; a peer's link past it is refused (we still dial out)
    bulk_per_peer: int = 8  # bulk connections a peer may hold, granted and not yet come or running
    bulk_total: int = 64  # ... all peers together
    backoff_min: float = 0.5
    backoff_max: float = 30.0


class PeerLink(Protocol):
    """What a service needs of a link to a peer: a ``Link`` between two daemons, or a
    ``lannode.guests.routes.RoutedLink`` when a guest is at either end. ``vouched``: the
    link itself proves the remote's identity (a routed link to a guest is only its
    host's word, so what the guest says must carry the guest's own signature)."""

    node_id: str
    public_key: bytes
    cipher: str
    vouched: bool

    @property
    def is_open(self) -> bool: ...

    async def send(self, channel: int, data: bytes) -> None: ...

    def send_nowait(self, channel: int, data: bytes) -> bool: ...


class Links(Protocol):
    """The links of one identity, as services use them (``LinkManager`` for the node,
    ``lannode.guests.routes.LinksView`` for the node or a guest it hosts)."""

    def handle(self, channel: int, handler: Callable[[Any, bytes], Awaitable[None]]) -> None: ...

    def open_link(self, node_id: str) -> PeerLink | None: ...

    async def link_to(self, node_id: str) -> PeerLink: ...


class Link:
    vouched = True  # the peer proved its key in the handshake

    def __init__(self, manager: "LinkManager", stream: trio.SocketStream, conn: LinkConnection, dialed_by: str) -> None:
        assert conn.peer_node_id is not None and conn.peer_public_key is not None
        self.manager = manager
        self.stream = stream
        self._io = DirectStream(stream)  # reads and writes without a scheduler pass when they can
        self.conn = conn
        self.node_id: str = conn.peer_node_id
        self.public_key: bytes = conn.peer_public_key
        self.dialed_by = dialed_by
        self.cipher = conn.cipher
        self.opened = trio.current_time()
        self.closed = trio.Event()
        self.retiring = False  # replaced by a twin link: flush, say goodbye, read until the peer does too
        self._retired = trio.Event()
        self.close_reason = ""
        self._queues: dict[int, deque[_Outgoing]] = {}
        self._queued_bytes = 0  # of the messages in _queues, not yet sealed
        self._buffered = 0  # conn.buffered as the manager last counted it
        self._writing_since: float | None = None  # a write waiting for the peer to take bytes, since then
        self._drained = trio.Event()  # set (and replaced) whenever a queued message leaves, or on close
        self._work = trio.Event()
        self._last_sent = trio.current_time()
        self._pongs: dict[bytes, trio.Event] = {}
        self._send_lock = trio.Lock()
        self.messages_sent = 0
        self.messages_received = 0

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set()

    async def send(self, channel: int, data: bytes) -> None:
        """Queue a message; waits while the channel's queue is full. LinkError if the link closed.
        On a link being retired, the message goes over the peer's current link instead."""
        if self.retiring:
            await self.manager.send(self.node_id, channel, data)
            return
        queue = self._queues.setdefault(channel, deque())
        settings = self.manager.settings
        while self.is_open and (len(queue) >= settings.queue_limit or (self._queued_bytes and self._queued_bytes + len(data) > settings.queue_bytes)):
            await self._drained.wait()
        if not self.is_open:
            raise LinkError(f"the link to {self.node_id} is closed ({self.close_reason})")
        self._append(queue, data)

    def send_nowait(self, channel: int, data: bytes) -> bool:
        """Queue a message if that can be done at once: the link is open and not being
        retired, and the channel's queue has room. False otherwise (then ``send``). (The
        writer sends it: what is queued during one scheduler pass leaves in one write,
        which at a thousand messages a second saves more than sending each at once.)"""
        if self.retiring or not self.is_open:
            return False
        queue = self._queues.setdefault(channel, deque())
        settings = self.manager.settings
        if len(queue) >= settings.queue_limit or (self._queued_bytes and self._queued_bytes + len(data) > settings.queue_bytes):
            return False
        self._append(queue, data)
        return True

    def _append(self, queue: deque[_Outgoing], data: bytes) -> None:
        queue.append(_Outgoing(data))
        self._queued_bytes += len(data)
        self.messages_sent += 1
        self._work.set()

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time in seconds over the link (a control ping, answered by the peer's link layer)."""
        token = os.urandom(8)
        done = self._pongs[token] = trio.Event()
        started = trio.current_time()
        try:
            self.conn.send_ping(token)
            self._work.set()
            with trio.fail_after(timeout):
                await done.wait()
        except trio.TooSlowError:
            raise LinkError(f"no answer from {self.node_id} within {timeout:g} s") from None
        finally:
            self._pongs.pop(token, None)
        return trio.current_time() - started

    def retire(self, reason: str) -> None:
        """Stop taking messages; what is queued is still sent, then a goodbye, and the link
        keeps reading (and dispatching) until the peer says goodbye too, or 5 s pass."""
        if self.retiring or self.closed.is_set():
            return
        self.retiring = True
        self.close_reason = reason
        self._retired.set()
        self._work.set()

    def close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.conn.close(reason)
        self.closed.set()
        self._work.set()
        self._drained.set()  # senders waiting for room see the link is gone

    def statistics(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "cipher": self.cipher,
            "dialed_by": self.dialed_by,
            "bytes_sent": self.conn.bytes_sent,
            "bytes_received": self.conn.bytes_received,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "queued": sum(len(q) for q in self._queues.values()),
            "queued_bytes": self._queued_bytes,
            "buffered": self.conn.buffered,
            "pings_unanswered": self.conn.pings_unanswered,
        }

    # -- tasks ---------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._keepalive)
                nursery.start_soon(self._watch_stall)
                nursery.start_soon(self._retire_deadline)
                await self.closed.wait()
                with trio.move_on_after(1):  # let the writer say goodbye
                    await self._flush()
                nursery.cancel_scope.cancel()
        finally:
            self.close(self.close_reason or "closed")
            self.manager.buffered -= self._buffered
            self._buffered = 0
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            self.manager._forget(self)

    async def _reader(self) -> None:
        settings = self.manager.settings
        queued = True  # what arrived with the handshake comes first
        while self.is_open:
            if not queued:
                with trio.move_on_after(settings.idle_timeout) as idle:
                    try:
                        data = await self._io.receive_some(READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self.close(f"connection lost: {exc}")
                        return
                if idle.cancelled_caught:
                    self.close(f"nothing heard for {settings.idle_timeout:g} s")
                    return
                try:
                    self.conn.receive_data(data)
                except Exception:  # a bug of ours a peer's bytes found: this link ends, the node goes on
                    self.manager.refused["error"] += 1
                    log.exception("link to %s: the connection failed on what the peer sent", self.node_id)
                    self.close("error")
                    return
                if self.conn.buffered != self._buffered and not self._count_buffered():
                    return
            queued = False
            for event in self.conn.events():
                if isinstance(event, MessageReceived):
                    self.messages_received += 1
                    await self.manager._dispatch(self, event.channel, event.data)
                elif isinstance(event, Pong):
                    waiter = self._pongs.get(event.data)
                    if waiter is not None:
                        waiter.set()
                elif isinstance(event, LinkClosed):
                    if event.reason != "closed":
                        self.manager.refused[event.reason] += 1
                    self.close(f"{event.reason}: {event.detail}" if event.detail else event.reason)
                    return
            if self.conn.pending:  # pongs to send
                self._work.set()

    async def _writer(self) -> None:
        try:
            while True:
                await self._work.wait()
                self._work = trio.Event()
                # a round per record of each busy channel; the last one goes out in the flush below
                while self.is_open and self._fill_round() and self._queued():
                    await self._flush()  # (send_all yields: the reader and other links get their turn)
                if not self.is_open:
                    return
                if self.retiring and not self._queued():
                    self.conn.send_close(self.close_reason)
                    await self._flush()
                    return  # the reader carries on until the peer's goodbye
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close(f"connection lost: {exc}")

    def _fill_round(self) -> bool:
        """Seal up to one record per channel, lowest channel first; False when nothing is queued."""
        sealed = False
        for channel in sorted(self._queues):
            queue = self._queues[channel]
            if not queue:
                continue
            item = queue[0]
            chunk = memoryview(item.data)[item.offset : item.offset + MAX_RECORD_DATA]
            item.offset += len(chunk)
            self._queued_bytes -= len(chunk)
            more = item.offset < len(item.data)
            self.conn.send_record(channel, chunk, more=more)
            sealed = True
            if not more:
                queue.popleft()
                self._drained.set()
                self._drained = trio.Event()
            if self.conn.pending >= WRITE_BATCH:
                break
        return sealed

    def _queued(self) -> bool:
        return any(self._queues.values())

    async def _flush(self) -> None:
        # the writer, the keepalive and the goodbye in run() all flush: one at a time, and
        # bytes leave in the order they were sealed (taken under the same lock). The lock is
        # free nearly always: take it without a scheduler pass then (send_all yields anyway).
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            data = self.conn.data_to_send()
            if data:
                self._last_sent = trio.current_time()
                self._writing_since = self._last_sent
                try:
                    await self._io.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.close(f"connection lost: {exc}")
                finally:
                    self._writing_since = None
        finally:
            self._send_lock.release()

    def _count_buffered(self) -> bool:
        """Take the connection's unfinished messages into the manager's count across links;
        False (and the link closed) if they would take it past ``total_buffered``."""
        manager = self.manager
        manager.buffered += self.conn.buffered - self._buffered
        self._buffered = self.conn.buffered
        if manager.buffered > manager.settings.total_buffered:
            manager.refused["budget"] += 1
            self.close(f"budget: the peers' unfinished messages are over {manager.settings.total_buffered} bytes")
            return False
        return True

    async def _watch_stall(self) -> None:
        timeout = self.manager.settings.stall_timeout
        while self.is_open:
            await trio.sleep(timeout / 4)
            since = self._writing_since
            if since is not None and trio.current_time() - since >= timeout:
                self.manager.refused["stalled"] += 1
                self.close(f"stalled: the peer took none of our bytes for {timeout:g} s")

    async def _retire_deadline(self) -> None:
        await self._retired.wait()
        await trio.sleep(5.0)
        self.close(self.close_reason or "retired")

    async def _keepalive(self) -> None:
        interval = self.manager.settings.keepalive
        while self.is_open:
            await trio.sleep_until(self._last_sent + interval)
            if trio.current_time() - self._last_sent >= interval and self.conn.state is LinkState.OPEN:
                self.conn.send_ping(b"keepalive")
                self._work.set()
                self._last_sent = trio.current_time()


@dataclass
class _DialState:
    failures: int = 0
    not_before: float = -math.inf
    dialing: trio.Event | None = None
    last_error: str = ""


class LinkManager:
    """All of a node's peer links. ``address_of(node_id)`` says where a peer listens."""

    def __init__(
        self,
        signing_key: SigningKey,
        node_id: str,
        address_of: Callable[[str], tuple[str, int] | None],
        *,
        network_key: bytes | None = None,
        settings: LinkSettings | None = None,
        on_established: Callable[[Link], None] | None = None,
    ) -> None:
        self.key = signing_key
        self.node_id = node_id
        self.address_of = address_of
        self.network_key = network_key
        self.settings = settings or LinkSettings()
        self.on_established = on_established
        self.links: dict[str, Link] = {}
        self.handlers: dict[int, MessageHandler] = {}
        self._bulk: dict[bytes, tuple[str, Callable[[trio.SocketStream], Awaitable[None]]]] = {}  # one-time token -> (peer, its handler)
        self._bulk_running: Counter[str] = Counter()  # per peer: bulk connections being served
        self.bulk_threads = PeerThreads()  # the worker threads of what peers ask of us
        self.refused: Counter[str] = Counter()
        self.handler_errors: Counter[int] = Counter()  # per channel: messages whose handler raised
        self.buffered = 0  # bytes of unfinished messages held across all links
        self.port = 0
        self._dials: dict[str, _DialState] = {}
        self._nursery: trio.Nursery | None = None

    def handle(self, channel: int, handler: MessageHandler) -> None:
        self.handlers[channel] = handler

    def expect_bulk(self, token: bytes, handler: Callable[[trio.SocketStream], Awaitable[None]], peer: str) -> None:
        """A bulk connection whose hello carries ``token`` goes to ``handler`` (once). The
        token travels over ``peer``'s link, so only that peer can present it. LinkError if
        the peer holds ``bulk_per_peer`` connections already (granted or running), or all
        peers ``bulk_total``: a peer's requests cannot take every connection and thread."""
        theirs = sum(1 for owner, _ in self._bulk.values() if owner == peer) + self._bulk_running[peer]
        if theirs >= self.settings.bulk_per_peer or len(self._bulk) + sum(self._bulk_running.values()) >= self.settings.bulk_total:
            self.refused["bulk_budget"] += 1
            raise LinkError(f"busy: {theirs} bulk connections of {peer} are open or expected already")
        self._bulk[token] = (peer, handler)

    def forget_bulk(self, token: bytes) -> None:
        self._bulk.pop(token, None)

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            task_status.started(self.port)

    def open_link(self, node_id: str) -> Link | None:
        """The open link to a peer, if there is one (``link_to`` dials)."""
        link = self.links.get(node_id)
        return link if link is not None and link.is_open else None

    async def link_to(self, node_id: str) -> Link:
        """The open link to a peer, dialing it if need be; LinkError if it cannot be reached."""
        link = self.links.get(node_id)
        if link is not None and link.is_open:
            return link
        state = self._dials.setdefault(node_id, _DialState())
        if state.dialing is not None:
            await state.dialing.wait()
            link = self.links.get(node_id)
            if link is not None and link.is_open:
                return link
            raise LinkError(state.last_error or f"cannot reach {node_id}")
        now = trio.current_time()
        if now < state.not_before:
            raise LinkError(f"{state.last_error}; next try in {state.not_before - now:.1f} s")
        address = self.address_of(node_id)
        if address is None:
            raise LinkError(f"no link address known for {node_id}")
        state.dialing = trio.Event()
        try:
            link = await self._dial(node_id, address)
            state.failures = 0
            state.not_before = -math.inf
            return link
        except LinkError as exc:
            state.failures += 1
            backoff = min(self.settings.backoff_max, self.settings.backoff_min * 2 ** (state.failures - 1))
            state.not_before = trio.current_time() + backoff
            state.last_error = str(exc)
            raise
        finally:
            state.dialing.set()
            state.dialing = None

    async def send(self, node_id: str, channel: int, data: bytes) -> None:
        link = await self.link_to(node_id)
        await link.send(channel, data)

    def statistics(self) -> dict[str, object]:
        return {
            "port": self.port,
            "open": [link.statistics() for link in self.links.values()],
            "refused": dict(self.refused),
            "handler_errors": sum(self.handler_errors.values()),
            "buffered": self.buffered,
            "bulk": {"expected": len(self._bulk), "running": sum(self._bulk_running.values()), **self.bulk_threads.statistics()},
        }

    # -- internals -----------------------------------------------------------------------------
    async def _dial(self, node_id: str, address: tuple[str, int]) -> Link:
        try:
            with trio.fail_after(self.settings.connect_timeout):
                stream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError) as exc:
            raise LinkError(f"cannot connect to {node_id} at {address[0]}:{address[1]}: {exc or 'timed out'}") from None
        conn = LinkConnection(self.key, Role.DIALER, network_key=self.network_key, expected_node_id=node_id, max_buffered=self.settings.max_buffered)
        return await self._establish(stream, conn, dialed_by=self.node_id)

    async def _accept(self, stream: trio.SocketStream) -> None:
        # A peer's first bytes say what the connection is: a link's hello, or a bulk
        # connection (file data, keyed by a secret the link carried) for ``bulk_handler``.
        first = b""
        with trio.move_on_after(self.settings.handshake_timeout):
            try:
                while len(first) < len(BULK_MAGIC):  # no further: a bulk peer's data follows its hello
                    data = await stream.receive_some(len(BULK_MAGIC) - len(first))
                    if not data:
                        break
                    first += data
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if len(first) < len(BULK_MAGIC):
            self.refused["handshake"] += 1
            await trio.aclose_forcefully(stream)
            return
        if first.startswith(BULK_MAGIC):
            await self._accept_bulk(stream, first)
            return
        if len(self.links) >= self.settings.max_links:
            self.refused["links_full"] += 1
            await trio.aclose_forcefully(stream)
            return
        conn = LinkConnection(self.key, Role.LISTENER, network_key=self.network_key, max_buffered=self.settings.max_buffered)
        conn.receive_data(first)
        try:
            link = await self._establish(stream, conn, dialed_by="")
        except LinkError as exc:
            log.debug("incoming link refused: %s", exc)
            return
        await link.closed.wait()

    async def _accept_bulk(self, stream: trio.SocketStream, first: bytes) -> None:
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                while len(first) < BULK_HELLO_BYTES:
                    more = await stream.receive_some(BULK_HELLO_BYTES - len(first))
                    if not more:
                        raise BadBulk("the bulk hello ended early")
                    first += more
            token = parse_bulk_hello(first[:BULK_HELLO_BYTES])
        except (BadBulk, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            self.refused["bulk_hello"] += 1
            log.debug("bulk connection refused: %s", exc)
            await trio.aclose_forcefully(stream)
            return
        expected = self._bulk.pop(token, None)
        if expected is None:
            self.refused["bulk_token"] += 1
            await trio.aclose_forcefully(stream)
            return
        peer, handler = expected
        self._bulk_running[peer] += 1
        try:
            await handler(stream)
        finally:
            self._bulk_running[peer] -= 1
            if not self._bulk_running[peer]:
                del self._bulk_running[peer]

    async def _establish(self, stream: trio.SocketStream, conn: LinkConnection, dialed_by: str) -> Link:
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with trio.fail_after(self.settings.handshake_timeout):
                await stream.send_all(conn.data_to_send())
                established: LinkEstablished | None = None
                while True:
                    # what the bytes so far produced (a listener was fed the dialer's first
                    # bytes before this); events after LinkEstablished (the peer's first
                    # messages, sent right behind its signature) stay queued for the reader
                    while established is None and (event := conn.next_event()) is not None:
                        if isinstance(event, LinkEstablished):
                            established = event
                        elif isinstance(event, LinkClosed):
                            if event.reason != "closed":
                                self.refused[event.reason] += 1
                            raise LinkError(f"link refused ({event.reason}): {event.detail}")
                    if established is not None:
                        break
                    data = await stream.receive_some(READ_SIZE)
                    conn.receive_data(data)
                    outgoing = conn.data_to_send()
                    if outgoing:
                        await stream.send_all(outgoing)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            await trio.aclose_forcefully(stream)
            raise LinkError(f"link handshake failed: {exc or 'timed out'}") from None
        except LinkError:
            await trio.aclose_forcefully(stream)
            raise
        link = Link(self, stream, conn, dialed_by=dialed_by or established.node_id)
        existing = self.links.get(link.node_id)
        if existing is not None and existing.is_open:
            # both sides dialed: keep the link the smaller node id dialed, on both ends
            # the other one is retired, not cut: what either side already sent on it still arrives
            if link.dialed_by > existing.dialed_by:
                assert self._nursery is not None
                link.retire("a simultaneous link was kept instead")
                self._nursery.start_soon(link.run)
                return existing
            existing.retire("replaced by a simultaneous link")
        self.links[link.node_id] = link
        assert self._nursery is not None
        self._nursery.start_soon(link.run)
        log.info("link to %s open (%s, %s)", link.node_id, link.cipher, "dialed" if link.dialed_by == self.node_id else "accepted")
        if self.on_established is not None:
            self.on_established(link)
        return link

    async def _dispatch(self, link: Link, channel: int, data: bytes) -> None:
        handler = self.handlers.get(channel)
        if handler is None:
            self.refused["unknown_channel"] += 1
            return
        try:
            await handler(link, data)
        except Exception:
            # a peer's message that makes a handler raise is dropped and counted; the first
            # traceback per channel is logged, so a peer cannot flood the log with them
            self.handler_errors[channel] += 1
            if self.handler_errors[channel] == 1:
                log.exception("handler for channel %d failed on a message from %s (later failures are counted only)", channel, link.node_id)
            else:
                log.debug("handler for channel %d failed on a message from %s", channel, link.node_id, exc_info=True)

    def _forget(self, link: Link) -> None:
        if self.links.get(link.node_id) is link:
            del self.links[link.node_id]
            log.info("link to %s closed: %s", link.node_id, link.close_reason)


class Replies:
    """Requests over a link channel that are answered by one reply each (the drive's,
    and signaling's): a request carries an id, and the reply with that id goes to the
    caller waiting for it; a reply nobody waits for (late, or never asked) is dropped."""

    def __init__(self) -> None:
        self._waiting: dict[object, trio.MemorySendChannel[dict[str, Any]]] = {}

    async def request(self, link: PeerLink, channel: int, rid: object, frame: bytes, timeout: float) -> dict[str, Any] | None:
        """Send ``frame`` (which carries ``rid``) and wait for its reply; None if none came
        within ``timeout`` seconds. LinkError if the link closed."""
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[rid] = send
        try:
            await link.send(channel, frame)
            with trio.move_on_after(timeout):
                return await receive.receive()
            return None
        finally:
            del self._waiting[rid]

    def deliver(self, rid: object, reply: dict[str, Any]) -> None:
        waiter = self._waiting.get(rid)
        if waiter is not None:
            try:
                waiter.send_nowait(reply)
            except trio.WouldBlock:  # a second reply with the same id
                pass


__all__ = ["Link", "LinkError", "LinkManager", "LinkSettings", "Links", "PeerLink", "Replies"]
