"""The daemon's side of plugins: start the enabled ones, restart a crashed one with
backoff, stop them all with the node.

Restart policy is systemd's on-failure: a plugin that exits 0 stays stopped; one
that exits non-zero or dies by a signal is started again after 0.5 s, doubling
up to 30 s, and the backoff resets once a run has lasted ``STABLE_AFTER``. On
shutdown a child gets SIGTERM and, 1.5 s later, SIGKILL, so the node's own stop
stays within systemd's patience and leaves no process behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable
from urllib.parse import urlsplit

import trio

from lannode.events import EventBus
from lannode.plugins import discover

log = logging.getLogger("lannode.plugins")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
TERM_GRACE = 1.5
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(slots=True)
class PluginState:
    name: str
    state: str = "starting"  # starting, running, backoff, stopped, missing
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    url: str | None = None
    origins: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["origins"]
        return data


async def _terminate_then_kill(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    await trio.sleep(TERM_GRACE)
    process.kill()


def check_origin(origin: str) -> str | None:
    """A UI origin a plugin may register: http(s) on a loopback host, with a port."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return f"{origin!r} is not an origin"
    if parts.scheme not in ("http", "https") or parts.path or parts.query or not port:
        return f"{origin!r} is not an origin like http://127.0.0.1:7480"
    if parts.netloc.rsplit(":", 1)[0] not in LOOPBACK_HOSTS:
        return f"{origin!r} is not on this machine's loopback"
    return None


class PluginSupervisor:
    def __init__(
        self,
        plugins: dict[str, dict[str, Any]],
        env: dict[str, str],
        bus: EventBus,
        on_origins: Callable[[], None],
    ) -> None:
        self.plugins = plugins
        self.env = env
        self.bus = bus
        self.on_origins = on_origins
        self.states: dict[str, PluginState] = {name: PluginState(name) for name in plugins}

    def statistics(self) -> list[dict[str, Any]]:
        return [s.public() for s in self.states.values()]

    def state_of(self, name: str) -> str | None:
        """starting, running, backoff, stopped or missing; None for a plugin not enabled."""
        state = self.states.get(name)
        return state.state if state else None

    def origins(self) -> dict[str, str]:
        return {origin: s.name for s in self.states.values() for origin in s.origins}

    def register(self, name: str, url: str, origins: list[str]) -> PluginState:
        state = self.states.get(name)
        if state is None or state.state not in ("starting", "running"):
            raise KeyError(name)
        state.url = url
        state.origins = list(origins)
        self.on_origins()
        log.info("plugin %s serves %s", name, url)
        self._publish(state)
        return state

    def _publish(self, state: PluginState) -> None:
        self.bus.publish("plugin.state", state.public())

    async def run(self) -> None:
        installed = await trio.to_thread.run_sync(discover)
        async with trio.open_nursery() as nursery:
            for name, table in self.plugins.items():
                if name not in installed:
                    log.warning("plugin %s is enabled in the config but not installed", name)
                    self.states[name].state = "missing"
                    continue
                nursery.start_soon(self._supervise, name, table)

    async def _supervise(self, name: str, table: dict[str, Any]) -> None:
        state = self.states[name]
        env = {
            **os.environ,
            **self.env,
            "LANNODE_PLUGIN": name,
            "LANNODE_PLUGIN_CONFIG": json.dumps(table),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "lannode.plugins", name]
        backoff = BACKOFF_MIN
        while True:
            state.state = "starting"
            started = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    process: trio.Process = await nursery.start(
                        partial(
                            trio.run_process,
                            command,
                            env=env,
                            check=False,
                            stdin=subprocess.DEVNULL,
                            deliver_cancel=_terminate_then_kill,
                        )
                    )
                    state.pid = process.pid
                    state.state = "running"
                    log.debug("plugin %s started, pid %d", name, process.pid)
                    self._publish(state)
            except OSError as exc:
                log.error("plugin %s could not start: %s", name, exc)
                code: int | None = -1
            else:
                code = process.returncode
            finally:
                state.pid = None
                if state.origins:
                    state.origins = []
                    self.on_origins()
                state.url = None
            state.last_exit = code
            if code == 0:
                state.state = "stopped"
                log.info("plugin %s exited cleanly; not restarting", name)
                self._publish(state)
                return
            if trio.current_time() - started >= STABLE_AFTER:
                backoff = BACKOFF_MIN
            state.state = "backoff"
            state.restarts += 1
            log.warning("plugin %s exited with code %s; restarting in %.1f s", name, code, backoff)
            self._publish(state)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
