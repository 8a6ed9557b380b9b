"""zeroconf: advertise the node as a DNS-SD service and find others the same way.

The node appears as ``NAME [NODE-ID]._lannode._tcp.local.`` on the chosen
interface only, with the link port as the service port and TXT ``id``, ``name``,
``version``, ``gossip`` (its unicast ``host:port``) and ``net`` (``open`` or a
short hash of the network key, and the gossip port every member uses), so
nodes of different networks on one LAN leave each other alone. Standard tools (``avahi-browse``, ``dns-sd``) list it.

Browsing is the second discovery path, for networks that pass mDNS but filter
other multicast: a node found this way that gossip has not shown us is sent a
unicast hello, and sent it again every ``recontact_interval`` until it is alive
in the membership. Only nodes with the same ``net`` are contacted.

python-zeroconf runs its own threads (it is asyncio inside); this module keeps
them behind a narrow edge: blocking calls go through ``trio.to_thread``, and the
browser's callbacks come back into trio with ``trio.from_thread``. Registration
probes for about 1.7 s and happens in the background, never delaying readiness.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger("lannode.zeroconf")

SERVICE_TYPE = "_lannode._tcp.local."
MAX_INSTANCE_BYTES = 63


def network_tag(network_key: bytes | None, gossip_port: int) -> str:
    """Which lannode network a node is on: its key (hashed) and the gossip port all members share."""
    key = "open" if network_key is None else hashlib.blake2b(network_key, digest_size=6, person=b"lannode-net").hexdigest()
    return f"{key}-{gossip_port}"


def instance_name(name: str, node_id: str) -> str:
    suffix = f" [{node_id}]"
    room = MAX_INSTANCE_BYTES - len(suffix.encode())
    short = name.encode()[:room].decode(errors="ignore").replace(".", "-") or "lannode"
    return short + suffix


@dataclass(frozen=True, slots=True)
class Found:
    node_id: str
    name: str
    gossip: tuple[str, int]


def parse_properties(properties: dict[bytes, bytes | None]) -> Found | None:
    """A discovered service's TXT as a Found, or None if it is not a well-formed lannode node."""
    try:
        props = {k.decode(): (v or b"").decode() for k, v in properties.items()}
        host, port = props["gossip"].rsplit(":", 1)
        socket.inet_aton(host)
        node_id = props["id"]
        if len(node_id) != 24:
            return None
        return Found(node_id, props.get("name", ""), (host, int(port)))
    except (KeyError, ValueError, UnicodeDecodeError, OSError):
        return None


class DnsSdService:
    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        version: str,
        net: str,
        on_found: Callable[[Found], None],
        recontact_interval: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.version = version
        self.net = net
        self.on_found = on_found
        self.recontact_interval = recontact_interval
        self.found: dict[str, Found] = {}
        self.ignored = 0
        self.advertised = False
        self.error: str | None = None

    async def run(self, host: str, gossip_port: int, link_port: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

        try:
            zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=[host], ip_version=IPVersion.V4Only))
        except OSError as exc:
            self.error = f"zeroconf could not start on {host}: {exc}"
            log.warning("%s; discovery relies on gossip alone", self.error)
            task_status.started()
            await trio.sleep_forever()
        token = trio.lowlevel.current_trio_token()
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{instance_name(self.name, self.node_id)}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(host)],
            port=link_port,
            properties={"id": self.node_id, "name": self.name, "version": self.version, "gossip": f"{host}:{gossip_port}", "net": self.net},
            server=f"{self.node_id}.local.",
        )

        def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            # a zeroconf thread: look the service up here (it may block), then hand over to trio
            if state_change.name not in ("Added", "Updated"):
                return
            service = zeroconf.get_service_info(service_type, name, timeout=1500)
            if service is None:
                return
            props = dict(service.properties)
            try:
                trio.from_thread.run_sync(self._seen, props, trio_token=token)
            except trio.RunFinishedError:
                pass

        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[changed])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._register, zc, info)
                nursery.start_soon(self._recontact)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await trio.to_thread.run_sync(browser.cancel)
                await trio.to_thread.run_sync(zc.close)  # unregisters (goodbye packets) and stops its threads

    async def _register(self, zc: Any, info: Any) -> None:
        try:
            await trio.to_thread.run_sync(zc.register_service, info)
        except Exception as exc:  # NonUniqueNameException, or the network went away
            self.error = f"could not advertise over zeroconf: {exc}"
            log.warning("%s", self.error)
            return
        self.advertised = True
        log.info("advertised as %r over zeroconf", info.name)

    def _seen(self, properties: dict[bytes, bytes | None]) -> None:
        found = parse_properties(properties)
        if found is None or found.node_id == self.node_id:
            return
        net = (properties.get(b"net") or b"").decode(errors="replace")
        if net != self.net or found.gossip[1] == 0:
            self.ignored += 1
            return
        self.found[found.node_id] = found
        self.on_found(found)

    async def _recontact(self) -> None:
        while True:
            await trio.sleep(self.recontact_interval)
            for found in list(self.found.values()):
                self.on_found(found)

    def statistics(self) -> dict[str, object]:
        return {"advertised": self.advertised, "found": len(self.found), "ignored": self.ignored, "error": self.error}
