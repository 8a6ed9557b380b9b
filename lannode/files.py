"""Small file helpers shared by every room that writes state into the home."""

from __future__ import annotations

import importlib.util
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable


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


def leaf_name(name: str) -> str:
    """A single file name from whatever a peer chose: only its last part, printable, never
    a dot name (so never "." or ".."), at most 200 characters; "file" if nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".") or "file"
    return "".join(c for c in base if c.isprintable())[:200] or "file"


def numbered(name: str, n: int) -> str:
    """The n-th other name for a taken ``name``: "photo (1).jpg", "notes (2).tar.gz"."""
    stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
    return f"{stem} ({n}){dot}{ext}"


def exists_in(folder_fd: int, name: str) -> bool:
    """Whether ``name`` is taken in the open folder: by anything, a symlink too (not followed)."""
    try:
        os.lstat(name, dir_fd=folder_fd)
    except FileNotFoundError:
        return False
    return True


def free_name_in(folder_fd: int, name: str) -> str:
    """``name``, else the first of "name (1)", "name (2)"... that nothing in the open folder
    uses yet, nor a download still being written under it (``part_name``)."""
    candidate, n = name, 0
    while exists_in(folder_fd, candidate) or exists_in(folder_fd, part_name(candidate)):
        n += 1
        candidate = numbered(name, n)
    return candidate


def part_name(name: str) -> str:
    """Where a download to ``name`` is written until it is whole."""
    return f".{name}.lannode-part"


def write_new_beneath(folder: Path, name: str, write: Callable[[BinaryIO], None]) -> Path:
    """Write a new file called ``name`` (or "name (1)"...: an existing one is never touched)
    in ``folder`` through ``write``, then put it in place; the path it has. It is written as
    ``part_name`` and renamed, both relative to the folder's descriptor and following no
    symlink, so a link planted in the folder under either name is never written through."""
    folder.mkdir(parents=True, exist_ok=True)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        final = free_name_in(folder_fd, name)
        part = part_name(final)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.rename(part, final, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            os.unlink(part, dir_fd=folder_fd)
            raise
    finally:
        os.close(folder_fd)
    return folder / final


def open_beneath(root: Path, relative: str) -> tuple[BinaryIO, int]:
    """Open the file ``relative`` (parts joined by "/") under the folder ``root`` for reading,
    and its size, walking each part from ``root``'s descriptor and following no symlink:
    what a link planted on the way points at is never read. OSError otherwise."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise FileNotFoundError(relative)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)
    opened = os.fdopen(file_fd, "rb")
    size = os.fstat(file_fd).st_size
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        opened.close()
        raise IsADirectoryError(relative)
    return opened, size


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


def ui_root() -> Path:
    """Where the page's files (ui/) live: packaged as ``lannode_ui``, or beside the
    package in a checkout. The web UI plugin and the guest door both serve them."""
    spec = importlib.util.find_spec("lannode_ui")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "index.html").is_file():
            return Path(location)
    return Path(__file__).resolve().parents[1] / "ui"
