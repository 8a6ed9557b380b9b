"""Membership at scale: how fast a change reaches the group, and what each node pays for it.

``measure(nodes=10_000, loss=0.10)`` starts a converged group (``VirtualNetwork.add_warm``),
lets it settle, then makes one membership change every ``every`` seconds, in turn:

* **join**: a new node starts and says Hello (it learns the group by a view exchange);
* **crash**: a node stops answering, is suspected, confirmed and declared dead;
* **leave**: a node stops cleanly and multicasts its signed Left;
* **return**: a crashed node restarts (same key, next epoch) and outranks its death.

For each change it records when every node running since before it first holds the subject in the new
state. *Spread* is the time from the change (a join, a leave, a return) or from the first
node to declare the death (a crash: failure detection is measured apart, as *detection*)
until 99.9% of the running nodes hold it; a node that never does within the run counts
as never. Traffic is what each node's membership sent and received over the measured
window: gossip datagrams, plus the view exchanges over links, in kbit/s.

    python -m sim scale --nodes 10000 --loss 0.1 --seconds 60 [--json]
    python -m sim scale --nodes 100,1000,10000 --loss 0,0.1,0.3 --seconds 30 --report DIR
"""

from __future__ import annotations

import functools
import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lannode.core.membership import Event, MembershipConfig, MemberStateChanged, State
from sim.run import percentile
from sim.virtualnet import SimNode, VirtualNetwork

COVERAGE = 0.999
SETTLE = 5.0  # seconds before the first change and the traffic window
KINDS = ("join", "crash", "leave", "return")
TARGET = {"join": State.ALIVE, "crash": State.DEAD, "leave": State.LEFT, "return": State.ALIVE}


@dataclass
class Change:
    kind: str
    subject: SimNode
    at: float
    seen: dict[str, float] = field(default_factory=dict)  # observer node id -> when it first held the new state

    def spread(self, population: int) -> float | None:
        """Seconds until COVERAGE of ``population`` held it (from the first declaration, for a
        crash); None if that many never did."""
        needed = math.ceil(COVERAGE * population)
        if len(self.seen) < needed or needed == 0:
            return None
        times = sorted(self.seen.values())
        start = times[0] if self.kind == "crash" else self.at
        return times[needed - 1] - start


def measure(*, nodes: int, loss: float, seconds: float = 60.0, every: float = 5.0, seed: int = 1, echo: Any = None) -> dict[str, Any]:
    say = echo or (lambda text: None)
    gc_was = gc.isenabled()
    gc.disable()  # 10^5 long-lived objects per thousand nodes: the collector's scans would cost more than the run
    try:
        return _measure(nodes, loss, seconds, every, seed, say)
    finally:
        if gc_was:
            gc.enable()


def _measure(nodes: int, loss: float, seconds: float, every: float, seed: int, say: Any) -> dict[str, Any]:
    started = time.perf_counter()
    net = VirtualNetwork(seed=seed, loss=loss, config=MembershipConfig(max_members=max(4096, 2 * nodes)))
    group = net.add_warm(f"n{i}" for i in range(nodes))
    built = time.perf_counter() - started
    say(f"{nodes} nodes built in {built:.1f} s")
    watching: dict[tuple[str, State], Change] = {}
    changes: list[Change] = []

    def on_event(node: SimNode, event: Event) -> None:
        if isinstance(event, MemberStateChanged):
            change = watching.get((event.node_id, event.state))
            if change is not None and node.node_id not in change.seen:
                change.seen[node.node_id] = net.now

    net.on_event = on_event
    running = {n.node_id: n for n in group}
    since = dict.fromkeys(running, 0.0)  # when each running node last started: it cannot hear of older changes
    crashed: list[SimNode] = []
    joined = 0

    def begin(kind: str, subject: SimNode) -> None:
        for key in [k for k in watching if k[0] == subject.node_id]:
            del watching[key]  # an older change about the same node is over
        change = Change(kind, subject, net.now)
        watching[(subject.node_id, TARGET[kind])] = change
        changes.append(change)

    def make_change(turn: int) -> None:
        nonlocal joined
        kind = KINDS[turn % len(KINDS)]
        if kind == "return" and not crashed:
            kind = "crash"
        if kind == "join":
            joined += 1
            node = net.add(f"j{joined}", start=False)
            begin(kind, node)
            net._start(node, net.now)
            running[node.node_id] = node
            since[node.node_id] = net.now
        elif kind == "return":
            node = net.restart(crashed.pop(0))
            begin(kind, node)
            running[node.node_id] = node
            since[node.node_id] = net.now
        else:
            node = running.pop(sorted(running)[net.rng.randrange(len(running))])
            begin(kind, node)
            if kind == "crash":
                net.kill(node)
                crashed.append(node)
            else:
                net.stop(node)

    end = SETTLE + seconds
    turn, t = 0, SETTLE + every / 2
    while t < end - every / 2:
        net.at(t, functools.partial(make_change, turn))
        turn, t = turn + 1, t + every
    net.run_until(SETTLE)
    base: dict[str, tuple[int, int, int, int]] = {n.node_id: _traffic(n) for n in running.values()}
    say(f"settled; {turn} changes over {seconds:g} simulated seconds")
    net.run_until(end)
    wall = time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    for change in changes:
        population = [n for n in running.values() if n.node_id != change.subject.node_id and since[n.node_id] < change.at]
        spread = change.spread(len(population))
        reached = sum(1 for n in population if n.node_id in change.seen) / max(1, len(population))
        rows.append({"kind": change.kind, "at": round(change.at, 3), "spread_s": None if spread is None else round(spread, 3), "reached": round(reached, 5), "detection_s": round(min(change.seen.values()) - change.at, 3) if change.kind == "crash" and change.seen else None})
    window = seconds
    sent: list[float] = []
    received: list[float] = []
    joiners: list[float] = []
    gossip_sent: list[float] = []
    gossip_received: list[float] = []
    for node in running.values():
        before = base.get(node.node_id)
        now = _traffic(node)
        if before is None or since[node.node_id] >= SETTLE:  # joined or returned during the window: its first view came over a link
            joiners.append(now[1] * 8 / 1000 / window)
            continue
        rate = [(a - b) * 8 / 1000 / window for a, b in zip(now, before)]
        sent.append(rate[0])
        received.append(rate[1])
        gossip_sent.append(rate[2])
        gossip_received.append(rate[3])
    spreads: list[float] = [r["spread_s"] for r in rows if r["spread_s"] is not None]
    result = {
        "nodes": nodes,
        "loss": loss,
        "simulated_seconds": seconds,
        "wall_seconds": round(wall, 1),
        "build_seconds": round(built, 1),
        "changes": rows,
        "spread_max_s": max(spreads) if len(spreads) == len(rows) and spreads else None,
        "spread_p50_s": percentile(spreads, 50),
        "all_within_1s": bool(rows) and all(r["spread_s"] is not None and r["spread_s"] <= 1.0 for r in rows),
        "kbit_sent_mean": round(sum(sent) / len(sent), 2),
        "kbit_sent_max": round(max(sent), 2),
        "kbit_received_mean": round(sum(received) / len(received), 2),
        "kbit_received_max": round(max(received), 2),
        "gossip_kbit_sent_max": round(max(gossip_sent), 2),
        "gossip_kbit_received_max": round(max(gossip_received), 2),
        "joiners_kbit_received_max": round(max(joiners, default=0.0), 2),
        "false_suspicions": sum(n.membership.counters.refutations for n in running.values()),
        "largest_datagram": net.largest_datagram,
    }
    return result


