"""The local API's WebSocket framing, checked against wsproto (an independent
implementation of RFC 6455) and fed hostile bytes."""

from __future__ import annotations

import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from lannode.core import wsframes
from lannode.core.wsframes import FrameCodec, ProtocolError
from lannode.net.websocket import (
    ConnectionClosed,
    HandshakeError,
    Rejected,
    accept_upgrade,
    open_websocket,
    running,
)

LIMIT = 1 << 16
messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=70000)), min_size=1, max_size=6)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def feed(codec: FrameCodec, data: bytes, cuts: list[int]) -> list[wsframes.Event]:
    out: list[wsframes.Event] = []
    for piece in split(data, cuts):
        codec.receive_data(piece)
        out.extend(codec.events())
    return out


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(min_value=0), max_size=8), st.integers(min_value=1, max_value=4))
def test_what_a_browser_like_client_sends_arrives_whole_however_the_bytes_are_cut(sent: list[str | bytes], cuts: list[int], fragments: int) -> None:
    client = Connection(ConnectionType.CLIENT)
    wire = b""
    for m in sent:  # wsproto masks, and sends each message in ``fragments`` frames
        step = max(1, len(m) // fragments)
        pieces = [m[i : i + step] for i in range(0, len(m), step)] or [m]
        for i, piece in enumerate(pieces):
            event = TextMessage(piece, message_finished=i == len(pieces) - 1) if isinstance(m, str) else BytesMessage(piece, message_finished=i == len(pieces) - 1)
            wire += client.send(event)
    wire += client.send(Ping(b"are you there"))
    server = FrameCodec(client=False, max_message=1 << 20)
    events = feed(server, wire, cuts)
    assert events == [wsframes.Message(m) for m in sent] + [wsframes.Ping(b"are you there")]
    assert server.statistics() == {"buffered": 0, "partial_message": 0}


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(min_value=0), max_size=8))
def test_both_directions_agree_with_wsproto(sent: list[str | bytes], cuts: list[int]) -> None:
    ours_client, ours_server = FrameCodec(client=True, max_message=1 << 20), FrameCodec(client=False, max_message=1 << 20)
    theirs_server, theirs_client = Connection(ConnectionType.SERVER), Connection(ConnectionType.CLIENT)
    # our client -> wsproto's server
    for piece in split(b"".join(ours_client.message(m) for m in sent), cuts):
        theirs_server.receive_data(piece)
    got = [e.data for e in theirs_server.events() if isinstance(e, (TextMessage, BytesMessage))]
    assert got == sent
    # our server -> wsproto's client
    for piece in split(b"".join(ours_server.message(m) for m in sent), cuts):
        theirs_client.receive_data(piece)
    got = [e.data for e in theirs_client.events() if isinstance(e, (TextMessage, BytesMessage))]
    assert got == sent
    # and our close frame is one wsproto understands
    theirs_client.receive_data(ours_server.close(4001, "bye"))
    (closed,) = theirs_client.events()
    assert isinstance(closed, CloseConnection) and (closed.code, closed.reason) == (4001, "bye")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=5))
def test_random_bytes_give_events_or_a_protocol_error_never_anything_else(data: bytes, cuts: list[int]) -> None:
    for client in (False, True):
        codec = FrameCodec(client=client, max_message=LIMIT)
        try:
            feed(codec, data, cuts)
        except ProtocolError as exc:
            assert exc.code in (wsframes.PROTOCOL_ERROR, wsframes.INVALID_DATA, wsframes.MESSAGE_TOO_BIG) and exc.reason
        assert codec.statistics()["partial_message"] <= LIMIT


