"""The bulk connection's two ends, as blocking code for worker threads.

The trio thread never touches file bytes: a transfer's data runs in threads on
plain blocking sockets, where reading, sealing and sending (and receiving,
opening, hashing and writing) release the GIL in the kernel, libsodium and
hashlib, so the two daemons' work overlaps on separate cores.

* ``send_files`` (the sender): hello, the receiver's start offsets, then each
  file's bytes in records of up to ``RECORD_DATA``, small records coalesced into
  one send. A thread reads the receiver's acks; the sender keeps at most
  ``window`` bytes beyond what the receiver has written, so a receiver killed
  mid-transfer makes it resend less than two chunks. It returns when the receiver
  says every file is in place.
* ``receive_files`` (the receiver): checks every chunk against the offer as its
  last byte arrives, writes to ``.part`` files, renames each finished file into
  place, and says ``done`` when the last one is there. Files are not fsynced: the
  sender keeps its copy, so a power cut right after costs a resend, never data,
  and the transfer is not held to the disk's write speed (scp and cp do the same).

Both report through a ``Meter`` the trio side polls, and stop soon after
``Meter.stop()`` (which also shuts the socket down).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from lannode.core.link import TAG_BYTES, RecordCipher
from lannode.core.transfer import (
    R_ACK,
    R_CONTROL,
    R_DATA,
    RECORD_DATA,
    BadOffer,
    ChunkMismatch,
    FileProgress,
    OutOfOrder,
    ack_record,
    bulk_hello,
    bulk_keys,
    control_record,
    DATA_HEADER_BYTES,
    hash_chunk,
    parse_record,
    put_data_header,
)

log = logging.getLogger("lannode.transfer")

WINDOW = 768 * 1024  # file bytes the sender may have sent beyond what the receiver wrote
ACK_EVERY = 256 * 1024  # one ack per full record: each costs the receiver a seal and a send
COALESCE = 256 * 1024  # small records gathered into one send up to this size
MAX_RECORD = RECORD_DATA + 64 + TAG_BYTES


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


class SourceChanged(Exception):
    """A file the sender offered is no longer what it offered."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index = index


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


# -- the sender ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    path: Path
    size: int
    mtime_ns: int
    chunk_size: int


