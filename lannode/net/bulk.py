"""Bulk connections' toolkit, shared by file drop and the drive: sealed records over a
blocking socket, the keys of one connection, a progress meter a worker thread and the
trio thread share, and the worker threads themselves.

Bulk bytes never travel inside a peer link's own stream (a chunk queued there would
sit ahead of every chat message): after a request over the link, the requester opens
a second TCP connection to the link port with a one-time token (``lannode.core.bulk``)
and both ends run blocking code in worker threads, where reading, sealing and
sending release the GIL in the kernel and libsodium. ``run_in_thread`` runs such
work so that cancelling the caller stops it; ``PeerThreads`` gives what peers ask of
us threads of their own, apart from the API's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import trio

from lannode.core.bulk import MAX_RECORD, bulk_keys
from lannode.core.link import TAG_BYTES, RecordCipher

log = logging.getLogger("lannode.bulk")


_tuned = False


def tune_allocator() -> None:
    """Keep record-sized buffers on the heap (glibc only; once per process).

    Every record makes a few fresh buffers of its size (pynacl's output, the plaintext,
    the framed record). Above 128 KiB glibc hands each one a new mmap, which the
    kernel must zero and fault in page by page, and trims freed heap back to the
    system just as often: measured here, AES-256-GCM through pynacl on 256 KiB records
    ran at 0.58 GB/s that way and 2.2 GB/s with these two settings. Memory kept for
    reuse is bounded by the trim threshold (32 MiB)."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc: its allocator has its own ideas
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 8 << 20)
    mallopt(M_TRIM_THRESHOLD, 32 << 20)


class BulkError(Exception):
    """The bulk connection failed; the message says how (the transfer resumes later)."""


@dataclass(slots=True)
class Meter:
    """Progress shared between a worker thread and the trio thread (plain ints)."""

    bytes_done: int = 0  # sender: acknowledged as written; receiver: written and in order
    files_done: int = 0
    sent: int = 0  # sender: file bytes handed to the socket on this connection
    file_index: int = -1  # the file being sent or received now
    file_bytes: int = 0  # how far into it
    _stop: threading.Event = field(default_factory=threading.Event)
    _sock: socket.socket | None = None

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


class Records:
    """Sealed records over a blocking socket."""

    def __init__(self, sock: socket.socket, tx: RecordCipher, rx: RecordCipher) -> None:
        self.sock = sock
        self.tx = tx
        self.rx = rx
        self.reader = io.BufferedReader(socket.SocketIO(sock, "rb"), 1 << 20)

    def send(self, plaintext: bytes) -> None:
        self.sock.sendall(self.tx.seal(plaintext))

    def send_sealed(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def _head(self) -> tuple[bytes, int] | None:
        """The next record's length field and length; None at a clean end of stream."""
        head = self.reader.read(4)
        if not head:
            return None
        if len(head) < 4:
            raise BulkError("the bulk connection ended inside a record")
        length = int.from_bytes(head, "big")
        if not TAG_BYTES <= length <= MAX_RECORD:
            raise BulkError(f"a bulk record of {length} bytes")
        return head, length

    def receive_into(self, ciphertext: bytearray, plaintext: bytearray) -> memoryview | None:
        """The next record opened into ``plaintext`` (valid until the next call), through
        ``ciphertext`` as scratch: no buffer allocated per record. None at a clean end."""
        if (found := self._head()) is None:
            return None
        head, length = found
        view = memoryview(ciphertext)[:length]
        if self.reader.readinto(view) < length:
            raise BulkError("the bulk connection ended inside a record")
        try:
            n = self.rx.open_into(head, view, plaintext)
        except Exception:
            raise BulkError("a bulk record failed to authenticate") from None
        return memoryview(plaintext)[:n]

    def receive(self) -> bytes | None:
        """The next record's plaintext; None at a clean end of stream."""
        if (found := self._head()) is None:
            return None
        head, length = found
        body = self.reader.read(length)
        if len(body) < length:
            raise BulkError("the bulk connection ended inside a record")
        try:
            return self.rx.open(head, body)
        except Exception:
            raise BulkError("a bulk record failed to authenticate") from None


def ciphers(secret: bytes, aes: bool, sending: bool) -> tuple[RecordCipher, RecordCipher]:
    to_receiver, to_sender = bulk_keys(secret)
    if sending:
        return RecordCipher(to_receiver, aes), RecordCipher(to_sender, aes)
    return RecordCipher(to_sender, aes), RecordCipher(to_receiver, aes)



T = TypeVar("T")


async def run_in_thread(fn: Callable[[], T], meter: Meter, limiter: trio.CapacityLimiter | None = None) -> T:
    """Run blocking bulk work in a thread; if the caller is cancelled, stop the work
    (``meter.stop()`` shuts its socket) and wait for the thread to return, so no thread
    writes a file after its transfer was cancelled. ``limiter``: whose threads it takes
    (trio's default, shared with the API's own work, unless a peer asked: ``PeerThreads``)."""
    result: list[T] = []
    failure: list[BaseException] = []

    async def watch() -> None:
        try:
            await trio.sleep_forever()
        finally:
            meter.stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with trio.CancelScope(shield=True):
            try:
                result.append(await trio.to_thread.run_sync(fn, limiter=limiter))
            except Exception as exc:  # raised outside the nursery, not as an ExceptionGroup
                failure.append(exc)
            finally:
                nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0]


class PeerThreads:
    """Worker threads for bulk work a peer asked for (a drive fragment it puts or gets, a
    file it sends us): at most ``each`` per peer and ``total`` in all, apart from trio's
    default limiter, so the API's own work (SQLite, hashing, scans) never waits behind a
    peer's trickling connections. Work past a peer's share waits for one of its own."""

    def __init__(self, *, each: int = 4, total: int = 32) -> None:
        self.each = each
        self.total = trio.CapacityLimiter(total)
        self._peers: dict[str, trio.CapacityLimiter] = {}
        self.waited = 0  # works that had to wait for their peer's share

    async def run(self, peer: str, fn: Callable[[], T], meter: Meter) -> T:
        share = self._peers.get(peer)
        if share is None:
            share = self._peers[peer] = trio.CapacityLimiter(self.each)
        if share.available_tokens == 0:
            self.waited += 1
        try:
            async with share:
                return await run_in_thread(fn, meter, self.total)
        finally:
            if share.borrowed_tokens == 0 and share.statistics().tasks_waiting == 0:
                self._peers.pop(peer, None)

    def statistics(self) -> dict[str, int]:
        return {"threads": self.total.borrowed_tokens, "threads_max": int(self.total.total_tokens), "threads_per_peer": self.each, "peers": len(self._peers), "waited": self.waited}
