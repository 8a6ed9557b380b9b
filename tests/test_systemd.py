"""The systemd service: a unit systemd accepts, and the sd_notify protocol spoken for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import NodeFactory, NotifySocket, run_cli


@pytest.mark.parametrize("scope", ["--user", "--system"])
def test_service_install_writes_a_unit_systemd_analyze_accepts(tmp_path: Path, scope: str) -> None:
    args = ["service", "install", "--dest", str(tmp_path), "--json"] + (["--user"] if scope == "--user" else [])
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    unit = Path(json.loads(result.stdout)["unit"])
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert Path(exec_start.split("=", 1)[1].split()[0]).exists()
    if scope == "--system":
        assert "ProtectSystem=strict" in text and "StateDirectory=lannode" in text
    verify = shutil.which("systemd-analyze")
    assert verify, "systemd-analyze is installed by tests/system-deps.sh"
    runtime = tmp_path / "runtime"  # a user manager needs a runtime dir, as a login session has
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    command = [verify, "verify", *(["--user"] if scope == "--user" else []), str(unit)]
    checked = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    problems = [line for line in checked.stderr.splitlines() if str(unit) in line or "lannode.service" in line]
    assert checked.returncode == 0 and not problems, checked.stderr


def test_service_install_refuses_an_unknown_user(tmp_path: Path) -> None:
    result = run_cli("service", "install", "--dest", str(tmp_path), "--run-as", "no-such-user-here")
    assert result.returncode == 1 and "no such user" in result.stderr
    assert not (tmp_path / "lannode.service").exists()


def test_ready_comes_only_once_the_api_answers_then_watchdog_then_stopping(nodes: NodeFactory) -> None:
    node = nodes.start("notify", env={"WATCHDOG_USEC": "200000"}, wait=False)
    ready = node.notify.wait_for("READY=1")
    # READY=1 was sent: by then api.json must exist and the API must answer.
    assert node.home.read_api() is not None
    assert f"MAINPID={node.process.pid}" in ready.splitlines()
    assert node.status()["pid"] == node.process.pid
    for _ in range(3):
        node.notify.messages.clear()
        node.notify.wait_for("WATCHDOG=1", timeout=5)
    assert node.stop() == 0
    node.notify.wait_for("STOPPING=1")


def test_watchdog_is_silent_when_it_is_meant_for_another_process(nodes: NodeFactory) -> None:
    node = nodes.start("notwd", env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    with pytest.raises(AssertionError):
        node.notify.wait_for("WATCHDOG=1", timeout=1.5)


def test_notify_reaches_an_abstract_socket(nodes: NodeFactory) -> None:
    notify = NotifySocket(Path(tempfile.gettempdir()), abstract=True)
    try:
        node = nodes.start("abstract", env={"NOTIFY_SOCKET": notify.address}, wait=False)
        notify.wait_for("READY=1")
        assert node.status()["name"] == "abstract"
    finally:
        notify.close()
