"""Run a scenario on the virtual network, check its invariants, measure it.

``Runner(scenario).run()`` builds the nodes (``sim.virtualnet``), schedules the
scenario's faults, churn and store writes from the scenario's seed, and checks as
it goes:

* **membership converges**: within ``converge_within`` seconds after the last fault
  ends, every running node sees every other running node alive, and every node
  that is down (crashed, or stopped, and not restarted) dead or left;
* **no false deaths**: a node declared dead by another while it was running,
  unpaused and reachable from it, with no fault touching either of them in the
  previous ``FAULT_SHADOW`` seconds, counts against ``max_false_dead``;
* **the store converges**: ``store_converge_within`` seconds after the last fault,
  every running node's replicated map holds the same entries.

A violation carries the seed and a trace cut down to the nodes it concerns: the
faults and membership changes in time order. The whole trace's SHA-256 is the
run's fingerprint: the same scenario and seed give the same fingerprint, in any
process, on any machine (``tests/test_sim.py`` checks it across hash seeds).
"""

from __future__ import annotations

import functools
import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lannode.core.membership import Event, Membership, MemberStateChanged, State
from sim.drivesim import DriveWorld
from sim.scenario import Fault, Scenario
from sim.virtualnet import Address, LinkModel, SimNode, VirtualNetwork

FAULT_SHADOW = 30.0  # seconds after a fault during which a death is not counted as false
CHECK_EVERY = 0.1  # how often convergence is looked at once the faults are over, simulated seconds


@dataclass
class Violation:
    invariant: str
    at: float
    detail: str
    nodes: list[str] = field(default_factory=list)


@dataclass
class Result:
    scenario: Scenario
    violations: list[Violation]
    metrics: dict[str, Any]
    trace: list[str]
    fingerprint: str
    wall_seconds: float
    detections: list[float] = field(default_factory=list)  # seconds from each crash to each observer's "dead"

    def minimal_trace(self, violation: Violation, limit: int = 40) -> list[str]:
        """The trace lines about the violation's nodes, the last ``limit`` before it."""
        names = set(violation.nodes)
        lines = [line for line in self.trace if float(line.split(" ", 1)[0]) <= violation.at and (not names or any(f" {n} " in f" {line} " for n in names))]
        return lines[-limit:]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "source": self.scenario.source,
            "seed": self.scenario.seed,
            "nodes": self.scenario.nodes,
            "simulated_seconds": self.scenario.duration,
            "wall_seconds": round(self.wall_seconds, 2),
            "fingerprint": self.fingerprint,
            "violations": [{"invariant": v.invariant, "at": round(v.at, 3), "detail": v.detail, "nodes": v.nodes} for v in self.violations],
            "metrics": self.metrics,
        }


