"""The membership protocol alone, in virtual time: no daemons, no sockets, seconds for minutes.

    python -m sim.bench_membership [--nodes 20] [--loss 0 10] [--seconds 300] [--kills 10]

Runs the real sans-IO ``Membership`` objects on sim/virtualnet.py's virtual LAN
and prints what bench_gossip measures on real daemons: false deaths, gossip
bytes per node, and kill -9 detection times, with their ratio to the goals.
Useful to try a protocol change quickly; bench_gossip is the measurement of record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from lannode.core.membership import MemberStateChanged, State
from sim.virtualnet import VirtualNetwork

DETECT_P50_GOAL, DETECT_P99_GOAL, BANDWIDTH_GOAL_KBIT = 3.0, 5.0, 50.0


def run(nodes: int, loss: float, seconds: float, kills: int, seed: int) -> None:
    wall = time.perf_counter()
    net = VirtualNetwork(seed=seed, loss=loss / 100)
    members = [net.add(f"n{i}") for i in range(nodes)]
    net.run_until(10, lambda: net.all_see(members, State.ALIVE))
    joined = net.now
    net.run_for(seconds)
    false_dead = sum(1 for n in members for _, e in n.events if isinstance(e, MemberStateChanged) and e.state is State.DEAD)
    kbit = statistics.mean(n.membership.counters.bytes_sent for n in members) / net.now * 8 / 1000
    detections: list[float] = []
    for _ in range(kills):
        victim = net.rng.choice(net.live())
        net.kill(victim)
        killed_at = net.now
        others = net.live()
        net.run_until(net.now + 30, lambda: net.all_see(others, State.DEAD, [victim]))
        for n in others:
            times = [t for t, e in n.events if isinstance(e, MemberStateChanged) and e.node_id == victim.node_id and e.state is State.DEAD and t >= killed_at]
            if times:
                detections.append(times[0] - killed_at)
        net.restart(victim)
        net.run_for(5)
    detections.sort()
    p50 = detections[len(detections) // 2]
    p99 = detections[min(len(detections) - 1, int(len(detections) * 0.99))]
    print(f"{nodes} nodes, {loss:g}% loss, {seconds:g} virtual s (+{kills} kills) in {time.perf_counter() - wall:.1f} s")
    print(f"  all alive after  {joined * 1000:.0f} ms")
    print(f"  false dead       {false_dead}")
    print(f"  gossip sent      {kbit:.1f} kbit/s per node   /goal {kbit / BANDWIDTH_GOAL_KBIT:.2f}")
    print(f"  kill -9 → dead   p50 {p50:.2f} s  p99 {p99:.2f} s  (n={len(detections)})   p50/goal {p50 / DETECT_P50_GOAL:.2f}  p99/goal {p99 / DETECT_P99_GOAL:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--loss", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    for loss in args.loss:
        run(args.nodes, loss, args.seconds, args.kills, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
