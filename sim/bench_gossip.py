"""Gossip benchmark: 20 real daemons in the network lab, at 0% and 10% loss.

    python -m sim.bench_gossip [--hosts 20] [--loss 0 10] [--trials 10] [--soak 600]

For each loss level it measures, with real daemons on a bridged virtual LAN
(sim/netlab.py):

* **seen by all**: a brand-new node starts; the time from its gossip starting
  until the last of the others reports it alive (p50, p99 over the trials);
* **detection**: a node is killed with SIGKILL; the time until each other node
  reports it dead (p50, p99 over every observer of every trial);
* **false dead**: nodes declared dead during a soak with nobody killed;
* **gossip bytes**: bytes each node sent per second during the soak (mean, max).

Times are measured against the issue's goals and the anchors it names (Serf's
gossip reaches 99.9% of 10 nodes in 1.2 s; memberlist's LAN defaults detect a
crash in about 6 s median), printed as ratios: below 1 is better than the
reference. Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any

from sim.netlab import NetLab

GOALS = {  # loss -> seen-by-all p99 goal (s)
    0.0: 0.25,
    10.0: 1.0,
}
DETECT_P50_GOAL, DETECT_P99_GOAL = 3.0, 5.0
SERF_SPREAD_S = 1.2
MEMBERLIST_DETECT_MEDIAN_S = 6.0
BANDWIDTH_GOAL_KBIT = 50.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


def first_event(events: list[dict[str, Any]], host: int, node_id: str, state: str, after: float) -> float | None:
    for e in events:
        if e["host"] == host and e.get("node_id") == node_id and e.get("state") == state and e["topic"] == "peer.state" and e["t"] >= after:
            return float(e["t"])
    return None


def wait_all(lab: NetLab, hosts: list[int], node_id: str, state: str, after: float, timeout: float) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    seen: dict[int, float] = {}
    while time.monotonic() < deadline:
        events = lab.events(after)
        for h in hosts:
            if h not in seen and (t := first_event(events, h, node_id, state, after)) is not None:
                seen[h] = t
        if len(seen) == len(hosts):
            break
        time.sleep(0.1)
    return seen


def run_level(hosts: int, loss: float, trials: int, soak: float, rnd: random.Random) -> dict[str, Any]:
    with NetLab(hosts, loss=loss) as lab:
        everyone = list(range(1, hosts + 1))
        for h in everyone:
            lab.start(h)
        ids = {h: lab.node_id(h) for h in everyone}
        lab.wait_until(lambda: all(sum(s == "alive" for s in lab.peers(h).values()) >= hosts - 1 for h in everyone), 120, "all alive")

        # seen by all: the last host is replaced by a brand-new node, again and again
        newcomer = hosts
        others = [h for h in everyone if h != newcomer]
        spread: list[float] = []
        for _ in range(trials):
            lab.kill(newcomer, 15)  # SIGTERM: it leaves cleanly
            lab.reset(newcomer)
            lab.start(newcomer)
            node_id = lab.node_id(newcomer)
            started = lab.call(newcomer, "node.status")["gossip"]["started_at"]
            seen = wait_all(lab, others, node_id, "alive", started - 1, 30)
            if len(seen) == len(others):
                spread.append(max(seen.values()) - started)
            else:
                spread.append(float("inf"))
            time.sleep(1)
        ids[newcomer] = lab.node_id(newcomer)

        # detection of kill -9
        detections: list[float] = []
        missed = 0
        for _ in range(trials):
            victim = rnd.choice(everyone)
            observers = [h for h in everyone if h != victim]
            killed_at = lab.kill(victim)
            seen = wait_all(lab, observers, ids[victim], "dead", killed_at, 30)
            detections += [t - killed_at for t in seen.values()]
            missed += len(observers) - len(seen)
            lab.start(victim)
            wait_all(lab, observers, ids[victim], "alive", killed_at, 30)
            time.sleep(2)

        # soak: nobody is killed; count false deaths and gossip bytes
        before = {h: lab.call(h, "node.status")["gossip"]["bytes_sent"] for h in everyone}
        soak_start = time.time()
        time.sleep(soak)
        after = {h: lab.call(h, "node.status")["gossip"]["bytes_sent"] for h in everyone}
        elapsed = time.time() - soak_start
        false_dead = [e for e in lab.events(soak_start) if e["topic"] == "peer.state" and e.get("state") == "dead"]
        rates = [(after[h] - before[h]) * 8 / elapsed / 1000 for h in everyone]
        return {
            "hosts": hosts,
            "loss_percent": loss,
            "seen_by_all_s": {"p50": percentile(spread, 50), "p99": percentile(spread, 99), "trials": len(spread)},
            "detect_s": {"p50": percentile(detections, 50), "p99": percentile(detections, 99), "observations": len(detections), "missed": missed},
            "false_dead": len(false_dead),
            "soak_s": round(elapsed, 1),
            "gossip_kbit_s_per_node": {"mean": statistics.mean(rates), "max": max(rates)},
        }


def report(result: dict[str, Any]) -> None:
    loss = result["loss_percent"]
    seen, detect, rate = result["seen_by_all_s"], result["detect_s"], result["gossip_kbit_s_per_node"]
    goal = GOALS.get(loss, 1.0)
    print(f"\n{result['hosts']} hosts, {loss:g}% loss")
    print(f"  seen by all     p50 {seen['p50']*1000:7.0f} ms   p99 {seen['p99']*1000:7.0f} ms   (n={seen['trials']})  p99/goal {seen['p99']/goal:.2f}  p99/Serf {seen['p99']/SERF_SPREAD_S:.2f}")
    print(f"  kill -9 → dead  p50 {detect['p50']:7.2f} s    p99 {detect['p99']:7.2f} s    (n={detect['observations']}, missed {detect['missed']})  p50/goal {detect['p50']/DETECT_P50_GOAL:.2f}  p99/goal {detect['p99']/DETECT_P99_GOAL:.2f}  p50/memberlist {detect['p50']/MEMBERLIST_DETECT_MEDIAN_S:.2f}")
    print(f"  false dead      {result['false_dead']} in {result['soak_s']:.0f} s")
    print(f"  gossip sent     mean {rate['mean']:.1f} kbit/s, max {rate['max']:.1f} kbit/s per node   max/goal {rate['max']/BANDWIDTH_GOAL_KBIT:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--loss", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--soak", type=float, default=600.0, help="seconds of quiet running to count false deaths and bytes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    results = []
    for loss in args.loss:
        result = run_level(args.hosts, loss, args.trials, args.soak, rnd)
        results.append(result)
        if not args.json:
            report(result)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
