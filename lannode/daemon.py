"""The composition root: one trio nursery that wires the node's services.

``run_up`` is ``lannode up``: lock the home, read the config and identity, serve
the local API, write ``api.json``, tell systemd READY=1, start the plugins, and
run until SIGTERM or SIGINT, then stop everything within two seconds, leaving no
process, socket, api.json or lock behind. Service code lives in its own room;
this module only wires the rooms together.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from typing import Any

import trio

from lannode import __version__, systemd
from lannode.chat.service import ChatService
from lannode.config import Config
from lannode.core import api
from lannode.core.api import require
from lannode.drive.service import DriveService
from lannode.events import EventBus
from lannode.files import write_private
from lannode.guests.directory import GuestDirectory
from lannode.guests.routes import Router
from lannode.guests.service import GuestService
from lannode.home import Home, HomeLock
from lannode.identity import Identity
from lannode.mail import MailService, settings_of
from lannode.net.api_server import ApiServer
from lannode.peers.service import PeerService
from lannode.plugins.supervisor import PluginSupervisor, check_origin
from lannode.rtc import RtcService
from lannode.store import StoreService
from lannode.transfer.service import TransferService
from lannode.uploads import UploadService

log = logging.getLogger("lannode.node")


@dataclass(slots=True)
class NodeSettings:
    home: Home
    config: Config
    identity: Identity
    name: str
    interface: str
    epoch: int = 0  # this start's boot counter (Home.next_epoch); gossip's replay guard
    network_key: bytes | None = None  # None: an open network


class Node:
    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.home = settings.home
        self.token = secrets.token_hex(32)
        self.bus = EventBus()
        self.api = ApiServer(
            node_id=settings.identity.node_id,
            node_name=settings.name,
            version=__version__,
            token=self.token,
            bus=self.bus,
            max_message_bytes=settings.config.get("api.max_message_bytes"),
        )
        self.plugins: PluginSupervisor | None = None
        self.peers = PeerService(settings.home, settings.config, settings.identity, settings.name, settings.interface, settings.epoch, settings.network_key, self.bus)
        self.peers.register_methods(self.api)
        self.store = StoreService(settings.home.path, settings.identity, self.peers, self.bus)
        self.store.register_methods(self.api)
        self.peers.guests = GuestDirectory(self.store.map)
        self.router = Router(self.peers.links, settings.identity.node_id, settings.identity.public_key, self.peers.guests.host_of, self.peers.guests.key_of)
        self.chat = ChatService(settings.home.path, settings.identity, self.peers, self.bus, links=self.router.view(settings.identity.node_id))
        self.chat.register_methods(self.api)
        self.uploads = UploadService(settings.home.path, self.bus)
        self.uploads.register_methods(self.api)
        self.transfers = TransferService(settings.home.path, settings.config, settings.identity, self.peers, self.bus, self.uploads, links=self.chat.links, bulk=self.peers.links)
        self.uploads.in_use = self.transfers.sending
        self.transfers.register_methods(self.api)
        self.drive = DriveService(settings.home.path, settings.config, settings.identity, self.peers, self.store, self.bus, groups=lambda text: set(self.chat.resolve_group(text).members), uploads=self.uploads, downloads=self.transfers.downloads)
        self.drive.register_methods(self.api)
        mail_settings, mail_problem = settings_of(settings.config.plugins.get("mail"))
        self.mail = MailService(settings.home.path, mail_settings, self.bus, self.chat, self.drive, self.uploads, plugin_state=self._plugin_state("mail"), problem=mail_problem)
        self.mail.register_methods(self.api)
        self.guests = GuestService(settings.home.path, settings.config, settings.identity, settings.name, self.peers, self.store, self.bus, self.router, self.mail, self.drive)
        self.guests.register_methods(self.api)
        self.rtc = RtcService(settings.identity.node_id, settings.name, self.peers, self.chat.links, self.store, self.bus, self.api)
        self.peers.capabilities += ["store", "chat", "calls", "drop", "drive"] + (["mail"] if mail_settings is not None else [])
        self.started_wall = time.time()
        self.started = time.monotonic()
        self._stop = trio.Event()
        self._register_methods()

    # -- API methods --------------------------------------------------------
    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "node_id": s.identity.node_id,
            "name": s.name,
            "version": __version__,
            "api_version": api.API_VERSION,
            "pid": os.getpid(),
            "started_at": round(self.started_wall, 3),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "interface": s.interface or "auto",
            "home": str(self.home.path),
            "plugins": self.plugins.statistics() if self.plugins else [],
            "api": self.api.statistics(),
            "gossip": self.peers.gossip.statistics() | {"view_exchanges": self.peers.view_exchanges, "view_exchange_failures": self.peers.view_exchange_failures},
            "links": self.peers.links.statistics(),
            "store": self.store.statistics(),
            "chat": self.chat.statistics(),
            "rtc": self.rtc.statistics(),
            "transfers": self.transfers.statistics(),
            "uploads": self.uploads.statistics(),
            "drive": self.drive.statistics(),
            "mail": self.mail.statistics(),
            "guests": self.guests.statistics(),
            "zeroconf": self.peers.dnssd.statistics() if self.peers.dnssd else {"enabled": False},
        }

    def _plugin_state(self, name: str) -> Any:
        def state() -> str | None:
            return self.plugins.state_of(name) if self.plugins else None

        return state

    def _register_methods(self) -> None:
        async def node_status(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.status()

        async def node_stop(params: dict[str, Any], caller: api.Principal) -> Any:
            log.info("stop requested through the API")
            self._stop.set()
            return {"stopping": True}

        async def plugin_register(params: dict[str, Any], caller: api.Principal) -> Any:
            name = require(params, "name", str)
            url = require(params, "url", str)
            origins = require(params, "origins", list)
            for origin in origins:
                if not isinstance(origin, str) or (problem := check_origin(origin)):
                    raise api.ApiError(api.ErrorCode.BAD_PARAMS, problem or "origins must be strings")
            if self.plugins is None:
                raise api.ApiError(api.ErrorCode.UNAVAILABLE, "plugins are not running yet")
            try:
                state = self.plugins.register(name, url, origins)
            except KeyError:
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"{name!r} is not a plugin this node runs") from None
            return state.public()

        self.api.method("node.status", node_status, "The node's id, name, version, uptime, interface, plugins and API counters.")
        self.api.method("node.stop", node_stop, "Stop the node cleanly, as SIGTERM does.", local_only=True)
        self.api.method("plugin.register", plugin_register, 'A plugin announces {"name", "url", "origins"}; origins become UI origins.', local_only=True)

    # -- life ---------------------------------------------------------------
    def _sync_origins(self) -> None:
        self.api.ui_origins = self.plugins.origins() if self.plugins else {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.peers.run)
                await nursery.start(self.store.run)
                await nursery.start(self.chat.run)
                await nursery.start(self.uploads.run)
                await nursery.start(self.transfers.run)
                await nursery.start(self.drive.run)
                await nursery.start(self.mail.run)
                await nursery.start(self.guests.run)
                self.rtc.attach(nursery)
                port = await nursery.start(self.api.serve, s.config.get("api.port"))
                url = f"ws://127.0.0.1:{port}{api.API_PATH}"
                info = {"url": url, "token": self.token, "pid": os.getpid(), "node_id": s.identity.node_id, "api": api.API_VERSION}
                await trio.to_thread.run_sync(write_private, self.home.api_json, json.dumps(info, indent=1).encode())
                self.plugins = PluginSupervisor(
                    s.config.enabled_plugins(),
                    {"LANNODE_API_URL": url, "LANNODE_API_TOKEN": self.token, "LANNODE_HOME": str(self.home.path)},
                    self.bus,
                    self._sync_origins,
                )
                nursery.start_soon(self.plugins.run)
                if (interval := systemd.watchdog_interval()) is not None:
                    nursery.start_soon(self._watchdog, interval)
                systemd.notify(f"READY=1\nSTATUS=node {s.name} ({s.identity.node_id}) up\nMAINPID={os.getpid()}")
                log.info("node %s (%s) is up; home %s", s.name, s.identity.node_id, self.home.path)
                # What start-up made lives as long as the node: out of the collector's way, so
                # that a full collection scans what came since, not every module, class and
                # service object (on a small VM that was a 23 ms pause of everything, a few
                # times a minute at a thousand chat messages a second)
                gc.collect()
                gc.freeze()
                task_status.started()
                await self._wait_for_stop()
                systemd.notify("STOPPING=1")
                self.bus.publish("node.stopping", {"node_id": s.identity.node_id})
                log.info("stopping")
                self.peers.leave()
                nursery.cancel_scope.cancel()
        finally:
            self.home.api_json.unlink(missing_ok=True)

    async def _wait_for_stop(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("received %s", signal.Signals(signum).name)
                        self._stop.set()
                        return

                nursery.start_soon(on_signal)
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await trio.sleep(interval)


def run_up(settings: NodeSettings) -> int:
    """``lannode up``: run the node in the foreground until a signal stops it."""
    lock = HomeLock(settings.home)
    lock.acquire()
    try:
        settings.epoch = settings.home.next_epoch()
        settings.network_key = settings.home.network_key()
        trio.run(Node(settings).run)
    finally:
        lock.release()
    log.info("stopped")
    return 0
