"""File drop on this node's disk: what a sender offers and where a receiver may write.

The protocol objects are in ``lannode.core.transfer``; this module reads and
hashes the sender's files and checks a received offer against the downloads
folder. The transfer service (the peer-link channel, resume, progress, the
``send``/``transfers`` API) builds on these.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from lannode.core.transfer import (
    CHUNK_SIZE,
    Offer,
    OfferedFile,
    UnsafeName,
    chunk_count,
    hash_chunk,
    safe_relative_path,
)

log = logging.getLogger("lannode.transfer")


class TransferError(Exception):
    """Something a person asked for that cannot be done; the message says what and why."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path  # where it is on the sender's disk
    name: str  # the relative name offered ("folder/sub/file.txt")
    size: int
    mtime_ns: int
    mode: int


def scan(paths: list[Path]) -> tuple[list[SourceFile], list[str]]:
    """The regular files under ``paths`` (a folder keeps its structure under its own
    name), and what was skipped and why: symlinks inside folders, sockets, devices."""
    files: list[SourceFile] = []
    skipped: list[str] = []
    for given in paths:
        try:
            st = given.stat()  # a path the person named is followed if it is a symlink
        except OSError as exc:
            raise TransferError(f"cannot read {given}: {exc.strerror}") from None
        base = given.resolve().name or "root"
        if stat.S_ISREG(st.st_mode):
            files.append(SourceFile(given, base, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise TransferError(f"{given} is neither a file nor a folder")
        _walk(str(given), base, files, skipped)
    if not files:
        raise TransferError("nothing to send: no regular files there")
    return files, skipped


def named_sources(named: list[tuple[Path, str]]) -> list[SourceFile]:
    files = []
    for path, name in named:
        try:
            st = path.stat()
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror}") from None
        files.append(SourceFile(path, name, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)))
    return files


def _walk(directory: str, name: str, files: list[SourceFile], skipped: list[str]) -> None:
    """A folder's regular files in name order, depth first; one lstat per file (scandir)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        skipped.append(f"{directory}: {exc.strerror}")
        return
    folders = []
    for entry in entries:
        try:
            if entry.is_symlink():
                skipped.append(f"{entry.path}: a symbolic link")
            elif entry.is_dir(follow_symlinks=False):
                folders.append(entry)
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                files.append(SourceFile(Path(entry.path), f"{name}/{entry.name}", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)))
            else:
                skipped.append(f"{entry.path}: not a regular file")
        except OSError as exc:
            skipped.append(f"{entry.path}: {exc.strerror}")
    for entry in folders:
        _walk(entry.path, f"{name}/{entry.name}", files, skipped)


def hash_file(source: SourceFile, chunk_size: int = CHUNK_SIZE) -> OfferedFile:
    """Read a file once, hashing each chunk; TransferError if it changed while being read."""
    hashes = []
    size = 0
    try:
        with open(source.path, "rb", buffering=0) as f:
            buffer = bytearray(chunk_size)
            view = memoryview(buffer)
            while True:
                n = f.readinto(buffer)
                if not n:
                    break
                size += n
                hashes.append(hash_chunk(view[:n]))
                if n < chunk_size:
                    # a short read is the end of a regular file; one more read proves it
                    if f.readinto(buffer):
                        raise TransferError(f"{source.path} grew while it was being read")
                    break
            after = os.fstat(f.fileno())
    except OSError as exc:
        raise TransferError(f"cannot read {source.path}: {exc.strerror}") from None
    if size != source.size or after.st_mtime_ns != source.mtime_ns:
        raise TransferError(f"{source.path} changed while it was being read; try again")
    if not hashes:
        hashes.append(hash_chunk(b""))
    return OfferedFile(source.name, size, tuple(hashes), source.mode)


def hash_range(source: SourceFile, first: int, count: int, chunk_size: int) -> list[bytes]:
    """The hashes of chunks ``first`` .. ``first + count - 1`` of a file; TransferError if
    they are not all there (the file shrank)."""
    expected = min(count, chunk_count(source.size, chunk_size) - first)
    hashes = []
    try:
        with open(source.path, "rb", buffering=0) as f:
            f.seek(first * chunk_size)
            buffer = bytearray(chunk_size)
            view = memoryview(buffer)
            for index in range(first, first + expected):
                want = min(chunk_size, source.size - index * chunk_size)
                if f.readinto(view[:want]) != want:
                    raise TransferError(f"{source.path} shrank while it was being read; try again")
                hashes.append(hash_chunk(view[:want]))
    except OSError as exc:
        raise TransferError(f"cannot read {source.path}: {exc.strerror}") from None
    return hashes


def make_offer(offer_id: str, files: list[SourceFile], chunk_size: int = CHUNK_SIZE, workers: int | None = None) -> Offer:
    """Hash the files into an offer. Big files are cut into runs of chunks hashed on all
    cores at once (hashlib releases the GIL on big buffers), so even one big file is
    hashed in parallel; small files are hashed here meanwhile, since for a 4 KB file a
    pool's hand-off costs more than the hashing."""
    offered: list[OfferedFile | None] = [None] * len(files)
    runs: dict[int, list[concurrent.futures.Future[list[bytes]]]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
        for i, f in enumerate(files):
            if f.size >= BIG_FILE:
                chunks = chunk_count(f.size, chunk_size)
                runs[i] = [pool.submit(hash_range, f, first, RUN_CHUNKS, chunk_size) for first in range(0, chunks, RUN_CHUNKS)]
        for i, f in enumerate(files):
            if i not in runs:
                offered[i] = hash_file(f, chunk_size)
        for i, futures in runs.items():
            f = files[i]
            hashes = [h for future in futures for h in future.result()]
            try:
                after = os.stat(f.path)
            except OSError as exc:
                raise TransferError(f"cannot read {f.path}: {exc.strerror}") from None
            if (after.st_size, after.st_mtime_ns) != (f.size, f.mtime_ns):
                raise TransferError(f"{f.path} changed while it was being read; try again")
            offered[i] = OfferedFile(f.name, f.size, tuple(hashes), f.mode)
    return Offer(offer_id, tuple(f for f in offered if f is not None), chunk_size)


RUN_CHUNKS = 32  # chunks hashed by one task of the pool
BIG_FILE = 256 * 1024


def check_offer(offer: Offer, downloads: Path, *, limit: int, reserve: int = 64 << 20) -> list[str]:
    """The safe relative paths to write the offer's files at, or TransferError naming every
    problem: a hostile name, two files on one path, a file where a folder must go, a
    transfer over ``limit`` bytes, or less free space in ``downloads`` than it needs plus
    ``reserve``."""
    problems: list[str] = []
    paths: list[str] = []
    for f in offer.files:
        try:
            paths.append(safe_relative_path(f.path))
        except UnsafeName as exc:
            problems.append(str(exc))
    if len(set(paths)) != len(paths):
        problems.append("two files would land on the same name")
    folders = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    clashes = [p for p in paths if p in folders]
    if clashes:
        problems.append(f"{clashes[0]!r} is both a file and a folder")
    if problems:
        raise TransferError("refused: " + "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    total = offer.total
    if total > limit:
        raise TransferError(f"refused: {human_bytes(total)} is over this node's limit of {human_bytes(limit)} per transfer")
    downloads.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(downloads).free
    if total + reserve > free:
        raise TransferError(f"refused: not enough free space ({human_bytes(total)} offered, {human_bytes(free)} free in the downloads folder)")
    return paths


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


