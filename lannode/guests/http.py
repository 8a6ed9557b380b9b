"""A small HTTPS/1.1 server on trio for the guest door: keep-alive, bounded, and
server-sent events.

Why not Flask or a framework: the door lives in the daemon's trio nursery, next to
the services it calls, and needs only three things: answer a request, stream
events to a page (``text/event-stream``: works in every browser, through any proxy,
and needs no WebSocket, which older Safari refuses to a self-signed origin), and
take a file's bytes as they come. h11 does the HTTP; ``ssl`` and trio's
``SSLStream`` the TLS.

Budgets: ``max_connections`` at once (``per_address`` from one address), a TLS
handshake and a request head within ``HEAD_TIMEOUT``, a head of at most
``MAX_HEAD`` bytes, a body of at most what the handler allows, an idle keep-alive
connection closed after ``IDLE_TIMEOUT``. What a connection does wrong closes that
connection and is counted; it never reaches the handler's caller.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import parse_qs, quote, urlsplit

import h11
import trio

log = logging.getLogger("lannode.guests")

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
READ_SIZE = 256 * 1024
HEARTBEAT = 15.0  # seconds between comments on an idle event stream (finds a phone that went away)


class HttpError(Exception):
    """Answer the request with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or str(status)


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    peer: str  # the client's address
    _connection: _Connection

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    async def body(self, limit: int) -> bytes:
        """The whole body, refused (413) past ``limit`` bytes."""
        length = self.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise HttpError(413, f"a request body here is at most {limit} bytes")
        parts = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"a request body here is at most {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (h11 holds the sender to its Content-Length)."""
        return self._connection.body_chunks()


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class FileResponse:
    """A file sent as a download (``Content-Disposition: attachment``), read as it goes out.
    ``opened`` is the open file (the caller opened it safely); it is closed when sent."""

    opened: BinaryIO
    size: int
    name: str


@dataclass(slots=True)
class EventStream:
    """A ``text/event-stream`` answer: every string received from ``events`` goes out as
    one event (its lines already ``data:`` formatted) until the
    channel closes or the page goes away; then ``on_close``."""

    events: trio.MemoryReceiveChannel[str]
    on_close: Callable[[], None] = lambda: None


Handler = Callable[[Request], Awaitable["Response | FileResponse | EventStream"]]


class HttpsServer:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext, *, max_connections: int = 256, per_address: int = 64) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.per_address = per_address
        self.open: Counter[str] = Counter()  # per client address: its connections now
        self.counters: Counter[str] = Counter()
        self.port = 0

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._accept, listeners)

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:
            await stream.aclose()
            return
        if sum(self.open.values()) >= self.max_connections or self.open[address] >= self.per_address:
            self.counters["connections_refused"] += 1
            await stream.aclose()
            return
        self.open[address] += 1
        tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
        try:
            with trio.move_on_after(HEAD_TIMEOUT) as handshake:
                await tls.do_handshake()
            if handshake.cancelled_caught:
                self.counters["handshake_timeout"] += 1
                return
            await _Connection(self, tls, address).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            self.counters["tls_failed" if isinstance(exc, (ssl.SSLError, trio.BrokenResourceError)) else "dropped"] += 1
        except Exception:  # a bug in one connection never takes the door down
            log.exception("guest door: a connection failed")
            self.counters["internal_error"] += 1
        finally:
            self.open[address] -= 1
            if not self.open[address]:
                del self.open[address]
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await tls.aclose()


class _Connection:
    def __init__(self, server: HttpsServer, stream: trio.SSLStream[trio.SocketStream], address: str) -> None:
        self.server = server
        self.stream = stream
        self.address = address
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def _next_event(self, timeout: float) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        with trio.move_on_after(timeout):
            while True:
                event = self.http.next_event()
                if event is not h11.NEED_DATA:
                    return event
                data = await self.stream.receive_some(READ_SIZE)
                self.http.receive_data(bytes(data))
        return h11.NEED_DATA  # timed out

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event(IDLE_TIMEOUT)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise HttpError(400, "the request body ended early")

    async def run(self) -> None:
        first = True
        while True:
            try:
                event = await self._next_event(HEAD_TIMEOUT if first else IDLE_TIMEOUT)
            except h11.RemoteProtocolError as exc:
                self.server.counters["bad_request"] += 1
                await self._send_simple(exc.error_status_hint, f"bad HTTP request: {exc}")
                return
            first = False
            if not isinstance(event, h11.Request):
                return  # closed, or idle too long
            target = urlsplit(event.target.decode("latin-1"))
            request = Request(
                method=event.method.decode("latin-1"),
                path=target.path,
                query={k: v[-1] for k, v in parse_qs(target.query).items()},
                headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
                peer=self.address,
                _connection=self,
            )
            try:
                answer = await self.server.handler(request)
            except HttpError as exc:
                self.server.counters[f"refused_{exc.reason}"] += 1
                answer = Response(exc.status, _error_body(str(exc)))
            except h11.RemoteProtocolError:
                self.server.counters["bad_request"] += 1
                return
            if isinstance(answer, EventStream):
                await self._stream_events(answer)
                return
            if isinstance(answer, FileResponse):
                await self._send_file(answer)
            else:
                await self._respond(answer)
            if self.http.our_state is h11.MUST_CLOSE or self.http.their_state is h11.MUST_CLOSE:
                return
            if self.http.their_state is not h11.DONE:
                try:  # the handler did not read the whole body: skip it, within a bound
                    skipped = 0
                    async for chunk in self.body_chunks():
                        skipped += len(chunk)
                        if skipped > 1 << 20:
                            return
                except HttpError:
                    return
            try:
                self.http.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _respond(self, response: Response) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            *response.headers,
        ]
        data = self.http.send(h11.Response(status_code=response.status, headers=headers)) or b""
        data += self.http.send(h11.Data(data=response.body)) or b""
        data += self.http.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def _send_file(self, answer: FileResponse) -> None:
        quoted = quote(answer.name, safe="")
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(answer.size)),
            ("Content-Disposition", f"attachment; filename*=UTF-8''{quoted}"),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        try:
            await self.stream.send_all(self.http.send(h11.Response(status_code=200, headers=headers)) or b"")
            left = answer.size
            while left > 0:
                chunk = await trio.to_thread.run_sync(answer.opened.read, min(READ_SIZE, left))
                if not chunk:
                    raise trio.BrokenResourceError("the file shrank while it was sent")
                left -= len(chunk)
                await self.stream.send_all(self.http.send(h11.Data(data=chunk)) or b"")
            await self.stream.send_all(self.http.send(h11.EndOfMessage()) or b"")
        finally:
            answer.opened.close()

    async def _send_simple(self, status: int, message: str) -> None:
        try:
            await self._respond(Response(status, _error_body(message)))
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _stream_events(self, answer: EventStream) -> None:
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")]
        try:
            await self.stream.send_all(self.http.send(h11.Response(status_code=200, headers=headers)) or b"")
            await self.stream.send_all(self.http.send(h11.Data(data=b": open\n\n")) or b"")
            while True:
                with trio.move_on_after(HEARTBEAT) as idle:
                    try:
                        text = await answer.events.receive()
                    except trio.EndOfChannel:
                        break
                if idle.cancelled_caught:
                    text = ": still here\n\n"
                await self.stream.send_all(self.http.send(h11.Data(data=text.encode())) or b"")
        finally:
            answer.on_close()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
