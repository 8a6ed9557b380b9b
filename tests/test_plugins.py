"""Plugins as the daemon supervises them: found by entry point, restarted, stopped.

The test plugins in tests/fixtures/plugins are found through real entry-point
metadata (a dist-info directory on PYTHONPATH), exactly as an installed plugin is.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import trio

from conftest import FIXTURES, NodeFactory, RunningNode, pid_alive
from lannode.net.api_client import connect


def plugin_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "plugin-starts.log"
    path = os.pathsep.join(filter(None, [str(FIXTURES / "plugins"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "TEST_PLUGIN_LOG": str(log)}, log


def starts(log: Path, name: str) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if line.startswith(f"{name} start")]


def test_a_crashing_plugin_is_restarted_with_backoff_and_reported(nodes: NodeFactory, tmp_path: Path) -> None:
    env, log = plugin_env(tmp_path)
    node = nodes.start("sup", env=env, extra_config='\n[plugins.crashy]\nenabled = true\nflavour = "mint"\n')
    node.wait_until(lambda: len(starts(log, "crashy")) >= 3, what="three starts of the crashing plugin")
    state = node.plugin("crashy")
    assert state["restarts"] >= 2
    assert state["last_exit"] == 3
    assert state["state"] in ("backoff", "starting", "running")
    assert all(line.endswith(" mint") for line in starts(log, "crashy")), "the plugin's own config keys reach it"
    assert node.process.poll() is None
    assert "plugin crashy exited with code 3; restarting in" in node.log.read_text()


def test_plugin_state_changes_arrive_as_events(nodes: NodeFactory, tmp_path: Path) -> None:
    env, log = plugin_env(tmp_path)
    node = nodes.start("evt", env=env, extra_config="\n[plugins.crashy]\nenabled = true\n")

    async def watch() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with connect(node.home) as client:
            await client.subscribe("plugin.*")
            with trio.fail_after(20):
                async for topic, data in client.events():
                    assert topic == "plugin.state"
                    seen.append(data)
                    if sum(1 for d in seen if d["state"] == "backoff") >= 2:
                        return seen
        return seen

    seen = trio.run(watch)
    assert {d["name"] for d in seen} == {"crashy"}
    assert [d["state"] for d in seen].count("backoff") >= 2


def test_a_plugin_that_exits_cleanly_is_not_restarted(nodes: NodeFactory, tmp_path: Path) -> None:
    env, log = plugin_env(tmp_path)
    node = nodes.start("quit", env=env, extra_config="\n[plugins.quitter]\nenabled = true\n")
    node.wait_until(lambda: node.plugin("quitter")["state"] == "stopped", what="the plugin to stop")
    assert len(starts(log, "quitter")) == 1
    assert node.plugin("quitter")["restarts"] == 0


def test_an_enabled_plugin_that_is_not_installed_is_reported_missing(nodes: NodeFactory) -> None:
    node = nodes.start("miss", extra_config="\n[plugins.ghost]\nenabled = true\n")
    node.wait_until(lambda: node.plugin("ghost")["state"] == "missing", what="the missing plugin")
    assert "plugin ghost is enabled in the config but not installed" in node.log.read_text()


def running_pid(node: RunningNode, name: str) -> int:
    return node.wait_until(lambda: (p := node.plugin(name))["state"] == "running" and p["pid"], what=f"{name} to run")  # type: ignore[no-any-return]


def test_a_plugin_killed_from_outside_comes_back(nodes: NodeFactory, tmp_path: Path) -> None:
    env, log = plugin_env(tmp_path)
    node = nodes.start("kill", env=env, extra_config="\n[plugins.sleepy]\nenabled = true\n")
    first = running_pid(node, "sleepy")
    os.kill(first, signal.SIGKILL)
    node.wait_until(lambda: (p := node.plugin("sleepy"))["pid"] not in (None, first) and p["state"] == "running", what="a new sleepy")
    assert node.plugin("sleepy")["restarts"] == 1
    assert node.plugin("sleepy")["last_exit"] == -signal.SIGKILL


def test_plugins_stop_with_the_node(nodes: NodeFactory, tmp_path: Path) -> None:
    env, _ = plugin_env(tmp_path)
    node = nodes.start("stopall", env=env, webui=True, extra_config="\n[plugins.sleepy]\nenabled = true\n")
    pids = [running_pid(node, "sleepy"), running_pid(node, "webui")]
    assert node.stop() == 0
    assert not any(pid_alive(pid) for pid in pids)


def test_plugins_leave_when_their_node_is_killed(nodes: NodeFactory, tmp_path: Path) -> None:
    env, _ = plugin_env(tmp_path)
    node = nodes.start("orphan", env=env, webui=True, extra_config="\n[plugins.sleepy]\nenabled = true\n")
    node.wait_until(lambda: node.plugin("webui").get("url"), what="the web UI")
    pids = [running_pid(node, "sleepy"), running_pid(node, "webui")]
    node.stop(signal.SIGKILL)
    node.wait_until(lambda: not any(pid_alive(pid) for pid in pids), what="the orphaned plugins to leave")
