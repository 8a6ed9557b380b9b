"""WebSockets on trio for the local API: the HTTP upgrade (h11) and a connection
around ``lannode.core.wsframes``.

Both ends live here, the daemon's (``accept_upgrade``) and the CLI's and plugins'
(``open_websocket``), so one reader and one writer serve both. What a connection
does that a plain stream does not:

* **writes are coalesced**: replies and events are queued (``send_nowait`` or, with
  backpressure, ``send``) and one writer task sends everything queued so far in a
  single ``send_all``. At a thousand messages a second that is one system call per
  scheduler pass instead of one per message.
* **control frames are answered** inside ``receive``: a ping gets its pong, a close
  gets its close back and ends the connection with ``ConnectionClosed``; a peer's
  protocol error closes the connection with the code RFC 6455 names for it.

It never binds or dials anything but what its caller gives it (the daemon gives
127.0.0.1 only), and it never buffers more than ``max_message`` for one message.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import h11
import trio

from lannode.core import wsframes
from lannode.core.wsframes import FrameCodec, ProtocolError
from lannode.net.fastio import DirectStream

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_SIZE = 65536
BODY_READ_SIZE = 1 << 20  # an upload's body: big reads, few wake-ups
HIGH_WATER = 1 << 20  # queued bytes beyond which ``send`` waits for the writer
MAX_HEAD = 16384  # bytes of an upgrade request or response head
CLOSE_TIMEOUT = 1.0  # how long a closing end waits to flush its close frame


class ConnectionClosed(Exception):
    """The WebSocket is closed: by the peer (its code), by a protocol error (ours), or dropped (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """The HTTP upgrade did not happen: the answer was not a WebSocket, or the connection dropped."""


class Rejected(HandshakeError):
    """The server answered the upgrade with an HTTP error."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the server refused the WebSocket ({status})")
        self.status = status
        self.body = body


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class WebSocket:
    """An open WebSocket over a trio stream. Run ``write_loop`` in a task (``running``
    does it), then ``receive`` from one task and send from any."""

    def __init__(self, stream: trio.abc.Stream, codec: FrameCodec, subprotocol: str | None) -> None:
        self.stream = stream
        self._io = DirectStream(stream)  # reads and writes without a scheduler pass when they can
        self.codec = codec
        self._unparsed = codec.statistics()["buffered"] > 0
        self.subprotocol = subprotocol
        self.closed: ConnectionClosed | None = None
        self._events: deque[wsframes.Event] = deque()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake = trio.Event()
        self._drained = trio.lowlevel.ParkingLot()
        self._writer_done = trio.Event()
        self._writing = False  # a send_all is under way (by the writer or by ``send``)

    # -- receiving ----------------------------------------------------------
    async def receive(self) -> str | bytes:
        """The next message; ConnectionClosed once the connection is closed."""
        while True:
            if self.closed is not None:
                raise self.closed
            while self._events:
                event = self._events.popleft()
                if isinstance(event, wsframes.Message):
                    return event.data
                if isinstance(event, wsframes.Ping):
                    self._queue(self.codec.pong(event.payload))
                elif isinstance(event, wsframes.Closed):
                    # echo the code back, as section 5.5.1 asks
                    self._end(ConnectionClosed(event.code, event.reason), 1000 if event.code == 1005 else event.code)
                    raise self.closed  # type: ignore[misc]  # _end set it
            if self._unparsed:  # bytes that came with the handshake
                self._unparsed = False
            else:
                try:
                    data = await self._io.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._end(ConnectionClosed(1006, "the connection dropped"), None)
                    continue
                self.codec.receive_data(data)
            try:
                self._events.extend(self.codec.events())
            except ProtocolError as exc:
                self._events.clear()
                self._end(ConnectionClosed(exc.code, exc.reason), exc.code)

    def _end(self, closed: ConnectionClosed, answer: int | None) -> None:
        if self.closed is None:
            self.closed = closed
            if answer is not None:
                self._queue(self.codec.close(answer, closed.reason if answer != 1000 else ""))
            self._wake.set()

    # -- sending ------------------------------------------------------------
    def send_nowait(self, message: str | bytes, *, limit: int = HIGH_WATER) -> bool:
        """Queue a message unless ``limit`` bytes are queued already (False: not sent)."""
        if self.closed is not None:
            raise self.closed
        if self._out_bytes >= limit:
            return False
        # (queued for the writer, not sent at once: events published during one scheduler
        # pass then leave in one write, and wake the front once)
        self._queue(self.codec.message(message))
        return True

    async def send(self, message: str | bytes) -> None:
        """Queue a message, first waiting while the queue is over the high-water mark."""
        while self.closed is None and self._out_bytes >= HIGH_WATER:
            await self._drained.park()
        if self.closed is not None:
            raise self.closed
        frame = self.codec.message(message)
        if self._out or self._writing:
            self._queue(frame)
            await trio.lowlevel.checkpoint()
            return
        # Nobody is writing: send it from this task, saving the writer's wake-up. Shielded,
        # since a frame cut short by a cancel would garble the stream for everyone.
        self._writing = True
        try:
            with trio.CancelScope(shield=True):
                await self._io.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end(ConnectionClosed(1006, "the connection dropped"), None)
            raise self.closed from None  # type: ignore[misc]
        finally:
            self._writing = False
            if self._out:
                self._wake.set()

    def close(self, code: int = wsframes.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start closing: the close frame goes out after what is queued."""
        self._end(ConnectionClosed(code, reason), code)

    def _queue(self, frame: bytes) -> None:
        if frame:
            self._out.append(frame)
            self._out_bytes += len(frame)
            self._wake.set()

    async def write_loop(self) -> None:
        """Send what is queued, all of it at once, until the close frame is out."""
        try:
            while True:
                if not self._out:
                    if self.codec.close_sent or (self.closed is not None and self.closed.code == 1006):
                        return
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                if self._writing:  # ``send`` is writing; it wakes us when done
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                chunk = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out.clear()
                self._out_bytes = 0
                self._drained.unpark_all()
                self._writing = True
                try:
                    await self._io.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    if self.closed is None:
                        self.closed = ConnectionClosed(1006, "the connection dropped")
                    return
                finally:
                    self._writing = False
        finally:
            self._writer_done.set()
            self._drained.unpark_all()

    def statistics(self) -> dict[str, int]:
        return {"queued_bytes": self._out_bytes, "queued_frames": len(self._out), **self.codec.statistics()}


@contextmanager
def collapse_single_group() -> Iterator[None]:
    """Re-raise a lone exception out of a nursery's ExceptionGroup, so callers can catch it."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def background(task: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """Run ``task`` for the duration of the block, cancelled after it. What the block
    raises comes out as itself, not wrapped in an ExceptionGroup."""
    with collapse_single_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(ws: WebSocket) -> AsyncIterator[WebSocket]:
    """Run ``ws``'s writer for the block; on the way out, close it (1000 unless it is
    closed already), flush for at most CLOSE_TIMEOUT, and close the stream."""
    try:
        async with background(ws.write_loop):
            try:
                yield ws
            finally:
                ws.close()
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                    await ws._writer_done.wait()
    finally:
        with trio.CancelScope(shield=True):
            await ws.stream.aclose()


# -- the server's side of the upgrade ----------------------------------------
@dataclass
class UpgradeRequest:
    """A client's valid WebSocket upgrade request, to accept or reject."""

    stream: trio.abc.Stream
    path: str
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    _http: h11.Connection

    async def accept(self, subprotocol: str | None, *, max_message: int) -> WebSocket:
        key = dict(self.headers)[b"sec-websocket-key"]
        headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", accept_token(key))]
        if subprotocol is not None:
            assert subprotocol in self.subprotocols, "accept only a subprotocol the client offered"
            headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode()))
        head = self._http.send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols"))
        assert head is not None
        await self.stream.send_all(head)
        codec = FrameCodec(client=False, max_message=max_message)
        codec.receive_data(self._http.trailing_data[0])
        return WebSocket(self.stream, codec, subprotocol)

    async def reject(self, status: int, body: str) -> None:
        await _http_answer(self._http, self.stream, status, body)


