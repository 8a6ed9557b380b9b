"""A node's home, identity and config, as a person meets them on first start."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from conftest import run_cli, write_config
from lannode import config
from lannode.core.ids import node_id_for
from lannode.home import Home, resolve


def test_home_is_flag_then_environment_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LANNODE_HOME", raising=False)
    assert resolve() == tmp_path / "xdg" / "lannode"
    monkeypatch.setenv("LANNODE_HOME", str(tmp_path / "env"))
    assert resolve() == tmp_path / "env"
    assert resolve(str(tmp_path / "flag")) == tmp_path / "flag"


def test_default_config_lists_every_option_with_its_help_and_parses_back() -> None:
    text = config.render_default("alice")
    for option in config.OPTIONS:
        assert f"# {option.help}" in text
        assert f"\n{option.key} = " in text
    parsed = config.parse(Path("config.toml"), text)
    assert parsed.get("node.name") == "alice"
    for option in config.OPTIONS:
        if option.dotted != "node.name":
            assert parsed.get(option.dotted) == option.default
    assert parsed.enabled_plugins() == {"webui": {"enabled": True, "port": 7480}}


def test_first_start_writes_config_and_a_private_key_pair(nodes) -> None:  # type: ignore[no-untyped-def]
    home = Home(nodes.root / "fresh")
    node = nodes.start_on(home, name="ada")
    assert (home.path / "config.toml").read_text().startswith("# lannode node config")
    key = home.path / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.api_json.stat().st_mode) == 0o600
    public = base64.b64decode((home.path / "node.pub").read_text())
    status = node.status()
    assert status["node_id"] == node_id_for(public)
    assert len(status["node_id"]) == 24 and status["node_id"].isalnum()
    assert status["name"] == "ada"
    first_id = status["node_id"]
    assert node.stop() == 0
    again = nodes.start_on(home, name="ada")
    assert again.status()["node_id"] == first_id


BROKEN = [
    ("[node\nname = 1", None, "not valid TOML"),
    ("[nodes]\nname = 'x'", "nodes", "unknown section"),
    ("[node]\nnmae = 'x'", "node.nmae", "unknown option"),
    ("[api]\nport = 'eighty'", "api.port", "expected int"),
    ("[api]\nport = 70000", "api.port", "0 to 65535"),
    ("[api]\nmax_message_bytes = 0", "api.max_message_bytes", "above 0"),
    ("[node]\ninterface = 'eth0'", "node.interface", "IPv4 address"),
    ("[node]\nlog_level = 'loud'", "node.log_level", "one of debug"),
    ("[node]\nname = true", "node.name", "expected str"),
    ("plugins = 3", "plugins", "expected a table"),
    ("[plugins]\nwebui = 1", "plugins.webui", "expected a table"),
    ("[plugins.webui]\nenabled = 'yes'", "plugins.webui.enabled", "expected bool"),
    ("[plugins.webui]\nport = -1", "plugins.webui.port", "0 to 65535"),
]


@pytest.mark.parametrize("text, key, problem", BROKEN, ids=[b[1] or "syntax" for b in BROKEN])
def test_a_broken_config_is_one_clear_line_and_exit_code_2(tmp_path: Path, text: str, key: str | None, problem: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(text)
    result = run_cli("up", "--home", str(home), "--interface", "127.0.0.1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(home / "config.toml") in lines[0]
    assert problem in lines[0]
    if key:
        assert f": {key}:" in lines[0]
    assert not (home / "api.json").exists()


def test_a_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe[node]")
    result = run_cli("up", "--home", str(tmp_path), "--interface", "127.0.0.1")
    assert result.returncode == 2 and "not UTF-8" in result.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_interface_from_flag_or_environment_is_refused(tmp_path: Path, how: str) -> None:
    args = ["up", "--home", str(tmp_path)]
    env = {}
    if how == "flag":
        args += ["--interface", "not-an-ip"]
    else:
        env["LANNODE_INTERFACE"] = "not-an-ip"
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    assert ("--interface" if how == "flag" else "$LANNODE_INTERFACE") in result.stderr


def test_interface_comes_from_flag_then_environment_then_config(nodes) -> None:  # type: ignore[no-untyped-def]
    home = Home(nodes.root / "iface")
    write_config(home.path, "iface")
    text = home.config_path.read_text().replace('interface = ""', 'interface = "127.0.0.2"')
    home.config_path.write_text(text)
    cases = [
        ("127.0.0.1", {"LANNODE_INTERFACE": "127.0.0.3"}, "127.0.0.1"),
        (None, {"LANNODE_INTERFACE": "127.0.0.3"}, "127.0.0.3"),
        (None, {}, "127.0.0.2"),
    ]
    for flag, env, expected in cases:
        node = nodes.start_on(home, name="iface", interface=flag, env=env)
        assert node.status()["interface"] == expected
        assert node.stop() == 0
