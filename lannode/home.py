"""A node's home: the one directory that holds its config, keys, stores and api.json.

Resolution order: ``--home DIR``, else ``$LANNODE_HOME``, else
``$XDG_DATA_HOME/lannode`` (``~/.local/share/lannode``). Several nodes run on one
machine with several homes; one home is run by at most one node, which the lock
here enforces. Nothing in lannode writes outside the home it was given, except
what a person asks for by path (downloads, ``service install``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lannode import config as config_mod
from lannode.core.membership import MAX_EPOCH
from lannode.core.wire import NETWORK_KEY_BYTES
from lannode.files import write_private
from lannode.identity import Identity

log = logging.getLogger("lannode.home")


class HomeError(Exception):
    """A home that cannot be used; the message is for a person."""


class HomeBusy(HomeError):
    """Another node already runs on this home."""


def resolve(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().absolute()
    if env := os.environ.get("LANNODE_HOME"):
        return Path(env).expanduser().absolute()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser().absolute() / "lannode"


@dataclass(frozen=True, slots=True)
class Home:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def api_json(self) -> Path:
        return self.path / "api.json"

    @property
    def lock_path(self) -> Path:
        return self.path / "node.lock"

    def ensure(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise HomeError(f"cannot create home {self.path}: {exc.strerror}") from None
        if not self.path.is_dir():
            raise HomeError(f"home {self.path} is not a directory")

    def load_config(self, name: str | None = None) -> config_mod.Config:
        """Read the config, writing the commented default on first start."""
        if not self.config_path.exists():
            chosen = name or socket.gethostname() or "lannode"
            write_private(self.config_path, config_mod.render_default(chosen[:64]).encode())
        return config_mod.load(self.config_path)

    def identity(self) -> Identity:
        return Identity.load_or_create(self.path)

    @property
    def network_key_path(self) -> Path:
        return self.path / "network.key"

    def next_epoch(self) -> int:
        """One more than the last start's epoch, saved before it is used (replay guard).

        A file that is not a count from 0 to ``MAX_EPOCH - 1`` does not stop the start: the
        count goes on from the Unix time in seconds, which is past any count of starts a node
        makes (so the peers' replay guards take it), and the file is rewritten."""
        path = self.path / "boot.epoch"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = "0"
        except (OSError, UnicodeDecodeError) as exc:
            text = f"unreadable: {exc}"
        try:
            last = int(text or 0)
        except ValueError:
            last = -1
        if not 0 <= last < MAX_EPOCH:
            last = min(int(time.time()), MAX_EPOCH - 1)
            log.warning("%s held %r, not a start count: counting on from %d", path, text[:40], last)
        write_private(path, f"{last + 1}\n".encode())
        return last + 1

    def network_key(self) -> bytes | None:
        """The network key, or None for an open network."""
        try:
            text = self.network_key_path.read_text().strip()
        except FileNotFoundError:
            return None
        return parse_network_key(text, str(self.network_key_path))

    def set_network_key(self, key: bytes | None) -> None:
        if key is None:
            self.network_key_path.unlink(missing_ok=True)
        else:
            write_private(self.network_key_path, base64.b64encode(key) + b"\n")

    def read_api(self) -> dict[str, Any] | None:
        """The running node's API address and token, or None if none is advertised."""
        try:
            data = json.loads(self.api_json.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not isinstance(data.get("token"), str):
            return None
        return data


def parse_network_key(text: str, where: str = "network key") -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise HomeError(f"{where}: not base64") from None
    if len(key) != NETWORK_KEY_BYTES:
        raise HomeError(f"{where}: a network key is {NETWORK_KEY_BYTES} bytes, this is {len(key)}")
    return key


class HomeLock:
    """An exclusive flock on ``node.lock``, holding the runner's pid.

    The lock file is removed on release so that a clean shutdown leaves nothing
    behind; acquire re-checks the inode after locking, so a racing node that
    locked a file another just unlinked notices and tries again.
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self._fd: int | None = None

    def acquire(self) -> None:
        path = self.home.lock_path
        for _ in range(10):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise HomeBusy(
                    f"another node is already running on home {self.home.path} (pid {holder}); "
                    "stop it first, or give this one its own --home"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return
            os.close(fd)
        raise HomeError(f"could not lock {path}: it keeps changing under us")

    def release(self) -> None:
        if self._fd is None:
            return
        self.home.lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
