"""Chat delivery latency and the signaling round trip, between two real daemons on loopback.

    python -m sim.bench_chat [--rate 1000] [--messages 3000] [--rounds 300]

* **chat**: a front sends ``--messages`` 1:1 messages to node A at ``--rate`` per
  second (over one API connection, ``--batch`` per ``chat.send``); a front on node B
  records when each ``chat.message`` event arrives. Latency = arrival minus the
  message's ``sent_at`` (stamped by A when it stored the message). Both fronts are
  one ``LeanFront`` loop (a blocking socket, a browser's frames and JSON), so that
  the harness takes as little as it can of the two cores the daemons run on.
* **signaling**: a front on A sends an offer to B's front, which answers at once;
  the round trip from sending the offer to receiving the answer, ``--rounds`` times.

Two references, measured in the same run:

* **the machine's floor for the path**: the same messages at the same rate through
  the same shape of path with no work in it: this process sends each one (a line of
  JSON, over TCP) to a plain Python relay process, which parses it and passes it to
  a second, which passes it back here. Its p99 is what this machine's scheduling
  alone costs a message that wakes three processes on two cores; on a shared VM it
  swings from run to run, which is why it is measured beside every chat phase.
* a ``node.status`` call's round trip over the same API connection.

Goals (issue 4): chat p99 <= 10 ms at 1,000 messages per second; offer to answer
<= 5 ms.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from lannode.config import OPTIONS_BY_KEY, render_default
from lannode.core import api, wsframes
from lannode.core.wsframes import FrameCodec
from lannode.home import Home
from lannode.lab import _stop_all, wait_for_node
from lannode.net.api_client import connect
from lannode.net.websocket import accept_token

CHAT_P99_GOAL_MS = 10.0
REPLY_READS = 0.01  # seconds between reads of A's replies during a chat phase
SIGNAL_GOAL_MS = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_home(path: Path, name: str, port: int, *, webui: bool = False) -> Home:
    path.mkdir(parents=True)
    text = render_default(name)
    if not webui:
        text = text.replace("[plugins.webui]\nenabled = true", "[plugins.webui]\nenabled = false")
    text = text.replace(f"port = {OPTIONS_BY_KEY['gossip.port'].default}", f"port = {port}")
    (path / "config.toml").write_text(text)
    return Home(path)


class LeanFront:
    """A front with as little machinery as a page's: a blocking socket, the WebSocket
    frames (``lannode.core.wsframes``, masked as a browser masks them) and JSON, no
    task per call and no event loop. Chat load is generated and timed through two of
    these, so that the harness, which shares this machine's two cores with the two
    daemons, takes as little of them as it can (the trio client costs 0.4 ms of CPU
    a message, as much as the receiving daemon)."""

    def __init__(self, home: Home) -> None:
        info = home.read_api()
        if info is None:
            raise RuntimeError(f"no node runs on {home.path}")
        parts = urlsplit(info["url"])
        assert parts.hostname is not None and parts.port is not None
        self.sock = socket.create_connection((parts.hostname, parts.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {api.SUBPROTOCOL}\r\n"
            f"Authorization: Bearer {info['token']}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the node closed the connection during the upgrade")
            head += data
        head, rest = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101") or accept_token(key) not in head:
            raise RuntimeError(f"the node refused the WebSocket: {head[:200]!r}")
        self.codec = FrameCodec(client=True, max_message=1 << 24)
        self.codec.receive_data(rest)
        self._ids = 0
        self.calls: dict[int, str] = {}  # request id -> method, until its reply
        self.errors: list[Any] = []

    def send(self, method: str, params: dict[str, Any]) -> int:
        self._ids += 1
        self.calls[self._ids] = method
        self.sock.sendall(self.codec.message(json.dumps({"id": self._ids, "method": method, "params": params})))
        return self._ids

    def drain(self) -> None:
        """Read whatever has come, without waiting (replies checked off; events dropped)."""
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self._take(data)

    def messages(self) -> list[dict[str, Any]]:
        """What one read brings: replies are checked off (errors kept), events returned."""
        return self._take(self.sock.recv(65536))

    def _take(self, data: bytes) -> list[dict[str, Any]]:
        if not data:
            raise RuntimeError("the node closed the API connection")
        self.codec.receive_data(data)
        events = []
        for frame in self.codec.events():
            if not isinstance(frame, wsframes.Message):
                continue
            message = json.loads(frame.data)
            if "event" in message:
                events.append(message)
            elif self.calls.pop(message.get("id"), None) is not None and "error" in message:
                self.errors.append(message["error"])
        return events

    def call(self, method: str, params: dict[str, Any]) -> None:
        request = self.send(method, params)
        while request in self.calls:
            self.messages()
        if self.errors:
            raise RuntimeError(f"{method}: {self.errors[-1]}")

    def close(self) -> None:
        self.sock.close()


def lean_chat(a: LeanFront, b: LeanFront, rate: float, messages: int, batch: int, tag: str) -> tuple[list[float], list[float], float]:
    """Send ``messages`` at ``rate`` to A (``batch`` per chat.send) and time their events
    at B, on this thread alone: one loop that sends when a message is due and reads
    what B has written meanwhile. A's replies are read every REPLY_READS seconds, not
    as each comes (every one is still checked: an error fails the run): they are not on
    the path being timed, and a thread waiting on them would have each one wake it, at
    a cost to A's send and to the machine's two cores."""
    latencies: list[float] = []
    stored: list[float] = []
    selector = selectors.DefaultSelector()
    selector.register(b.sock, selectors.EVENT_READ, b)
    replies_read = time.perf_counter()
    # the harness's own garbage collections (this process holds trio, lannode and the
    # phases' results) would stall its reads of B's events by milliseconds: not lannode's
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    deadline = start + messages / rate + 60
    sent = 0
    while len(latencies) < messages:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"only {len(latencies)} of {messages} messages reached B's front within 60 s")
        while sent < messages and now >= start + sent / rate:
            texts = [f"{tag}{j}" for j in range(sent, min(sent + batch, messages))]
            a.send("chat.send", {"peer": "b", "text": texts[0]} if batch == 1 else {"peer": "b", "texts": texts})
            sent += len(texts)
        wait = start + sent / rate - time.perf_counter() if sent < messages else REPLY_READS
        for _ in selector.select(max(0.0, wait)):
            for event in b.messages():
                m = event.get("data") or {}
                if event["event"] == "chat.message" and m["text"].startswith(tag):
                    latencies.append(time.time() * 1000 - m["sent_at"])
                    stored.append(m["received_at"] - m["sent_at"])
        if time.perf_counter() - replies_read >= REPLY_READS:
            a.drain()
            replies_read = time.perf_counter()
        if a.errors:
            raise RuntimeError(f"chat.send failed: {a.errors[0]}")
    sent_for = time.perf_counter() - start
    gc.enable()
    while a.calls:  # every reply in, so the next phase starts clean
        a.messages()
    selector.close()
    return latencies, stored, sent_for


async def chat_phase(a: LeanFront, b: LeanFront, processes: list[Any], rate: float, messages: int, batch: int) -> dict[str, Any]:
    """Messages from A's front to B's front at ``rate``; ``batch`` per chat.send call."""
    cpu_before = [cpu_seconds(p.pid) for p in processes] + [time.process_time()]
    latencies, stored, sent_for = await trio.to_thread.run_sync(lean_chat, a, b, rate, messages, batch, f"bench{batch} ")
    cpu_after = [cpu_seconds(p.pid) for p in processes] + [time.process_time()]
    cpu = [(after - before) * 1e6 / messages for before, after in zip(cpu_before, cpu_after)]
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "stored_p50": percentile(stored, 50),
        "stored_p99": percentile(stored, 99),
        "messages": len(latencies),
        "rate": messages / sent_for,
        "batch": batch,
        "cpu_us_per_message": dict(zip(("sender", "receiver", "client"), cpu)),
    }


def relay(downstream: tuple[str, int]) -> None:
    """The floor's relay process: take one connection, pass each JSON line on, parsed and
    encoded again (the least a node does with a message), to ``downstream``."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(server.getsockname()[1], flush=True)
        upstream, _ = server.accept()
    out = socket.create_connection(downstream)
    for sock in (upstream, out):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    while data := upstream.recv(65536):
        *lines, pending = (pending + data).split(b"\n")
        if lines:
            out.sendall(b"".join(json.dumps(json.loads(line)).encode() + b"\n" for line in lines))
    out.close()


