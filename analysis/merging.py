"""The method x merge grid of a table: rows are the training methods (the table's rows that ran
merging finalizers), columns the merges applied to the same members at the end of the same runs
(``population.finalizers``), with the ensemble and the uniform average after BN recalibration as
reference columns. A cell is the final accuracy's mean over seeds with its bootstrap CI and the
paired verdict against the uniform average of the same runs (each row's cells one Holm family: for
this training method, which merges differ from its own average). A merge that had nothing to merge
(no anchor before the end) says so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from wab.analysis import stats
from wab.analysis.verdicts import Row

REFERENCE = {"ensemble": "metrics.ensemble_acc", "uniform average": "metrics.avg_bn_acc"}
UNIFORM = "uniform average"
# wab's merging finalizers, in the grid's column order; a run may also chain them after rebasin
MERGES = ("fisher", "regmean", "model_stock", "task_arithmetic", "ties", "dare")
OTHER_FINALIZERS = ("rebasin", "uniform_soup", "greedy_soup")


def merge_columns(rows: list[Row]) -> list[str]:
    """The merge columns the rows' runs hold (``metrics.final.<name>.acc``, or a report saying
    the merge was skipped), in the order of :data:`MERGES`, each after rebasin following."""
    names = set()
    for row in rows:
        for col in row.runs.columns:
            if col.startswith("metrics.final.") and col.endswith(".acc"):
                names.add(col.removeprefix("metrics.final.").removesuffix(".acc"))
            elif col.startswith("method_report.") and col.endswith(".skipped"):
                names.add(col.removeprefix("method_report.").removesuffix(".skipped"))
    order = [*MERGES, *(f"rebasin+{m}" for m in MERGES), *OTHER_FINALIZERS]
    return [n for n in order if n in names] if any(n.removeprefix("rebasin+") in MERGES for n in names) else []


def merging_grid(rows: list[Row], margin: float) -> pd.DataFrame:
    """One line per (row, column): mean, CI, seeds, and the verdict against the uniform average;
    empty when no row of the table ran a merging finalizer."""
    columns = merge_columns(rows)
    if not columns:
        return pd.DataFrame()
    merging = [r for r in rows if any(r.values(f"metrics.final.{c}.acc").notna().any() or
                                      r.runs.get(f"method_report.{c}.skipped", pd.Series(dtype=object)).notna().any()
                                      for c in columns)]  # fmt: skip
    entries = []
    for row in merging:
        tested = []
        uniform = 100 * row.values(REFERENCE[UNIFORM])
        for name, col in [*REFERENCE.items(), *((c, f"metrics.final.{c}.acc") for c in columns)]:
            values = 100 * row.values(col).dropna()
            entry = {"row": row.label, "column": name, "seeds": len(values),
                     "mean": float(values.mean()) if len(values) else math.nan}  # fmt: skip
            ci = stats.mean_ci(values.to_numpy())
            entry["ci_low"], entry["ci_high"] = ci if ci else (math.nan, math.nan)
            skipped = f"method_report.{name}.skipped"
            if not len(values) and skipped in row.runs and row.runs[skipped].notna().any():
                entry["verdict"] = "skipped: " + str(row.runs[skipped].dropna().iloc[0])
            elif name == UNIFORM or not len(values):
                entry["verdict"] = "" if len(values) else "not run"
            else:
                seeds = sorted(set(values.index) & set(uniform.dropna().index))
                x, y = values.loc[seeds].to_numpy(float), uniform.loc[seeds].to_numpy(float)
                if np.array_equal(x, y):
                    entry["verdict"] = "the same numbers"  # e.g. every member equal at the end: no claim
                else:
                    result = stats.paired(x, y, margin)
                    entry.update(difference=result.diff, verdict=stats.untested(result))
                    if entry["verdict"] is None:  # no verdict below 3 seeds or without spread: outside the family
                        tested.append((entry, result))
            entries.append(entry)
        p_diff = stats.holm([r.p_diff for _, r in tested])
        p_equiv = stats.holm([r.p_equiv for _, r in tested])
        for (entry, r), pd_, pe in zip(tested, p_diff, p_equiv):
            entry.update(verdict=stats.verdict(pd_, pe, r.diff, f"{margin:.2g}"))
    return pd.DataFrame(entries)


def markdown(grid: pd.DataFrame) -> str:
    """The grid as a markdown table: a row per training method, a column per merge."""
    if grid.empty:
        return ""
    columns = list(dict.fromkeys(grid["column"]))
    lines = ["| training method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row, cells in grid.groupby("row", sort=False):
        by = {c["column"]: c for _, c in cells.iterrows()}
        lines.append(f"| {row} | " + " | ".join(_cell(by.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(c: pd.Series | None) -> str:
    if c is None or not c["seeds"]:
        return "—" if c is None or not str(c.get("verdict", "")).startswith("skipped") else "skipped (no anchor)"
    text = f"{c['mean']:.2f}"
    if np.isfinite(c["ci_low"]):
        text += f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
    verdict = c.get("verdict") or ""
    if verdict and verdict not in ("not run",):
        text += f" {_short(verdict, c.get('difference'))}"
    return text


def _short(verdict: str, diff: float | None) -> str:
    if verdict.startswith(("better", "worse")):
        return f"**{verdict}** ({diff:+.2f})"
    return f"*{verdict}*"


def caption(margin: float) -> str:
    return (
        "Each cell: the final accuracy in %, the mean over seeds [95% bootstrap CI], and the paired verdict "
        "against the uniform average after BN recalibration of the same runs (same members, same seeds), "
        f"Holm-corrected across the cells of each row: **better**/**worse**, **better, within ±{margin:.2g}**/**worse, "
        f"within ±{margin:.2g}** (shown, but negligible), *equivalent (±{margin:.2g})*, *inconclusive*, as the paired "
        f"verdicts define them; no verdict below {stats.MIN_SEEDS} seeds or when the difference is the same on every "
        "seed. "
        "rebasin+<merge>: the merge of the members aligned to member 0 by Git Re-Basin. A task-vector merge "
        "(Model Stock, task arithmetic, TIES, DARE) needs an anchor (the shared initialisation, or the last "
        "synchronisation); it is skipped where the members never shared a state."
    )
