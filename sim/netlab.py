"""A network lab: N hosts in network namespaces on one bridge, real daemons, loss and partitions.

``NetLab`` (used by tests and benchmarks, as an ordinary user) starts a
*controller* under ``unshare --user --map-root-user --net --mount``: inside it
the controller is root of a fresh user namespace, mounts a tmpfs on ``/run`` for
``ip netns``, makes a bridge in its own network namespace and one namespace per
host (``h1``, ``h2``, ...) joined to it by a veth pair, host *i* having
10.77.0.*i*/24. None of it can touch the machine's real network, and all of it is
gone when the controller exits, even when a test fails or is killed: the
namespaces live only as long as the controller's processes and its private
``/run``.

Loss is an nftables rule in every host's input hook (``numgen random mod 100 <
P drop``, loopback exempt); a partition drops traffic between two sets of hosts
in the same hook. Daemons run in their host with ``ip netns exec``; the
controller talks to each daemon's local API (127.0.0.1 *inside* that host) from
a thread that has entered the host's network namespace with ``setns(2)``, and
records every ``peer.*`` event with its arrival time for measurements.

The two sides speak JSON lines over the controller's stdin and stdout:
``{"op": ..., ...}`` in, ``{"ok": result}`` or ``{"error": message}`` out.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

SUBNET = "10.77.0"
BRIDGE = "labbr0"
CLONE_NEWNET = 0x40000000
REPO = Path(__file__).resolve().parent.parent


class LabError(Exception):
    pass


# -- the side that tests use ---------------------------------------------------------------------


class NetLab:
    """``with NetLab(hosts=10, loss=10) as lab: lab.start_all(); lab.peers(1) ...``"""

    def __init__(self, hosts: int, *, loss: float = 0.0, directory: Path | None = None, config: str = "") -> None:
        if shutil.which("unshare") is None or shutil.which("ip") is None or shutil.which("nft") is None:
            raise LabError("the network lab needs unshare (util-linux), ip (iproute2) and nft (nftables)")
        self.hosts = hosts
        self._tmp = None if directory else tempfile.mkdtemp(prefix="lannode-netlab-")
        self.directory = directory or Path(self._tmp or "")
        command = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--fork", "--kill-child", sys.executable, "-m", "sim.netlab", "serve"]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LANNODE_INTERFACE", "LANNODE_HOME")}
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
        self._log = open(self.directory / "controller.log", "wb")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._lock = threading.Lock()
        try:
            self.request("setup", hosts=hosts, loss=loss, directory=str(self.directory), config=config)
        except BaseException:
            self.close()
            raise

    def request(self, op: str, **args: Any) -> Any:
        with self._lock:
            assert self.process.stdin is not None and self.process.stdout is not None
            try:
                self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                raise LabError(f"the lab controller died; see {self.directory / 'controller.log'}") from None
            line = self.process.stdout.readline()
        if not line:
            raise LabError(f"the lab controller died; see {self.directory / 'controller.log'}:\n{self.controller_log()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise LabError(reply["error"])
        return reply["ok"]

    def controller_log(self) -> str:
        try:
            return (self.directory / "controller.log").read_text(errors="replace")
        except OSError:
            return ""

    # conveniences
    def address(self, host: int) -> str:
        return f"{SUBNET}.{host}"

    def start(self, host: int, *, webui: bool = False, config: str = "") -> dict[str, Any]:
        """Start host's daemon; ``webui`` keeps its web UI plugin on, ``config`` is appended
        to its config on first start."""
        result: dict[str, Any] = self.request("start", host=host, webui=webui, config=config)
        return result

    def enter(self, host: int) -> list[str]:
        """A command prefix that runs a program inside a host (its network only: files,
        processes and the caller's own pipes stay as they are): ``[*lab.enter(2), "chromium"]``.
        It joins the namespaces of the host's running daemon."""
        pid = self.request("pid", host=host)
        return ["nsenter", f"--target={pid}", "--user", "--net"]

    def wrapper(self, host: int, program: str, path: Path) -> Path:
        """An executable file that runs ``program`` inside a host, for tools that take a path
        (Playwright's ``executable_path``)."""
        path.write_text("#!/bin/sh\nexec " + " ".join(self.enter(host)) + f" {program} \"$@\"\n")
        path.chmod(0o755)
        return path

    def start_all(self) -> None:
        for host in range(1, self.hosts + 1):
            self.start(host)

    def kill(self, host: int, sig: int = signal.SIGKILL) -> float:
        when: float = self.request("kill", host=host, signal=int(sig))
        return when

    def reset(self, host: int) -> None:
        self.request("reset", host=host)

    def signal(self, host: int, sig: int) -> None:
        self.request("signal", host=host, signal=int(sig))

    def call(self, host: int, method: str, **params: Any) -> Any:
        return self.request("call", host=host, method=method, params=params)

    def peers(self, host: int) -> dict[str, str]:
        return {p["node_id"]: p["state"] for p in self.call(host, "peer.list")}

    def node_id(self, host: int) -> str:
        node_id: str = self.request("node_id", host=host)
        return node_id

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.request("events", since=since)
        return events

    def set_loss(self, percent: float) -> None:
        self.request("loss", percent=percent)

    def partition(self, group_a: list[int], group_b: list[int]) -> None:
        self.request("partition", a=group_a, b=group_b)

    def heal(self) -> None:
        self.request("heal")

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate``; a lab call failing inside it (a node restarting) is retried."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except LabError as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{f'; last error: {last_error}' if last_error else ''}\n{self.describe()}")

    def describe(self) -> str:
        """Every host's view of every other, for a failure message."""
        lines = []
        names = {}
        for host in range(1, self.hosts + 1):
            try:
                names[self.node_id(host)] = f"h{host}"
            except LabError:
                pass
        for host in range(1, self.hosts + 1):
            try:
                view = " ".join(f"{names.get(i, i[:6])}={s}" for i, s in sorted(self.peers(host).items(), key=lambda x: names.get(x[0], x[0])))
                health = self.call(host, "node.status")["gossip"]["health"]
                lines.append(f"  h{host} (health {health}): {view}")
            except LabError as exc:
                lines.append(f"  h{host}: {exc}")
        return "\n".join(lines)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.request("quit")
            except (LabError, OSError, ValueError):
                pass
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "NetLab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the controller, inside the namespaces -------------------------------------------------------


