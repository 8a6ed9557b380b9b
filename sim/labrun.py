"""The same scenario file, run by real daemons in the network lab, beside the simulation.

``python -m sim lab SCENARIO [--report DIR]`` starts ``nodes`` daemons in network
namespaces (``sim/netlab.py``), waits until they all see each other, then plays
the scenario's faults in wall-clock time: a partition is an nftables rule, a crash
is SIGKILL (and, with ``until``, a restart on the same home), a clean stop is
SIGTERM, a pause is SIGSTOP then SIGCONT, a loss burst changes every host's
nftables loss rule. After the last fault it polls every daemon's ``peer.list``
until membership has converged (every running daemon sees every other alive and
every stopped one dead or left) and measures crash detection from the daemons'
``peer.state`` events. Then it runs the simulation of the same scenario and
prints both, with their ratio.

Not carried to the lab: duplication and reordering (nftables cannot duplicate),
and the store workload (the comparison is about membership).
"""

from __future__ import annotations

import copy
import signal
import time
from pathlib import Path
from typing import Any, Callable

from sim.netlab import NetLab
from sim.run import Runner, percentile
from sim.scenario import Fault, Scenario

POLL = 0.1


def _host(index: int) -> int:
    return index + 1


def converged(lab: NetLab, up: list[int], down: list[int], ids: dict[int, str]) -> bool:
    for host in up:
        view = lab.peers(host)
        if any(view.get(ids[other]) != "alive" for other in up if other != host):
            return False
        if any(view.get(ids[gone], "dead") not in ("dead", "left") for gone in down):
            return False
    return True


def run_in_lab(scenario: Scenario, directory: Path | None = None, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    n = scenario.nodes
    with NetLab(hosts=n, loss=scenario.loss * 100, directory=directory) as lab:
        lab.start_all()
        hosts = list(range(1, n + 1))
        ids = {h: lab.node_id(h) for h in hosts}
        lab.wait_until(lambda: converged(lab, hosts, [], ids), 90, "every daemon seeing every other alive")
        echo(f"lab: {n} daemons up and in agreement")
        down: set[int] = set()
        paused: set[int] = set()
        crashes: list[tuple[int, float]] = []  # (host, wall time of the kill)
        actions: list[tuple[float, Callable[[], None]]] = []

        def plan(fault: Fault) -> None:
            chosen = [_host(i) for i in (fault.nodes or list(range(fault.count)))]
            if fault.kind == "partition":
                outside = [h for h in hosts if h not in chosen]
                actions.append((fault.at, lambda: lab.partition(chosen, outside)))
                actions.append((fault.ends(), lab.heal))
            elif fault.kind in ("crash", "stop", "restart"):
                sig = signal.SIGTERM if fault.kind == "stop" else signal.SIGKILL

                def kill() -> None:
                    for h in chosen:
                        if h not in down:
                            crashes.append((h, lab.kill(h, sig)))
                            down.add(h)

                def restart() -> None:
                    for h in chosen:
                        if h in down:
                            lab.start(h)
                            down.discard(h)

                actions.append((fault.at, kill))
                if fault.kind == "restart":
                    actions.append((fault.at, restart))
                elif fault.until is not None:
                    actions.append((fault.until, restart))
            elif fault.kind == "pause":

                def stop() -> None:
                    for h in chosen:
                        lab.signal(h, signal.SIGSTOP)
                        paused.add(h)

                def resume() -> None:
                    for h in chosen:
                        lab.signal(h, signal.SIGCONT)
                        paused.discard(h)

                actions.append((fault.at, stop))
                actions.append((fault.ends(), resume))
            elif fault.kind == "loss":
                actions.append((fault.at, lambda: lab.set_loss(fault.loss * 100)))
                actions.append((fault.ends(), lambda: lab.set_loss(scenario.loss * 100)))

        for fault in scenario.faults:
            plan(fault)
        actions.sort(key=lambda a: a[0])
        start = time.monotonic()
        wall_start = time.time()
        for at, action in actions:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            action()
        quiet = scenario.quiet_from()
        delay = start + quiet - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        quiet_wall = time.time()
        up = [h for h in hosts if h not in down]
        converged_after: float | None = None
        deadline = time.monotonic() + scenario.converge_within
        while time.monotonic() < deadline:
            if converged(lab, up, sorted(down), ids):
                # when it happened: the last change any running daemon reported before this poll
                # (the events carry the controller's clock as they arrive; polling adds its own delay)
                seen = time.time()
                changes = [e["t"] for e in lab.events(since=quiet_wall) if e["topic"] == "peer.state" and e["host"] in up and e["t"] <= seen]
                converged_after = max([quiet_wall, *changes]) - quiet_wall
                break
            time.sleep(POLL)
        detections = []
        for host, killed_at in crashes:
            for event in lab.events(since=killed_at):
                if event["topic"] == "peer.state" and event.get("node_id") == ids[host] and event.get("state") == "dead":
                    detections.append(event["t"] - killed_at)
        return {
            "convergence_seconds": None if converged_after is None else round(converged_after, 3),
            "detections": len(detections),
            "detection_p50": percentile(detections, 50),
            "detection_p99": percentile(detections, 99),
            "wall_seconds": round(time.time() - wall_start, 1),
        }


def side_by_side(scenario: Scenario, report: Path | None = None, *, trials: int = 1, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The scenario ``trials`` times in the lab and with ``trials`` seeds in the simulation
    (the file's seed, then the next ones); each measure's mean on both sides."""
    labs, sims = [], []
    for trial in range(trials):
        labs.append(run_in_lab(scenario, echo=echo))
        seeded = copy.deepcopy(scenario)
        seeded.seed = scenario.seed + trial
        sims.append(Runner(seeded, keep_trace=False).run().metrics)
        echo(f"trial {trial + 1}: lab {labs[-1]['convergence_seconds']} s, simulation {sims[-1]['convergence_seconds']} s to converge")
    rows = []
    for key in ("convergence_seconds", "detection_p50", "detection_p99"):
        a, b = _mean([r.get(key) for r in labs]), _mean([r.get(key) for r in sims])
        ratio = round(b / a, 2) if a is not None and b is not None and a else None
        rows.append({"measure": key, "lab": a, "simulation": b, "simulation / lab": ratio})
    lines = [f"# {scenario.name}: the lab and the simulation", "", f"`{scenario.source}`, {scenario.nodes} nodes, mean of {trials} trial(s) on each side.", "",
             "| measure | lab (real daemons) | simulation | simulation / lab |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['measure']} | {r['lab']} | {r['simulation']} | {r['simulation / lab']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    echo(text)
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "lab-vs-simulation.md").write_text(text)
    return {"lab": labs, "simulation": sims, "rows": rows}


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return round(sum(numbers) / len(numbers), 3) if numbers and len(numbers) == len(values) else None
