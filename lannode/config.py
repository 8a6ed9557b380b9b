"""The node's config file: one schema that writes the commented default and checks.

Every option is declared once, in ``OPTIONS``, with its default and a line of help.
From that table come the file written on first start (every option, commented),
the validation of a file a person edited, and the typed values the daemon reads.

A broken config is never guessed around: ``ConfigError`` names the file, the key
and what is wrong, and the CLI prints it as one line and exits with code 2.

Plugins get a table each, ``[plugins.NAME]``, with ``enabled`` and any keys the
plugin itself understands; those are handed to the plugin untouched.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lannode.core.ids import is_node_id
from lannode.files import write_private

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line for a person."""

    def __init__(self, path: Path, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else str(path)
        super().__init__(f"config error in {where}: {problem}")


def _port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        return "expected a port number from 0 to 65535 (0 picks a free port)"
    return None


def _positive(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return "expected a whole number above 0"
    return None


def _log_level(value: Any) -> str | None:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        return f"expected one of {', '.join(LOG_LEVELS)}"
    return None


def check_interface(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected a string"
    if value == "":
        return None
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return 'expected an IPv4 address such as "127.0.0.1", or "" for the LAN interfaces'
    return None


def _multicast_group(value: Any) -> str | None:
    try:
        group = ipaddress.IPv4Address(value)
    except ValueError:
        group = None
    if group is None or not group.is_multicast:
        return 'expected an IPv4 multicast group such as "239.255.76.78"'
    return None


def _fixed_port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return "expected a port number from 1 to 65535 (every node on the network uses the same one)"
    return None


def _seconds(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10**7:
        return "expected a number of seconds above 0"
    return None


def _name(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected a string"
    if len(value) > 64 or any(ord(c) < 32 for c in value):
        return "expected at most 64 printable characters"
    return None


def _downloads(value: Any) -> str | None:
    if not isinstance(value, str) or "\x00" in value:
        return "expected a folder path, or \"\" for the home's downloads folder"
    return None




def _node_ids(value: Any) -> str | None:
    if not isinstance(value, list) or not all(is_node_id(v) for v in value):
        return "expected a list of node ids (24 characters each, as `lannode peers` shows them)"
    return None


@dataclass(frozen=True, slots=True)
class Option:
    section: str
    key: str
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


OPTIONS: tuple[Option, ...] = (
    Option("node", "name", "", "The name people see; set from --name or the hostname on first start.", _name),
    Option(
        "node",
        "interface",
        "",
        'IPv4 address for gossip, links and zeroconf; "" = the LAN interfaces. '
        "--interface and $LANNODE_INTERFACE override it.",
        check_interface,
    ),
    Option("node", "log_level", "info", "One of debug, info, warning, error; --log-level overrides it.", _log_level),
    Option("api", "port", 0, "Port of the local API on 127.0.0.1; 0 picks a free one (see api.json).", _port),
    Option("api", "max_message_bytes", 1 << 20, "Largest API message accepted; a bigger one closes the connection (1009).", _positive),
    Option("gossip", "group", "239.255.76.78", "UDP multicast group of the gossip (TTL 1: it never leaves the LAN); the same on every node.", _multicast_group),
    Option("gossip", "port", 47678, "UDP port of the multicast group; the same on every node.", _fixed_port),
    Option("gossip", "unicast_port", 0, "UDP port for this node's probes and replies; 0 picks a free one.", _port),
    Option("zeroconf", "enabled", True, "Advertise the node over mDNS/DNS-SD (_lannode._tcp) and find others that way too.", None),
    Option("links", "port", 0, "TCP port for peer links (encrypted, between daemons); 0 picks a free one.", _port),
    Option("links", "stall_timeout", 30.0, "Seconds a peer may take none of our bytes on its link before the link is cut.", _seconds),
    Option("transfer", "downloads", "", 'Folder where received files land; "" = the downloads folder in the node\'s home. ~ is expanded.', _downloads),
    Option("transfer", "max_bytes", 100_000_000_000, "Largest transfer accepted, in bytes; a bigger offer is declined.", _positive),
    Option("transfer", "auto_accept", [], "Node ids whose file offers are accepted without asking (people you trust).", _node_ids),
    Option("drive", "quota", 50_000_000_000, "Bytes of drive fragments (anyone's, encrypted) this node keeps at most.", _positive),
    Option("drive", "grace", 600.0, "Seconds a holder may be gone before its fragments are rebuilt on other nodes.", _seconds),
    Option("drive", "verify_interval", 60.0, "Seconds between two sampled checks of the fragments this node holds.", _seconds),
    Option("drive", "repair_interval", 30.0, "Seconds between two passes of the repairer over the drive's files.", _seconds),
    Option("drive", "stall_timeout", 30.0, "Seconds a holder may take no bytes during a put or a repair (four times that for its last answer) before it is given up on and the fragment placed elsewhere; and seconds a holder waits on a putter or reader that went quiet before it hangs up.", _seconds),
    Option("drive", "orphan_grace", 600.0, "Seconds a fragment that no manifest names is kept (its put may still be finishing).", _seconds),
    Option("guests", "enabled", False, "Let browsers on the LAN (phones) join as guests through this node: `lannode guests on`, then `lannode guests invite`.", None),
    Option("guests", "port", 47680, "HTTPS port of the guest door on the node's LAN address (the same port keeps a phone's link to it working).", _port),
    Option("guests", "max_guests", 64, "Guests this node hosts at most.", _positive),
    Option("guests", "allow_loopback", False, "Open the guest door on a node bound to a loopback address too (a phone cannot reach it there).", None),
)

OPTIONS_BY_KEY: dict[str, Option] = {option.dotted: option for option in OPTIONS}

# Defaults of the plugins the package ships; a plugin's table may hold more keys.
PLUGIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "webui": {"enabled": True, "port": 7480},
    "answer": {"enabled": False, "peers": [], "source": "test-pattern", "record": ""},
    "mail": {
        "enabled": False,
        "host": "",
        "port": 0,
        "security": "starttls",
        "username": "",
        "password_file": "",
        "password_env": "",
        "from": "",
        "ca_file": "",
        "timeout": 30.0,
        "max_attachment_bytes": 18_000_000,
        "retry_first": 30.0,
        "retry_max": 3600.0,
        "give_up_after": 172800.0,
    },
}
PLUGIN_HELP: dict[str, str] = {
    "webui": "The web UI on 127.0.0.1:port (a free port if that one is taken).",
    "answer": (
        "Answer calls by itself (an intercom, a baby monitor): calls from these peers (names or node-id\n"
        "# prefixes), once verified with `lannode trust`, are accepted with source: \"test-pattern\",\n"
        "# \"play:FILE\" or \"camera:DEVICE\"; record: a folder for recordings (empty: none)."
    ),
    "mail": (
        "Send mail through your relay (`lannode mail send`): security is starttls, tls or none (a local\n"
        "# relay); port 0 = 587, 465 or 25 to match. The password is read from password_file (or the\n"
        "# variable named by password_env), never from here. ca_file: a CA to trust for a relay with its\n"
        "# own certificate. Failed attempts are retried after retry_first seconds, doubling to retry_max,\n"
        "# for give_up_after seconds. max_attachment_bytes: about 25 MB once encoded, what most relays take."
    ),
}


def check_answer_table(table: dict[str, Any]) -> str | None:
    """What is wrong with an [plugins.answer] table (lannode/calls/answer.py), if anything."""
    peers = table.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) and p for p in peers):
        return "peers is a list of names or node-id prefixes"
    source = table.get("source", "test-pattern")
    if not isinstance(source, str) or not (source == "test-pattern" or (source.startswith(("play:", "camera:")) and source.split(":", 1)[1])):
        return 'source is "test-pattern", "play:FILE" or "camera:DEVICE"'
    return None


@dataclass(slots=True)
class Config:
    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, dotted: str) -> Any:
        return self.values[dotted]

    def enabled_plugins(self) -> dict[str, dict[str, Any]]:
        return {name: table for name, table in self.plugins.items() if table.get("enabled")}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"  # 600.0 is written 600, which reads back as a whole number of seconds
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {type(value).__name__}")


def render_default(name: str) -> str:
    """The config written on first start: every option, its default and its help."""
    lines = ["# lannode node config. Every option is shown with its default.", ""]
    section = None
    for option in OPTIONS:
        if option.section != section:
            if section is not None:
                lines.append("")
            lines.append(f"[{option.section}]")
            section = option.section
        lines.append(f"# {option.help}")
        value = name if option.dotted == "node.name" else option.default
        lines.append(f"{option.key} = {_toml_value(value)}")
    for plugin, table in PLUGIN_DEFAULTS.items():
        lines += ["", f"# {PLUGIN_HELP[plugin]}", f"[plugins.{plugin}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _expect_type(path: Path, key: str, value: Any, default: Any) -> None:
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return  # seconds may be written 5 or 0.5
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if not ok:
        raise ConfigError(path, key, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")


def parse(path: Path, text: str) -> Config:
    """Check a config's text against the schema; raise ConfigError on the first fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    known = {(o.section, o.key): o for o in OPTIONS}
    sections = {o.section for o in OPTIONS} | {"plugins"}
    config = Config(path=path, values={o.dotted: o.default for o in OPTIONS})
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(path, section, f"unknown section (known: {', '.join(sorted(sections))})")
        if not isinstance(table, dict):
            raise ConfigError(path, section, "expected a table")
        if section == "plugins":
            continue
        for key, value in table.items():
            option = known.get((section, key))
            if option is None:
                raise ConfigError(path, f"{section}.{key}", "unknown option")
            _expect_type(path, option.dotted, value, option.default)
            if option.check and (problem := option.check(value)):
                raise ConfigError(path, option.dotted, f"{problem}, got {value!r}")
            config.values[option.dotted] = value
    config.plugins = {name: dict(table) for name, table in PLUGIN_DEFAULTS.items()}
    for name, table in data.get("plugins", {}).items():
        key = f"plugins.{name}"
        if not isinstance(table, dict):
            raise ConfigError(path, key, "expected a table such as [plugins.NAME] with enabled = true")
        merged = {"enabled": False, **PLUGIN_DEFAULTS.get(name, {})}
        for sub, value in table.items():
            if sub in merged:
                _expect_type(path, f"{key}.{sub}", value, merged[sub])
        if name in PLUGIN_DEFAULTS and "port" in table and (problem := _port(table["port"])):
            raise ConfigError(path, f"{key}.port", f"{problem}, got {table['port']!r}")
        if name == "answer":
            if problem := check_answer_table(table):
                raise ConfigError(path, key, problem)
        if name == "mail" and table.get("enabled"):
            from lannode.core.mail import MailError, MailSettings

            try:
                MailSettings.from_table(table)
            except MailError as exc:
                raise ConfigError(path, key, str(exc)) from None
        merged.update(table)
        config.plugins[name] = merged
    return config


def set_option(path: Path, dotted: str, value: Any) -> None:
    """Change one option in a config file, keeping everything else of it (comments too):
    its line in its section is rewritten, or added at the section's end, or the section
    is added. The result is checked as the daemon would check it before it is written."""
    option = OPTIONS_BY_KEY[dotted]
    if option.check and (problem := option.check(value)):
        raise ConfigError(path, dotted, f"{problem}, got {value!r}")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines()
    new_line = f"{option.key} = {_toml_value(value)}"
    section_at = next((i for i, line in enumerate(lines) if line.strip() == f"[{option.section}]"), None)
    if section_at is None:
        lines += ["", f"[{option.section}]", new_line]
    else:
        end = next((i for i in range(section_at + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        at = next((i for i in range(section_at + 1, end) if lines[i].split("=", 1)[0].strip() == option.key), None)
        if at is not None:
            lines[at] = new_line
        else:
            while end > section_at + 1 and not lines[end - 1].strip():
                end -= 1
            lines.insert(end, new_line)
    text = "\n".join(lines) + "\n"
    parse(path, text)
    write_private(path, text.encode())


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    return parse(path, text)
