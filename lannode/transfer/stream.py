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

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lannode.core.bulk import (
    MAX_RECORD,
    R_ACK,
    R_CONTROL,
    R_DATA,
    RECORD_DATA,
    bulk_hello,
)
from lannode.core.link import TAG_BYTES
from lannode.core.transfer import (
    DATA_HEADER_BYTES,
    BadOffer,
    ChunkMismatch,
    FileProgress,
    OutOfOrder,
    ack_record,
    control_record,
    hash_chunk,
    parse_record,
    put_data_header,
)
from lannode.net.bulk import BulkError, Meter, Records, ciphers, tune_allocator

log = logging.getLogger("lannode.transfer")

WINDOW = 768 * 1024  # file bytes the sender may have sent beyond what the receiver wrote
ACK_EVERY = 256 * 1024  # one ack per full record: each costs the receiver a seal and a send
COALESCE = 256 * 1024  # small records gathered into one send up to this size


class SourceChanged(Exception):
    """A file the sender offered is no longer what it offered."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index = index


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


