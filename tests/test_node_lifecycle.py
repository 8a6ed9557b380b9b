"""A node's life as a person runs it: start, status, a second node, stop, crash, restart."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from conftest import NodeFactory, pid_alive, run_cli
from lannode.home import Home


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_two_nodes_with_two_homes_run_side_by_side(nodes: NodeFactory) -> None:
    a = nodes.start("alpha")
    b = nodes.start("beta")
    sa, sb = a.status(), b.status()
    assert (sa["name"], sb["name"]) == ("alpha", "beta")
    assert sa["node_id"] != sb["node_id"]
    assert sa["api"]["port"] != sb["api"]["port"]
    assert sa["home"] != sb["home"]


def test_a_second_node_on_the_same_home_is_refused(nodes: NodeFactory) -> None:
    first = nodes.start("solo")
    result = run_cli("up", "--home", str(first.home.path), "--interface", "127.0.0.1")
    assert result.returncode == 1
    assert "already running on home" in result.stderr and str(first.process.pid) in result.stderr
    assert first.status()["pid"] == first.process.pid  # the first one is untouched
    assert first.home.read_api() is not None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_everything_and_leaves_nothing_behind(nodes: NodeFactory, signum: int) -> None:
    node = nodes.start("stopper", webui=True)
    webui = node.wait_until(lambda: (p := node.plugin("webui")).get("url") and p, what="the web UI")
    api_port = node.status()["api"]["port"]
    ui_port = int(webui["url"].rsplit(":", 1)[1].strip("/"))
    assert node.stop(signum, timeout=10) == 0
    assert "STOPPING=1" in node.notify.wait_for("STOPPING=1")
    assert not pid_alive(webui["pid"]), "the web UI plugin outlived its node"
    assert not node.home.api_json.exists()
    assert not node.home.lock_path.exists()
    assert not port_open(api_port) and not port_open(ui_port)
    log = node.log.read_text()
    assert "Traceback" not in log
    assert "stopped" in log


def test_after_kill_9_status_says_no_node_and_a_new_node_takes_the_home(nodes: NodeFactory) -> None:
    node = nodes.start("crasher")
    node_id = node.status()["node_id"]
    node.stop(signal.SIGKILL)
    assert node.home.api_json.exists()  # left behind by the crash: stale
    result = run_cli("status", "--home", str(node.home.path))
    assert result.returncode == 1
    assert "no node is running" in result.stderr
    again = nodes.start_on(node.home, name="crasher")
    assert again.status()["node_id"] == node_id


def test_status_with_no_node_is_one_line_saying_how_to_start_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("status", "--home", str(tmp_path / "nothing"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lannode up" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "nothing").exists()  # asking never creates a home


def test_status_json_has_the_documented_fields(nodes: NodeFactory) -> None:
    node = nodes.start("jsonic")
    result = run_cli("status", "--json", "--home", str(node.home.path))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {"node_id", "name", "version", "api_version", "pid", "started_at", "uptime_s", "interface", "home", "plugins", "api"} <= set(status)
    assert status["pid"] == node.process.pid
    human = run_cli("--home", str(node.home.path), "status")
    assert human.returncode == 0 and status["node_id"] in human.stdout and "uptime" in human.stdout


def test_node_stop_through_the_api_is_a_clean_stop(nodes: NodeFactory) -> None:
    node = nodes.start("apistop")
    assert node.call("node.stop") == {"stopping": True}
    assert node.process.wait(timeout=10) == 0
    assert not node.home.api_json.exists() and not node.home.lock_path.exists()


def test_the_home_from_the_environment_is_used(nodes: NodeFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = nodes.start("envhome")
    result = run_cli("status", "--json", env={"LANNODE_HOME": str(node.home.path)})
    assert result.returncode == 0 and json.loads(result.stdout)["name"] == "envhome"
    assert Home(node.home.path).read_api() is not None
