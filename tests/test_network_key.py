"""The network key a person makes on one node and sets on the others, and the boot epoch."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from conftest import NodeFactory, run_cli
from lannode.home import Home


def test_a_new_key_is_saved_privately_and_set_on_another_member(tmp_path: Path) -> None:
    made = run_cli("network-key", "new", "--json", "--home", str(tmp_path / "a"))
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)["network_key"]
    assert len(base64.b64decode(shown)) == 32
    key_file = tmp_path / "a" / "network.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert run_cli("network-key", "set", shown, "--home", str(tmp_path / "b")).returncode == 0
    assert Home(tmp_path / "a").network_key() == Home(tmp_path / "b").network_key() == base64.b64decode(shown)
    assert run_cli("network-key", "clear", "--home", str(tmp_path / "b")).returncode == 0
    assert Home(tmp_path / "b").network_key() is None


def test_a_malformed_key_is_refused_with_a_reason(tmp_path: Path) -> None:
    for bad, reason in (("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "32 bytes")):
        result = run_cli("network-key", "set", bad, "--home", str(tmp_path))
        assert result.returncode == 2 and reason in result.stderr
    assert not (tmp_path / "network.key").exists()


def test_every_start_takes_a_higher_epoch_and_a_refused_start_takes_none(nodes: NodeFactory) -> None:
    node = nodes.start("epochs")
    epoch_file = node.home.path / "boot.epoch"
    assert epoch_file.read_text().strip() == "1"
    refused = run_cli("up", "--home", str(node.home.path), "--interface", "127.0.0.1")
    assert refused.returncode == 1
    assert epoch_file.read_text().strip() == "1"
    node.stop()
    nodes.start_on(node.home, name="epochs")
    assert epoch_file.read_text().strip() == "2"