class Runner:
    def __init__(self, scenario: Scenario, *, membership_class: type[Membership] = Membership, drive_class: type[DriveWorld] = DriveWorld, keep_trace: bool = True) -> None:
        self.s = scenario
        self.keep_trace = keep_trace
        writes = scenario.store_writes_per_second > 0 or scenario.drive is not None
        self.net = VirtualNetwork(
            seed=scenario.seed,
            link=LinkModel(loss=scenario.loss, latency=scenario.latency, duplicate=scenario.duplicate, reorder=scenario.reorder),
            store=writes,
            membership_class=membership_class,
        )
        self.rng = random.Random(f"lannode-sim-{scenario.seed}-plan")  # faults and workload, apart from the network's draws
        self.trace: list[str] = []
        self.hash = hashlib.sha256()
        self.violations: list[Violation] = []
        self.nodes: list[SimNode] = []
        self.names: dict[str, str] = {}  # node id -> n<index>
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.touched: dict[int, float] = {}  # index -> when a fault last involved it
        self.blocked = Counter[frozenset[Address]]()
        self.false_dead = 0
        self.detections: list[float] = []
        self.crashed_at: dict[int, float] = {}
        self.converged_at: float | None = None
        self.store_converged_at: float | None = None
        self.drive = drive_class(self.net, scenario.drive, note=self.note, names=self.names) if scenario.drive is not None else None
        self.drive_unreadable: set[str] = set()
        self.drive_healed_at: float | None = None

    # -- the trace ---------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        line = f"{self.net.now:.4f} {text}"
        self.hash.update(line.encode() + b"\n")
        if self.keep_trace:
            self.trace.append(line)

    def _on_event(self, node: SimNode, event: Event) -> None:
        if self.drive is not None:
            self.drive.on_event(node, event)
        if not isinstance(event, MemberStateChanged):
            return
        observer, subject = node.name, self.names.get(event.node_id, event.node_id[:8])
        before = event.previous.value if event.previous else "unknown"
        self.note(f"{observer} sees {subject} {before}->{event.state.value}")
        if event.state is State.DEAD and subject.startswith("n"):
            index = int(subject[1:])
            if index in self.crashed_at and index in self.down:
                self.detections.append(self.net.now - self.crashed_at[index])
            elif self._false_death(int(observer[1:]), index):
                self.false_dead += 1
                if self.false_dead > self.s.max_false_dead:
                    self.violations.append(Violation("no false deaths", self.net.now, f"{observer} declared {subject} dead while it ran, reachable and untouched by faults ({self.false_dead} so far, at most {self.s.max_false_dead})", [observer, subject]))

    def _false_death(self, observer: int, subject: int) -> bool:
        now = self.net.now
        if subject in self.down or subject in self.paused:
            return False
        if now - self.touched.get(subject, -1e9) < FAULT_SHADOW or now - self.touched.get(observer, -1e9) < FAULT_SHADOW:
            return False
        pair = frozenset((self.nodes[observer].address, self.nodes[subject].address))
        return self.blocked[pair] == 0

    # -- building and faults -----------------------------------------------------------------------
    def _pick(self, fault: Fault) -> list[int]:
        if fault.nodes:
            return list(fault.nodes)
        up = [i for i in range(len(self.nodes)) if i not in self.down]
        return sorted(self.rng.sample(up, min(fault.count, len(up))))

    def _apply(self, fault: Fault) -> None:
        chosen = self._pick(fault)
        for i in chosen:
            self.touched[i] = self.net.now
        self.note(f"fault {fault.kind} {' '.join(f'n{i}' for i in chosen)}" + (f" until {fault.until:.3f}" if fault.until is not None else ""))
        if fault.kind == "partition":
            inside = set(chosen)
            pairs = [frozenset((self.nodes[a].address, self.nodes[b].address)) for a in inside for b in range(len(self.nodes)) if b not in inside]
            for pair in pairs:
                self.blocked[pair] += 1
                self.net.blocked.add(pair)
            for i in range(len(self.nodes)):
                self.touched[i] = self.net.now

            def heal() -> None:
                for pair in pairs:
                    self.blocked[pair] -= 1
                    if self.blocked[pair] <= 0:
                        self.net.blocked.discard(pair)
                for i in range(len(self.nodes)):
                    self.touched[i] = self.net.now
                self.note(f"heal {' '.join(f'n{i}' for i in chosen)}")

            self.net.at(fault.ends(), heal)
        elif fault.kind in ("crash", "stop"):
            for i in chosen:
                if i in self.down:
                    continue
                (self.net.kill if fault.kind == "crash" else self.net.stop)(self.nodes[i])
                self.down.add(i)
                self.crashed_at[i] = self.net.now
            if fault.until is not None:
                for i in chosen:
                    self.net.at(fault.until, functools.partial(self._restart, i))
        elif fault.kind == "restart":
            for i in chosen:
                if i not in self.down:
                    self.net.kill(self.nodes[i])
                    self.down.add(i)
                self._restart(i)
        elif fault.kind == "pause":
            for i in chosen:
                if i in self.down:
                    continue
                self.net.pause(self.nodes[i])
                self.paused.add(i)

            def resume() -> None:
                for i in chosen:
                    if i in self.paused:
                        self.paused.discard(i)
                        self.touched[i] = self.net.now
                        if i not in self.down:
                            self.net.resume(self.nodes[i])
                self.note(f"resume {' '.join(f'n{i}' for i in chosen)}")

            self.net.at(fault.ends(), resume)
        elif fault.kind == "loss":
            self.net.link.loss = fault.loss
            for i in range(len(self.nodes)):
                self.touched[i] = self.net.now

            def restore() -> None:
                self.net.link.loss = self.s.loss
                for i in range(len(self.nodes)):
                    self.touched[i] = self.net.now
                self.note(f"loss back to {self.s.loss:g}")

            self.net.at(fault.ends(), restore)

    def _restart(self, i: int) -> None:
        if i not in self.down:
            return
        self.down.discard(i)
        self.paused.discard(i)
        self.touched[i] = self.net.now
        self.nodes[i] = self.net.restart(self.nodes[i])
        if self.drive is not None:
            self.drive.attach(self.nodes[i])
        self.note(f"restart n{i}")

    def _plan_churn(self) -> None:
        rate = self.s.crashes_per_minute / 60.0
        if rate <= 0:
            return
        t, end = 0.0, self.s.quiet_from()
        while True:
            t += self.rng.expovariate(rate)
            if t >= end:
                return
            crash = Fault(at=t, kind="crash", count=1, until=min(t + self.rng.uniform(*self.s.down), end))
            self.net.at(t, functools.partial(self._apply, crash))

    def _plan_writes(self) -> None:
        rate = self.s.store_writes_per_second
        if rate <= 0:
            return
        t, end = 0.0, self.s.quiet_from()
        times: list[float] = []
        while True:
            t += self.rng.expovariate(rate)
            if t >= end:
                break
            times.append(t)

        def write(n: int) -> None:
            up = [i for i in range(len(self.nodes)) if i not in self.down and i not in self.paused]
            if up:
                i = self.rng.choice(up)
                key = f"k{self.rng.randrange(64)}"
                self.net.write(self.nodes[i], key, f"v{n}".encode())
                self.note(f"n{i} writes {key}")
            if n < len(times):  # one write waits in the event queue at a time: a short queue is a fast one
                self.net.at(times[n], functools.partial(write, n + 1))

        if times:
            self.net.at(times[0], functools.partial(write, 1))

    # -- invariants ---------------------------------------------------------------------------------
    def _membership_converged(self) -> bool:
        up = [self.nodes[i] for i in range(len(self.nodes)) if i not in self.down]
        gone = [self.nodes[i] for i in self.down]
        return self.net.all_see(up, State.ALIVE) and all(a.state_of(b) in (State.DEAD, State.LEFT, None) for a in up for b in gone)

    def _store_fingerprints(self) -> set[bytes]:
        prints = set()
        for i in range(len(self.nodes)):
            node = self.nodes[i]
            if i in self.down or node.store is None:
                continue
            h = hashlib.sha256()
            for key, entry in sorted(node.store.entries.items()):
                h.update(key.encode() + entry.rank()[0].to_bytes(8, "big") + entry.origin + (entry.value or b"-"))
            prints.add(h.digest())
        return prints

    def _check(self) -> None:
        now, quiet = self.net.now, self.s.quiet_from()
        if now >= quiet:
            if self.converged_at is None and self._membership_converged():
                self.converged_at = now
                self.note("membership converged")
            if self.net.with_store and self.store_converged_at is None and len(self._store_fingerprints()) <= 1:
                self.store_converged_at = now
                self.note("store converged")
        if now < self.s.duration:
            self.net.at(max(now + CHECK_EVERY, min(quiet, self.s.duration)), self._check)  # nothing to look at before the quiet

    def _running(self) -> list[SimNode]:
        return [self.nodes[i] for i in range(len(self.nodes)) if i not in self.down]

    def _plan_drive(self) -> None:
        assert self.drive is not None and self.s.drive is not None
        for node in self.nodes:
            self.drive.attach(node)
        for f in range(self.s.drive.files):

            def put() -> None:
                up = [i for i in range(len(self.nodes)) if i not in self.down and i not in self.paused]
                if up:
                    assert self.drive is not None
                    self.drive.put(self.nodes[self.rng.choice(up)])

            self.net.at(2.0 + f * 0.05, put)
        self.net.at(2.0 + self.s.drive.files * 0.05 + 1.0, self._check_drive)

    def _check_drive(self) -> None:
        """Every second: no file unreadable while k of its holders are up; once the faults are
        over, when every file is back at k + m."""
        assert self.drive is not None
        running = self._running()
        for problem in self.drive.check(running):
            file_id = problem.split(" ", 1)[0]
            if file_id not in self.drive_unreadable:
                self.drive_unreadable.add(file_id)
                self.violations.append(Violation("no drive file unreadable while k of its holders are up", self.net.now, problem))
        if self.net.now >= self.s.quiet_from() and self.drive_healed_at is None and not self.drive.unhealthy(running):
            self.drive_healed_at = self.net.now
            self.note("drive repaired: every file at k + m")
        if self.net.now < self.s.duration:
            self.net.at(self.net.now + 1.0, self._check_drive)

    def _deadline(self, name: str, bound: float, met: float | None, about: list[str]) -> None:
        if met is None:
            self.violations.append(Violation(name, self.s.quiet_from() + bound, f"not within {bound:g} s of the last fault", about))

    # -- running ----------------------------------------------------------------------------------------
    def run(self) -> Result:
        started = time.perf_counter()
        net = self.net
        net.on_event = self._on_event
        for i in range(self.s.nodes):
            node = net.add(f"n{i}")
            self.nodes.append(node)
            self.names[node.node_id] = node.name
        for fault in sorted(self.s.faults, key=lambda f: f.at):
            net.at(fault.at, functools.partial(self._apply, fault))
        self._plan_churn()
        self._plan_writes()
        if self.drive is not None:
            self._plan_drive()
        net.at(0.0, self._check)
        quiet = self.s.quiet_from()
        net.run_until(min(self.s.duration, quiet + self.s.converge_within))
        stragglers = [f"n{i}" for i in range(len(self.nodes)) if i not in self.down and any(self.nodes[i].state_of(self.nodes[j]) is not State.ALIVE for j in range(len(self.nodes)) if j != i and j not in self.down)]
        self._deadline("membership converges", self.s.converge_within, self.converged_at, stragglers[:6])
        net.run_until(self.s.duration)
        if net.with_store:
            self._deadline("the store converges", self.s.store_converge_within, self.store_converged_at, [])
        drive_metrics: dict[str, Any] = {}
        if self.drive is not None and self.s.drive is not None:
            met = self.drive_healed_at if self.drive_healed_at is not None and self.drive_healed_at <= self.s.quiet_from() + self.s.drive.repair_within else None
            if met is None:
                self.violations.append(Violation("drive repair restores k + m", self.s.quiet_from() + self.s.drive.repair_within, f"not within {self.s.drive.repair_within:g} s of the last fault: " + "; ".join(self.drive.unhealthy(self._running())[:5])))
            c = self.drive.counters
            drive_metrics = {
                "drive_files": c["puts"],
                "drive_availability": round(self.drive.readable_samples / self.drive.samples, 5) if self.drive.samples else None,
                "drive_repair_seconds": None if self.drive_healed_at is None else round(self.drive_healed_at - self.s.quiet_from(), 3),
                "drive_repaired_fragments": c["repaired_fragments"],
                "drive_dropped_fragments": c["dropped"],
                "drive_unrepairable": c["unrepairable"],
            }
        received = sum(n.membership.counters.bytes_received for n in self.nodes)
        sent = sum(n.membership.counters.bytes_sent for n in self.nodes)
        seconds = max(self.s.duration, 1e-9)
        sent_kbit = [n.membership.counters.bytes_sent * 8 / 1000 / seconds for n in self.nodes]
        received_kbit = [n.membership.counters.bytes_received * 8 / 1000 / seconds for n in self.nodes]
        metrics = {
            "convergence_seconds": None if self.converged_at is None else round(self.converged_at - quiet, 3),
            "store_convergence_seconds": None if self.store_converged_at is None else round(self.store_converged_at - quiet, 3),
            "detections": len(self.detections),
            "detection_p50": percentile(self.detections, 50),
            "detection_p99": percentile(self.detections, 99),
            "false_dead": self.false_dead,
            "kbit_sent_per_node_mean": round(sum(sent_kbit) / len(sent_kbit), 2),
            "kbit_sent_per_node_max": round(max(sent_kbit), 2),
            "kbit_received_per_node_mean": round(sum(received_kbit) / len(received_kbit), 2),
            "kbit_received_per_node_max": round(max(received_kbit), 2),
            "bytes_sent": sent,
            "bytes_received": received,
            **drive_metrics,
        }
        return Result(self.s, self.violations, metrics, self.trace, self.hash.hexdigest(), time.perf_counter() - started, sorted(self.detections))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 3)