def _traffic(node: SimNode) -> tuple[int, int, int, int]:
    """Bytes (sent, received) with the view exchanges over links, then of gossip alone."""
    c = node.membership.counters
    return c.bytes_sent + c.sync_bytes_sent, c.bytes_received + c.sync_bytes_received, c.bytes_sent, c.bytes_received


def describe(result: dict[str, Any]) -> str:
    lines = [
        f"{result['nodes']} nodes at {result['loss']:.0%} loss, {result['simulated_seconds']:g} s simulated in {result['wall_seconds']:g} s (built in {result['build_seconds']:g} s)",
        f"  spread to {COVERAGE:.1%} of nodes: max {result['spread_max_s']} s, p50 {result['spread_p50_s']} s; every change within 1 s: {'yes' if result['all_within_1s'] else 'NO'}",
        f"  per node, kbit/s: sent {result['kbit_sent_mean']} mean, {result['kbit_sent_max']} max; received {result['kbit_received_mean']} mean, {result['kbit_received_max']} max",
        f"  of which gossip datagrams, busiest node: sent {result['gossip_kbit_sent_max']}, received {result['gossip_kbit_received_max']}; a joiner's first view over its link: {result['joiners_kbit_received_max']} received",
        f"  refutations (false suspicions answered) {result['false_suspicions']}; largest datagram {result['largest_datagram']} bytes",
    ]
    for row in result["changes"]:
        extra = f", detected after {row['detection_s']} s" if row["detection_s"] is not None else ""
        lines.append(f"    {row['at']:8.2f} s {row['kind']:<7} spread {row['spread_s']} s, reached {row['reached']:.2%}{extra}")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], directory: Path) -> Path:
    """scale.md and spread.png: the slowest change's spread against N, one line per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for loss in sorted({r["loss"] for r in results}):
        rows = sorted((r for r in results if r["loss"] == loss), key=lambda r: r["nodes"])
        xs = [r["nodes"] for r in rows]
        left.plot(xs, [r["spread_max_s"] if r["spread_max_s"] is not None else float("nan") for r in rows], marker="o", label=f"{loss:.0%} loss")
        right.plot(xs, [r["kbit_received_max"] for r in rows], marker="o", label=f"{loss:.0%} loss")
    left.set(xscale="log", xlabel="nodes", ylabel="seconds", title=f"slowest change to reach {COVERAGE:.1%}")
    left.axhline(1.0, color="grey", linestyle=":")
    right.set(xscale="log", xlabel="nodes", ylabel="kbit/s", title="busiest node, received")
    right.axhline(50.0, color="grey", linestyle=":")
    for axis in (left, right):
        axis.legend()
    fig.tight_layout()
    fig.savefig(directory / "spread.png")
    plt.close(fig)
    table = ["| nodes | loss | slowest spread (s) | median spread (s) | all within 1 s | kbit/s sent mean / max | kbit/s received mean / max | wall (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r["loss"], r["nodes"])):
        table.append(f"| {r['nodes']} | {r['loss']:.0%} | {r['spread_max_s']} | {r['spread_p50_s']} | {'yes' if r['all_within_1s'] else 'no'} | {r['kbit_sent_mean']} / {r['kbit_sent_max']} | {r['kbit_received_mean']} / {r['kbit_received_max']} | {r['wall_seconds']} |")
    path = directory / "scale.md"
    path.write_text("# Membership at scale\n\n![spread against N](spread.png)\n\n" + "\n".join(table) + "\n")
    return path
