"""Sweeps and reports: one scenario at several sizes and loss rates, as Markdown with plots.

``sweep(base, nodes, losses, directory)`` runs the scenario for every (N, loss),
then writes ``report.md`` and PNG plots (matplotlib, imported only here):
convergence time after the last fault against N for each loss, the detection
time distribution, false deaths, gossip bandwidth per node against N, and, when
the scenario has drive files, their availability under its churn.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sim.run import Result, Runner
from sim.scenario import Scenario


def sweep(base: Scenario, nodes: list[int], losses: list[float], directory: Path | None, *, echo: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    results: list[Result] = []
    for loss in losses:
        for n in nodes:
            scenario = copy.deepcopy(base)
            scenario.nodes, scenario.loss = n, loss
            scenario.name = f"{base.name}, {n} nodes, {loss:.0%} loss"
            for fault in scenario.faults:
                fault.nodes = [i for i in fault.nodes if i < n]
                if not fault.nodes and not fault.count:
                    fault.count = 1
            result = Runner(scenario, keep_trace=False).run()
            results.append(result)
            row = {"nodes": n, "loss": loss, "wall_seconds": round(result.wall_seconds, 2), "violations": len(result.violations), **result.metrics}
            rows.append(row)
            if echo:
                print(f"{n:>6} nodes {loss:>5.0%} loss: converged {row['convergence_seconds']} s, detection p99 {row['detection_p99']} s, "
                      f"false deaths {row['false_dead']}, {row['kbit_sent_per_node_mean']} kbit/s sent and {row['kbit_received_per_node_mean']} received per node, "
                  f"{row['wall_seconds']} s of wall time", flush=True)
    if directory is not None:
        write_report(base, rows, results, directory)
    return rows


def write_report(base: Scenario, rows: list[dict[str, Any]], results: list[Result], directory: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    losses = sorted({r["loss"] for r in rows})
    figures = []

    def plot(name: str, title: str, ylabel: str, key: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for loss in losses:
            points = [(r["nodes"], r[key]) for r in rows if r["loss"] == loss and r.get(key) is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{loss:.0%} loss")
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / name)
        plt.close(fig)
        figures.append((title, name))

    plot("convergence.png", "Membership converged, after the last fault", "seconds", "convergence_seconds")
    plot("bandwidth.png", "Gossip received per node (mean)", "kbit/s", "kbit_received_per_node_mean")
    plot("false-dead.png", "Live nodes declared dead", "count", "false_dead")
    if any(r.get("drive_availability") is not None for r in rows):
        plot("drive.png", "Drive files readable (share of samples)", "availability", "drive_availability")
    detections = [(r, res) for r, res in zip(rows, results) if res.metrics["detections"]]
    if detections:
        fig, ax = plt.subplots(figsize=(6, 4))
        for row, res in detections:
            values = res.detections
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=f"{row['nodes']} nodes, {row['loss']:.0%}")
        ax.set_xlabel("seconds from crash to dead")
        ax.set_ylabel("fraction of observers")
        ax.set_title("Detection time")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(directory / "detection.png")
        plt.close(fig)
        figures.append(("Detection time", "detection.png"))
    lines = [
        f"# {base.name}: a sweep",
        "",
        f"Scenario `{base.source}`, seed {base.seed}, {base.duration:g} s simulated per run.",
        "",
        "| nodes | loss | converged (s) | detection p50 / p99 (s) | false deaths | kbit/s sent per node (mean / max) | received (mean / max) | violations | wall (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['loss']:.0%} | {r['convergence_seconds']} | {r['detection_p50']} / {r['detection_p99']} | {r['false_dead']} | "
            f"{r['kbit_sent_per_node_mean']} / {r['kbit_sent_per_node_max']} | {r['kbit_received_per_node_mean']} / {r['kbit_received_per_node_max']} | "
            f"{r['violations']} | {r['wall_seconds']} |"
        )
    if any(r.get("drive_files") for r in rows):
        lines += ["", "Drive files under the scenario's churn:", "", "| nodes | loss | files | readable (share of samples) | fragments rebuilt | orphans dropped | back at k + m after the last fault (s) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['nodes']} | {r['loss']:.0%} | {r.get('drive_files')} | {r.get('drive_availability')} | {r.get('drive_repaired_fragments')} | {r.get('drive_dropped_fragments')} | {r.get('drive_repair_seconds')} |")
    lines.append("")
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path

