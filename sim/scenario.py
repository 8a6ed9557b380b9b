"""Scenarios: what a simulated run is made of, as a TOML file or drawn from a seed.

A scenario names the nodes, the network, the faults, the churn, the workload, how
long it runs and which invariants must hold. Example (``sim/scenarios/``)::

    name = "partition under loss"
    nodes = 20
    duration = 120        # simulated seconds
    seed = 7

    [network]
    loss = 0.10           # per datagram
    latency = [0.0002, 0.002]
    duplicate = 0.01
    reorder = 0.02

    [[fault]]
    at = 20
    kind = "partition"    # partition, crash, restart, stop, pause, loss
    nodes = [0, 1, 2, 3]  # by index; or count = 4 (drawn from the seed)
    until = 50            # partition, pause, loss: when it ends; crash: restarts then

    [churn]
    crashes_per_minute = 1.0
    down = [5.0, 30.0]    # how long a crashed node stays down, seconds

    [workload]
    store_writes_per_second = 2.0

    [drive]               # drive files on the nodes' disks (sim/drivesim.py)
    files = 20            # put at the start, k + m fragments each
    k = 4
    m = 2
    grace = 60            # a holder gone this long has its fragments rebuilt elsewhere
    repair_interval = 10
    orphan_grace = 120
    fragment_mb = 16
    quota_mb = 1024
    rate_mb = 50          # MB/s a rebuild moves

    [invariants]
    converge_within = 30.0   # after the last fault ends, every live node sees every other alive
    max_false_dead = 0       # live, reachable nodes declared dead
    store_converge_within = 30.0
    drive_repair_within = 180.0  # every file back at k + m fragments on distinct running nodes

``Scenario.random(seed)`` draws one for the fuzzer: the same seed, the same scenario.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.drivesim import DriveSettings

FAULT_KINDS = ("partition", "crash", "restart", "stop", "pause", "loss")


class ScenarioError(Exception):
    pass


@dataclass
class Fault:
    at: float
    kind: str
    nodes: list[int] = field(default_factory=list)
    count: int = 0
    until: float | None = None
    loss: float = 0.0  # kind = "loss": the segment's loss until ``until``

    def ends(self) -> float:
        return self.until if self.until is not None else self.at


@dataclass
class Scenario:
    name: str = "scenario"
    nodes: int = 10
    duration: float = 60.0
    seed: int = 1
    loss: float = 0.0
    latency: tuple[float, float] = (0.0002, 0.002)
    duplicate: float = 0.0
    reorder: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    crashes_per_minute: float = 0.0
    down: tuple[float, float] = (5.0, 30.0)
    store_writes_per_second: float = 0.0
    converge_within: float = 30.0
    max_false_dead: int = 0
    store_converge_within: float = 30.0
    drive: DriveSettings | None = None
    source: str = ""  # the file it came from, or "random:SEED"

    def quiet_from(self) -> float:
        """When the last fault (or churn) ends: the invariants' clocks start here."""
        ends = [f.ends() for f in self.faults]
        if self.crashes_per_minute:
            ends.append(self.duration - self.converge_within)
        return max([0.0, *ends])

    @classmethod
    def load(cls, path: Path) -> "Scenario":
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"{path}: {exc}") from None
        scenario = cls.from_dict(data, where=str(path))
        scenario.source = str(path)
        return scenario

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "scenario") -> "Scenario":
        known = {"name", "nodes", "duration", "seed", "network", "fault", "churn", "workload", "drive", "invariants"}
        unknown = set(data) - known
        if unknown:
            raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
        s = cls(name=str(data.get("name", "scenario")))
        s.nodes = _number(data, "nodes", int, 1, 20_000, 10, where)
        s.duration = _number(data, "duration", float, 1, 100_000, 60.0, where)
        s.seed = _number(data, "seed", int, 0, 2**63, 1, where)
        network = data.get("network", {})
        s.loss = _number(network, "loss", float, 0, 1, 0.0, where)
        s.duplicate = _number(network, "duplicate", float, 0, 1, 0.0, where)
        s.reorder = _number(network, "reorder", float, 0, 1, 0.0, where)
        latency = network.get("latency", [0.0002, 0.002])
        if not (isinstance(latency, list) and len(latency) == 2 and all(isinstance(x, (int, float)) and x >= 0 for x in latency) and latency[0] <= latency[1]):
            raise ScenarioError(f"{where}: network.latency is [min, max] in seconds")
        s.latency = (float(latency[0]), float(latency[1]))
        for raw in data.get("fault", []):
            s.faults.append(_fault(raw, s, where))
        churn = data.get("churn", {})
        s.crashes_per_minute = _number(churn, "crashes_per_minute", float, 0, 1000, 0.0, where)
        down = churn.get("down", [5.0, 30.0])
        if not (isinstance(down, list) and len(down) == 2 and 0 <= down[0] <= down[1]):
            raise ScenarioError(f"{where}: churn.down is [min, max] in seconds")
        s.down = (float(down[0]), float(down[1]))
        workload = data.get("workload", {})
        s.store_writes_per_second = _number(workload, "store_writes_per_second", float, 0, 10_000, 0.0, where)
        inv = data.get("invariants", {})
        s.converge_within = _number(inv, "converge_within", float, 0.1, 100_000, 30.0, where)
        s.max_false_dead = _number(inv, "max_false_dead", int, 0, 10**9, 0, where)
        s.store_converge_within = _number(inv, "store_converge_within", float, 0.1, 100_000, 30.0, where)
        if "drive" in data:
            s.drive = _drive(data["drive"], s, where)
            s.drive.repair_within = _number(inv, "drive_repair_within", float, 0.1, 100_000, s.drive.repair_within, where)
        return s

    @classmethod
    def random(cls, seed: int) -> "Scenario":
        """A scenario for the fuzzer, drawn from ``seed`` alone: a few nodes, a lossy,
        jittery segment, and faults that all end well before the run does."""
        rng = random.Random(f"lannode-fuzz-{seed}")
        n = rng.randint(4, 16)
        s = cls(name=f"fuzz {seed}", nodes=n, seed=seed, source=f"random:{seed}")
        s.loss = rng.choice([0.0, 0.01, 0.05, 0.1])
        s.duplicate = rng.choice([0.0, 0.0, 0.01, 0.05])
        s.reorder = rng.choice([0.0, 0.0, 0.02, 0.1])
        s.store_writes_per_second = rng.choice([0.0, 0.5, 2.0])
        active = rng.uniform(30, 90)
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice(FAULT_KINDS)
            at = rng.uniform(5, active)
            span = rng.uniform(2, 25)
            count = rng.randint(1, max(1, n // 3))
            until = min(at + span, active)
            s.faults.append(Fault(at=at, kind=kind, count=count, until=until, loss=rng.choice([0.2, 0.4]) if kind == "loss" else 0.0))
        s.converge_within = 40.0
        s.store_converge_within = 40.0
        if n >= 6 and rng.random() < 0.5:  # drive files on the nodes' disks, repaired as holders go
            s.drive = DriveSettings(files=rng.randint(1, 8), k=rng.randint(2, 3), m=rng.randint(1, 2), grace=rng.choice([5.0, 10.0, 20.0]), repair_interval=2.0, orphan_grace=rng.choice([5.0, 20.0]), repair_within=40.0)
        s.duration = s.quiet_from() + s.converge_within + 5
        return s


def _drive(raw: Any, s: Scenario, where: str) -> DriveSettings:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: [drive] is a table")
    known = {"files", "k", "m", "grace", "repair_interval", "orphan_grace", "fragment_mb", "quota_mb", "rate_mb"}
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(f"{where}: unknown keys in [drive]: {sorted(unknown)}")
    d = DriveSettings()
    d.files = _number(raw, "files", int, 0, 100_000, d.files, where)
    d.k = _number(raw, "k", int, 1, 254, d.k, where)
    d.m = _number(raw, "m", int, 0, 254, d.m, where)
    if d.k + d.m > min(255, s.nodes):
        raise ScenarioError(f"{where}: drive k + m is at most the number of nodes ({s.nodes}) and 255")
    d.grace = _number(raw, "grace", float, 0, 1e6, d.grace, where)
    d.repair_interval = _number(raw, "repair_interval", float, 0.1, 1e6, d.repair_interval, where)
    d.orphan_grace = _number(raw, "orphan_grace", float, 0, 1e6, d.orphan_grace, where)
    d.fragment_bytes = int(_number(raw, "fragment_mb", float, 0.001, 1e6, d.fragment_bytes / 1e6, where) * 1e6)
    d.quota_bytes = int(_number(raw, "quota_mb", float, 0.001, 1e9, d.quota_bytes / 1e6, where) * 1e6)
    d.rate = _number(raw, "rate_mb", float, 0.001, 1e6, d.rate / 1e6, where) * 1e6
    return d


def _fault(raw: Any, s: Scenario, where: str) -> Fault:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: each [[fault]] is a table")
    kind = raw.get("kind")
    if kind not in FAULT_KINDS:
        raise ScenarioError(f"{where}: fault kind is one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    at = _number(raw, "at", float, 0, s.duration, 0.0, where)
    until = raw.get("until")
    if until is not None and (not isinstance(until, (int, float)) or until < at):
        raise ScenarioError(f"{where}: a fault's until comes after its at")
    nodes = raw.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(i, int) and 0 <= i < s.nodes for i in nodes):
        raise ScenarioError(f"{where}: a fault's nodes are indexes below {s.nodes}")
    count = _number(raw, "count", int, 0, s.nodes, 0, where)
    if not nodes and not count:
        raise ScenarioError(f"{where}: a {kind} fault names nodes = [...] or count = N")
    loss = _number(raw, "loss", float, 0, 1, 0.0, where)
    return Fault(at=at, kind=kind, nodes=list(nodes), count=count, until=float(until) if until is not None else None, loss=loss)


def _number(table: Any, key: str, kind: type, low: float, high: float, default: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table around {key}")
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ScenarioError(f"{where}: {key} is a number ({kind.__name__})")
    if not low <= value <= high:
        raise ScenarioError(f"{where}: {key} is between {low:g} and {high:g}, got {value}")
    return kind(value)
