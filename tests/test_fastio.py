"""DirectStream: reads and writes tried on the socket first, trio's own calls when they would block."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from lannode.net.fastio import YIELD_EVERY, DirectStream


def socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


def test_bytes_pass_both_ways_and_a_big_write_waits_for_the_reader() -> None:
    async def main() -> None:
        a, b = socket_streams()
        da, db = DirectStream(a), DirectStream(b)
        await da.send_all(b"hello")
        assert await db.receive_some(100) == b"hello"
        # far more than the socket buffers hold: the kernel takes part, trio's send_all the rest
        payload = os.urandom(8 << 20)
        got = bytearray()

        async def read() -> None:
            while len(got) < len(payload):
                got.extend(await db.receive_some(1 << 16))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await da.send_all(payload)
        assert bytes(got) == payload
        await a.aclose()
        assert await db.receive_some(100) == b""  # the peer's close reads as the end

    trio.run(main)


def test_a_peer_that_always_has_bytes_cannot_starve_the_loop() -> None:
    async def main() -> None:
        a, b = socket_streams()
        da, db = DirectStream(a), DirectStream(b)
        turns = 0

        async def other_task() -> None:
            nonlocal turns
            while True:
                await trio.lowlevel.checkpoint()
                turns += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.lowlevel.checkpoint()
            await a.send_all(b"x" * (8 * YIELD_EVERY))
            start = turns
            for _ in range(8 * YIELD_EVERY):  # every read finds a byte waiting
                assert await db.receive_some(1) == b"x"
            # seven yields: the other task ran at least six times (never yielding: at most once)
            assert turns - start >= 4
            start = turns
            for _ in range(8 * YIELD_EVERY):  # every write is taken at once
                await da.send_all(b"y")
            assert turns - start >= 4
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_closed_stream_is_refused_and_a_broken_one_reported() -> None:
    async def main() -> None:
        a, b = socket_streams()
        da = DirectStream(a)
        await a.aclose()
        # its descriptor number may already belong to another file: never read or write it
        with pytest.raises(trio.ClosedResourceError):
            await da.receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await da.send_all(b"x")
        c, d = socket_streams()
        dc = DirectStream(c)
        d.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await d.aclose()
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):  # the first writes may still be taken before the reset is seen
                await dc.send_all(b"z" * 65536)
        await b.aclose()
        await c.aclose()

    trio.run(main)


def test_a_stream_that_is_no_socket_goes_through_its_own_calls() -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        dl, dr = DirectStream(left), DirectStream(right)
        await dl.send_all(b"over memory")
        assert await dr.receive_some(100) == b"over memory"

    trio.run(main)
