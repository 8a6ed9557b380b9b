"""Gossip over UDP multicast: the trio service that drives ``core.membership``.

Two sockets per node:

* the **group socket** is bound to the multicast group and port, shared by every
  node on the host (SO_REUSEADDR + SO_REUSEPORT: the kernel hands each of them a
  copy of every group datagram) and joined to the group on the chosen
  interface only;
* the **unicast socket** is bound to the interface and the node's own port. It
  sends everything (probes, replies and group datagrams, with
  IP_MULTICAST_IF on the interface, TTL 1 so nothing crosses a router, and loop
  on so the other nodes on this host hear us) and receives what is sent to the
  node alone.

Our own group datagrams come back through the loop; the codec drops them by
node id ("own"). The protocol lives in ``Membership``: this module only moves
bytes and time in and out of it, and turns its events into API events. It must
never interpret a datagram itself.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from lannode.core.membership import Event, Membership, MemberStateChanged, MemberUpdated
from lannode.core.wire import MAX_DATAGRAM

log = logging.getLogger("lannode.gossip")

RECEIVE_BUFFER = 65536  # read whole oversized datagrams, so they are counted as such rather than cut


class GossipError(Exception):
    """The gossip sockets could not be set up; the message is for a person."""


@dataclass(frozen=True, slots=True)
class GossipSettings:
    interface: str  # an IPv4 address; "" = the address the default route would use
    group: str
    port: int
    unicast_port: int = 0


def local_address_for(group: str, port: int) -> str:
    """The address the kernel would send from towards the group (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((group, port))
            return str(probe.getsockname()[0])
        except OSError as exc:
            raise GossipError(f"no interface to reach multicast group {group}: {exc.strerror}; set --interface") from None


def open_sockets(settings: GossipSettings) -> tuple[socket.socket, socket.socket]:
    """(unicast socket, group socket), both non-blocking, or GossipError."""
    interface = settings.interface or local_address_for(settings.group, settings.port)
    unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    group = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            unicast.bind((interface, settings.unicast_port))
        except OSError as exc:
            raise GossipError(f"cannot bind gossip to {interface}:{settings.unicast_port}: {exc.strerror}") from None
        unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            group.bind((settings.group, settings.port))
            group.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(settings.group) + socket.inet_aton(interface))
        except OSError as exc:
            raise GossipError(f"cannot join multicast group {settings.group}:{settings.port} on {interface}: {exc.strerror}") from None
        for sock in (unicast, group):
            sock.setblocking(False)
    except BaseException:
        unicast.close()
        group.close()
        raise
    return unicast, group


