"""Plugins: separate processes found through the ``lannode.plugins`` entry points.

A plugin is a distribution that declares, in its metadata,

    [project.entry-points."lannode.plugins"]
    NAME = "module:main"

``main`` is called with no arguments in a child process the daemon starts
(``python -m lannode.plugins NAME``) and supervises: restarted with backoff when
it crashes, stopped with the node. The daemon reads only the metadata, so a
plugin's imports (Flask, smtplib, ...) never weigh on the daemon. The child finds
the node through ``lannode.plugins.kit.PluginContext.from_env()``.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

GROUP = "lannode.plugins"


def discover() -> dict[str, EntryPoint]:
    """Every installed plugin by name (the first one wins if two share a name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found
