"""The simulator: scenarios run the real protocol objects, replay bit for bit from their
seed, and the fuzzer finds a bug planted in a test copy of the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.__main__ import fuzz
from sim.bugs import IgnoresRefutation
from sim.run import Runner
from sim.scenario import Scenario, ScenarioError

REPO = Path(__file__).resolve().parent.parent
PARTITION = REPO / "sim" / "scenarios" / "partition.toml"


def sim(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_a_partition_under_loss_heals_and_membership_and_store_converge() -> None:
    result = Runner(Scenario.load(PARTITION)).run()
    assert result.violations == []
    m = result.metrics
    assert m["convergence_seconds"] is not None and m["convergence_seconds"] <= 30
    assert m["store_convergence_seconds"] is not None
    assert m["detections"] > 0 and m["false_dead"] == 0  # the crashed node was seen dead; nobody else
    assert any(" fault partition " in f" {line} " for line in result.trace) and any("heal" in line for line in result.trace)


def test_the_same_seed_replays_bit_for_bit_in_another_process_and_another_seed_does_not() -> None:
    runs = [json.loads(sim("run", str(PARTITION), "--json", hash_seed=h).stdout) for h in ("1", "2")]
    assert runs[0]["fingerprint"] == runs[1]["fingerprint"]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    other = json.loads(sim("run", str(PARTITION), "--json", "--seed", "8").stdout)
    assert other["fingerprint"] != runs[0]["fingerprint"]


def test_the_fuzzer_finds_a_planted_bug_and_its_seed_replays_it_while_the_real_core_holds() -> None:
    failures, runs = fuzz(60, 1, IgnoresRefutation, max_runs=8)
    assert runs == 8 and failures, "refutation ignored: some random scenario must break an invariant"
    failing = failures[0]
    seed = failing.scenario.seed
    replayed = sim("replay", str(seed), "--plant", "refutation", "--json")
    assert replayed.returncode == 1
    again = json.loads(replayed.stdout)
    assert again["fingerprint"] == failing.fingerprint
    assert [v["invariant"] for v in again["violations"]] == [v.invariant for v in failing.violations]
    assert failing.minimal_trace(failing.violations[0])  # what led to it, cut down to its nodes
    # the same scenarios with the real core break nothing
    real_failures, _ = fuzz(60, 1, IgnoresRefutation.__mro__[1], max_runs=8)
    assert real_failures == []


def test_the_command_line_fuzzes_and_reports_seeds(tmp_path: Path) -> None:
    clean = sim("fuzz", "--seconds", "5", "--start", "100")
    assert clean.returncode == 0 and "broke an invariant" in clean.stdout
    planted = sim("fuzz", "--seconds", "5", "--start", "1", "--plant", "refutation")
    assert planted.returncode == 1
    assert "VIOLATION" in planted.stdout and "python -m sim replay" in planted.stdout


def test_a_sweep_writes_a_report_with_plots(tmp_path: Path) -> None:
    result = sim("sweep", str(PARTITION), "--nodes", "5,10", "--loss", "0,0.1", "--report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    assert report.count("\n| ") >= 5  # the header and four runs
    for plot in ("convergence.png", "bandwidth.png", "detection.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("nodes = 0", "nodes is between"),
        ("nodez = 3", "unknown keys"),
        ('[[fault]]\nat = 1\nkind = "meteor"\nnodes = [0]', "fault kind"),
        ('[[fault]]\nat = 1\nkind = "crash"', "names nodes"),
        ("[network]\nlatency = [0.5, 0.1]", "latency"),
        ("nodes = [", "Invalid value"),
    ],
)
def test_a_broken_scenario_is_refused_with_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        Scenario.load(path)
    run = sim("run", str(path))
    assert run.returncode == 2 and message.split()[0] in run.stderr


def test_the_network_lab_plays_the_same_scenario_file_with_real_daemons(tmp_path: Path) -> None:
    scenario = tmp_path / "lab.toml"
    scenario.write_text(
        'name = "a crash and a partition, in the lab"\nnodes = 5\nduration = 40\n\n'
        '[[fault]]\nat = 3\nkind = "partition"\nnodes = [0]\nuntil = 10\n\n'
        '[[fault]]\nat = 12\nkind = "crash"\nnodes = [4]\n\n'
        "[invariants]\nconverge_within = 25.0\n"
    )
    result = sim("lab", str(scenario), "--json", "--report", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    both = json.loads(result.stdout)
    (lab,), (simulated,) = both["lab"], both["simulation"]
    assert lab["convergence_seconds"] is not None and simulated["convergence_seconds"] is not None
    assert lab["detections"] == 4  # the four others each saw the crashed daemon dead
    assert "| convergence_seconds |" in (tmp_path / "report" / "lab-vs-simulation.md").read_text()


def test_the_worlds_faults_do_what_they_say() -> None:
    from lannode.core.membership import State
    from sim.virtualnet import LinkModel, VirtualNetwork

    # every datagram twice: the second copies are dropped as replays, and nothing else changes
    net = VirtualNetwork(seed=11, link=LinkModel(duplicate=1.0))
    nodes = [net.add(f"n{i}") for i in range(4)]
    assert net.run_until(5, lambda: net.all_see(nodes, State.ALIVE))
    net.run_for(5)
    assert sum(n.membership.codec.dropped["replay"] for n in nodes) > 100
    # a paused node hears nothing, is declared dead, and refutes once it runs again
    sleeper, others = nodes[0], nodes[1:]
    net.pause(sleeper)
    assert net.run_until(net.now + 20, lambda: net.all_see(others, State.DEAD, [sleeper]))
    assert net.dropped_while_paused > 0
    net.resume(sleeper)
    assert net.run_until(net.now + 20, lambda: net.all_see(nodes, State.ALIVE))
    # the simulator's signature stand-in still refuses a forgery (and takes the genuine one)
    from lannode.core import messages as m
    from lannode.core.wire import Dropped

    genuine = others[0].membership.codec.encode(m.encode_payload([m.encode_message(m.Hello())]))
    forged = bytearray(others[0].membership.codec.encode(m.encode_payload([m.encode_message(m.Hello())])))
    forged[-1] ^= 1
    codec = others[1].membership.codec
    before = codec.dropped["signature"]
    codec.decode(genuine)
    with pytest.raises(Dropped):
        codec.decode(bytes(forged))
    assert codec.dropped["signature"] == before + 1


def test_the_scale_command_measures_how_fast_each_kind_of_change_spreads(tmp_path: Path) -> None:
    # 400 nodes at 10% loss: the same code path as the 10,000-node run in the README, small
    # enough for CI. Every kind of change reaches 99.9% of the group within a second, and
    # no node's gossip comes near 50 kbit/s.
    result = sim("scale", "--nodes", "400", "--loss", "0.1", "--seconds", "24", "--report", str(tmp_path), "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    (run,) = json.loads(result.stdout)
    assert [c["kind"] for c in run["changes"]] == ["join", "crash", "leave", "return"]
    for change in run["changes"]:
        assert change["spread_s"] is not None and change["spread_s"] <= 1.0 and change["reached"] >= 0.999, change
    crash = run["changes"][1]
    assert crash["detection_s"] > 0.5, "a crash is found by probing, not at once"
    assert run["kbit_received_max"] < 50 and run["kbit_sent_mean"] < 50
    assert (tmp_path / "spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "| 400 | 10% |" in (tmp_path / "scale.md").read_text()


DRIVE_CHURN = REPO / "sim" / "scenarios" / "drive-churn.toml"


def test_drive_files_stay_readable_under_churn_and_repair_restores_k_plus_m() -> None:
    # the service's own placement, repair and orphan decisions (lannode.core.drive), each
    # node deciding from its own view; the truth checked from outside
    result = Runner(Scenario.load(DRIVE_CHURN)).run()
    assert result.violations == [], [v.detail for v in result.violations]
    m = result.metrics
    assert m["drive_files"] == 10
    assert m["drive_repaired_fragments"] > 0 and m["drive_dropped_fragments"] > 0, "holders went, so fragments moved and orphans were collected"
    assert m["drive_repair_seconds"] is not None


def test_a_planted_drive_bug_is_found_and_replays_while_the_real_drive_holds() -> None:
    from sim.bugs import DropsWhatItHolds

    planted = Runner(Scenario.load(DRIVE_CHURN), drive_class=DropsWhatItHolds).run()
    assert any(v.invariant == "no drive file unreadable while k of its holders are up" for v in planted.violations)
    replayed = sim("run", str(DRIVE_CHURN), "--plant", "orphans", "--json")
    assert replayed.returncode == 1 and json.loads(replayed.stdout)["fingerprint"] == planted.fingerprint
    assert "--plant orphans" in sim("run", str(DRIVE_CHURN), "--plant", "orphans").stdout
    failures, runs = fuzz(60, 1, IgnoresRefutation.__mro__[1], drive_class=DropsWhatItHolds, max_runs=12)
    assert failures, "the fuzzer's random scenarios put drive files too"


def test_a_drive_sweep_reports_availability_under_churn(tmp_path: Path) -> None:
    result = sim("sweep", str(DRIVE_CHURN), "--nodes", "12", "--loss", "0,0.1", "--report", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    report = (tmp_path / "report.md").read_text()
    assert "Drive files under the scenario's churn" in report and "| 12 | 10% | 10 | 1.0 |" in report
    assert (tmp_path / "drive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_healed_partition_of_a_hundred_nodes_is_mended_by_view_exchanges() -> None:
    # While apart, the big side declared the crashed n10 dead; the small side never heard
    # (a death multicast into a partition is lost and nobody repeats it). Those who see a
    # dead member come back exchange views with it: the small side learns of n10 within
    # seconds of the heal, not when its own round robin reaches n10 half a minute later.
    scenario = Scenario.load(PARTITION)
    scenario.nodes, scenario.loss = 100, 0.0
    runner = Runner(scenario)
    result = runner.run()
    assert result.violations == []
    assert result.metrics["convergence_seconds"] < 10
    small_side = [runner.nodes[i] for i in range(5)]
    assert all(n.membership.counters.syncs >= 1 for n in small_side)
    healed_at = 50.0
    learned = [float(line.split()[0]) for line in result.trace if " sees n10 " in line and line.endswith("->dead") and line.split()[1] in {"n0", "n1", "n2", "n3", "n4"}]
    assert len(learned) == 5 and max(learned) < healed_at + 10, learned


def test_at_thirty_percent_loss_a_node_that_missed_a_refutation_is_answered_directly() -> None:
    # Seed 7 at 10 nodes and 30% loss: n6 missed every copy of n7's refutation and, telling
    # n7 it was suspect, got nothing back (n7 had refuted that incarnation already), so it
    # declared n7 dead. A node told of a claim it already refuted now sends the teller its
    # presence.
    scenario = Scenario.load(PARTITION)
    scenario.nodes, scenario.loss = 10, 0.3
    scenario.faults = [f for f in scenario.faults if f.kind == "partition"]
    result = Runner(scenario).run()
    assert result.violations == [] and result.metrics["false_dead"] == 0