def floor_phase(rate: float, messages: int) -> dict[str, float]:
    """The machine's floor: ``messages`` at ``rate`` through two relay processes and back."""
    with socket.create_server(("127.0.0.1", 0)) as back:
        relays: list[subprocess.Popen[str]] = []
        downstream = back.getsockname()
        try:
            for _ in range(2):  # B (to here), then A (to B)
                code = f"from sim.bench_chat import relay; relay(('127.0.0.1', {downstream[1]}))"
                relays.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent))
                assert relays[-1].stdout is not None
                downstream = ("127.0.0.1", int(relays[-1].stdout.readline()))
            out = socket.create_connection(downstream)
            out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            inbound, _ = back.accept()
            latencies: list[float] = []

            def receive() -> None:
                pending = b""
                while len(latencies) < messages and (data := inbound.recv(65536)):
                    *lines, pending = (pending + data).split(b"\n")
                    now = time.perf_counter()
                    latencies.extend((now - json.loads(line)["t"]) * 1000 for line in lines)

            reader = threading.Thread(target=receive)
            reader.start()
            start = time.perf_counter()
            for i in range(messages):
                while (wait := start + i / rate - time.perf_counter()) > 0:
                    time.sleep(wait)
                out.sendall(json.dumps({"t": time.perf_counter(), "text": f"floor {i}"}).encode() + b"\n")
            reader.join(60)
            out.close()
            inbound.close()
        finally:
            for process in relays:
                process.kill()
                process.wait()
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "messages": len(latencies)}


