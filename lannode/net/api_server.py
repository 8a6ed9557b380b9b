"""The local API server: WebSockets (``lannode.net.websocket``) on 127.0.0.1, speaking ``lannode.core.api``.

Services register methods here (``ApiServer.method``, through ``lannode.core.api.Methods``)
and publish events on the ``lannode.events.EventBus``; every front (CLI, plugins, browser) reaches the daemon only through
this server. A connection's bad input — a rejected handshake, a frame that is not
JSON, an unknown method, a frame over the size limit — is answered with a clear
error and counted in ``statistics()``; it never takes the server down.

It must never bind anything but 127.0.0.1, and never block the loop: a handler
that does disk or CPU work uses ``trio.to_thread``.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from lannode.core import api, wsframes
from lannode.events import EventBus, Subscriber, SubscriberGone
from lannode.net.websocket import (
    ConnectionClosed,
    HandshakeError,
    HttpRequest,
    WebSocket,
    read_request,
    running,
)

log = logging.getLogger("lannode.api")

Handler = api.Handler
require = api.require  # (services import it from lannode.core.api)

EVENT_QUEUE_BYTES = 4 << 20  # events queued per connection before they are dropped (and counted)
HANDSHAKE_TIMEOUT = 10.0
MAX_IN_FLIGHT = 64  # concurrent requests per connection; more wait their turn


@dataclass(slots=True)
class Method:
    name: str
    handler: Handler | None  # None: a subscription the connection itself answers
    doc: str
    local_only: bool
    topics_from: Callable[[dict[str, Any]], list[str]] | None = None  # subscriptions: params -> patterns
    unsubscribe: bool = False


class ApiServer:
    def __init__(self, *, node_id: str, node_name: str, version: str, token: str, bus: EventBus, max_message_bytes: int) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.version = version
        self.token = token
        self.bus = bus
        self.max_message_bytes = max_message_bytes
        self.ui_origins: dict[str, str] = {}  # origin -> the plugin that registered it
        self.on_disconnect: list[Callable[[int], None]] = []  # hooks told a connection's number when it closes
        self._connection_ids = 0
        self.methods: dict[str, Method] = {}
        # binary messages (uploads): handled in order on the reading task, which is their backpressure
        self.binary_handler: Callable[[api.Principal, bytes], Awaitable[None]] | None = None
        # PUT API_PATH/uploads/ID: (caller, upload id, offset, body chunks) -> the upload's record
        self.http_upload: Callable[[api.Principal, str, int, AsyncIterator[bytes]], Awaitable[Any]] | None = None
        self.port = 0
        self.rejected: Counter[str] = Counter()
        self.bad_messages: Counter[str] = Counter()
        self.connections = 0
        self._register_builtins()

    # -- registration -------------------------------------------------------
    def method(self, name: str, handler: Handler | None, doc: str, *, local_only: bool = False) -> None:
        if name in self.methods:
            raise ValueError(f"API method {name} registered twice")
        self.methods[name] = Method(name, handler, doc, local_only)

    def subscription(self, name: str, doc: str, topics_from: Callable[[dict[str, Any]], list[str]], *, unsubscribe: bool = False) -> None:
        """A method that (un)subscribes the calling connection to the patterns ``topics_from(params)`` gives."""
        if name in self.methods:
            raise ValueError(f"API method {name} registered twice")
        self.methods[name] = Method(name, None, doc, False, topics_from, unsubscribe)

    def _register_builtins(self) -> None:
        async def methods(params: dict[str, Any], caller: api.Principal) -> Any:
            return [{"method": m.name, "doc": m.doc, "local_only": m.local_only} for m in sorted(self.methods.values(), key=lambda m: m.name)]

        self.method("api.methods", methods, "List every method with a line of documentation.")
        self.subscription("events.subscribe", 'Receive events whose topic matches one of {"topics": [...]} ("*", "plugin.*").', _topics_param)
        self.subscription("events.unsubscribe", 'Stop receiving {"topics": [...]}.', _topics_param, unsubscribe=True)

    def statistics(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "connections": self.connections,
            "rejected": dict(self.rejected),
            "bad_messages": dict(self.bad_messages),
            "events": self.bus.statistics(),
        }

    # -- serving ------------------------------------------------------------
    async def serve(self, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        log.info("local API on ws://127.0.0.1:%d%s", self.port, api.API_PATH)
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        except Exception:  # one connection's trouble never takes the server down
            log.exception("API connection failed")
            self.bad_messages[api.ErrorCode.INTERNAL] += 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as handshake:
            try:
                request = await read_request(stream)
            except HandshakeError as exc:
                self.rejected["handshake"] += 1
                log.info("API connection refused: %s", exc)
                return
        if handshake.cancelled_caught:
            self.rejected["timeout"] += 1
            await stream.aclose()
            return
        if isinstance(request, HttpRequest):
            await self._plain_http(request)
            return
        decision = api.authorize(
            path=request.path,
            headers=request.headers,
            subprotocols=request.subprotocols,
            token=self.token,
            ui_origins=self.ui_origins,
        )
        if isinstance(decision, api.Rejection):
            self.rejected[str(decision.status)] += 1
            log.warning("API connection refused (%d): %s", decision.status, decision.reason)
            await request.reject(decision.status, decision.reason)
            return
        subprotocol = api.SUBPROTOCOL if api.SUBPROTOCOL in request.subprotocols else None
        try:
            ws = await request.accept(subprotocol, max_message=self.max_message_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
            return
        self.connections += 1
        self._connection_ids += 1
        principal = replace(decision, connection=self._connection_ids)
        try:
            async with running(ws):
                await _Connection(self, ws, principal).run()
        finally:
            self.connections -= 1
            for hook in self.on_disconnect:
                hook(principal.connection)
            if ws.closed and ws.closed.code == wsframes.MESSAGE_TOO_BIG:
                self.bad_messages["oversized"] += 1


    # -- plain HTTP: uploads from pages (a fetch or XHR body streams much faster than WebSocket messages)
    async def _plain_http(self, request: HttpRequest) -> None:
        origin = request.header(b"origin")
        cors = [(b"Access-Control-Allow-Origin", origin.encode()), (b"Vary", b"Origin")] if origin and origin in self.ui_origins else []
        route = request.path.split("?", 1)[0]
        prefix = api.API_PATH + "/uploads/"
        if not route.startswith(prefix) or self.http_upload is None:
            self.rejected["404"] += 1
            await request.respond(404, b'{"error": "not found: this port speaks the lannode API over WebSocket, and takes uploads"}', cors)
            return
        if request.method == "OPTIONS":  # the page's CORS preflight
            if not cors:
                self.rejected["403"] += 1
                await request.respond(403, b'{"error": "not this node\'s web UI"}')
                return
            allow = [(b"Access-Control-Allow-Methods", b"PUT"), (b"Access-Control-Allow-Headers", b"authorization, content-type, x-lannode-offset"), (b"Access-Control-Max-Age", b"600")]
            await request.respond(204, b"", cors + allow)
            return
        if request.method != "PUT":
            await request.respond(405, b'{"error": "PUT an upload\'s bytes"}', cors + [(b"Allow", b"PUT, OPTIONS")])
            return
        decision = api.authorize(path=api.API_PATH, headers=request.headers, subprotocols=[], token=self.token, ui_origins=self.ui_origins)
        if isinstance(decision, api.Rejection):
            self.rejected[str(decision.status)] += 1
            await request.respond(decision.status, api.encode({"error": decision.reason}).encode(), cors)
            return
        try:
            offset = int(request.header(b"x-lannode-offset") or "0")
            result = await self.http_upload(decision, route[len(prefix) :], offset, request.body())
            status, body = 200, api.encode(result)
        except api.ApiError as exc:
            self.bad_messages[exc.code] += 1
            status, body = {api.ErrorCode.NOT_FOUND: 404, api.ErrorCode.FORBIDDEN: 403}.get(exc.code, 400), api.encode({"error": exc.message, "code": exc.code})
        except (ValueError, HandshakeError) as exc:
            status, body = 400, api.encode({"error": str(exc)})
        await request.respond(status, body.encode(), cors)


def _send_event(ws: WebSocket, frame: str) -> bool:
    """Queue an event frame on a connection (``lannode.events.Subscriber.send``)."""
    try:
        return ws.send_nowait(frame, limit=EVENT_QUEUE_BYTES)
    except ConnectionClosed:
        raise SubscriberGone from None


class _Connection:
    """One API connection: requests read in order, each handled in a task of its own
    (at most MAX_IN_FLIGHT at once); replies and events share the socket's writer."""

    def __init__(self, server: ApiServer, ws: WebSocket, principal: api.Principal) -> None:
        self.server = server
        self.ws = ws
        self.principal = principal
        self.subscriber = Subscriber(functools.partial(_send_event, ws), connection=principal.connection)
        self.in_flight = trio.Semaphore(MAX_IN_FLIGHT)

    async def run(self) -> None:
        server = self.server
        ws = self.ws
        ws.send_nowait(api.hello(server.node_id, server.node_name, server.version))
        server.bus.add(self.subscriber)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        frame = await ws.receive()
                    except ConnectionClosed:
                        break
                    if isinstance(frame, bytes) and server.binary_handler is not None:
                        await server.binary_handler(self.principal, frame)
                        continue
                    try:
                        request = api.parse_request(frame)
                    except api.ApiError as exc:
                        server.bad_messages[exc.code] += 1
                        await self._answer(api.error(exc.request_id, exc.code, exc.message))
                        continue
                    try:
                        self.in_flight.acquire_nowait()  # nearly always free: no scheduler pass for it
                    except trio.WouldBlock:
                        await self.in_flight.acquire()
                    nursery.start_soon(self._dispatch, request)
                nursery.cancel_scope.cancel()
        finally:
            server.bus.remove(self.subscriber)

    async def _answer(self, frame: str) -> None:
        try:
            await self.ws.send(frame)
        except ConnectionClosed:
            pass

    async def _dispatch(self, request: api.Request) -> None:
        try:
            result = await self._call(request)
            frame = api.reply(request.id, result)
        except api.ApiError as exc:
            self.server.bad_messages[exc.code] += 1
            frame = api.error(request.id, exc.code, exc.message)
        except Exception:
            log.exception("API method %s failed", request.method)
            self.server.bad_messages[api.ErrorCode.INTERNAL] += 1
            frame = api.error(request.id, api.ErrorCode.INTERNAL, f"{request.method} failed inside the node; see its log")
        finally:
            self.in_flight.release()
        await self._answer(frame)

    async def _call(self, request: api.Request) -> Any:
        method = self.server.methods.get(request.method)
        if method is None:
            raise api.ApiError(api.ErrorCode.UNKNOWN_METHOD, f"unknown method {request.method!r}; api.methods lists them")
        if method.local_only and not self.principal.is_local:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, f"{request.method} is for local programs, not web pages")
        if method.handler is None:
            assert method.topics_from is not None
            topics = method.topics_from(request.params)
            if method.unsubscribe:
                self.subscriber.patterns.difference_update(topics)
            else:
                self.subscriber.patterns.update(topics)
            return {"topics": sorted(self.subscriber.patterns)}
        return await method.handler(request.params, self.principal)


def _topics_param(params: dict[str, Any]) -> list[str]:
    topics = params.get("topics")
    if not isinstance(topics, list) or not all(isinstance(t, str) and 0 < len(t) <= api.MAX_TOPIC_PATTERN for t in topics):
        raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"topics" must be a list of topic patterns such as ["plugin.*"]')
    return topics