@dataclass
class HttpRequest:
    """A plain HTTP request on a WebSocket endpoint (the API's uploads and their CORS preflight)."""

    stream: trio.abc.Stream
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    _http: h11.Connection

    def header(self, name: bytes) -> str | None:
        return next((v.decode("latin-1") for k, v in self.headers if k == name), None)

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (h11 enforces its Content-Length)."""
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = bytes(await self.stream.receive_some(BODY_READ_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self._http.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise HandshakeError("the request body ended early")

    async def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None, content_type: bytes = b"application/json") -> None:
        out = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode()), (b"Connection", b"close"), *(headers or [])]
        try:
            data = (self._http.send(h11.Response(status_code=status, headers=out)) or b"") + (self._http.send(h11.Data(data=body)) or b"") + (self._http.send(h11.EndOfMessage()) or b"")
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass
        finally:
            await self.stream.aclose()


async def accept_upgrade(stream: trio.abc.Stream) -> UpgradeRequest:
    """Read an HTTP request from ``stream``; a valid WebSocket upgrade is returned for the
    caller to accept or reject, anything else is answered (400, 426) and raises HandshakeError."""
    request = await read_request(stream, plain=False)
    assert isinstance(request, UpgradeRequest)
    return request


async def read_request(stream: trio.abc.Stream, *, plain: bool = True) -> UpgradeRequest | HttpRequest:
    """Read an HTTP request: a valid WebSocket upgrade, or (with ``plain``) a request that
    asks for no upgrade at all, for the caller to answer. Anything else is answered with
    400 or 426 and raises HandshakeError."""
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        request = await _next_of(http, stream, h11.Request)
    except h11.RemoteProtocolError as exc:
        await _http_answer(http, stream, 400, f"bad HTTP request: {exc}")
        raise HandshakeError(f"bad HTTP request: {exc}") from None
    assert isinstance(request, h11.Request)
    headers = list(request.headers)
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name, []).append(value)

    def tokens(name: bytes) -> list[str]:
        return [t.strip().lower() for v in fields.get(name, []) for t in v.decode("latin-1").split(",") if t.strip()]

    if plain and b"upgrade" not in fields:
        return HttpRequest(stream, request.method.decode("latin-1"), request.target.decode("latin-1"), headers, http)
    problem = None
    if request.method != b"GET":
        problem = "a WebSocket upgrade must be a GET"
    elif "websocket" not in tokens(b"upgrade") or "upgrade" not in tokens(b"connection"):
        problem = "this is a WebSocket endpoint: send Upgrade: websocket"
    elif tokens(b"sec-websocket-version") != ["13"]:
        problem = "only WebSocket version 13 is spoken here"
    elif len(fields.get(b"sec-websocket-key", [])) != 1 or not _valid_key(fields[b"sec-websocket-key"][0]):
        problem = "a missing or malformed Sec-WebSocket-Key"
    if problem is not None:
        await _http_answer(http, stream, 426 if problem.startswith("this is") else 400, problem)
        raise HandshakeError(problem)
    subprotocols = [t.strip() for v in fields.get(b"sec-websocket-protocol", []) for t in v.decode("latin-1").split(",") if t.strip()]
    return UpgradeRequest(stream, request.target.decode("latin-1"), headers, subprotocols, http)


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


async def _http_answer(http: h11.Connection, stream: trio.abc.Stream, status: int, body: str) -> None:
    data = body.encode()
    headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", str(len(data)).encode()), (b"Connection", b"close")]
    try:
        if http.our_state is h11.SEND_RESPONSE:
            out = http.send(h11.Response(status_code=status, headers=headers))
            out = (out or b"") + (http.send(h11.Data(data=data)) or b"") + (http.send(h11.EndOfMessage()) or b"")
        else:  # the request never parsed: answer by hand
            out = f"HTTP/1.1 {status} \r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
        await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
    finally:
        await stream.aclose()


async def _next_of(http: h11.Connection, stream: trio.abc.Stream, kind: type) -> object:
    """The next h11 event of ``kind`` (or a Response, for a client), reading as needed."""
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            try:
                data = bytes(await stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            http.receive_data(data)
            continue
        if isinstance(event, kind) or isinstance(event, (h11.Response, h11.InformationalResponse)):
            return event
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            raise HandshakeError("the connection closed during the WebSocket handshake")


# -- the client's side -------------------------------------------------------
async def open_websocket(
    url: str, *, subprotocols: list[str], headers: list[tuple[bytes, bytes]], max_message: int
) -> WebSocket:
    """Dial ``ws://host:port/path`` and upgrade. Rejected for an HTTP error answer,
    HandshakeError for anything else that is not a WebSocket, OSError if nobody listens."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or parts.port is None:
        raise HandshakeError(f"not a ws://host:port URL: {url}")
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        key = base64.b64encode(os.urandom(16))
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        request_headers = [
            (b"Host", parts.netloc.encode()),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", key),
            (b"Sec-WebSocket-Version", b"13"),
        ]
        if subprotocols:
            request_headers.append((b"Sec-WebSocket-Protocol", ", ".join(subprotocols).encode()))
        head = http.send(h11.Request(method="GET", target=parts.path or "/", headers=request_headers + headers))
        assert head is not None
        await stream.send_all(head + (http.send(h11.EndOfMessage()) or b""))
        try:
            response = await _next_of(http, stream, h11.InformationalResponse)
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"the server's answer is not HTTP: {exc}") from None
        assert isinstance(response, (h11.Response, h11.InformationalResponse))
        if response.status_code != 101:
            body = b""
            with trio.move_on_after(CLOSE_TIMEOUT):
                while len(body) < MAX_HEAD:
                    event = http.next_event()
                    if isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif event is h11.NEED_DATA:
                        http.receive_data(bytes(await stream.receive_some(READ_SIZE)))
                    else:
                        break
            raise Rejected(response.status_code, body)
        answer = dict(response.headers)
        if answer.get(b"sec-websocket-accept") != accept_token(key):
            raise HandshakeError("the server's Sec-WebSocket-Accept does not match our key")
        chosen = answer.get(b"sec-websocket-protocol")
        subprotocol = chosen.decode() if chosen is not None else None
        if subprotocol is not None and subprotocol not in subprotocols:
            raise HandshakeError(f"the server chose a subprotocol we did not offer: {subprotocol}")
        codec = FrameCodec(client=True, max_message=max_message)
        codec.receive_data(http.trailing_data[0])
        return WebSocket(stream, codec, subprotocol)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