def send_files(address: tuple[str, int], token: bytes, secret: bytes, aes: bool, sources: list[Source], meter: Meter, *, window: int = WINDOW) -> None:
    """Send every file from where the receiver says to start; returns when it has them all.
    BulkError if the connection fails, SourceChanged if a file is not what was offered."""
    tune_allocator()
    try:
        sock = socket.create_connection(address, timeout=10)
    except OSError as exc:
        raise BulkError(f"cannot open a bulk connection to {address[0]}:{address[1]}: {exc.strerror or exc}") from None
    meter._sock = sock
    try:
        if meter.stopped:
            raise BulkError("stopped")
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(bulk_hello(token))
        records = Records(sock, *ciphers(secret, aes, sending=True))
        first = _receive_control(records)
        starts = first.get("start")
        if not isinstance(starts, list) or len(starts) != len(sources) or not all(isinstance(s, int) for s in starts):
            raise BulkError(f"the receiver did not say where to start: {first}")
        acks = _AckReader(records, meter)
        acks.base = sum(source.size if start < 0 else start for source, start in zip(sources, starts))
        meter.bytes_done = acks.base
        acks.thread.start()
        try:
            _send_all(records, sources, starts, meter, acks, window)
            acks.wait_done()
        finally:
            meter.stop()
            acks.thread.join(5)
    except OSError as exc:
        raise BulkError(f"the bulk connection failed: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _receive_control(records: Records) -> dict[str, Any]:
    plaintext = records.receive()
    if plaintext is None:
        raise BulkError("the receiver closed the bulk connection")
    try:
        kind, message, _ = parse_record(plaintext)
    except BadOffer as exc:
        raise BulkError(str(exc)) from None
    if kind != R_CONTROL:
        raise BulkError("the receiver sent data where a control record belongs")
    if "error" in message:
        raise BulkError(f"the receiver stopped: {message['error']}")
    return dict(message)


class _AckReader:
    """The sender's thread that reads acks and the receiver's verdicts."""

    def __init__(self, records: Records, meter: Meter) -> None:
        self.records = records
        self.meter = meter
        self.written = 0
        self.base = 0  # bytes the receiver had before this connection
        self.done = False
        self.failure: BaseException | None = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="lannode-bulk-acks", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                plaintext = self.records.receive()
                if plaintext is None:
                    raise BulkError("the receiver closed the bulk connection")
                kind, value, _ = parse_record(plaintext)
                with self.cond:
                    if kind == R_ACK:
                        self.written = value
                        self.meter.bytes_done = self.base + value
                    elif kind == R_CONTROL:
                        if value.get("done"):
                            self.done = True
                            self.meter.bytes_done = self.base + self.meter.sent
                            self.cond.notify_all()
                            return
                        if "changed" in value:
                            raise SourceChanged(int(value["changed"]), f"file {value['changed']} changed since it was offered")
                        raise BulkError(f"the receiver stopped: {value.get('error', value)}")
                    else:
                        raise BulkError("the receiver sent data")
                    self.cond.notify_all()
        except BaseException as exc:  # handed to the sending thread
            with self.cond:
                self.failure = exc if not self.meter.stopped or isinstance(exc, SourceChanged) else BulkError("stopped")
                self.cond.notify_all()

    def check(self) -> None:
        if self.failure is not None:
            if isinstance(self.failure, (BulkError, SourceChanged)):
                raise self.failure
            raise BulkError(f"the bulk connection failed: {self.failure}")

    def wait_window(self, sent: int, window: int) -> None:
        with self.cond:
            while sent - self.written > window and self.failure is None and not self.meter.stopped:
                self.cond.wait(1.0)
            self.check()
            if self.meter.stopped:
                raise BulkError("stopped")

    def wait_done(self) -> None:
        with self.cond:
            while not self.done and self.failure is None and not self.meter.stopped:
                self.cond.wait(1.0)
            self.check()
            if not self.done:
                raise BulkError("stopped")


def _send_all(records: Records, sources: list[Source], starts: list[int], meter: Meter, acks: _AckReader, window: int) -> None:
    """Each record is read straight into its plaintext buffer behind the header and sealed
    into one output buffer: no per-record allocation or copy in Python."""
    sent = 0
    pending = bytearray()
    plain = bytearray(DATA_HEADER_BYTES + RECORD_DATA)
    body = memoryview(plain)
    out = bytearray(4 + len(plain) + TAG_BYTES)
    sealed = memoryview(out)
    for index, source in enumerate(sources):
        start = starts[index]
        if start < 0:  # the receiver has this file
            continue
        try:
            st = source.path.stat()
            f = open(source.path, "rb", buffering=0)
        except OSError as exc:
            raise SourceChanged(index, f"cannot read {source.path}: {exc.strerror}") from None
        with f:
            if (st.st_size, st.st_mtime_ns) != (source.size, source.mtime_ns):
                raise SourceChanged(index, f"{source.path} changed since it was offered")
            f.seek(start)
            position = start
            meter.file_index = index
            while True:
                chunk_end = min(source.size, (position // source.chunk_size + 1) * source.chunk_size)
                want = min(RECORD_DATA, chunk_end - position)
                n = f.readinto(body[DATA_HEADER_BYTES : DATA_HEADER_BYTES + want]) if want else 0
                if n != want:
                    raise SourceChanged(index, f"{source.path} shrank since it was offered")
                put_data_header(plain, index, position)
                size = records.tx.seal_into(body[: DATA_HEADER_BYTES + n], out)
                position += n
                sent += n
                if size >= COALESCE // 4:
                    if pending:
                        records.send_sealed(pending)
                        pending.clear()
                    records.send_sealed(sealed[:size])
                else:
                    pending += sealed[:size]
                    if len(pending) >= COALESCE:
                        records.send_sealed(pending)
                        pending.clear()
                meter.sent = sent
                meter.file_bytes = position
                if sent - acks.written > window:
                    if pending:
                        records.send_sealed(pending)
                        pending.clear()
                    acks.wait_window(sent, window)
                acks.check()
                if position >= source.size:
                    meter.files_done += 1
                    break
    if pending:
        records.send_sealed(pending)


# -- the receiver --------------------------------------------------------------------------------


@dataclass(slots=True)
class Sink:
    """Where one offered file goes: its progress, its ``.part`` path, and what to do when
    it is complete (``finish(index)``, which renames it into place)."""

    progress: FileProgress
    part: Path
    done: bool = False


def receive_files(
    sock: socket.socket,
    secret: bytes,
    aes: bool,
    sinks: list[Sink],
    meter: Meter,
    finish: Callable[[int], None],
) -> None:
    """Receive until every file is in place; BulkError if the connection fails,
    SourceChanged (after telling the sender) if a chunk does not match the offer."""
    tune_allocator()
    meter._sock = sock
    sock.settimeout(None)
    sock.setblocking(True)
    records = Records(sock, *ciphers(secret, aes, sending=False))
    try:
        starts = [-1 if sink.done else sink.progress.position for sink in sinks]
        records.send(control_record({"start": starts}))
        written = 0
        acked = 0
        current: tuple[int, Any] | None = None  # (index, open .part file)
        remaining = sum(1 for sink in sinks if not sink.done)
        scratch, opened = bytearray(MAX_RECORD), bytearray(MAX_RECORD)
        try:
            while remaining:
                if meter.stopped:
                    raise BulkError("stopped")
                plaintext = records.receive_into(scratch, opened)
                if plaintext is None:
                    raise BulkError("the sender closed the bulk connection")
                try:
                    kind, where, data = parse_record(plaintext)
                except BadOffer as exc:
                    raise BulkError(str(exc)) from None
                if kind != R_DATA:
                    raise BulkError("the sender sent something other than file data")
                index, offset = where
                if not 0 <= index < len(sinks) or sinks[index].done:
                    raise BulkError(f"data for file {index}, which is not expected")
                sink = sinks[index]
                if current is None or current[0] != index:
                    if current is not None:
                        current[1].close()
                    current = (index, _open_part(sink))
                f = current[1]
                try:
                    complete = sink.progress.feed(offset, data)
                except OutOfOrder as exc:
                    raise BulkError(f"file {index}: {exc}") from None
                except ChunkMismatch:
                    f.truncate(sink.progress.position)
                    f.close()
                    current = None
                    records.send(control_record({"changed": index}))
                    raise SourceChanged(index, f"file {index} does not match what was offered") from None
                f.write(data)
                written += len(data)
                meter.bytes_done += len(data)
                meter.file_index, meter.file_bytes = index, sink.progress.position
                if complete:
                    f.close()
                    current = None
                    finish(index)
                    sink.done = True
                    remaining -= 1
                    meter.files_done += 1
                if written - acked >= ACK_EVERY:
                    records.send(ack_record(written))
                    acked = written
        finally:
            if current is not None:
                current[1].close()
        records.send(control_record({"done": True}))
    except OSError as exc:
        if meter.stopped:
            raise BulkError("stopped") from None
        try:
            records.send(control_record({"error": f"{exc.strerror or exc}"}))
        except OSError:
            pass
        raise BulkError(f"receiving failed: {exc.strerror or exc}") from exc


def _open_part(sink: Sink) -> Any:
    """The ``.part`` file, cut back to where the progress stands, positioned there."""
    position = sink.progress.position
    fd = os.open(sink.part, os.O_WRONLY | os.O_CREAT | (0 if position else os.O_TRUNC), 0o600)
    f = os.fdopen(fd, "wb", buffering=0)
    if position:
        f.truncate(position)
        f.seek(position)
    return f


def verified_prefix(part: Path, progress: FileProgress) -> int:
    """How many chunks of a ``.part`` left by an earlier run match the offer (read once)."""
    try:
        f = open(part, "rb", buffering=0)
    except FileNotFoundError:
        return 0
    good = 0
    with f:
        buffer = bytearray(progress.chunk_size)
        view = memoryview(buffer)
        while good < progress.chunks:
            want = progress.expected_length(good)
            n = f.readinto(view[:want]) if want else 0
            if n != want:
                break
            if hash_chunk(view[:n]) != progress.file.chunks[good]:
                break
            good += 1
            if want == 0:
                break
    return good


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
