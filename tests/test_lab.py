"""``lannode lab``: a newcomer's few nodes on loopback, and nothing left when it stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import pid_alive


def test_lab_runs_nodes_with_their_own_ui_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    lab = subprocess.Popen(
        [sys.executable, "-m", "lannode", "lab", "--nodes", "3", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert lab.stdout is not None
        line = lab.stdout.readline()
        assert line, lab.stderr.read() if lab.stderr else ""
        nodes = json.loads(line)["nodes"]
        assert len(nodes) == 3
        assert len({n["node_id"] for n in nodes}) == 3
        assert len({n["ui"] for n in nodes}) == 3
        homes = [Path(n["home"]) for n in nodes]
        assert all(h.is_dir() and h.is_relative_to(tmp_path) for h in homes)
        for node in nodes:
            with urllib.request.urlopen(node["ui"], timeout=10) as page:
                assert page.status == 200 and b"<html" in page.read()
        plugin_pids = []
        for home in homes:
            status = json.loads(subprocess.run([sys.executable, "-m", "lannode", "status", "--json", "--home", str(home)], capture_output=True, text=True, timeout=30).stdout)
            plugin_pids += [p["pid"] for p in status["plugins"] if p["pid"]]
        lab.send_signal(signal.SIGINT)
        assert lab.wait(timeout=20) == 0
    finally:
        if lab.poll() is None:
            lab.kill()
    deadline = time.monotonic() + 10
    pids = [n["pid"] for n in nodes] + plugin_pids
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "a lab process outlived the lab"
    assert not any(h.exists() for h in homes), "the lab's temporary homes were left behind"


def test_lab_table_for_people(tmp_path: Path) -> None:
    lab = subprocess.Popen(
        [sys.executable, "-m", "lannode", "lab", "--nodes", "1", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
        text=True,
    )
    try:
        assert lab.stdout is not None
        text = ""
        while "Ctrl-C" not in text:
            line = lab.stdout.readline()
            assert line, "the lab ended before printing its table"
            text += line
        assert "node-1" in text and "http://127.0.0.1:" in text
        lab.send_signal(signal.SIGTERM)
        assert lab.wait(timeout=20) == 0
    finally:
        if lab.poll() is None:
            lab.kill()
    assert (tmp_path / "node-1" / "config.toml").exists(), "--dir homes are the person's, kept"
