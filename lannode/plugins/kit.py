"""What a plugin process uses to find and talk to its node.

The supervisor hands a child its node through the environment:
``LANNODE_API_URL``, ``LANNODE_API_TOKEN``, ``LANNODE_HOME``, ``LANNODE_PLUGIN``
(its name) and ``LANNODE_PLUGIN_CONFIG`` (its config table as JSON).
``PluginContext.attach`` keeps one API connection open in a thread: it registers
the plugin's URL and UI origins, and calls ``on_node_gone`` when the node goes
away (even by kill -9), so a plugin never outlives its node.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import trio


class PluginEnvError(Exception):
    pass


@dataclass(slots=True)
class PluginContext:
    name: str
    api_url: str
    token: str
    home: str
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "PluginContext":
        try:
            return cls(
                name=os.environ["LANNODE_PLUGIN"],
                api_url=os.environ["LANNODE_API_URL"],
                token=os.environ["LANNODE_API_TOKEN"],
                home=os.environ.get("LANNODE_HOME", ""),
                config=json.loads(os.environ.get("LANNODE_PLUGIN_CONFIG") or "{}"),
            )
        except KeyError as exc:
            raise PluginEnvError(f"{exc.args[0]} is not set: plugins are started by `lannode up`, not by hand") from None

    def attach(self, *, url: str, origins: list[str], on_node_gone: Callable[[], None]) -> threading.Event:
        """Register with the node and watch it; returns an Event set once registered."""
        registered = threading.Event()

        async def hold() -> None:
            from lannode.net.api_client import open_client

            try:
                async with open_client(self.api_url, self.token) as client:
                    await client.call("plugin.register", name=self.name, url=url, origins=origins)
                    registered.set()
                    async for _ in client.events():
                        pass  # the stream ends when the node closes or dies
            except Exception:
                pass

        def thread() -> None:
            trio.run(hold)
            on_node_gone()

        threading.Thread(target=thread, name=f"lannode-{self.name}-watch", daemon=True).start()
        return registered


def start(program: str) -> PluginContext | None:
    """A plugin's first step: log to stderr, and read its node from the environment;
    None, once the reason is printed, when it was not started by a node."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return PluginContext.from_env()
    except PluginEnvError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return None
