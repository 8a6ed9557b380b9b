"""The guest door: browsers on the LAN join through this node as guests of their own.

What a person does: the host's page ("Invite a phone") or ``lannode guests invite``
shows a QR code and a 6-digit code. The phone opens the door's page over HTTPS on
the node's LAN address, passes the browser's one-time certificate warning, picks
a name, and is in. Its browser made an Ed25519 key (WebCrypto, non-extractable,
kept in IndexedDB); that key signs the guest's record, each session's challenge,
every request, and every chat message, so the host carries the guest's words but
cannot make them up.

What the door serves, all from one origin and nothing from the internet:

* ``GET /``, ``/config.json`` and the page's own files (the node's page, which
  switches to its guest mode);
* ``POST /guest/join``: an invitation (token or code) and the guest's signed record;
* ``POST /guest/challenge`` then ``POST /guest/session``: a session for a known
  guest, opened by signing the challenge (``core.guests.Sessions``);
* ``POST /guest/api``: one signed request ``{"method", "params"}`` in a session;
* ``GET /guest/events``: the guest's events, as server-sent events.

A guest reaches only what it would see as a node of its own: its own chat (a
``ChatService`` of its own, its history in ``guests/GUEST/`` in the home), the
people, and nothing of the host's: no paths, no admin methods, no other guest's
data. Each guest has a request budget (``RATE`` a second, ``BURST`` at once);
refusals are counted in ``status``.

The host announces each guest in the replicated store (``guests/HOST/GUEST``: the
record the guest signed, and whether a page of it is open), so every node lists
it and routes to it through this node (``lannode.guests.routes``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import segno
import trio
from nacl.signing import SigningKey

from lannode.chat.service import ChatService
from lannode.config import Config, ConfigError, set_option
from lannode.core import api
from lannode.core.api import require
from lannode.core.guests import GuestError, GuestRecord, Invites, Session, Sessions, unb64
from lannode.core.ids import node_id_for
from lannode.core.membership import State
from lannode.core.writers import DOOR_PREFIX, GUESTS_PREFIX
from lannode.drive.service import DriveService
from lannode.events import EventBus, Subscriber, SubscriberGone
from lannode.files import leaf_name, open_beneath, ui_root, write_private
from lannode.guests.http import EventStream, FileResponse, HttpError, HttpsServer, Request, Response
from lannode.guests.routes import Router
from lannode.guests.tls import DoorCertificate, door_certificate
from lannode.identity import Identity
from lannode.mail import MailService, MailSource
from lannode.net.links import PeerLink
from lannode.peers.service import PeerService, register_trust
from lannode.peers.trust import TrustStore
from lannode.rtc import RtcService
from lannode.store import StoreService
from lannode.transfer.service import TransferService
from lannode.uploads import UploadService

log = logging.getLogger("lannode.guests")

MAX_BODY = 256 * 1024  # a guest's request
MAX_PIECE = 32 << 20  # a piece of an upload: read whole, its hash checked, then written
PIECES_HELD = 4  # pieces of uploads held in memory at once, from all guests (2 from one)
MAX_DRIVE_OUT = 4  # drive files a guest fetched that wait on its host for their one download
PIECE_WAIT = 30.0  # seconds a piece that came early waits for the one before it
RATE = 20.0  # requests a second a guest may make
BURST = 200.0  # ... and at once (a page opening asks for a few things together)
EVENT_QUEUE = 512  # events waiting for one page; past that they are dropped (counted)
STATIC = re.compile(r"^/([a-z0-9_-]+\.(?:js|css|svg|html))$")
CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "html": "text/html; charset=utf-8"}
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


@dataclass(frozen=True, slots=True)
class GuestAuthor:
    """A guest as chat's author: its key, and no signing key here (its page signs)."""

    public_key: bytes

    @property
    def node_id(self) -> str:
        return node_id_for(self.public_key)

    @property
    def signing_key(self) -> SigningKey | None:
        return None