def sh(*command: str, stdin: str | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{' '.join(command)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


class HostThread:
    """A thread living in one host's network namespace, running API calls and watching events there."""

    def __init__(self, controller: "Controller", host: int) -> None:
        self.controller = controller
        self.host = host
        self.jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._main, name=f"h{host}", daemon=True)
        self.thread.start()

    def run(self, job: Callable[[], Any]) -> Any:
        done: queue.Queue[Any] = queue.Queue()
        self.jobs.put((job, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def _main(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/h{self.host}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
        watcher = threading.Thread(target=self._watch, name=f"h{self.host}-events", daemon=True)
        watcher.start()
        while True:
            item = self.jobs.get()
            if item is None:
                return
            job, done = item
            try:
                done.put((True, job()))
            except BaseException as exc:  # handed back to the caller
                done.put((False, exc))

    def _watch(self) -> None:
        # threads do not inherit a namespace entered by another thread: enter it here too
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/h{self.host}", os.O_RDONLY)
        libc.setns(fd, CLONE_NEWNET)
        os.close(fd)
        import trio

        from lannode.net.api_client import connect

        home = self.controller.home(self.host)

        async def watch_forever() -> None:
            while not self.controller.stopping:
                try:
                    async with connect(home) as client:
                        await client.subscribe("peer.*")
                        async for topic, data in client.events():
                            self.controller.record(self.host, topic, data)
                except Exception:
                    await trio.sleep(0.1)  # no node (yet), or it went away: try again

        trio.run(watch_forever)


class Controller:
    def __init__(self) -> None:
        self.hosts = 0
        self.directory = Path(".")
        self.config = ""
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.threads: dict[int, HostThread] = {}
        self.events: list[dict[str, Any]] = []
        self.events_lock = threading.Lock()
        self.stopping = False

    def home(self, host: int) -> Any:
        from lannode.home import Home

        return Home(self.directory / f"h{host}")

    def record(self, host: int, topic: str, data: dict[str, Any]) -> None:
        with self.events_lock:
            self.events.append({"t": time.time(), "host": host, "topic": topic, **data})

    # -- commands ----------------------------------------------------------------------------
    def op_setup(self, hosts: int, loss: float, directory: str, config: str) -> None:
        self.hosts, self.directory, self.config = hosts, Path(directory), config
        sh("mount", "-t", "tmpfs", "tmpfs", "/run")
        os.makedirs("/run/netns", exist_ok=True)
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        sh("ip", "link", "set", BRIDGE, "up")
        for i in range(1, hosts + 1):
            sh("ip", "netns", "add", f"h{i}")
            sh("ip", "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", f"h{i}")
            sh("ip", "link", "set", f"v{i}", "master", BRIDGE, "up")
            sh("ip", "-n", f"h{i}", "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            sh("ip", "-n", f"h{i}", "link", "set", "eth0", "up")
            sh("ip", "-n", f"h{i}", "link", "set", "lo", "up")
            rules = (
                "add table inet lab\n"
                "add chain inet lab input { type filter hook input priority 0; }\n"
                "add chain inet lab loss\n"
                "add chain inet lab partition\n"
                'add rule inet lab input iifname "lo" accept\n'
                "add rule inet lab input jump partition\n"
                "add rule inet lab input jump loss\n"
            )
            sh("ip", "netns", "exec", f"h{i}", "nft", "-f", "-", stdin=rules)
            self.threads[i] = HostThread(self, i)
        self.op_loss(loss)

    def op_loss(self, percent: float) -> None:
        for i in range(1, self.hosts + 1):
            rules = "flush chain inet lab loss\n"
            if percent > 0:
                # numgen counts in whole steps: loss in tenths of a percent
                rules += f"add rule inet lab loss numgen random mod 1000 < {int(round(percent * 10))} drop\n"
            sh("ip", "netns", "exec", f"h{i}", "nft", "-f", "-", stdin=rules)

    def op_partition(self, a: list[int], b: list[int]) -> None:
        for side, other in ((a, b), (b, a)):
            addresses = ", ".join(f"{SUBNET}.{j}" for j in other)
            for i in side:
                sh("ip", "netns", "exec", f"h{i}", "nft", "-f", "-", stdin=f"add rule inet lab partition ip saddr {{ {addresses} }} drop\n")

    def op_heal(self) -> None:
        for i in range(1, self.hosts + 1):
            sh("ip", "netns", "exec", f"h{i}", "nft", "flush", "chain", "inet", "lab", "partition")

    def op_pid(self, host: int) -> int:
        process = self.processes.get(host)
        if process is None or process.poll() is not None:
            raise LabError(f"h{host} is not running")
        return process.pid  # ip netns exec execs the daemon: this is the daemon itself

    def op_start(self, host: int, webui: bool = False, config: str = "") -> dict[str, Any]:
        from lannode.config import render_default

        old = self.processes.get(host)
        if old is not None and old.poll() is None:
            raise LabError(f"h{host} is already running")
        home = self.home(host)
        home.path.mkdir(parents=True, exist_ok=True)
        if not home.config_path.exists():
            text = render_default(f"h{host}")
            if not webui:
                text = text.replace("[plugins.webui]\nenabled = true", "[plugins.webui]\nenabled = false")
            home.config_path.write_text(text + self.config + config)
        notify_path = home.path / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(30)
        env = {k: v for k, v in os.environ.items() if k != "LANNODE_HOME"}
        env["NOTIFY_SOCKET"] = str(notify_path)
        log = open(home.path / "node.log", "ab")
        command = ["ip", "netns", "exec", f"h{host}", sys.executable, "-m", "lannode", "up", "--home", str(home.path), "--interface", f"{SUBNET}.{host}", "--name", f"h{host}"]
        started = time.time()
        self.processes[host] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        try:
            while True:
                message = notify.recv(4096).decode()
                if "READY=1" in message.splitlines():
                    break
        except socket.timeout:
            raise LabError(f"h{host} did not become ready; its log:\n{(home.path / 'node.log').read_text()[-3000:]}") from None
        finally:
            notify.close()
        return {"spawned_at": started, "ready_at": time.time()}

    def op_kill(self, host: int, signal: int) -> float:
        process = self.processes.get(host)
        if process is None or process.poll() is not None:
            raise LabError(f"h{host} is not running")
        # ip netns exec execs the daemon, so this is the daemon's own pid
        when = time.time()
        process.send_signal(signal)
        process.wait(timeout=15)
        return when

    def op_signal(self, host: int, signal: int) -> None:
        """Send a signal and return at once (SIGSTOP, SIGCONT: a paused node)."""
        process = self.processes.get(host)
        if process is None or process.poll() is not None:
            raise LabError(f"h{host} is not running")
        process.send_signal(signal)

    def op_reset(self, host: int) -> None:
        """Forget a stopped host's home: its next start is a brand-new node (a new key)."""
        process = self.processes.get(host)
        if process is not None and process.poll() is None:
            raise LabError(f"h{host} is running; stop it first")
        shutil.rmtree(self.home(host).path, ignore_errors=True)

    def op_call(self, host: int, method: str, params: dict[str, Any]) -> Any:
        from lannode.net.api_client import call

        home = self.home(host)
        return self.threads[host].run(lambda: call(home, method, **params))

    def op_node_id(self, host: int) -> str:
        node_id: str = self.home(host).identity().node_id
        return node_id

    def op_events(self, since: float) -> list[dict[str, Any]]:
        with self.events_lock:
            return [e for e in self.events if e["t"] >= since]

    def shutdown(self) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def serve(self) -> None:
        try:
            for line in sys.stdin:
                request = json.loads(line)
                op = request.pop("op")
                if op == "quit":
                    print(json.dumps({"ok": None}), flush=True)
                    break
                try:
                    result = getattr(self, f"op_{op}")(**request)
                    print(json.dumps({"ok": result}), flush=True)
                except Exception as exc:
                    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        finally:
            self.shutdown()


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        sys.exit("usage: python -m sim.netlab serve   (NetLab starts it inside its own namespaces)")
    Controller().serve()
