"""Link channel 6: the drive's requests between daemons, both ends.

Each request is a JSON frame with a ``rid``; its answer is a ``re`` frame with the
same ``rid`` (``net.links.Replies``). A holder answers:

* ``put``: it makes room for a fragment and hands out a one-time bulk token; the
  bytes come over a bulk connection and are fsynced (``fragment_io.store_fragment``);
* ``get``: it opens a fragment and hands out a token to read it from a segment on;
* ``check``: it verifies a fragment on its disk: ``ok``, ``missing`` or ``corrupt``.

A peer gets at most ``MAX_ANSWERING`` requests answered at once; the work they ask
for runs on the links' bulk threads (``PeerThreads``: a budget per peer). A
fragment found rotten here is deleted and noted in ``needs_repair`` for the
service's repairer.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections import Counter
from typing import Any, Callable

import trio

from lannode.core.bulk import SECRET_BYTES, TOKEN_BYTES
from lannode.core.drive import DriveError
from lannode.core.link import AES_GCM, CHANNEL_DRIVE
from lannode.drive.fragment_io import serve_fragment, store_fragment
from lannode.drive.fragments import FragmentError, FragmentStore, check_id, check_shape
from lannode.net.bulk import BulkError, Meter
from lannode.net.links import Link, LinkError, Replies
from lannode.peers.service import PeerService

log = logging.getLogger("lannode.drive")

REQUEST_TIMEOUT = 15.0
TOKEN_LIFETIME = 30.0  # seconds a holder waits for the bulk connection it handed a token for
MAX_FRAME = 64 * 1024
MAX_ANSWERING = 16  # a peer's requests answered at once; past that it is told "busy"


class Unavailable(Exception):
    """A holder could not be asked or refused; the message says which and why."""


def _json_frame(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


class Requests:
    def __init__(self, peers: PeerService, fragments: FragmentStore, counters: Counter[str], *, stall_timeout: float) -> None:
        self.peers = peers
        self.fragments = fragments
        self.counters = counters  # the drive's: what this counts shows in its status
        self.stall_timeout = stall_timeout
        self.needs_repair: set[tuple[str, int]] = set()  # fragments here found corrupt or missing
        self._replies = Replies()  # our requests' answers
        self._answering: Counter[str] = Counter()  # per peer: its requests being answered now
        self._nursery: trio.Nursery | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        peers.links.handle(CHANNEL_DRIVE, self._on_frame)

    def start(self, nursery: trio.Nursery) -> None:
        """Answer peers from now on, in ``nursery``."""
        self._nursery = nursery
        self._trio_token = trio.lowlevel.current_trio_token()

    async def request(self, node: str, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        rid = secrets.token_hex(8)
        try:
            link = await self.peers.links.link_to(node)
            reply = await self._replies.request(link, CHANNEL_DRIVE, rid, _json_frame({**message, "rid": rid}), timeout)
        except LinkError as exc:
            raise Unavailable(f"{self.peers.name_of(node)} cannot be reached: {exc}") from None
        if reply is None:
            raise Unavailable(f"{self.peers.name_of(node)} did not answer within {timeout:.0f} s")
        if reply.get("error"):
            raise Unavailable(f"{self.peers.name_of(node)}: {reply['error']}")
        return reply

    async def _on_frame(self, link: Link, data: bytes) -> None:
        try:
            if len(data) > MAX_FRAME:
                raise ValueError("too big")
            message = json.loads(data)
            if not isinstance(message, dict) or not isinstance(message.get("t"), str) or not isinstance(message.get("rid"), str):
                raise ValueError("not a request")
        except ValueError:
            self.counters["malformed"] += 1
            return
        kind, rid = message["t"], message["rid"]
        if kind == "re":
            self._replies.deliver(rid, message)
            return
        handler = {"put": self._serve_put, "get": self._serve_get, "check": self._serve_check}.get(kind)
        if handler is None or self._nursery is None:
            self.counters["unknown_request"] += 1
            return
        if self._answering[link.node_id] >= MAX_ANSWERING:
            self.counters["busy"] += 1
            link.send_nowait(CHANNEL_DRIVE, _json_frame({"t": "re", "rid": rid[:64], "error": f"busy: {MAX_ANSWERING} requests of yours are being answered"}))
            return
        self._answering[link.node_id] += 1
        self._nursery.start_soon(self._answer, link, rid, handler, message)

    async def _answer(self, link: Link, rid: str, handler: Callable[..., Any], message: dict[str, Any]) -> None:
        try:
            reply = await handler(link, message)
        except (FragmentError, DriveError, ValueError, KeyError, TypeError) as exc:
            self.counters[f"refused_{message['t']}"] += 1
            reply = {"error": str(exc) or type(exc).__name__}
        except Exception:  # a bug here must not take the node down with it
            log.exception("drive: answering %s from %s failed", message["t"], self.peers.name_of(link.node_id))
            self.counters["internal_error"] += 1
            reply = {"error": "internal error"}
        try:
            await link.send(CHANNEL_DRIVE, _json_frame({"t": "re", "rid": rid, **reply}))
        except LinkError:
            pass
        finally:
            self._answering[link.node_id] -= 1
            if not self._answering[link.node_id]:
                del self._answering[link.node_id]

    def _grant(self, link: Link, worker: Callable[[socket.socket, bytes, bool], None], on_expiry: Callable[[], None]) -> dict[str, Any]:
        """A one-time token and secret for a bulk connection from ``link``'s peer that runs
        ``worker(sock, secret, aes)`` in a thread; ``on_expiry`` if it never comes."""
        token, secret = secrets.token_bytes(TOKEN_BYTES), secrets.token_bytes(SECRET_BYTES)
        aes = link.cipher == "aes-256-gcm" and AES_GCM
        used = trio.Event()

        async def connected(stream: trio.SocketStream) -> None:
            used.set()
            sock = socket.socket(fileno=stream.socket.detach())
            meter = Meter()
            try:
                await self.peers.links.bulk_threads.run(link.node_id, lambda: worker(sock, secret, aes), meter)
            except (BulkError, FragmentError, OSError) as exc:
                log.info("drive: a bulk connection from %s ended early: %s", self.peers.name_of(link.node_id), exc)
            finally:
                sock.close()

        async def expire() -> None:
            await trio.sleep(TOKEN_LIFETIME)
            if not used.is_set():
                self.peers.links.forget_bulk(token)
                on_expiry()

        try:
            self.peers.links.expect_bulk(token, connected, link.node_id)
        except LinkError as exc:
            on_expiry()
            raise DriveError(str(exc)) from None
        assert self._nursery is not None
        self._nursery.start_soon(expire)
        return {"token": token.hex(), "secret": secret.hex(), "aes": aes}

    async def _serve_put(self, link: Link, message: dict[str, Any]) -> dict[str, Any]:
        file_id, index = message["id"], message["index"]
        check_id(file_id, index)
        size, k, m, segment = (message[x] for x in ("size", "k", "m", "segment"))
        check_shape(size, k, m, segment)
        writer = self.fragments.writer(file_id, index, size, k, m, segment)

        def work(sock: socket.socket, secret: bytes, aes: bool) -> None:
            store_fragment(sock, secret, aes, writer, Meter(), stall=self.stall_timeout)
            self.counters["stored"] += 1
            self.needs_repair.discard((file_id, index))

        return self._grant(link, work, writer.abort)

    async def _serve_get(self, link: Link, message: dict[str, Any]) -> dict[str, Any]:
        file_id, index, start = message["id"], message["index"], message["start"]
        check_id(file_id, index)
        if not isinstance(start, int) or start < 0:
            raise ValueError("a start segment is a whole number")
        try:
            reader = await trio.to_thread.run_sync(self.fragments.open, file_id, index, limiter=self.peers.links.bulk_threads.total)
        except FragmentError as exc:
            if self.fragments.has(file_id, index) or "corrupt" in str(exc):
                self.found_bad(file_id, index, str(exc))
            raise

        def work(sock: socket.socket, secret: bytes, aes: bool) -> None:
            try:
                serve_fragment(sock, secret, aes, reader, start, Meter(), stall=self.stall_timeout)
                self.counters["served"] += 1
            except FragmentError as exc:
                trio.from_thread.run_sync(self.found_bad, file_id, index, str(exc), trio_token=self._trio_token)

        return self._grant(link, work, reader.close)

    async def _serve_check(self, link: Link, message: dict[str, Any]) -> dict[str, Any]:
        file_id, index = message["id"], message["index"]
        check_id(file_id, index)
        return {"state": await self.check_here(file_id, index, limiter=self.peers.links.bulk_threads.total)}

    async def check_here(self, file_id: str, index: int, limiter: trio.CapacityLimiter | None = None) -> str:
        """"ok", "missing" or "corrupt" for a fragment this node should hold (``limiter``:
        whose threads the check takes, when a peer asked for it)."""
        if not self.fragments.has(file_id, index):
            return "missing"
        if await trio.to_thread.run_sync(self.fragments.verify, file_id, index, limiter=limiter):
            return "ok"
        self.found_bad(file_id, index, "failed its check")
        return "corrupt"

    def found_bad(self, file_id: str, index: int, why: str) -> None:
        """A fragment here rotted: drop it and rebuild it from the others."""
        log.warning("drive: fragment %s.%d on this disk %s; deleting it and rebuilding it", file_id[:8], index, why)
        self.counters["corrupt_found"] += 1
        self.fragments.delete(file_id, index)
        self.needs_repair.add((file_id, index))
