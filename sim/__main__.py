"""The simulator's command: run a scenario, replay a seed, fuzz, sweep.

    python -m sim run sim/scenarios/partition.toml [--seed N] [--json] [--trace]
    python -m sim replay SEED [--scenario FILE] [--plant BUG]
    python -m sim fuzz [--seconds 60] [--start SEED] [--plant BUG] [--json]
    python -m sim sweep SCENARIO --nodes 10,100,1000 --loss 0,0.1,0.3 [--report DIR]
    python -m sim lab SCENARIO [--trials N] [--report DIR]   (real daemons in the network lab, and the simulation)
    python -m sim scale --nodes 10000 --loss 0.1 [--seconds 60] [--report DIR]   (how fast a change spreads, and its cost)

Exit codes: 0 every invariant held, 1 a violation (its seed and trace are printed),
2 bad usage or a scenario that does not parse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lannode.core.membership import Membership
from sim.bugs import PLANTED, PLANTED_DRIVE
from sim.drivesim import DriveWorld
from sim.run import Result, Runner
from sim.scenario import Scenario, ScenarioError


def _print_result(result: Result, *, as_json: bool, trace: bool, plant: str | None = None) -> None:
    if as_json:
        print(json.dumps(result.summary(), indent=2))
        return
    s, m = result.scenario, result.metrics
    print(f"{s.name} ({s.source or 'scenario'}): {s.nodes} nodes, {s.duration:g} s simulated in {result.wall_seconds:.1f} s, seed {s.seed}")
    print(f"  membership converged {m['convergence_seconds']} s after the last fault; detection p50 {m['detection_p50']} s, p99 {m['detection_p99']} s over {m['detections']}; false deaths {m['false_dead']}")
    if m["store_convergence_seconds"] is not None:
        print(f"  store converged {m['store_convergence_seconds']} s after the last fault")
    if m.get("drive_files"):
        print(f"  drive: {m['drive_files']} files readable in {m['drive_availability']:.2%} of samples; {m['drive_repaired_fragments']} fragments rebuilt, {m['drive_dropped_fragments']} orphans dropped; every file back at k + m {m['drive_repair_seconds']} s after the last fault")
    print(f"  gossip per node, kbit/s: sent {m['kbit_sent_per_node_mean']} mean, {m['kbit_sent_per_node_max']} max; received {m['kbit_received_per_node_mean']} mean, {m['kbit_received_per_node_max']} max")
    print(f"  fingerprint {result.fingerprint[:16]}")
    if trace:
        print("\n".join(result.trace))
    for v in result.violations:
        print(f"VIOLATION {v.invariant} at {v.at:.3f} s: {v.detail}")
        print(f"  replay: python -m sim replay {s.seed}" + (f" --scenario {s.source}" if s.source and not s.source.startswith("random:") else "") + (f" --plant {plant}" if plant else ""))
        for line in result.minimal_trace(v):
            print(f"    {line}")


def _membership(plant: str | None) -> type[Membership]:
    return PLANTED.get(plant or "", Membership)


def _drive(plant: str | None) -> type[DriveWorld]:
    return PLANTED_DRIVE.get(plant or "", DriveWorld)


def cmd_run(args: argparse.Namespace) -> int:
    scenario = Scenario.load(Path(args.scenario))
    if args.seed is not None:
        scenario.seed = args.seed
    result = Runner(scenario, membership_class=_membership(args.plant), drive_class=_drive(args.plant)).run()
    _print_result(result, as_json=args.json, trace=args.trace, plant=args.plant)
    return 1 if result.violations else 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.scenario:
        scenario = Scenario.load(Path(args.scenario))
        scenario.seed = args.seed
    else:
        scenario = Scenario.random(args.seed)
    result = Runner(scenario, membership_class=_membership(args.plant), drive_class=_drive(args.plant)).run()
    _print_result(result, as_json=args.json, trace=not args.json, plant=args.plant)
    return 1 if result.violations else 0


def fuzz(seconds: float, start: int, membership_class: type[Membership], *, drive_class: type[DriveWorld] = DriveWorld, max_runs: int | None = None) -> tuple[list[Result], int]:
    """Random scenarios from consecutive seeds until the time (or ``max_runs``) is up:
    the failing results and how many ran."""
    failures: list[Result] = []
    deadline = time.monotonic() + seconds
    seed, runs = start, 0
    while time.monotonic() < deadline and (max_runs is None or runs < max_runs):
        result = Runner(Scenario.random(seed), membership_class=membership_class, drive_class=drive_class, keep_trace=True).run()
        runs += 1
        if result.violations:
            failures.append(result)
        seed += 1
    return failures, runs


def cmd_fuzz(args: argparse.Namespace) -> int:
    failures, runs = fuzz(args.seconds, args.start, _membership(args.plant), drive_class=_drive(args.plant))
    if args.json:
        print(json.dumps({"runs": runs, "failures": [r.summary() for r in failures]}, indent=2))
    else:
        print(f"{runs} random scenarios from seed {args.start}; {len(failures)} broke an invariant")
        for result in failures:
            _print_result(result, as_json=False, trace=False, plant=args.plant)
    return 1 if failures else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sim.report import sweep

    base = Scenario.load(Path(args.scenario))
    nodes = [int(x) for x in args.nodes.split(",")] if args.nodes else [base.nodes]
    losses = [float(x) for x in args.loss.split(",")] if args.loss else [base.loss]
    rows = sweep(base, nodes, losses, Path(args.report) if args.report else None)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if any(r["violations"] for r in rows) else 0


def cmd_lab(args: argparse.Namespace) -> int:
    from sim.labrun import side_by_side

    scenario = Scenario.load(Path(args.scenario))
    result = side_by_side(scenario, Path(args.report) if args.report else None, trials=args.trials, echo=(lambda text: None) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if all(r["convergence_seconds"] is not None for r in result["lab"]) else 1


def cmd_scale(args: argparse.Namespace) -> int:
    from sim.scale import describe, measure, report

    results = []
    for nodes in [int(x) for x in args.nodes.split(",")]:
        for loss in [float(x) for x in args.loss.split(",")]:
            result = measure(nodes=nodes, loss=loss, seconds=args.seconds, every=args.every, seed=args.seed, echo=(lambda text: None) if args.json else print)
            results.append(result)
            if not args.json:
                print(describe(result), flush=True)
    if args.report:
        path = report(results, Path(args.report))
        if not args.json:
            print(f"report: {path}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if all(r["all_within_1s"] for r in results) else 1


def cmd_fuzz_wire(args: argparse.Namespace) -> int:
    from sim import fuzz_wire

    def progress(done: int) -> None:
        if not args.json and done % 50_000 == 0:
            print(f"  {done:,} inputs", file=sys.stderr)

    result = fuzz_wire.run(args.inputs, seed=args.seed, start=args.start, on_batch=progress)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"fuzz-wire seed {result.seed}: {result.inputs:,} inputs in {result.seconds:.1f} s, {len(result.failures)} failures")
        print("  " + ", ".join(f"{target} {count:,}" for target, count in sorted(result.per_target.items())))
        for failure in result.failures[:10]:
            batch = failure.index - failure.index % fuzz_wire.BATCH
            print(f"FAILURE at input {failure.index} ({failure.target}); replay: python -m sim fuzz-wire --seed {result.seed} --start {batch} --inputs {fuzz_wire.BATCH}")
            print("    " + failure.error.strip().replace("\n", "\n    "))
    return 1 if result.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description="lannode's network simulator: the real protocol objects in virtual time")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario file")
    run.add_argument("scenario")
    run.add_argument("--seed", type=int, help="instead of the file's")
    run.add_argument("--trace", action="store_true", help="print the whole trace")
    replay = sub.add_parser("replay", help="run a seed again: the fuzzer's scenario for it, or a file's with that seed")
    replay.add_argument("seed", type=int)
    replay.add_argument("--scenario", help="a scenario file (default: the fuzzer's scenario for SEED)")
    fuzzer = sub.add_parser("fuzz", help="random scenarios with random faults, until the time is up")
    fuzzer.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget (default 60)")
    fuzzer.add_argument("--start", type=int, default=1, help="the first seed (default 1)")
    sweeper = sub.add_parser("sweep", help="one scenario at several sizes and losses; a report with plots")
    sweeper.add_argument("scenario")
    sweeper.add_argument("--nodes", help="comma-separated node counts")
    sweeper.add_argument("--loss", help="comma-separated loss rates (0.1 is 10%%)")
    sweeper.add_argument("--report", metavar="DIR", help="write report.md and its plots here")
    labber = sub.add_parser("lab", help="the scenario with real daemons in network namespaces, beside the simulation")
    labber.add_argument("scenario")
    labber.add_argument("--report", metavar="DIR", help="write lab-vs-simulation.md here")
    labber.add_argument("--trials", type=int, default=1, help="run it this many times on each side and compare the means (default 1)")
    scaler = sub.add_parser("scale", help="a converged group of N: how fast joins, crashes, leaves and returns reach 99.9%% of it, and each node's traffic")
    scaler.add_argument("--nodes", default="10000", help="comma-separated node counts (default 10000)")
    scaler.add_argument("--loss", default="0.1", help="comma-separated loss rates (default 0.1)")
    scaler.add_argument("--seconds", type=float, default=60.0, help="simulated seconds of changes (default 60)")
    scaler.add_argument("--every", type=float, default=5.0, help="one change every this many seconds (default 5)")
    scaler.add_argument("--seed", type=int, default=1)
    scaler.add_argument("--report", metavar="DIR", help="write scale.md and spread.png here")
    wire = sub.add_parser("fuzz-wire", help="structure-aware inputs to the core's parsers and protocol objects, with invariants checked after each")
    wire.add_argument("--inputs", type=int, default=1_000_000, help="how many (default 1,000,000)")
    wire.add_argument("--seed", type=int, default=1)
    wire.add_argument("--start", type=int, default=0, help="the first input (a failure replays from its batch of %d)" % 1000)
    for p in (run, replay, fuzzer, sweeper, labber, scaler, wire):
        p.add_argument("--json", action="store_true")
    for p in (run, replay, fuzzer):
        p.add_argument("--plant", choices=sorted(PLANTED) + sorted(PLANTED_DRIVE), help="run a test copy of the core with this bug planted")
    args = parser.parse_args(argv)
    try:
        return {"run": cmd_run, "replay": cmd_replay, "fuzz": cmd_fuzz, "sweep": cmd_sweep, "lab": cmd_lab, "scale": cmd_scale, "fuzz-wire": cmd_fuzz_wire}[args.command](args)
    except ScenarioError as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
