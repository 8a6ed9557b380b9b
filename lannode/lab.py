"""``lannode lab --nodes N``: N real nodes on loopback, for trying lannode on one machine.

Each node is a ``lannode up`` child with its own home, bound to 127.0.0.1, with
its own web UI port. The lab prints them as a table (or JSON) once each answers,
then waits; Ctrl-C or SIGTERM stops every node and, unless ``--keep``, removes
the homes it made. Nothing is left running: a node that does not stop within a
few seconds of SIGTERM is killed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from lannode.home import Home
from lannode.net.api_client import NodeNotRunning, connect

STOP_GRACE = 5.0


async def wait_for_node(home: Home, *, ui: bool = True, timeout: float = 30.0, process: trio.Process | None = None) -> dict[str, Any]:
    """Poll until the node on ``home`` answers (and, with ``ui``, its web UI is up)."""
    with trio.fail_after(timeout):
        while True:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"the node on {home.path} exited with code {process.returncode}")
            try:
                async with connect(home) as client:
                    status: dict[str, Any] = await client.call("node.status")
                if not ui or any(p["name"] == "webui" and p.get("url") for p in status["plugins"]):
                    return status
            except NodeNotRunning:
                pass
            await trio.sleep(0.1)


def _table(nodes: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lannode lab: {len(nodes)} nodes on 127.0.0.1")
    for column in ("name", "node id", "web UI", "home"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        table.add_row(node["name"], node["node_id"], node["ui"] or "-", node["home"])
    console = Console()
    console.print(table)
    console.print("Ctrl-C stops them all.")


async def _lab(nodes: int, root: Path, as_json: bool) -> int:
    homes = [Home(root / f"node-{i}") for i in range(1, nodes + 1)]
    processes: list[trio.Process] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            for i, home in enumerate(homes, 1):
                command = [sys.executable, "-m", "lannode", "up", "--home", str(home.path), "--interface", "127.0.0.1", "--name", f"node-{i}", "--log-level", "warning"]
                processes.append(await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL))
            statuses = []
            for home, process in zip(homes, processes):
                statuses.append(await wait_for_node(home, process=process))
            rows = [
                {
                    "name": s["name"],
                    "node_id": s["node_id"],
                    "pid": s["pid"],
                    "home": s["home"],
                    "ui": next((p["url"] for p in s["plugins"] if p["name"] == "webui"), None),
                }
                for s in statuses
            ]
            if as_json:
                print(json.dumps({"nodes": rows}), flush=True)
            else:
                _table(rows)
            async for _ in signals:
                break
            return 0
        except (RuntimeError, trio.TooSlowError) as exc:
            print(f"lannode: the lab could not start: {str(exc) or 'a node did not answer within 30 s'}", file=sys.stderr)
            return 1
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(processes)


async def _stop_all(processes: list[trio.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE):
        for process in processes:
            await process.wait()
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


def run_lab(*, nodes: int, directory: str | None, keep: bool, as_json: bool) -> int:
    if directory:
        root = Path(directory).absolute()
        root.mkdir(parents=True, exist_ok=True)
        return trio.run(_lab, nodes, root, as_json)
    tmp = tempfile.mkdtemp(prefix="lannode-lab-")
    try:
        return trio.run(_lab, nodes, Path(tmp), as_json)
    finally:
        if keep:
            print(f"homes kept in {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
