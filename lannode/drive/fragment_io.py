"""The drive's byte work, as blocking code for worker threads (as ``lannode.transfer.stream``
is for file drop; both stand on ``lannode.net.bulk``): putting a file's fragments on their
holders, a holder storing and serving one, and getting a file back from any k holders.

Fragment bytes travel on bulk connections: a one-time token and secret go over
the peer link (``lannode.drive.service``), the requester connects to the holder's link
port with the token, and both ends seal control records with keys derived from the
secret (AES-256-GCM where both have it). On a connection fragment bytes go as raw
frames and control messages as sealed records (see ``Wire``).

* **put**: the putter streams fragment bytes; then ``{"root"}``; the holder
  checks its own hashes give that root, fsyncs, renames, and answers
  ``{"stored": true}`` (or ``{"error"}``). Nothing is "stored" before the fsync.
* **get**: the holder streams the fragment's block hashes, then its blocks from
  the segment asked for, each checked against its hash as it is read from disk;
  a bad block ends the stream with ``{"error"}``. The reader checks the hashes
  against the layout's root and each block against its hash.

``get_file`` reads from k holders at once, each in its own thread, and hands
whole segments to the decoder in order; a holder that fails, lies, or falls
behind by ``SLOW`` seconds is joined by another holder of a fragment not in use
yet, from the segment the reader is at. At most ``AHEAD`` segments wait in
memory, so a file of any size streams through.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lannode.core.bulk import MAX_RECORD, R_CONTROL, R_DATA, bulk_hello
from lannode.core.drive import (
    HASH_BYTES,
    Decoder,
    DriveError,
    Encoder,
    Layout,
    ReadCap,
    check_block,
    check_block_hashes,
)
from lannode.core.link import TAG_BYTES
from lannode.drive.fragments import FragmentError, FragmentReader, FragmentWriter
from lannode.net.bulk import BulkError, Meter, Records, ciphers, tune_allocator

log = logging.getLogger("lannode.drive")

RAW = 0x8000_0000  # the top bit of a frame's length: raw fragment bytes follow, not a sealed record
MAX_RAW = 2 << 20  # fragment bytes per data frame (a whole block, for segments up to 8 MiB at k=4)
_LENGTH = struct.Struct(">I")
AHEAD = 8  # segments a reader's fetchers may run ahead of the writer
SLOW = 4.0  # seconds a segment may wait on a fetcher before another holder joins in
CODERS = 2  # threads sealing and coding segments during a put


class Wire:
    """One end of a drive bulk connection.

    Two kinds of frame share it, told apart by the top bit of the 4-byte length:

    * **raw data** (``RAW | n``, then n bytes): fragment bytes, which need no sealing.
      They are ciphertext already (the file was encrypted before it was coded), and
      every block is checked against hashes the capability commits to, by the holder
      before it says "stored" and by the reader before it uses the block. Sealing
      them again would be work done twice, on the path that decides the speed.
    * **sealed control** (a ``Records`` record: AEAD with the connection's keys):
      the root, "stored", errors. These decide what the manifest says, so a party
      on the wire cannot forge or alter them; it can only break the connection.
    """

    def __init__(self, sock: socket.socket, secret: bytes, aes: bool, *, dialer: bool, timeout: float | None = None) -> None:
        sock.settimeout(timeout)  # None: block as long as it takes; else each send or receive fails after this long
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.records = Records(sock, *ciphers(secret, aes, sending=dialer))
        self.reader = self.records.reader
        self._raw = bytearray(MAX_RAW)

    @classmethod
    def dial(cls, address: tuple[str, int], token: bytes, secret: bytes, aes: bool, *, timeout: float | None = None) -> "Wire":
        tune_allocator()
        try:
            sock = socket.create_connection(address, timeout=10)
        except OSError as exc:
            raise BulkError(f"cannot open a bulk connection to {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        try:
            sock.sendall(bulk_hello(token))
        except OSError as exc:
            sock.close()
            raise BulkError(f"the bulk connection failed: {exc.strerror or exc}") from None
        return cls(sock, secret, aes, dialer=True, timeout=timeout)

    def send_data(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), MAX_RAW):
            piece = view[start : start + MAX_RAW]
            header = _LENGTH.pack(RAW | len(piece))
            sent = self.sock.sendmsg([header, piece])
            if sent < len(header) + len(piece):  # the kernel took part of it: the rest the slow way
                rest = (header + bytes(piece))[sent:]
                self.sock.sendall(rest)

    def send_control(self, message: dict[str, Any]) -> None:
        self.records.send(bytes([R_CONTROL]) + json.dumps(message, separators=(",", ":")).encode())

    def receive(self) -> tuple[int, Any]:
        """(R_DATA, a view valid until the next call) or (R_CONTROL, dict); BulkError at the end."""
        head = self.reader.read(4)
        if len(head) < 4:
            raise BulkError("the other end closed the bulk connection")
        length = _LENGTH.unpack(head)[0]
        if length & RAW:
            n = length & ~RAW
            if n > MAX_RAW:
                raise BulkError(f"a data frame of {n} bytes")
            view = memoryview(self._raw)[:n]
            if self.reader.readinto(view) < n:
                raise BulkError("the bulk connection ended inside a frame")
            return R_DATA, view
        if not TAG_BYTES <= length <= MAX_RECORD:
            raise BulkError(f"a bulk record of {length} bytes")
        body = self.reader.read(length)
        if len(body) < length:
            raise BulkError("the bulk connection ended inside a record")
        try:
            plaintext = self.records.rx.open(head, body)
        except Exception:
            raise BulkError("a control record failed to authenticate") from None
        if not plaintext or plaintext[0] != R_CONTROL:
            raise BulkError("a sealed record that is not a control record")
        try:
            message = json.loads(plaintext[1:])
        except ValueError:
            raise BulkError("a control record that is not JSON") from None
        if not isinstance(message, dict):
            raise BulkError("a control record that is not an object")
        return R_CONTROL, message

    def receive_exactly(self, size: int) -> bytes:
        """``size`` bytes of data frames; BulkError with the other end's reason if it sends
        an error instead."""
        parts = []
        got = 0
        while got < size:
            kind, data = self.receive()
            if kind == R_CONTROL:
                raise BulkError(str(data.get("error") or f"unexpected {data}"))
            if got + len(data) > size:
                raise BulkError("more bytes than asked for")
            parts.append(bytes(data))
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Hang up; also wakes a thread blocked reading this connection."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# -- put: the putter -------------------------------------------------------------------------------


@dataclass(slots=True)
class Outlet:
    """Where one fragment goes: a holder's bulk connection, or this node's own store."""

    index: int
    node: str
    address: tuple[str, int] | None = None
    token: bytes = b""
    secret: bytes = b""
    aes: bool = False
    writer: FragmentWriter | None = None  # this node holds it
    wire: Wire | None = None


class PutFailed(BulkError):
    def __init__(self, node: str, why: str) -> None:
        super().__init__(f"{node}: {why}")
        self.node = node


def put_file(path: Path, encoder: Encoder, outlets: list[Outlet], meter: Meter, *, stall: float = 30.0) -> tuple[Layout, ReadCap]:
    """Seal, code and send every segment of ``path``; returns when every holder has
    fsynced its fragment. PutFailed names a holder that failed, or that took no bytes
    for ``stall`` seconds (a machine asleep, a cable pulled: TCP alone would wait many
    minutes) or did not answer within four times that after the last; DriveError if
    the file changed size meanwhile."""
    shape = encoder.shape
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DriveError(f"cannot read {path}: {exc.strerror or exc}") from None
    pool = ThreadPoolExecutor(CODERS, thread_name_prefix="drive-code")
    senders: _Senders | None = None
    try:
        _dial(outlets, stall)
        if meter.stopped:
            raise BulkError("stopped")
        senders = _Senders(outlets, meter)

        def code(index: int) -> tuple[list[bytes], list[bytes]]:
            length = shape.sealed_length(index) - 16
            plaintext = os.pread(f.fileno(), length, index * shape.segment)
            if len(plaintext) != length:
                raise DriveError(f"{path} changed while it was being put")
            return encoder.code(index, plaintext)

        pending: list[Future[tuple[list[bytes], list[bytes]]]] = []
        submitted = 0
        for index in range(shape.segments):
            while submitted < shape.segments and submitted < index + CODERS + 2:
                pending.append(pool.submit(code, submitted))
                submitted += 1
            blocks, hashes = pending.pop(0).result()
            encoder.take(index, hashes)
            senders.send(blocks)
            if meter.stopped:
                raise BulkError("stopped")
            meter.bytes_done += min(shape.segment, shape.size - index * shape.segment)
        senders.finish()
        if os.fstat(f.fileno()).st_size != shape.size:
            raise DriveError(f"{path} changed while it was being put")
        layout, cap = encoder.finish()
        _finish_put(layout, outlets, answer_within=4 * stall)
        return layout, cap
    finally:
        if senders is not None:
            senders.abandon()
        pool.shutdown(wait=True, cancel_futures=True)
        f.close()
        _hang_up(outlets)


class _Senders:
    """A thread per outlet that sends (or, for this node's own fragment, writes) its
    blocks, a few segments behind the coder: a holder that is slow for a moment, or
    this node's page cache, no longer holds up every other holder. A failure is
    raised by the next ``send`` or by ``finish``; ``abandon`` stops them all (a socket
    blocked on a stalled holder is shut down), and returns once every thread is gone."""

    DEPTH = 4  # segments queued per outlet

    def __init__(self, outlets: list[Outlet], meter: Meter) -> None:
        self.meter = meter
        self.outlets = outlets
        self.queues: list[queue.Queue[bytes | None]] = [queue.Queue(self.DEPTH) for _ in outlets]
        self.errors: list[BaseException] = []
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, args=(o, q), name=f"drive-put-{o.index}", daemon=True) for o, q in zip(outlets, self.queues)]
        for thread in self.threads:
            thread.start()

    def _run(self, outlet: Outlet, blocks: "queue.Queue[bytes | None]") -> None:
        while (block := blocks.get()) is not None:
            if self.errors or self.stopping:
                continue  # drain: the producer is told at its next send
            try:
                _put_block(outlet, block)
            except BaseException as exc:
                self.errors.append(exc)

    def _check(self) -> None:
        if self.errors:
            raise self.errors[0]
        if self.meter.stopped:
            raise BulkError("stopped")

    def send(self, blocks: list[bytes]) -> None:
        for outlet, q in zip(self.outlets, self.queues):
            self._hand(outlet, q, blocks[outlet.index])

    def _hand(self, outlet: Outlet, q: "queue.Queue[bytes | None]", item: bytes | None) -> None:
        """Queue ``item`` for ``outlet``, raising its thread's failure meanwhile: a holder
        that takes no bytes fails its send after the connection's timeout (``_dial``)."""
        while True:
            self._check()
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Every block handed over; raises the first failure."""
        for outlet, q in zip(self.outlets, self.queues):
            self._hand(outlet, q, None)
        for thread in self.threads:
            while thread.is_alive():
                thread.join(0.2)
                self._check()
        self._check()
        self.threads = []

    def abandon(self) -> None:
        if not self.threads:
            return
        self.stopping = True
        for outlet in self.outlets:
            if outlet.wire is not None:
                try:
                    outlet.wire.sock.shutdown(socket.SHUT_RDWR)  # a send blocked on a stalled holder returns
                except OSError:
                    pass
        for q in self.queues:
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            q.put(None)
        for thread in self.threads:
            thread.join()
        self.threads = []


def _dial(outlets: list[Outlet], stall: float) -> None:
    for outlet in outlets:
        if outlet.writer is None:
            assert outlet.address is not None
            try:
                outlet.wire = Wire.dial(outlet.address, outlet.token, outlet.secret, outlet.aes, timeout=stall)
            except BulkError as exc:
                raise PutFailed(outlet.node, str(exc)) from None


def _hang_up(outlets: list[Outlet]) -> None:
    """Whatever was not committed is dropped: a local ``.part``, a holder's connection."""
    for outlet in outlets:
        if outlet.writer is not None:
            outlet.writer.abort()
        if outlet.wire is not None:
            outlet.wire.close()


def _finish_put(layout: Layout, outlets: list[Outlet], *, answer_within: float | None = None) -> None:
    """Every outlet's root sent (or, here, committed); then each holder's answer, each
    within ``answer_within`` seconds of asking for it (None: however long it takes)."""
    for outlet in outlets:
        if outlet.wire is not None:
            try:
                outlet.wire.send_control({"root": layout.roots[outlet.index].hex()})
            except OSError as exc:
                raise PutFailed(outlet.node, f"the connection failed: {exc.strerror or exc}") from None
    for outlet in outlets:
        if outlet.writer is not None:
            try:
                outlet.writer.commit(layout.roots[outlet.index])
            except (FragmentError, OSError) as exc:
                raise PutFailed(outlet.node, str(exc)) from None
            outlet.writer = None
    for outlet in outlets:
        if outlet.wire is not None:
            try:
                outlet.wire.sock.settimeout(answer_within)
                kind, answer = outlet.wire.receive()
            except TimeoutError:
                raise PutFailed(outlet.node, f"no answer within {answer_within:g} s of the last byte") from None
            except (BulkError, OSError) as exc:
                raise PutFailed(outlet.node, f"no answer after the last byte: {exc}") from None
            if kind != R_CONTROL or answer.get("stored") is not True:
                raise PutFailed(outlet.node, str(answer.get("error") if kind == R_CONTROL else "data instead of an answer"))


def _put_block(outlet: Outlet, block: bytes) -> None:
    try:
        if outlet.writer is not None:
            outlet.writer.write(block)
        else:
            assert outlet.wire is not None
            outlet.wire.send_data(block)
    except TimeoutError:
        raise PutFailed(outlet.node, "took no bytes for drive.stall_timeout") from None
    except (OSError, FragmentError) as exc:
        raise PutFailed(outlet.node, f"{exc.strerror if isinstance(exc, OSError) else exc}") from None


# -- put and get: the holder -----------------------------------------------------------------------


def store_fragment(sock: socket.socket, secret: bytes, aes: bool, writer: FragmentWriter, meter: Meter, *, stall: float | None = None) -> None:
    """Take a fragment's bytes into ``writer``; commit when the putter names the root. A
    putter that sends nothing for ``stall`` seconds (asleep, unplugged) is given up on:
    the partial fragment is dropped and its room given back."""
    tune_allocator()
    meter._sock = sock
    wire = Wire(sock, secret, aes, dialer=False, timeout=stall)
    try:
        while True:
            kind, data = wire.receive()
            if kind == R_DATA:
                writer.write(data)
                meter.bytes_done += len(data)
                continue
            root = data.get("root")
            if not isinstance(root, str) or len(root) != 2 * HASH_BYTES:
                raise FragmentError(f"the putter sent {data} instead of a root")
            writer.commit(bytes.fromhex(root))
            wire.send_control({"stored": True})
            return
    except (FragmentError, ValueError) as exc:
        writer.abort()
        try:
            wire.send_control({"error": str(exc)})
        except OSError:
            pass
        raise BulkError(str(exc)) from None
    except (OSError, BulkError) as exc:
        writer.abort()
        raise BulkError(f"the put broke off: {exc}") from None
    finally:
        wire.close()


def serve_fragment(sock: socket.socket, secret: bytes, aes: bool, reader: FragmentReader, start: int, meter: Meter, *, stall: float | None = None) -> None:
    """Send a fragment's block hashes, then its blocks from ``start``, each checked as it
    is read. FragmentError if this disk's copy is corrupt (after telling the reader). A
    reader that takes nothing for ``stall`` seconds is given up on."""
    tune_allocator()
    meter._sock = sock
    wire = Wire(sock, secret, aes, dialer=False, timeout=stall)
    try:
        wire.send_data(b"".join(reader.info.hashes))
        for segment in range(start, len(reader.lengths)):
            if meter.stopped:
                raise BulkError("stopped")
            try:
                block = reader.block(segment)
            except FragmentError as exc:
                wire.send_control({"error": str(exc)})
                raise
            wire.send_data(block)
            meter.bytes_done += len(block)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(4096):  # until the reader hangs up
            pass
    except OSError as exc:
        raise BulkError(f"the get broke off: {exc.strerror or exc}") from None
    finally:
        reader.close()
        wire.close()


# -- repair: rebuilt fragments to their new holders -------------------------------------------------


def repair_file(layout: Layout, holdings: list[Holding], outlets: list[Outlet], meter: Meter, report: GetReport, *, stall: float = 30.0) -> None:
    """Rebuild the fragments ``outlets`` name from any k others and store them; returns
    when every new holder has fsynced. Needs no key: the code works on ciphertext.
    PutFailed for a new holder that fails or stalls, as in ``put_file``."""
    decoder = Decoder(layout)
    senders: _Senders | None = None
    try:
        _dial(outlets, stall)
        senders = _Senders(outlets, meter)
        sending = senders

        def sink(index: int, blocks: dict[int, bytes]) -> None:
            sending.send(decoder.rebuild(index, blocks))

        read_segments(layout, holdings, meter, report, sink)
        senders.finish()
        _finish_put(layout, outlets, answer_within=4 * stall)
    finally:
        if senders is not None:
            senders.abandon()
        _hang_up(outlets)


# -- get: the reader -------------------------------------------------------------------------------


@dataclass(slots=True)
class Holding:
    """A fragment and who has it: ``open`` starts reading it from a segment, returning an
    iterator of checked blocks (the service asks the holder for a token first)."""

    index: int
    node: str
    open: Callable[[int], "BlockSource"]


class BlockSource:
    """Blocks of one fragment from a segment on, each checked against the layout."""

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalSource(BlockSource):
    def __init__(self, layout: Layout, reader: FragmentReader, start: int) -> None:
        self.layout = layout
        self.reader = reader
        self.start = start
        if reader.info.root != layout.roots[reader.index] or reader.lengths != layout.block_lengths():
            reader.close()
            raise DriveError(f"fragment {reader.index} on this disk is not the one the manifest names")

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        for segment in range(self.start, self.layout.segments):
            yield segment, self.reader.block(segment)

    def close(self) -> None:
        self.reader.close()


class RemoteSource(BlockSource):
    def __init__(self, layout: Layout, index: int, start: int, address: tuple[str, int], token: bytes, secret: bytes, aes: bool) -> None:
        self.layout = layout
        self.index = index
        self.start = start
        self.wire = Wire.dial(address, token, secret, aes)

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        layout = self.layout
        raw = self.wire.receive_exactly(layout.segments * HASH_BYTES)
        hashes = [raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]
        check_block_hashes(layout, self.index, hashes)
        for segment in range(self.start, layout.segments):
            block = self.wire.receive_exactly(layout.block_length(segment))
            check_block(hashes, self.index, segment, block)
            yield segment, block

    def close(self) -> None:
        self.wire.close()


@dataclass(eq=False, slots=True)
class _Fetcher:
    holding: Holding
    start: int
    thread: threading.Thread | None = None
    source: BlockSource | None = None
    error: str = ""
    done: bool = False


@dataclass(slots=True)
class GetReport:
    used: list[tuple[int, str]] = field(default_factory=list)  # (fragment, node) that served blocks
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (fragment, node, why)


class _Assembly:
    """Blocks by segment, filled by fetcher threads, emptied in order by the writer."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.cond = threading.Condition()
        self.segments: dict[int, dict[int, bytes]] = {}
        self.next = 0
        self.stopped = False

    def put(self, segment: int, index: int, block: bytes) -> bool:
        with self.cond:
            while segment >= self.next + AHEAD and not self.stopped:
                self.cond.wait(1.0)
            if self.stopped:
                return False
            if segment >= self.next:
                blocks = self.segments.setdefault(segment, {})
                if len(blocks) < self.k:
                    blocks[index] = block
                    self.cond.notify_all()
            return True


def get_file(layout: Layout, cap: ReadCap, holdings: list[Holding], out: BinaryIO, meter: Meter, report: GetReport) -> None:
    """Write the file's plaintext to ``out``. DriveError if fewer than k fragments can be
    read, or a segment does not decrypt."""
    decoder = Decoder(layout, cap.key)
    try:
        os.posix_fallocate(out.fileno(), 0, layout.size)  # the room up front: no half-written file on a full disk
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    with BackgroundWriter(out) as writer:
        read_segments(layout, holdings, meter, report, lambda index, blocks: writer.write(decoder.segment(index, blocks)))


class BackgroundWriter:
    """Writes to a file in a thread of its own, a few buffers behind, so that the page
    cache's cost overlaps the decoding instead of adding to it. A failed write is
    raised by the next ``write`` or by leaving the ``with``."""

    def __init__(self, out: BinaryIO, depth: int = 4) -> None:
        self.out = out
        self.queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="drive-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.out.write(data)
                except BaseException as exc:
                    self.error = exc

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(data)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and kind is None:
            raise self.error


def read_segments(layout: Layout, holdings: list[Holding], meter: Meter, report: GetReport, sink: Callable[[int, dict[int, bytes]], object]) -> None:
    """Hand ``sink`` every segment's blocks (any k of them, checked), in order, reading
    from k of ``holdings`` at once (in the order given) and from others when one fails
    or is slow. DriveError if fewer than k fragments can be read."""
    k = layout.k
    assembly = _Assembly(k)
    spare = list(holdings)
    fetchers: list[_Fetcher] = []

    def run(fetcher: _Fetcher) -> None:
        holding = fetcher.holding
        try:
            fetcher.source = holding.open(fetcher.start)
            for segment, block in fetcher.source.blocks():
                if not assembly.put(segment, holding.index, block):
                    break
        except (BulkError, DriveError, FragmentError, OSError) as exc:
            fetcher.error = str(exc)
        except Exception as exc:  # a bug: this holder is lost to the get, the others carry on
            log.exception("reading fragment %d from %s failed", holding.index, holding.node)
            fetcher.error = f"internal error: {exc!r}"
        finally:
            if fetcher.source is not None:
                fetcher.source.close()
            with assembly.cond:
                fetcher.done = True
                assembly.cond.notify_all()

    def start(at: int) -> bool:
        if not spare:
            return False
        holding = spare.pop(0)
        fetcher = _Fetcher(holding, at)
        fetcher.thread = threading.Thread(target=run, args=(fetcher,), name=f"drive-get-{holding.index}", daemon=True)
        fetchers.append(fetcher)
        fetcher.thread.start()
        return True

    def working() -> list[_Fetcher]:
        return [f for f in fetchers if not f.done]

    try:
        for _ in range(k):
            start(0)
        for segment in range(layout.segments):
            waited_since = time.monotonic()
            with assembly.cond:
                while True:
                    have = assembly.segments.get(segment, {})
                    if len(have) >= k:
                        blocks = assembly.segments.pop(segment)
                        assembly.next = segment + 1
                        assembly.cond.notify_all()
                        break
                    if meter.stopped:
                        raise BulkError("stopped")
                    for f in fetchers:
                        if f.done and f.error and (f.holding.index, f.holding.node, f.error) not in report.failed:
                            report.failed.append((f.holding.index, f.holding.node, f.error))
                    coming = sum(1 for f in working() if f.holding.index not in have)
                    short = k - len(have) - coming
                    if short > 0 or time.monotonic() - waited_since > SLOW:
                        assembly.cond.release()
                        try:
                            started = start(segment)
                        finally:
                            assembly.cond.acquire()
                        if started:
                            waited_since = time.monotonic()
                            continue
                        if short > 0:
                            reasons = "; ".join(f"fragment {i} on {n}: {why}" for i, n, why in report.failed) or "no holder answered"
                            raise DriveError(f"only {len(have)} of the {k} fragments needed could be read at segment {segment} ({reasons})")
                    assembly.cond.wait(0.5)
            sink(segment, blocks)
            meter.bytes_done += min(layout.segment, layout.size - segment * layout.segment)
        report.used = [(f.holding.index, f.holding.node) for f in fetchers if not f.error]
    finally:
        with assembly.cond:
            assembly.stopped = True
            assembly.cond.notify_all()
        for f in fetchers:
            if f.source is not None and isinstance(f.source, RemoteSource):
                f.source.close()
        for f in fetchers:
            if f.thread is not None:
                f.thread.join(10)