def pair_homes(root: Path) -> list[Home]:
    """Homes for nodes "a" and "b" on a gossip port of their own."""
    return node_homes(root, ["a", "b"])


def node_homes(root: Path, names: list[str]) -> list[Home]:
    """A home per name, all on a gossip port of their own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [write_home(root / n, n, port) for n in names]


async def start_pair(homes: list[Home], processes: list[Any]) -> None:
    await start_nodes(homes, processes)


async def start_nodes(homes: list[Home], processes: list[Any]) -> None:
    """Run a daemon on each home (appended to ``processes``, for the caller to stop), named
    after its folder, and wait until the first sees every other one alive."""
    names = [home.path.name for home in homes]
    for home, name in zip(homes, names):
        command = [sys.executable, "-m", "lannode", "up", "--home", str(home.path), "--interface", "127.0.0.1", "--name", name, "--log-level", "warning"]
        processes.append(await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL))
    for home, process in zip(homes, processes[-len(homes) :]):
        await wait_for_node(home, ui=False, process=process)
    async with connect(homes[0]) as a:
        with trio.fail_after(30):
            while sum(p["state"] == "alive" and p["name"] in names for p in await a.call("peer.list")) < len(homes) - 1:
                await trio.sleep(0.05)


async def bench(rate: float, messages: int, rounds: int, batches: list[int]) -> dict[str, Any]:
    homes = pair_homes(Path(tempfile.mkdtemp(prefix="lannode-bench-chat-")))
    processes: list[Any] = []
    try:
        await start_pair(homes, processes)
        async with connect(homes[0]) as a, connect(homes[1]) as b:
            await a.call("chat.send", peer="b", text="warm-up")  # opens the link
            # the reference: an API round trip
            floor = []
            for _ in range(200):
                t = time.perf_counter()
                await a.call("node.status")
                floor.append((time.perf_counter() - t) * 1000)
            # chat at a steady rate: one API call per message, then in batches
            front_a, front_b = LeanFront(homes[0]), LeanFront(homes[1])
            try:
                front_b.call("events.subscribe", {"topics": ["chat.message"]})
                chat = {}
                for batch in batches:
                    chat[batch] = await chat_phase(front_a, front_b, processes, rate, messages, batch)
                    chat[batch]["floor"] = await trio.to_thread.run_sync(floor_phase, rate / batch, messages // batch)
            finally:
                front_a.close()
                front_b.close()
            # signaling round trips
            front_a = (await a.call("rtc.register"))["front"]
            front_b = (await b.call("rtc.register"))["front"]
            await b.subscribe("rtc.*")
            await a.subscribe("rtc.*")
            rtts: list[float] = []

            async def answerer() -> None:
                async for topic, event in b.events():
                    if topic == "rtc.signal" and event["kind"] == "offer":
                        await b.call("rtc.signal", peer="a", kind="answer", data={"n": event["data"]["n"]}, to_front=event["from_front"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answerer)
                events = a.events()
                for n in range(rounds):
                    t = time.perf_counter()
                    await a.call("rtc.signal", peer="b", kind="offer", data={"n": n, "sdp": "v=0 " + "x" * 2000}, to_front=front_b)
                    async for topic, event in events:
                        if topic == "rtc.signal" and event["kind"] == "answer" and event["data"]["n"] == n:
                            break
                    rtts.append((time.perf_counter() - t) * 1000)
                nursery.cancel_scope.cancel()
            del front_a
        return {
            "reference_api_rtt_ms": {"p50": percentile(floor, 50), "p99": percentile(floor, 99)},
            "chat": chat,
            "offer_answer_ms": {"p50": percentile(rtts, 50), "p99": percentile(rtts, 99), "rounds": len(rtts)},
        }
    finally:
        with trio.CancelScope(shield=True):
            await _stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--batch", type=int, action="append", help="messages per chat.send call; repeat for several runs (default: 1 and 10)")
    args = parser.parse_args()
    r = trio.run(bench, args.rate, args.messages, args.rounds, args.batch or [1, 10])
    ref, sig = r["reference_api_rtt_ms"], r["offer_answer_ms"]
    print(f"reference: API round trip      p50 {ref['p50']:.2f} ms  p99 {ref['p99']:.2f} ms")
    for chat in r["chat"].values():
        print(
            f"chat at {chat['rate']:.0f}/s, {chat['batch']} per call ({chat['messages']} msgs)  p50 {chat['p50']:.2f} ms  p99 {chat['p99']:.2f} ms"
            f"   p99/goal {chat['p99'] / CHAT_P99_GOAL_MS:.2f}  p50/reference {chat['p50'] / ref['p50']:.1f}x"
        )
        print(f"    A's store to B's store (no front): p50 {chat['stored_p50']:.2f} ms  p99 {chat['stored_p99']:.2f} ms")
        floor = chat["floor"]
        print(
            f"    the machine's floor (3 plain processes, {chat['rate'] / chat['batch']:.0f} hops/s): p50 {floor['p50']:.2f} ms  p99 {floor['p99']:.2f} ms"
            f"   chat p99 / floor p99 {chat['p99'] / floor['p99']:.1f}x"
        )
        cpu = chat["cpu_us_per_message"]
        print("    CPU per message: " + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items()) + f"  (cores: {os.cpu_count()})")
    print(f"offer to answer ({sig['rounds']} rounds) p50 {sig['p50']:.2f} ms  p99 {sig['p99']:.2f} ms   p50/goal {sig['p50'] / SIGNAL_GOAL_MS:.2f}  p50/reference {sig['p50'] / ref['p50']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
