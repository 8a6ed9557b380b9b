"""Guests on one host: its memory with 20 guests' pages open, and chat between guests.

    python -m sim.bench_guests [--guests 20] [--rate 100] [--seconds 10]

Two real daemons on loopback: the host "a" (guest door on 127.0.0.1, which
guests.allow_loopback is for) and a node "b". ``--guests`` guests join "a" through
the door (``sim/guest_client.py``: the protocol a phone's page speaks, its
signatures included) and each keeps its event stream open, as an idle page does.

* **memory**: the host's resident set (VmRSS) with every guest joined and its page
  open, against the same host's before any guest joined (the reference, in the
  same run). Goal (issue 27): <= 100 MB with 20 idle guests.
* **chat**: half the guests send to the other half, ``--rate`` messages a second in
  all (each message drafted by the host and signed by the guest, as a page does);
  latency = when the receiving guest's event stream delivers it, minus when its
  sender began to send it. Reference: the same rate from a local program on "a" to
  a front on "b" (node to node, bench_chat's lean front), timed the same way.
  Goal: p99 <= 50 ms between two guests at 100 messages a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

from lannode.config import set_option
from lannode.home import Home
from lannode.lab import _stop_all
from lannode.net.api_client import call
from sim.bench_chat import LeanFront, node_homes, percentile, start_nodes
from sim.guest_client import GuestClient

RSS_GOAL_MB = 100.0
P99_GOAL_MS = 50.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def join(home: Home, name: str) -> GuestClient:
    invite = call(home, "guests.invite")
    guest = GuestClient(invite["door"], invite["fingerprint"])
    guest.join(host=call(home, "node.status")["node_id"], name=name, token=invite["url"].split("#invite=", 1)[1])
    guest.open_session()
    return guest


class Listener:
    """A guest's open page: its event stream, read in a thread; chat arrivals timed."""

    def __init__(self, guest: GuestClient) -> None:
        self.guest = guest
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for event in self.guest.events(timeout=600):
            if event["event"] == "hello":
                self.ready.set()
            elif event["event"] == "chat.message" and event["data"]["direction"] == "in":
                self.arrived[event["data"]["text"]] = time.perf_counter()


def guest_chat(senders: list[GuestClient], receivers: list[Listener], rate: float, seconds: float) -> list[float]:
    """Each sender sends to its receiver, all together at ``rate`` a second; latencies in ms."""
    started: dict[str, float] = {}
    per_sender = rate / len(senders)
    count = int(per_sender * seconds)

    def send(index: int) -> None:
        sender, receiver = senders[index], receivers[index].guest
        begin = time.perf_counter() + index / rate  # spread the senders over the first interval
        for i in range(count):
            time.sleep(max(0.0, begin + i / per_sender - time.perf_counter()))
            text = f"g{index} #{i}"
            started[text] = time.perf_counter()
            sender.send_chat(peer=receiver.guest_id, texts=[text])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(senders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and sum(len(r.arrived) for r in receivers) < len(started):
        time.sleep(0.05)
    arrived = {text: at for r in receivers for text, at in r.arrived.items()}
    missing = len(started) - len(arrived)
    if missing:
        raise RuntimeError(f"{missing} of {len(started)} guest messages never arrived")
    return [(arrived[text] - at) * 1000 for text, at in started.items()]


def node_chat(a: Home, b: Home, rate: float, seconds: float) -> list[float]:
    """The reference: a local program on "a" sends to "b", a front on "b" times the events."""
    front = LeanFront(b)
    front.call("events.subscribe", {"topics": ["chat.message"]})
    sender = LeanFront(a)
    peer = call(b, "node.status")["node_id"]
    started: dict[str, float] = {}
    arrived: dict[str, float] = {}
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                events = front.messages()
            except (RuntimeError, OSError):
                return  # the node stopped: the run is over
            for event in events:
                if event["event"] == "chat.message":
                    arrived[event["data"]["text"]] = time.perf_counter()

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    begin = time.perf_counter()
    for i in range(int(rate * seconds)):
        time.sleep(max(0.0, begin + i / rate - time.perf_counter()))
        text = f"n #{i}"
        started[text] = time.perf_counter()
        sender.send("chat.send", {"peer": peer, "text": text})
        sender.drain()
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and len(arrived) < len(started):
        time.sleep(0.05)
    done.set()
    front.close()
    sender.close()
    return [(arrived[text] - at) * 1000 for text, at in started.items() if text in arrived]


async def bench(guests: int, rate: float, seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="lannode-bench-guests-"))
    homes = node_homes(root, ["a", "b"])
    set_option(homes[0].config_path, "guests.enabled", True)
    set_option(homes[0].config_path, "guests.allow_loopback", True)
    set_option(homes[0].config_path, "guests.port", 0)
    processes: list[Any] = []
    try:
        await start_nodes(homes, processes)
        host_pid = processes[0].pid
        await trio.sleep(2)
        before = rss_mb(host_pid)
        clients = await trio.to_thread.run_sync(lambda: [join(homes[0], f"guest {i}") for i in range(guests)])
        listeners = [Listener(g) for g in clients]
        for listener in listeners:
            await trio.to_thread.run_sync(listener.ready.wait, 10)
        await trio.sleep(3)
        idle = rss_mb(host_pid)
        half = guests // 2
        guest_ms = await trio.to_thread.run_sync(guest_chat, clients[:half], listeners[half : 2 * half], rate, seconds)
        after = rss_mb(host_pid)
        node_ms = await trio.to_thread.run_sync(node_chat, homes[0], homes[1], rate, seconds)
        return {
            "guests": guests,
            "rss_mb": {"no_guests": round(before, 1), "idle_guests": round(idle, 1), "after_chat": round(after, 1)},
            "guest_chat_ms": {"p50": round(percentile(guest_ms, 50), 1), "p99": round(percentile(guest_ms, 99), 1), "n": len(guest_ms)},
            "node_chat_ms": {"p50": round(percentile(node_ms, 50), 1), "p99": round(percentile(node_ms, 99), 1), "n": len(node_ms)},
        }
    finally:
        await _stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--rate", type=float, default=100.0, help="chat messages a second, all senders together")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(bench, args.guests, args.rate, args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rss, guest, node = result["rss_mb"], result["guest_chat_ms"], result["node_chat_ms"]
    print(f"{args.guests} guests on one host")
    print(f"  host RSS        {rss['no_guests']:.1f} MB without guests, {rss['idle_guests']:.1f} MB with {args.guests} idle pages open ({rss['idle_guests'] / rss['no_guests']:.2f}x), {rss['after_chat']:.1f} MB after the chat   /goal {rss['idle_guests'] / RSS_GOAL_MB:.2f}")
    print(f"  guest to guest  p50 {guest['p50']:.1f} ms  p99 {guest['p99']:.1f} ms  (n={guest['n']}, {args.rate:g}/s)   p99/goal {guest['p99'] / P99_GOAL_MS:.2f}")
    print(f"  node to node    p50 {node['p50']:.1f} ms  p99 {node['p99']:.1f} ms  (n={node['n']}, the reference)   guest p99/node p99 {guest['p99'] / max(node['p99'], 0.1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

