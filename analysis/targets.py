"""Time to target (AlgoPerf's rule): the steps, training FLOPs, bytes and training time each row
needed to first reach a target accuracy of its final model, evaluation time excluded and the
method's averaging and finalizers included (``train_time_s`` of the evaluation lines).

The target is ``--target`` (percent) when given, else the runs' ``trainer.target_acc``, else the
row's baseline's mean member accuracy minus the margin (its members, not its final model: a
baseline's final model may be the collapsed average of independent members, which every row
reaches at its first evaluation). A target within 10 points of chance is flagged. Between evaluations the final
model is the uniform average after BN recalibration; the method's own final model (a soup, an
SWA average) exists at the end only. The resolution is one evaluation (``trainer.eval_every``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from wab.analysis.verdicts import Row, find_baseline
from wab.parts.cost import time_to_target

CAPTION = (
    "Mean over the seeds that reached the target, at the first evaluation that did (evaluation time excluded, "
    "finalizers included; between evaluations the final model is the average after BN recalibration). FLOPs "
    "are the run's, bytes what one member sent."
)


def _target_of(row: Row, rows: list[Row], spec, target: float | None, margin: float) -> tuple[float | None, str]:
    if target is not None:
        return target / 100, "--target"
    configured = row.runs.get("config.trainer.target_acc")
    if configured is not None and configured.notna().all() and configured.nunique() == 1:
        return float(configured.iloc[0]), "trainer.target_acc"
    base, _ = find_baseline(row, rows, spec)
    if base is None:
        return None, "no baseline"
    acc = base.values("metrics.individual_mean").mean()
    return acc - margin / 100, f"{base.label}'s members - {margin:g}"


def chance(row: Row) -> float | None:
    """Chance accuracy on the row's dataset (1 / classes), None for a dataset of unknown shape."""
    from wab.parts.data import SHAPES

    names = row.runs["dataset"].dropna().unique() if "dataset" in row.runs else []
    shape = SHAPES.get(str(names[0])) if len(names) == 1 else None
    return 1.0 / shape.num_classes if shape else None


def targets(rows: list[Row], curves: pd.DataFrame, spec, target: float | None, margin: float) -> pd.DataFrame:
    """One line per row: the target, how many seeds reached it, and the mean cost of those that did."""
    lines = []
    for row in rows:
        goal, source = _target_of(row, rows, spec, target, margin)
        if goal is None:
            continue
        hits = []
        for _, run in row.runs.iterrows():
            run_lines = curves[curves["run_dir"] == run["run_dir"]].to_dict("records") if len(curves) else []
            for line in run_lines:
                line["comm"] = {"bytes_total": line.get("comm.bytes_total")}
            flops = run.get("cost.flops_per_step")
            hits.append(time_to_target(run_lines, goal, int(flops) if pd.notna(flops) else None))
        reached = [h for h in hits if h["reached"]]

        def mean(key: str, reached: list = reached) -> float:
            vals = [h[key] for h in reached if h.get(key) is not None]
            return float(np.mean(vals)) if vals else np.nan

        floor = chance(row)
        if floor is not None and goal < floor + 0.10:
            source += f"; near chance ({100 * floor:g}%): not a test of speed"
        lines.append({"row": row.label, "target (%)": 100 * goal, "target from": source,
                      "reached": f"{len(reached)} of {len(hits)}", "steps": mean("step"), "FLOPs": mean("flops"),
                      "bytes per member": mean("bytes"), "train time (s)": mean("train_time_s")})  # fmt: skip
    return pd.DataFrame(lines)


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [r["row"], f"{r['target (%)']:.2f}", r["target from"], r["reached"]]
        cells += [f"{r[c]:.4g}" if np.isfinite(r[c]) else "–" for c in header[4:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
