"""Real nodes for tests: ``lannode up`` subprocesses on loopback, each with its own home.

A node counts as started when it sends READY=1 to a real sd_notify socket the
fixture creates, so every test that starts a node also exercises readiness. Each
node's stderr goes to ``node.log`` in its home and is printed when a test fails.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from lannode import config
from lannode.config import render_default
from lannode.home import Home
from lannode.net import api_client

FIXTURES = Path(__file__).parent / "fixtures"


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"lannode-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(directory / "notify.sock")
            self.sock.bind(self.address)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        for message in self.messages:
            if line in message.splitlines():
                return message
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(message)
            if line in message.splitlines():
                return message
        raise AssertionError(f"no {line!r} from the node within {timeout} s; got {self.messages!r}")

    def close(self) -> None:
        self.sock.close()


class RunningNode:
    def __init__(self, home: Home, process: subprocess.Popen[bytes], notify: NotifySocket, log: Path) -> None:
        self.home = home
        self.process = process
        self.notify = notify
        self.log = log

    def call(self, method: str, **params: Any) -> Any:
        return api_client.call(self.home, method, **params)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("node.status")
        return result

    def api(self) -> dict[str, Any]:
        info = self.home.read_api()
        assert info is not None, "the node advertises no API"
        return info

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def wait_until(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; node log:\n{self.log.read_text()}")

    def plugin(self, name: str) -> dict[str, Any]:
        return next(p for p in self.status()["plugins"] if p["name"] == name)


def write_config(home: Path, name: str, *, webui: bool = False, extra: str = "", gossip: tuple[str, int] | None = None) -> None:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = render_default(name).replace("[plugins.webui]\nenabled = true\nport = 7480", f"[plugins.webui]\nenabled = {'true' if webui else 'false'}\nport = 0")
    if gossip is not None:
        defaults = config.OPTIONS_BY_KEY
        text = text.replace(f'group = "{defaults["gossip.group"].default}"', f'group = "{gossip[0]}"')
        text = text.replace(f'port = {defaults["gossip.port"].default}', f"port = {gossip[1]}")
    for plugin in re.findall(r"^\[plugins\.(\w+)\]", extra, flags=re.M):  # extra's own table replaces the default one
        text = re.sub(rf"^\[plugins\.{plugin}\]\n(?:(?!\[)[^\n]+\n)*", "", text, flags=re.M)
    (home / "config.toml").write_text(text + extra)


def set_options(home: Path, **options: object) -> None:
    """Change options of a written config, named ``section__key`` (``links__stall_timeout=2``)."""
    path = home / "config.toml"
    text = path.read_text()
    for name, value in options.items():
        section, key = name.split("__")
        head = text.index(f"\n[{section}]\n")
        rest, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text[head:], count=1, flags=re.M)
        assert n == 1, name
        text = text[:head] + rest
    path.write_text(text)


def private_gossip() -> tuple[str, int]:
    """A multicast group and port of one's own, so nodes of other tests stay out of earshot."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}", port


class NodeFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[RunningNode] = []
        self.gossip = private_gossip()  # the nodes of one factory form one network

    def start(
        self,
        name: str = "node",
        *,
        webui: bool = False,
        extra_config: str = "",
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wait: bool = True,
    ) -> RunningNode:
        home = Home(self.root / f"{name}-{len(self.nodes)}")
        if not home.config_path.exists():
            write_config(home.path, name, webui=webui, extra=extra_config, gossip=self.gossip)
        return self.start_on(home, name=name, env=env, args=args, wait=wait)

    def start_on(
        self,
        home: Home,
        *,
        name: str = "node",
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wait: bool = True,
        interface: str | None = "127.0.0.1",
    ) -> RunningNode:
        notify = NotifySocket(Path(tempfile.mkdtemp(prefix="ln-", dir="/tmp")))
        log = home.path / "node.log"
        home.path.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k != "LANNODE_INTERFACE"}
        full_env = {**base, "NOTIFY_SOCKET": notify.address, **(env or {})}
        command = [sys.executable, "-m", "lannode", "up", "--home", str(home.path), "--name", name, *(args or [])]
        if interface is not None:
            command += ["--interface", interface]
        with open(log, "ab") as log_file:
            process = subprocess.Popen(command, env=full_env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        node = RunningNode(home, process, notify, log)
        self.nodes.append(node)
        if wait:
            try:
                notify.wait_for("READY=1")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nnode log:\n{log.read_text()}") from None
        return node

    def cleanup(self) -> None:
        for node in self.nodes:
            plugin_pids = []
            if node.process.poll() is None:
                try:
                    plugin_pids = [p["pid"] for p in node.status()["plugins"] if p.get("pid")]
                except Exception:
                    pass
                node.process.kill()
                node.process.wait(timeout=10)
            for pid in plugin_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            node.notify.close()
            shutil.rmtree(Path(node.notify.address).parent, ignore_errors=True) if not node.notify.address.startswith("@") else None


@pytest.fixture
def nodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    yield factory
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for node in factory.nodes:
            if node.log.exists():
                print(f"--- {node.home.path} log ---\n{node.log.read_text()}")
    factory.cleanup()


@pytest.fixture(scope="module")
def module_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path_factory.mktemp("nodes"))
    yield factory
    factory.cleanup()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lannode", *args], capture_output=True, text=True, env=full_env, timeout=timeout, stdin=subprocess.DEVNULL)


@contextmanager
def raw_link(key: Any, peer: dict[str, Any]) -> Iterator[tuple[Any, socket.socket]]:
    """A hand-driven peer link to ``peer`` (a ``peer.list`` record) with ``key``: the test
    speaks the link protocol itself, to send what a real node never would."""
    from lannode.core.link import LinkConnection, Role

    host, port = peer["addresses"]["link"].rsplit(":", 1)
    conn = LinkConnection(key, Role.DIALER, expected_node_id=peer["node_id"])
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(conn.data_to_send())
        while conn.state.value != "open":
            conn.receive_data(sock.recv(65536))
            sock.sendall(conn.data_to_send())
        yield conn, sock


# -- browsers ---------------------------------------------------------------------------------
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screens"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from sim.browser import CHROMIUM, chromium_args

    assert Path(CHROMIUM).exists(), "chromium is installed by tests/system-deps.sh"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args())
        yield launched
        launched.close()


def wait_decoding(page: Any, count: int, timeout: float = 45.0) -> dict[str, int]:
    """Until the page decodes video frames from ``count`` other pages (getStats'
    framesDecoded on each inbound video stream); their frame counts."""
    deadline = time.monotonic() + timeout
    stats: dict[str, int] = {}
    while time.monotonic() < deadline:
        stats = page.evaluate("() => window.lannode.calls.stats()")
        if len(stats) >= count and all(frames > 0 for frames in stats.values()):
            return stats
        page.wait_for_timeout(300)
    raise AssertionError(f"frames decoded per page after {timeout:g} s: {stats}")


def screenshot(page: Any, name: str) -> Path:
    """Save what the page shows (full page) under test-artifacts/screens/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