class GuestPeers:
    """The others as a guest sees them: the host's view of the network, the host itself,
    and the guest's own trust (pinned and verified keys, in its own ``peers.json``)."""

    def __init__(self, host: PeerService, guest: str, trust: TrustStore) -> None:
        self.host = host
        self.guest = guest
        self.trust = trust
        self.state_listeners: list[Callable[[str, State], None]] = []

    def on_host_state(self, node_id: str, state: State) -> None:
        for listener in self.state_listeners:
            listener(node_id, state)

    def states(self) -> list[tuple[str, State]]:
        return [*self.host.states(), (self.host.identity.node_id, State.ALIVE)]

    def pin(self, link: PeerLink) -> None:
        if self.trust.pin(link.node_id, link.public_key, self.host.name_if_known(link.node_id) or ""):
            log.info("guest %s pinned %s on first use", self.guest[:8], link.node_id)

    def resolve_id(self, text: str) -> str:
        host = self.host.identity.node_id
        if text in (host, self.host.name):
            return host
        found = self.host.resolve_id(text)
        if found == self.guest:
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, "that is you; pick someone else")
        return found

    def name_of(self, node_id: str) -> str:
        return self.host.name_of(node_id)

    def name_if_known(self, node_id: str) -> str | None:
        return self.host.name_if_known(node_id)

    def key_of(self, node_id: str) -> bytes | None:
        return self.host.key_of(node_id)

    def state_of(self, node_id: str) -> str:
        return self.host.state_of(node_id)

    def bulk_address(self, node_id: str) -> tuple[str, int] | None:
        return self.host.bulk_address(node_id)


class MethodTable:
    """A guest's methods (``api.ByteMethods``): what services register, looked up per
    request. Upload bytes come through the door's own ``PUT /guest/uploads/ID``."""

    def __init__(self) -> None:
        self.handlers: dict[str, api.Handler] = {}
        self.on_disconnect: list[Callable[[int], None]] = []
        self.binary_handler: Callable[[api.Principal, bytes], Awaitable[None]] | None = None
        self.http_upload: Callable[[api.Principal, str, int, AsyncIterator[bytes]], Awaitable[Any]] | None = None

    def method(self, name: str, handler: api.Handler | None, doc: str, *, local_only: bool = False) -> None:
        if handler is not None and not local_only:
            self.handlers[name] = handler

    def subscription(self, name: str, doc: str, topics_from: Callable[[dict[str, Any]], list[str]], *, unsubscribe: bool = False) -> None:
        pass  # a guest's page gets all of its own events


@dataclass(eq=False)
class Guest:
    record: GuestRecord
    directory: Path
    bus: EventBus
    peers: GuestPeers
    chat: ChatService
    rtc: RtcService
    uploads: UploadService
    transfers: TransferService
    methods: MethodTable
    added: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    pages: int = 0  # event streams open now
    drive_out: dict[str, tuple[Path, str]] = field(default_factory=dict)  # download token -> (file fetched for it, name)
    pieces: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(2))  # upload pieces of its held at once
    piece_written: trio.Event = field(default_factory=trio.Event)  # set (and replaced) when a piece of its was written
    tokens: float = BURST
    tokens_at: float = 0.0
    requests: int = 0

    @property
    def node_id(self) -> str:
        return self.record.node_id


