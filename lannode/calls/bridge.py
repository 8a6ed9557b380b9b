"""The narrow bridge between trio and aiortc's asyncio: an asyncio loop in a thread.

trio stays the main loop of the process. ``AsyncioThread.run(fn, *args)`` runs the
coroutine ``fn(*args)`` on the asyncio loop and waits for it from trio without
blocking trio; cancelling the trio side cancels the asyncio task. The asyncio side
reports back through ``to_trio``: a callable that is safe to call from the asyncio
thread and puts an item on a trio memory channel.

Measured here, trio-asyncio ran aiortc about 2.5 x slower than a plain asyncio
loop, and it patches asyncio's loop policy for the whole process; a thread keeps
aiortc on the loop it was written for. This module imports neither aiortc nor av.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(Exception):
    pass


class AsyncioThread:
    def __init__(self, name: str = "lannode-asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self.dropped = 0  # reports that arrived after trio stopped listening

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``await fn(*args)`` on the asyncio loop; trio waits (and may cancel)."""
        if self.loop.is_closed() or not self._thread.is_alive():
            raise BridgeClosed("the asyncio loop has stopped")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def to_trio(self, deliver: Callable[[Any], None]) -> Callable[[Any], None]:
        """A callable for the asyncio side: each call runs ``deliver(item)`` in trio."""
        token = self._token
        assert token is not None, "start() the bridge first"

        def report(item: Any) -> None:
            try:
                token.run_sync_soon(deliver, item)
            except trio.RunFinishedError:
                self.dropped += 1

        return report

    async def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            await trio.to_thread.run_sync(self._thread.join)


@asynccontextmanager
async def open_bridge() -> AsyncIterator[tuple[AsyncioThread, trio.MemoryReceiveChannel[Any], Callable[[Any], None]]]:
    """The bridge, a trio channel of what the asyncio side reports, and the reporter to hand it.

    The channel is unbounded: what crosses is signaling and call events (a few per
    negotiation), never media, which stays on the asyncio side."""
    bridge = AsyncioThread()
    send, receive = trio.open_memory_channel[Any](math.inf)
    bridge.start()

    def deliver(item: Any) -> None:
        try:
            send.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            bridge.dropped += 1

    try:
        yield bridge, receive, bridge.to_trio(deliver)
    finally:
        with trio.CancelScope(shield=True):
            await bridge.stop()
            await send.aclose()