class GossipService:
    """Runs a Membership on real sockets; ``on_event`` hears every membership event."""

    def __init__(self, membership_for: Callable[[tuple[str, int]], Membership], settings: GossipSettings, on_event: Callable[[Event], None]) -> None:
        self.settings = settings
        self._membership_for = membership_for
        self.membership: Membership | None = None
        self._on_event = on_event
        self._unicast: socket.socket | None = None
        self._group: socket.socket | None = None
        self._changed = trio.Event()
        self.send_errors = 0
        self.wakeups = 0  # timer rounds: a handful a second when idle (a test holds it to that)
        self.address: tuple[str, int] | None = None
        self.started_at: float | None = None  # Unix time the gossip began (benchmarks measure from it)

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        self._unicast, self._group = open_sockets(self.settings)
        try:
            host, port = self._unicast.getsockname()[:2]
            self.address = (host, port)
            self.started_at = time.time()
            self.membership = self._membership_for(self.address)
            self.membership.start(trio.current_time())
            self.pump()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, self._unicast)
                nursery.start_soon(self._receive, self._group)
                nursery.start_soon(self._timer)
                task_status.started(self.address)
        finally:
            self._unicast.close()
            self._group.close()

    def leave(self) -> None:
        """Say goodbye on the network (a signed Left, several copies) before the sockets close."""
        if self.membership is None or self._unicast is None:
            return
        self.membership.leave(trio.current_time())
        self.pump()

    def contact(self, address: tuple[str, int]) -> None:
        """Introduce ourselves to a node found another way (zeroconf)."""
        if self.membership is not None:
            self.membership.contact(address)
            self.pump()

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {"group": f"{self.settings.group}:{self.settings.port}", "send_errors": self.send_errors, "started_at": self.started_at, "wakeups": self.wakeups}
        if self.address is not None:
            stats["address"] = f"{self.address[0]}:{self.address[1]}"
        if self.membership is not None:
            stats.update(self.membership.statistics())
        return stats

    def _failed(self, what: str, about: str, *args: object) -> None:
        """Count a failure handling ``what`` (its traceback logged the first time only, so a
        peer cannot flood the log) as the drop reason ``error`` or ``event_error``."""
        assert self.membership is not None
        reason = "error" if what == "datagram" else "event_error"
        dropped = self.membership.codec.dropped
        dropped[reason] += 1
        if dropped[reason] == 1:
            log.exception("gossip: handling " + about + " failed (later failures are counted only)", *args)

    # -- the loop ------------------------------------------------------------------------------
    async def _receive(self, sock: socket.socket) -> None:
        assert self.membership is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(64):  # drain what is queued, then let the others run
                try:
                    data, address = sock.recvfrom(RECEIVE_BUFFER)
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. an ICMP error reported on the socket
                    log.debug("gossip receive: %s", exc)
                    continue
                try:
                    self.membership.datagram_received(data, (address[0], address[1]), trio.current_time())
                except Exception:  # a bug a datagram found: it is dropped and counted, the node goes on
                    self._failed("datagram", "a datagram from %s:%d", *address[:2])
            self.pump()
            await trio.lowlevel.checkpoint()

    async def _timer(self) -> None:
        assert self.membership is not None
        while True:
            with trio.move_on_at(self.membership.next_wakeup()):
                await self._changed.wait()
            self._changed = trio.Event()
            self.wakeups += 1
            self.pump(wake_timer=False)  # waking ourselves would spin

    def pump(self, *, wake_timer: bool = True) -> None:
        """Tick the protocol, send what it wants sent, hand on its events; then let the
        timer recompute its next wake-up (anything fed in may have moved it)."""
        membership = self.membership
        assert membership is not None and self._unicast is not None
        membership.tick(trio.current_time())
        for out in membership.take_outgoing():
            destination = out.address or (self.settings.group, self.settings.port)
            assert len(out.data) <= MAX_DATAGRAM
            try:
                self._unicast.sendto(out.data, destination)
            except OSError as exc:
                # a full buffer or an unreachable peer loses one datagram, as UDP does
                self.send_errors += 1
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EPERM, errno.ENETUNREACH, errno.EHOSTUNREACH):
                    log.warning("gossip send to %s: %s", destination, exc)
        for event in membership.take_events():
            try:
                self._on_event(event)
            except Exception:  # a listener's bug must not stop the gossip
                self._failed("event", "the event %r", event)
        if wake_timer:
            self._changed.set()


def describe(event: MemberStateChanged | MemberUpdated, membership: Membership) -> tuple[str, dict[str, object]]:
    """An API event (topic, data) for a membership event."""
    member = membership.members.get(event.node_id)
    data: dict[str, object] = {"node_id": event.node_id}
    if member is not None:
        data["name"] = member.presence.name
        data["state"] = member.state.value
    if isinstance(event, MemberStateChanged):
        data["previous"] = event.previous.value if event.previous else None
        data["state"] = event.state.value
        return "peer.state", data
    assert isinstance(event, MemberUpdated), event
    return "peer.updated", data


def wall_time_of(monotonic_then: float) -> float:
    """A trio clock reading as Unix time (for last_seen in listings)."""
    return time.time() - (trio.current_time() - monotonic_then)
