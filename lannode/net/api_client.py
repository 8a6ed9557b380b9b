"""A client of the local API, for the CLI, plugins and tests.

``connect(home)`` reads ``api.json`` from a node's home and opens the WebSocket
with the node token; ``ApiClient.call`` sends a request and waits for its reply;
``ApiClient.events`` yields the events the client subscribed to. A node that is
not running shows up as ``NodeNotRunning``, an error reply as ``RemoteError``.
"""

from __future__ import annotations

import itertools
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from lannode.core import api
from lannode.home import Home, resolve
from lannode.net.websocket import (
    ConnectionClosed,
    HandshakeError,
    Rejected,
    WebSocket,
    background,
    open_websocket,
    running,
)
from lannode.net.websocket import (
    collapse_single_group as collapse_single_group,  # the CLI's, too
)

MAX_REPLY_BYTES = 64 << 20  # the largest reply or event the client takes (a long chat.log, a big drive.ls)
CONNECT_TIMEOUT = 5.0


class NodeNotRunning(Exception):
    def __init__(self, home: Home, detail: str = "") -> None:
        self.home = home
        super().__init__(
            f"no node is running on home {home.path}{f' ({detail})' if detail else ''}; "
            f"start one with: lannode up{'' if _is_default(home) else f' --home {home.path}'}"
        )


def _is_default(home: Home) -> bool:
    return resolve() == home.path


class RemoteError(Exception):
    """The node answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class ApiRejected(Exception):
    """The node refused the connection itself (token, origin, path)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the node refused the connection ({status}): {reason}")
        self.status = status
        self.reason = reason


class _Waiter:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.message: dict[str, Any] | None = None


class ApiClient:
    def __init__(self, ws: WebSocket, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[str, Any]](1024)

    async def call(self, method: str, **params: Any) -> Any:
        request_id = next(self._ids)
        waiter = self._waiting[request_id] = _Waiter()
        try:
            await self.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
            await waiter.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        message = waiter.message
        if message is None:
            raise self.ws.closed or ConnectionClosed(1006, "the connection dropped")
        if "error" in message:
            raise RemoteError(message["error"].get("code", "?"), message["error"].get("message", ""))
        return message.get("result")

    async def send_binary(self, data: bytes) -> None:
        """A binary message: a piece of an upload (lannode.uploads)."""
        await self.ws.send(data)

    async def subscribe(self, *topics: str) -> None:
        await self.call("events.subscribe", topics=list(topics))

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        async for item in self._events_recv:
            yield item

    async def _read(self) -> None:
        try:
            while True:
                message = json.loads(await self.ws.receive())
                if "event" in message:
                    try:
                        self._events_send.send_nowait((message["event"], message.get("data")))
                    except trio.WouldBlock:
                        pass  # a client that does not read its events loses the newest ones, not its replies
                elif (waiter := self._waiting.get(message.get("id"))) is not None:
                    waiter.message = message
                    waiter.done.set()
        except ConnectionClosed:
            pass
        finally:
            self._events_send.close()
            for waiter in self._waiting.values():
                waiter.done.set()


@asynccontextmanager
async def open_client(
    url: str, token: str, *, origin: str | None = None, subprotocol_token: bool = False
) -> AsyncIterator[ApiClient]:
    """Connect to an API URL. ``origin``/``subprotocol_token`` mimic what a browser sends."""
    headers: list[tuple[bytes, bytes]] = []
    subprotocols = [api.SUBPROTOCOL]
    if subprotocol_token:
        subprotocols.append(api.TOKEN_SUBPROTOCOL_PREFIX + token)
    elif token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    try:
        ws: WebSocket | None = None
        with trio.move_on_after(CONNECT_TIMEOUT):
            ws = await open_websocket(url, subprotocols=subprotocols, headers=headers, max_message=MAX_REPLY_BYTES)
        if ws is None:
            raise HandshakeError(f"no WebSocket answer within {CONNECT_TIMEOUT:g} s")
        async with running(ws):
            hello: Any = None
            with trio.move_on_after(CONNECT_TIMEOUT):
                hello = json.loads(await ws.receive())
            if not isinstance(hello, dict):
                raise HandshakeError(f"no hello from the node within {CONNECT_TIMEOUT:g} s")
            client = ApiClient(ws, hello.get("data", {}))
            async with background(client._read):
                yield client
    except Rejected as exc:
        raise ApiRejected(exc.status, exc.body.decode(errors="replace")) from None


@asynccontextmanager
async def connect(home: Home) -> AsyncIterator[ApiClient]:
    """Connect to the node running on ``home``; NodeNotRunning if there is none."""
    info = home.read_api()
    if info is None:
        raise NodeNotRunning(home)
    connected = False
    try:
        async with open_client(info["url"], info["token"]) as client:
            connected = True
            yield client
    except (OSError, HandshakeError) as exc:
        if connected:
            raise
        raise NodeNotRunning(home, f"its API at {info['url']} does not answer: {exc}") from None


def call(home: Home, method: str, **params: Any) -> Any:
    """One request from synchronous code (the CLI)."""

    async def once() -> Any:
        async with connect(home) as client:
            return await client.call(method, **params)

    return trio.run(once)