def masked_frame(first: int, payload: bytes, *, length: int | None = None, mask: bool = True) -> bytes:
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 1 << 16:
        head = bytes((first, (0x80 if mask else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + struct.pack("!Q", n)
    key = b"\x01\x02\x03\x04"
    return head + (key + wsframes.mask(payload, key) if mask else payload)


@pytest.mark.parametrize(
    "wire, code, words",
    [
        (masked_frame(0x81, b"", length=1 << 40), wsframes.MESSAGE_TOO_BIG, "over"),  # refused from the header alone
        (masked_frame(0x01, b"x" * 40000) + masked_frame(0x00, b"x" * 40000), wsframes.MESSAGE_TOO_BIG, "over"),
        (masked_frame(0x81, b"hi", mask=False), wsframes.PROTOCOL_ERROR, "masked"),
        (masked_frame(0xC1, b"hi"), wsframes.PROTOCOL_ERROR, "reserved"),  # RSV1: compression nobody agreed to
        (masked_frame(0x83, b"hi"), wsframes.PROTOCOL_ERROR, "opcode"),
        (masked_frame(0x80, b"hi"), wsframes.PROTOCOL_ERROR, "continuation"),
        (masked_frame(0x01, b"a") + masked_frame(0x81, b"b"), wsframes.PROTOCOL_ERROR, "before the last"),
        (masked_frame(0x09, b"ping"), wsframes.PROTOCOL_ERROR, "control"),  # a fragmented ping
        (masked_frame(0x89, b"p" * 126), wsframes.PROTOCOL_ERROR, "control"),
        (masked_frame(0x81, b"\xff\xfe"), wsframes.INVALID_DATA, "UTF-8"),
        (masked_frame(0x88, b"\x03"), wsframes.PROTOCOL_ERROR, "1-byte"),
        (masked_frame(0x88, struct.pack("!H", 1005)), wsframes.PROTOCOL_ERROR, "1005"),
        (masked_frame(0x88, struct.pack("!H", 1000) + b"\xff"), wsframes.INVALID_DATA, "UTF-8"),
        (b"\x81\xff" + struct.pack("!Q", 1 << 63), wsframes.PROTOCOL_ERROR, "top bit"),
    ],
)
def test_each_kind_of_bad_frame_names_its_close_code(wire: bytes, code: int, words: str) -> None:
    codec = FrameCodec(client=False, max_message=LIMIT)
    codec.receive_data(wire)
    with pytest.raises(ProtocolError) as caught:
        codec.events()
    assert caught.value.code == code and words in caught.value.reason


def test_a_close_frame_ends_parsing_and_is_sent_once() -> None:
    server = FrameCodec(client=False, max_message=LIMIT)
    server.receive_data(masked_frame(0x88, struct.pack("!H", 1001) + b"away") + masked_frame(0x81, b"after the close"))
    assert server.events() == [wsframes.Closed(1001, "away")]
    assert server.close(1001) and server.close(1001) == b""


# -- over real sockets: the trio connection around the codec ------------------------
async def echo_server(nursery: trio.Nursery, *, max_message: int = LIMIT, refuse: bool = False) -> int:
    async def handle(stream: trio.SocketStream) -> None:
        try:
            request = await accept_upgrade(stream)
        except HandshakeError:
            return
        if refuse:
            await request.reject(403, "not you")
            return
        ws = await request.accept("echo" if "echo" in request.subprotocols else None, max_message=max_message)
        async with running(ws):
            while True:
                try:
                    message = await ws.receive()
                except ConnectionClosed:
                    return
                await ws.send(message)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


def test_a_connection_echoes_many_messages_answers_pings_and_closes_cleanly() -> None:
    async def go() -> None:
        async with trio.open_nursery() as nursery:
            port = await echo_server(nursery)
            ws = await open_websocket(f"ws://127.0.0.1:{port}/x", subprotocols=["echo"], headers=[], max_message=LIMIT)
            assert ws.subprotocol == "echo"
            async with running(ws):
                sent = [f"message {i}" if i % 3 else bytes([i % 256]) * ((i % 50) * 97) for i in range(300)]
                for m in sent:  # queued without waiting: the writer sends them in batches
                    assert ws.send_nowait(m)
                assert [await ws.receive() for _ in sent] == sent
                ws._queue(ws.codec.ping(b"still there?"))  # the server's connection answers it
                await ws.send("after the ping")
                assert await ws.receive() == "after the ping"
            nursery.cancel_scope.cancel()

    trio.run(go)


def test_a_message_over_the_limit_closes_with_1009_and_a_refusal_carries_its_status() -> None:
    async def go() -> None:
        async with trio.open_nursery() as nursery:
            port = await echo_server(nursery, max_message=1000)
            ws = await open_websocket(f"ws://127.0.0.1:{port}/", subprotocols=[], headers=[], max_message=LIMIT)
            async with running(ws):
                await ws.send("x" * 1001)
                with pytest.raises(ConnectionClosed) as caught:
                    await ws.receive()
                assert caught.value.code == 1009
            refusing = await echo_server(nursery, refuse=True)
            with pytest.raises(Rejected) as refused:
                await open_websocket(f"ws://127.0.0.1:{refusing}/", subprotocols=[], headers=[], max_message=LIMIT)
            assert refused.value.status == 403 and refused.value.body == b"not you"
            stream = await trio.open_tcp_stream("127.0.0.1", port)  # plain HTTP at a WebSocket endpoint
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 426") and b"Upgrade: websocket" in answer
            nursery.cancel_scope.cancel()

    trio.run(go)