class GuestService:
    def __init__(
        self,
        home_path: Path,
        config: Config,
        identity: Identity,
        name: str,
        peers: PeerService,
        store: StoreService,
        bus: EventBus,
        router: Router,
        mail: MailService | None = None,
        drive: DriveService | None = None,
    ) -> None:
        self.mail = mail  # guests send through the node's outbox and relay
        self.drive = drive  # guests put through the node's drive, and read what is shared with them
        self.home = home_path / "guests"
        self.config_path = home_path / "config.toml"
        self.config = config
        self.identity = identity
        self.me = identity.node_id
        self.name = name
        self.peers = peers
        self.store = store
        self.bus = bus
        self.router = router
        self.enabled = bool(config.get("guests.enabled"))
        self.port = int(config.get("guests.port"))
        self.max_guests = int(config.get("guests.max_guests"))
        self.allow_loopback = bool(config.get("guests.allow_loopback"))
        self.invites = Invites()
        self.sessions = Sessions()
        self.counters: Counter[str] = Counter()
        self.guests: dict[str, Guest] = {}
        self.certificate: DoorCertificate | None = None
        self.server: HttpsServer | None = None
        self.url = ""
        self.problem = "" if self.enabled else "off (lannode guests on)"
        self._door: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._ui = ui_root()
        self._static: dict[str, bytes] = {}
        self._streams = itertools.count(1)
        self._pieces = trio.Semaphore(PIECES_HELD)
        self._stream_of: dict[str, int] = {}  # session -> its page's event stream (the page's "connection")
        peers.state_listeners.append(self._on_peer_state)

    # -- life ------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(lambda: self.home.mkdir(mode=0o700, exist_ok=True))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for record, added in await trio.to_thread.run_sync(self._load):
                await self._start_guest(record, added)
            if self.enabled:
                await self._open_door()
            task_status.started()
            await trio.sleep_forever()

    def _load(self) -> list[tuple[GuestRecord, float]]:
        """The guests this node hosts, from ``guests/guests.json``; a record that does not
        hold is set aside (logged, counted), never a reason not to start."""
        path = self.home / "guests.json"
        try:
            data = json.loads(path.read_text())
            entries = data["guests"] if isinstance(data, dict) and isinstance(data.get("guests"), list) else []
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError) as exc:
            aside = path.with_name(f"guests.json.bad-{int(time.time())}")
            log.warning("guests: %s cannot be read (%s); set aside as %s, starting without guests", path, exc, aside.name)
            self.counters["bad_guest_file"] += 1
            try:
                path.rename(aside)  # kept for a person to look at: the next join would overwrite it
            except OSError:
                pass
            return []
        out = []
        for entry in entries[: self.max_guests]:
            try:
                if not isinstance(entry, dict):
                    raise GuestError("malformed", "a guest entry is an object")
                record = GuestRecord.from_json(entry.get("record"))
                added = float(entry.get("added", 0.0))
            except (GuestError, ValueError, TypeError) as exc:
                log.warning("guests: a guest record in %s does not hold (%s); set aside", path, exc)
                self.counters["bad_guest_record"] += 1
                continue
            if record.host == self.me:
                out.append((record, added))
        return out

    async def _save(self) -> None:
        data = {"guests": [{"record": g.record.to_json(), "added": g.added} for g in self.guests.values()]}
        await trio.to_thread.run_sync(write_private, self.home / "guests.json", json.dumps(data, indent=1).encode())

    async def _start_guest(self, record: GuestRecord, added: float) -> Guest:
        guest_id = record.node_id
        directory = self.home / guest_id
        await trio.to_thread.run_sync(lambda: directory.mkdir(mode=0o700, exist_ok=True))
        bus = EventBus()
        peers = GuestPeers(self.peers, guest_id, TrustStore(directory / "peers.json"))
        chat = ChatService(directory, GuestAuthor(record.guest_key), peers, bus, links=self.router.view(guest_id))
        methods = MethodTable()
        chat.register_methods(methods)
        rtc = RtcService(guest_id, record.name, peers, self.router.view(guest_id), self.store, bus, methods)
        assert self._nursery is not None
        rtc.attach(self._nursery)
        uploads = UploadService(directory, bus)
        uploads.register_methods(methods)
        author = GuestAuthor(record.guest_key)
        transfers = TransferService(directory, self.config, author, peers, bus, uploads, links=self.router.view(guest_id), bulk=self.peers.links, downloads=directory / "downloads")
        transfers.auto_accept = set()  # the host's trusted senders are not the guest's
        uploads.in_use = transfers.sending
        transfers.register_methods(methods)
        if self.mail is not None:
            self.mail.register_methods(methods, MailSource(chat, uploads, None, guest_id))
        guest = Guest(record, directory, bus, peers, chat, rtc, uploads, transfers, methods, added)
        self._register_basics(guest)
        if self.drive is not None:
            self._register_drive(guest, self.drive)
        self.guests[guest_id] = guest
        assert self._nursery is not None
        await self._nursery.start(self._run_guest, guest)
        await self._announce(guest)
        return guest

    async def _run_guest(self, guest: Guest, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with guest.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(guest.chat.run)
                await nursery.start(guest.uploads.run)
                await nursery.start(guest.transfers.run)
                task_status.started()

    async def _announce(self, guest: Guest) -> None:
        await self.store.put(f"{GUESTS_PREFIX}{self.me}/{guest.node_id}", {"record": guest.record.to_json(), "online": guest.pages > 0})

    def _on_peer_state(self, node_id: str, state: State) -> None:
        for guest in self.guests.values():
            guest.peers.on_host_state(node_id, state)

    # -- the door --------------------------------------------------------------------------------
    async def _open_door(self) -> None:
        address = self.peers.address
        if not address or address.startswith("127.") and not self.allow_loopback:
            self.problem = "this node binds only a loopback address: phones cannot reach it (set node.interface, or guests.allow_loopback)"
            log.warning("guests: %s", self.problem)
            return
        try:
            self.certificate = await trio.to_thread.run_sync(door_certificate, self.home, address, self.name)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.certificate.cert_path), str(self.certificate.key_path))
            self.server = HttpsServer(self._handle, context)
            assert self._nursery is not None
            self._door = trio.CancelScope()
            port = await self._nursery.start(self._serve_door, self.server, address)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.problem = f"the guest door cannot open on {address}:{self.port}: {exc}"
            log.warning("guests: %s", self.problem)
            return
        self.url = f"https://{address}:{port}/"
        self.problem = ""
        await self.store.put(f"{DOOR_PREFIX}{self.me}", {"url": self.url, "fingerprint": self.certificate.fingerprint})
        log.info("guest door open at %s (certificate SHA-256 %s)", self.url, self.certificate.fingerprint)

    async def _serve_door(self, server: HttpsServer, address: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._door is not None
        with self._door:
            await server.serve(address, self.port, task_status=task_status)

    async def _close_door(self) -> None:
        if self._door is not None:
            self._door.cancel()
            self._door = None
        self.server = None
        self.url = ""
        self.problem = "off (lannode guests on)"
        await self.store.delete(f"{DOOR_PREFIX}{self.me}")

    async def _handle(self, request: Request) -> Response | FileResponse | EventStream:
        path = request.path
        if request.method == "GET":
            if path in ("/", "/index.html"):
                return self._file("index.html")
            if path == "/config.json":
                return Response(body=json.dumps({"guest": True, "host": self.me, "host_name": self.name, "fingerprint": self.certificate.fingerprint if self.certificate else ""}).encode())
            if path == "/guest/events":
                return self._events(request)
            if path.startswith("/guest/files/"):
                return await self._download(request)
            if path.startswith("/guest/drive/"):
                return await self._drive_download(request)
            static = STATIC.match(path)
            if static:
                return self._file(static.group(1))
            raise HttpError(404, "not found", "not_found")
        if request.header("origin") not in (None, self.url.rstrip("/")):
            raise HttpError(403, "not this door's own page", "origin")
        if request.method == "PUT" and path.startswith("/guest/uploads/"):
            try:
                return await self._upload(request)
            except GuestError as exc:
                self.counters[exc.reason] += 1
                return Response(403 if exc.reason in ("forged", "replayed") else 401 if exc.reason == "no_session" else 400, json.dumps({"error": str(exc), "reason": exc.reason}).encode())
        if request.method != "POST":
            raise HttpError(405, "GET, POST, or PUT of an upload", "method")
        body = await request.body(MAX_BODY)
        handler = {"/guest/join": self._join, "/guest/challenge": self._challenge, "/guest/session": self._session, "/guest/api": self._api}.get(path)
        if handler is None:
            raise HttpError(404, "not found", "not_found")
        try:
            return await handler(request, body)
        except GuestError as exc:
            self.counters[exc.reason] += 1
            status = {"forged": 403, "replayed": 403, "no_session": 401, "unknown_guest": 401, "rate": 429, "full": 503}.get(exc.reason, 400)
            return Response(status, json.dumps({"error": str(exc), "reason": exc.reason}).encode())

    def _file(self, name: str) -> Response:
        data = self._static.get(name)
        if data is None:
            try:
                data = (self._ui / name).read_bytes()
            except OSError:
                raise HttpError(404, "not found", "not_found") from None
            self._static[name] = data
        return Response(body=data, content_type=CONTENT_TYPES[name.rsplit(".", 1)[1]], headers=[("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY")])

    # -- joining and sessions ------------------------------------------------------------------------
    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise GuestError("malformed", "the request is not JSON") from None
        if not isinstance(data, dict):
            raise GuestError("malformed", "the request is a JSON object")
        return data

    async def _join(self, request: Request, body: bytes) -> Response:
        data = self._json(body)
        token, code = data.get("invite"), data.get("code")
        if not isinstance(token, (str, type(None))) or not isinstance(code, (str, type(None))):
            raise GuestError("malformed", "an invite token or a code, as text")
        record = GuestRecord.from_json(data.get("record"))  # before the invite is spent: a bad record costs no invite
        if record.host != self.me:
            raise GuestError("malformed", "the record names another host")
        known = self.guests.get(record.node_id)
        if known is None and len(self.guests) >= self.max_guests:
            raise GuestError("full", f"this node has its {self.max_guests} guests already")
        self.invites.redeem(time.monotonic(), token=token, code=None if token else code)
        if known is not None:  # the same browser, invited again: its new record (a new name)
            known.record = record
            await self._announce(known)
        else:
            await self._start_guest(record, time.time())
            log.info("guest %s (%s) joined", record.name, record.node_id)
            self.bus.publish("guest.joined", {"guest": record.node_id, "name": record.name})
        await self._save()
        self.counters["joined"] += 1
        return Response(body=json.dumps({"guest": record.node_id, "host": self.me, "host_name": self.name}).encode())

    async def _challenge(self, request: Request, body: bytes) -> Response:
        guest_id = self._json(body).get("guest")
        if not isinstance(guest_id, str) or guest_id not in self.guests:
            raise GuestError("unknown_guest", "not a guest of this node: ask for an invitation")
        return Response(body=json.dumps({"challenge": self.sessions.challenge(guest_id, time.monotonic())}).encode())

    async def _session(self, request: Request, body: bytes) -> Response:
        data = self._json(body)
        guest_id = data.get("guest")
        guest = self.guests.get(guest_id) if isinstance(guest_id, str) else None
        if guest is None:
            raise GuestError("unknown_guest", "not a guest of this node: ask for an invitation")
        challenge = data.get("challenge")
        if not isinstance(challenge, str):
            raise GuestError("malformed", "the challenge, as text")
        session = self.sessions.open(guest.node_id, guest.record.guest_key, challenge, unb64(data.get("signature"), 64), time.monotonic())
        return Response(body=json.dumps({"session": session.id, "hello": self._hello(guest)}).encode())

    def _hello(self, guest: Guest) -> dict[str, Any]:
        return {"node_id": guest.node_id, "name": guest.record.name, "guest": True, "host": self.me, "host_name": self.name, "fingerprint": self.certificate.fingerprint if self.certificate else ""}

    def _signed(self, request: Request, signed: bytes) -> tuple[Guest, Session]:
        """The guest whose session a request belongs to, if its signature and counter hold,
        and it is within its budget."""
        counter = request.header("x-lannode-counter") or request.query.get("counter", "")
        signature = request.header("x-lannode-signature") or request.query.get("signature", "")
        session_id = request.header("x-lannode-session") or request.query.get("session", "")
        if session_id not in self.sessions.sessions:
            self.sessions.counters["no_session"] += 1
            raise GuestError("no_session", "no such session (the host restarted, or it expired): sign in again")
        session = self.sessions.check(session_id, int(counter) if counter.isdigit() else None, signed, unb64(signature, 64), time.monotonic())
        guest = self.guests.get(session.guest)
        if guest is None:
            raise GuestError("unknown_guest", "not a guest of this node any more")
        now = time.monotonic()
        guest.tokens = min(BURST, guest.tokens + (now - guest.tokens_at) * RATE)
        guest.tokens_at = now
        if guest.tokens < 1:
            raise GuestError("rate", "too many requests; slow down")
        guest.tokens -= 1
        guest.requests += 1
        return guest, session

    async def _api(self, request: Request, body: bytes) -> Response:
        guest, session = self._signed(request, body)
        data = self._json(body)
        method, params = data.get("method"), data.get("params", {})
        if not isinstance(method, str) or not isinstance(params, dict):
            raise GuestError("malformed", 'a request is {"method", "params"}')
        handler = guest.methods.handlers.get(method)
        if handler is None:
            self.counters["refused_method"] += 1
            return Response(body=json.dumps({"error": {"code": api.ErrorCode.NOT_FOUND, "message": f"{method} is not for guests"}}).encode())
        try:
            result = await handler(params, api.Principal(origin=self.url.rstrip("/"), connection=self._stream_of.get(session.id, 0)))
        except api.ApiError as exc:
            self.counters[f"refused_{exc.code}"] += 1
            return Response(body=json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode())
        return Response(body=api.encode({"result": result}).encode())

    def _events(self, request: Request) -> EventStream:
        try:
            guest, session = self._signed(request, b"GET /guest/events")
        except GuestError as exc:
            self.counters[exc.reason] += 1
            raise HttpError(401 if exc.reason in ("no_session", "unknown_guest") else 403, str(exc), exc.reason) from None
        send, receive = trio.open_memory_channel[str](EVENT_QUEUE)

        def deliver(frame: str) -> bool:
            try:
                send.send_nowait(f"data: {frame}\n\n")
            except trio.WouldBlock:
                return False
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise SubscriberGone() from None
            return True

        connection = next(self._streams)  # the page's "connection": its calls' fronts get events here
        self._stream_of[session.id] = connection
        own = Subscriber(deliver, connection=connection, patterns={"*"})
        people = Subscriber(deliver, connection=-1, patterns={"peer.*", "guest.*"})  # never the target of one connection's event
        guest.bus.add(own)
        self.bus.add(people)
        guest.pages += 1
        deliver(api.event("hello", self._hello(guest)))
        if guest.pages == 1 and self._nursery is not None:
            self._nursery.start_soon(self._announce, guest)

        def closed() -> None:
            guest.bus.remove(own)
            self.bus.remove(people)
            send.close()
            if self._stream_of.get(session.id) == connection:
                del self._stream_of[session.id]
            for hook in guest.methods.on_disconnect:  # a closed tab leaves its calls and rooms
                hook(connection)
            guest.pages -= 1
            if guest.pages == 0 and self._nursery is not None and guest.node_id in self.guests:
                self._nursery.start_soon(self._announce, guest)

        return EventStream(receive, closed)

    # -- files: a guest's uploads to its host, and the files it received ------------------------------
    async def _upload(self, request: Request) -> Response:
        """One piece of an upload (``PUT /guest/uploads/ID``): signed over the path, the offset
        and the piece's SHA-256, which is checked before a byte is written."""
        offset_text, digest = request.header("x-lannode-offset") or "", (request.header("x-lannode-sha256") or "").lower()
        if not offset_text.isdigit() or len(digest) != 64:
            raise GuestError("malformed", "an upload's piece names its offset and its SHA-256")
        guest, session = self._signed(request, f"PUT {request.path} {offset_text} {digest}".encode())
        upload_id, offset = request.path.rsplit("/", 1)[1], int(offset_text)
        async with guest.pieces, self._pieces:  # pieces held in memory: 2 a guest, PIECES_HELD in all
            body = await request.body(MAX_PIECE)
            # hashed in a worker thread (hashlib lets go of the GIL): the next piece keeps arriving meanwhile
            if await trio.to_thread.run_sync(lambda: hashlib.sha256(body).hexdigest()) != digest:
                raise GuestError("malformed", "the piece is not the one signed (its SHA-256 differs)")

            async def piece() -> AsyncIterator[bytes]:
                yield body

            # The page sends the next piece while this one is written: it waits for its turn.
            upload = guest.uploads.uploads.get(upload_id)
            with trio.move_on_after(PIECE_WAIT):
                while upload is not None and (upload.busy or upload.written < offset):
                    await guest.piece_written.wait()
            principal = api.Principal(origin=self.url.rstrip("/"), connection=self._stream_of.get(session.id, 0))
            try:
                record = await guest.uploads.on_http(principal, upload_id, offset, piece())
            except api.ApiError as exc:
                self.counters[f"refused_{exc.code}"] += 1
                return Response({api.ErrorCode.NOT_FOUND: 404, api.ErrorCode.FORBIDDEN: 403}.get(exc.code, 400), json.dumps({"error": exc.message}).encode())
            finally:
                guest.piece_written.set()
                guest.piece_written = trio.Event()
        return Response(body=api.encode(record).encode())

    async def _download(self, request: Request) -> FileResponse:
        """A file the guest received (``GET /guest/files/TRANSFER/INDEX``, signed in the query):
        read from the guest's own downloads folder, never through a link."""
        try:
            guest, _ = self._signed(request, f"GET {request.path}".encode())
        except GuestError as exc:
            self.counters[exc.reason] += 1
            raise HttpError(401 if exc.reason in ("no_session", "unknown_guest") else 403, str(exc), exc.reason) from None
        parts = request.path.split("/")
        transfer = guest.transfers.transfers.get(parts[3]) if len(parts) == 5 and parts[4].isdigit() else None
        landed = transfer.landed.get(int(parts[4])) if transfer is not None and transfer.direction == "in" else None
        if landed is None:
            raise HttpError(404, "no such file received", "not_found")
        downloads = guest.transfers.downloads
        try:
            opened, size = await trio.to_thread.run_sync(open_beneath, downloads, landed)
        except OSError:
            raise HttpError(404, "that file is gone from the host", "not_found") from None
        return FileResponse(opened, size, landed.rsplit("/", 1)[-1])

    # -- the drive, for a guest -------------------------------------------------------------------------
    def _register_drive(self, guest: Guest, drive: DriveService) -> None:
        """A guest puts through its host (from its own upload; shared with itself and whom it
        names), lists what is shared with it (each share sealed to its own box key: its page
        opens them), and gets a file by handing its host the capability for that one get."""
        methods = guest.methods

        async def drive_ls(params: dict[str, Any], caller: api.Principal) -> Any:
            return drive.shared_with(guest.node_id)

        async def drive_put(params: dict[str, Any], caller: api.Principal) -> Any:
            if not guest.record.box_key:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, "this browser joined without a key for drive shares (X25519)")
            path = guest.uploads.complete_path(require(params, "upload", str))
            share = require(params, "share", list, optional=True) or []
            if not all(isinstance(s, str) for s in share):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"share" is a list of peers and #groups')
            name = require(params, "name", str, optional=True) or path.name
            result = await drive.put(path, name=name, share=[*share, guest.node_id], allow_fewer=bool(require(params, "allow_fewer", bool, optional=True)), op=require(params, "op", str, optional=True) or "")
            return {k: v for k, v in result.items() if k not in ("read_cap", "verify_cap")}  # its page reads its own share for those

        async def drive_get(params: dict[str, Any], caller: api.Principal) -> Any:
            cap = require(params, "cap", str)
            name = leaf_name(require(params, "name", str, optional=True) or "file")
            folder = guest.directory / "drive-out"
            await trio.to_thread.run_sync(lambda: folder.mkdir(mode=0o700, exist_ok=True))
            while len(guest.drive_out) >= MAX_DRIVE_OUT:  # fetched and never downloaded: the oldest goes
                stale, _ = guest.drive_out.pop(next(iter(guest.drive_out)))
                stale.unlink(missing_ok=True)
            token = secrets.token_hex(12)
            out = folder / token
            result = await drive.get(cap, out, op=require(params, "op", str, optional=True) or "")
            guest.drive_out[token] = (out, name)
            return {"id": result["id"], "name": name, "size": result["size"], "download": token}

        async def drive_share(params: dict[str, Any], caller: api.Principal) -> Any:
            targets = require(params, "with", list)
            if not targets or not all(isinstance(t, str) for t in targets):
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"with" is a list of peers and #groups')
            return await drive.share(require(params, "cap", str), targets, name=leaf_name(require(params, "name", str, optional=True) or "file"), by=guest.node_id)

        methods.method("drive.share", drive_share, '{"cap", "name"?, "with"}: share a file the guest can read with others (its host seals the capability to them).')
        methods.method("drive.ls", drive_ls, "The drive files shared with this guest, each with its share sealed to the guest's own key.")
        methods.method("drive.put", drive_put, '{"upload", "name"?, "share"?}: put an uploaded file on the drive, shared with this guest and whom it names.')
        methods.method("drive.get", drive_get, '{"cap", "name"?}: fetch a file with the read capability the guest\'s page opened; then GET /guest/drive/DOWNLOAD.')

    async def _drive_download(self, request: Request) -> FileResponse:
        """A file a guest's drive.get fetched, once (``GET /guest/drive/TOKEN``, signed)."""
        try:
            guest, _ = self._signed(request, f"GET {request.path}".encode())
        except GuestError as exc:
            self.counters[exc.reason] += 1
            raise HttpError(401 if exc.reason in ("no_session", "unknown_guest") else 403, str(exc), exc.reason) from None
        waiting = guest.drive_out.pop(request.path.rsplit("/", 1)[1], None)
        if waiting is None:
            raise HttpError(404, "no such download (each is served once)", "not_found")
        path, name = waiting
        try:
            opened = await trio.to_thread.run_sync(lambda: open(path, "rb"))
        except OSError:
            raise HttpError(404, "that download is gone", "not_found") from None
        size = os.fstat(opened.fileno()).st_size
        path.unlink(missing_ok=True)  # open: it is read to the end, then gone
        return FileResponse(opened, size, name)

    # -- the guest's own methods (beside chat's) ------------------------------------------------------
    def _register_basics(self, guest: Guest) -> None:
        methods = guest.methods

        async def hello(params: dict[str, Any], caller: api.Principal) -> Any:
            return self._hello(guest)

        async def peer_list(params: dict[str, Any], caller: api.Principal) -> Any:
            people = [p for p in self.peers.peer_list() if p["node_id"] != guest.node_id]
            people.append({"node_id": self.me, "name": self.name, "state": "alive", "host": True, "capabilities": self.peers.capabilities, "warning": None})
            for person in people:
                person["trust"] = guest.peers.trust.level(person["node_id"])
                person.pop("addresses", None)
                person.pop("link", None)
            return sorted(people, key=lambda p: (p["name"], p["node_id"]))

        async def subscribe(params: dict[str, Any], caller: api.Principal) -> Any:
            return {"topics": ["*"]}

        methods.method("guest.hello", hello, "who this guest is, and its host")
        methods.method("peer.list", peer_list, "the people, as this guest sees them")
        register_trust(methods, guest.record.guest_key, guest.peers.trust, guest.peers, lambda record: guest.bus.publish("peer.trust", record))
        methods.method("events.subscribe", subscribe, "a guest's page gets all of its events")

    # -- the host's methods ------------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "url": self.url,
            "problem": self.problem,
            "guests": len(self.guests),
            "online": sum(1 for g in self.guests.values() if g.pages),
            "invites": len(self.invites.listing(time.monotonic())),
            "refused": dict(self.counters),
            "invite_counters": dict(self.invites.counters),
            "sessions": len(self.sessions.sessions),
            "session_counters": dict(self.sessions.counters),
            "door": dict(self.server.counters) if self.server else {},
            "routes": self.router.statistics(),
        }

    def _guest_record(self, guest: Guest) -> dict[str, Any]:
        return {"guest": guest.node_id, "name": guest.record.name, "online": guest.pages > 0, "pages": guest.pages, "added": guest.added, "requests": guest.requests, "chat": guest.chat.statistics()}

    def invite(self, lifetime: float) -> dict[str, Any]:
        if not self.url:
            raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"the guest door is closed: {self.problem}")
        invite = self.invites.make(time.monotonic(), lifetime)
        url = f"{self.url}#invite={invite.token}"
        qr = segno.make(url, error="m")
        assert self.certificate is not None
        return {
            **invite.record(time.monotonic()),
            "url": url,
            "door": self.url,
            "fingerprint": self.certificate.fingerprint,
            "qr": qr.svg_data_uri(scale=6, border=2),  # an image URL the page shows as it is
            "warning": "The phone's browser will warn once that the certificate is not trusted: no authority vouches for a home network. "
            f"It is this node's own; its SHA-256 fingerprint is {self.certificate.fingerprint}.",
        }

    async def remove(self, text: str) -> dict[str, Any]:
        guest = api.resolve(text, list(self.guests.values()), id_of=lambda g: g.node_id, name_of=lambda g: g.record.name, what="guest", what_plural="guests", not_found=f"no guest {text!r} on this node")
        del self.guests[guest.node_id]
        self.sessions.close_guest(guest.node_id)
        self.router.drop(guest.node_id)
        guest.scope.cancel()
        await self.store.delete(f"{GUESTS_PREFIX}{self.me}/{guest.node_id}")
        await self._save()
        await trio.to_thread.run_sync(lambda: shutil.rmtree(guest.directory, ignore_errors=True))
        self.bus.publish("guest.removed", {"guest": guest.node_id, "name": guest.record.name})
        log.info("guest %s (%s) removed", guest.record.name, guest.node_id)
        return {"guest": guest.node_id, "name": guest.record.name, "removed": True}

    async def set_enabled(self, on: bool) -> dict[str, Any]:
        await trio.to_thread.run_sync(set_option, self.config_path, "guests.enabled", on)
        self.enabled = on
        if on and self._door is None:
            await self._open_door()
        elif not on and self._door is not None:
            await self._close_door()
        return self.status()

    def status(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "url": self.url, "fingerprint": self.certificate.fingerprint if self.certificate and self.url else "", "problem": self.problem, "guests": len(self.guests)}

    def register_methods(self, server: api.Methods) -> None:
        async def guests_status(params: dict[str, Any], caller: api.Principal) -> Any:
            return self.status()

        async def guests_invite(params: dict[str, Any], caller: api.Principal) -> Any:
            minutes = require(params, "minutes", (int, float), optional=True)
            try:
                return self.invite(60.0 * minutes if minutes is not None else 600.0)
            except GuestError as exc:
                raise api.ApiError(api.ErrorCode.BAD_PARAMS, str(exc)) from None

        async def guests_list(params: dict[str, Any], caller: api.Principal) -> Any:
            return {"guests": [self._guest_record(g) for g in self.guests.values()], "invites": self.invites.listing(time.monotonic())}

        async def guests_remove(params: dict[str, Any], caller: api.Principal) -> Any:
            return await self.remove(require(params, "guest", str))

        async def guests_revoke(params: dict[str, Any], caller: api.Principal) -> Any:
            invite_id = require(params, "invite", str)
            if not self.invites.revoke(invite_id):
                raise api.ApiError(api.ErrorCode.NOT_FOUND, f"no open invite {invite_id}")
            return {"invite": invite_id, "revoked": True}

        async def guests_enable(params: dict[str, Any], caller: api.Principal) -> Any:
            try:
                return await self.set_enabled(require(params, "on", bool))
            except (ConfigError, OSError) as exc:
                raise api.ApiError(api.ErrorCode.UNAVAILABLE, f"cannot remember it in the config: {exc}") from None

        server.method("guests.status", guests_status, "The guest door: on or off, its address and certificate fingerprint, or why it is closed.")
        server.method("guests.invite", guests_invite, '{"minutes"?}: a one-time invitation for a phone: its URL (a QR code of it, as an SVG data URL) and a 6-digit code; 10 minutes unless "minutes".')
        server.method("guests.list", guests_list, "This node's guests, and the open invitations.")
        server.method("guests.remove", guests_remove, '{"guest"}: remove a guest (name or id); every node sees it go, and its history here is deleted.')
        server.method("guests.revoke", guests_revoke, '{"invite"}: void an open invitation.')
        server.method("guests.enable", guests_enable, '{"on"}: open or close the guest door now, and remember it (guests.enabled).')

