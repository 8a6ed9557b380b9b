"""Small file helpers shared by every room that writes state into the home."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically (temp file, fsync, rename), readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def free_name(folder: Path, name: str) -> Path:
    """A path in ``folder`` for a file called ``name`` (whatever a peer chose: only its last
    part, never a dot name) that nothing is using yet: "name", then "name (1).ext", ..."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".") or "file"
    base = "".join(c for c in base if c.isprintable())[:200] or "file"
    stem, dot, suffix = base.rpartition(".")
    if not stem:
        stem, dot, suffix = base, "", ""
    folder.mkdir(parents=True, exist_ok=True)
    candidate = folder / base
    n = 0
    while candidate.exists() or candidate.with_name(f".{candidate.name}.lannode-part").exists():
        n += 1
        candidate = folder / f"{stem} ({n}){dot}{suffix}"
    return candidate


def create_private(path: Path) -> None:
    """Make sure a database file is readable by its owner only before SQLite opens it: made
    0600 if missing, and an older one's mode tightened (SQLite gives its -wal and -shm files
    the database's mode). A home is 0700 when lannode makes it, but a person may open it up."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def open_folder_beneath(root: str, relative: str) -> tuple[int, str]:
    """An open descriptor of the folder ``relative`` (parts joined by "/", checked safe by
    the caller) under the folder ``root``, made where missing, and that folder's path as
    actually used. No symlink is followed at any step: a part that exists as a symlink or
    a file is not entered; the folder is made beside it as "name (1)", "name (2)"... (as a
    file that is in the way gets one), so nothing a peer sends lands outside ``root``
    however its folders are linked, even when a link is planted while it is written. The
    caller closes the descriptor."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    used: list[str] = []
    try:
        for part in (p for p in relative.split("/") if p):
            candidate, n = part, 0
            while True:
                try:
                    os.mkdir(candidate, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    inner = os.open(candidate, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    break
                except (NotADirectoryError, OSError) as exc:  # ELOOP: a symlink; ENOTDIR: a file
                    if isinstance(exc, FileNotFoundError):
                        continue  # removed between the two calls: make it again
                    n += 1
                    candidate = f"{part} ({n})"
            os.close(fd)
            fd = inner
            used.append(candidate)
    except BaseException:
        os.close(fd)
        raise
    return fd, "/".join(used)
