"""Across tasks: when a report spans several (dataset, model, N) tables, one summary per row label
over every task that has it (Agarwal et al., NeurIPS 2021).

Scores are normalised per task by its independent population: 0 is the mean accuracy of a
single independent member (``individual``), 1 the accuracy of the independent ensemble, so a
score says how much of the ensemble's gain over one member a method's final model keeps. The
interquartile mean of every run's score over every task gets a stratified-bootstrap 95% CI;
performance profiles show the whole distribution; ranks order the labels within each task by
their mean final-model accuracy. Tables of one member are not tasks (they hold the equal-compute
baselines). A task without an independent row cannot be normalised and is left out, as is a
label that some included task lacks; the report lists both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wab.analysis import stats
from wab.analysis.collect import GROUP

NORMALISATION = (
    "score = (final model accuracy - independent individual) / (independent ensemble - independent individual), "
    "per task, with the means of that task's independent row (0: one independent member; 1: the independent "
    "ensemble)"
)


@dataclass
class Aggregate:
    """The across-task summary: one line per label, the normalised scores, what was left out."""

    table: pd.DataFrame
    scores: dict[str, list[np.ndarray]]  # label -> one array of run scores per task
    methods: dict[str, str]  # label -> method (for colours)
    tasks: list[str]
    left_out: list[str] = field(default_factory=list)


def _task(key: tuple) -> str:
    dataset, model, n = key
    return f"{dataset}, {model}, N={int(n)}"


def _reference(group: pd.DataFrame) -> pd.DataFrame | None:
    """The task's independent row: labelled plainly ``independent`` if there is one, else the
    first independent row."""
    indep = group[group["method"] == "independent"]
    if indep.empty:
        return None
    plain = indep[indep["variant"] == "independent"]
    return plain if len(plain) else indep[indep["setting_id"] == indep["setting_id"].iloc[0]]


def aggregate(done: pd.DataFrame, metric: str = "metrics.final_acc") -> Aggregate | None:
    """The summary over the tasks of ``done`` (finished runs), or None with fewer than two tasks."""
    per_task: dict[str, dict[str, np.ndarray]] = {}
    raw: dict[str, dict[str, float]] = {}  # task -> label -> mean final-model accuracy (the ranks)
    methods: dict[str, str] = {}
    left_out = []
    groups = [(key, g) for key, g in done.groupby(GROUP, sort=True) if int(key[2]) > 1]
    if len(groups) < 2:
        return None
    for key, group in groups:
        ref = _reference(group)
        if ref is None:
            left_out.append(f"task {_task(key)}: no independent row to normalise by")
            continue
        low = pd.to_numeric(ref["metrics.individual_mean"]).mean()
        high = pd.to_numeric(ref["metrics.ensemble_acc"]).mean()
        if not np.isfinite(high - low) or high - low < 1e-6:
            left_out.append(f"task {_task(key)}: its independent ensemble ({100 * high:.2f}%) does not beat its "
                            f"members ({100 * low:.2f}%): no scale to normalise by")  # fmt: skip
            continue
        scores = {}
        for label, sub in group.groupby("variant", sort=False):
            scores[str(label)] = ((pd.to_numeric(sub[metric]) - low) / (high - low)).dropna().to_numpy(float)
            methods[str(label)] = str(sub["method"].iloc[0])
            raw.setdefault(_task(key), {})[str(label)] = float(pd.to_numeric(sub[metric]).mean())
        per_task[_task(key)] = scores
    if len(per_task) < 2:
        left_out.append("fewer than two tasks can be normalised: no aggregate")
        return Aggregate(pd.DataFrame(), {}, methods, list(per_task), left_out)
    tasks = list(per_task)
    labels = [lab for lab in per_task[tasks[0]] if all(lab in per_task[t] for t in tasks)]
    for t in tasks:
        for lab in per_task[t]:
            if lab not in labels:
                left_out.append(f"row {lab!r}: not in every task (only in {t} and maybe others)")
    if not labels:  # e.g. a row label that names the budget in one table and not in the other
        left_out.append("no row label is in every task: no aggregate")
    left_out = list(dict.fromkeys(left_out))
    if not labels:
        return Aggregate(pd.DataFrame(), {}, methods, tasks, left_out)
    scores = {lab: [per_task[t][lab] for t in tasks] for lab in labels}
    ranks = stats.mean_ranks({t: {lab: raw[t][lab] for lab in labels} for t in tasks})
    lines = []
    for lab in labels:
        iqm, (lo, hi) = stats.iqm_interval(scores[lab])
        lines.append({"row": lab, "tasks": len(tasks), "runs": int(sum(len(s) for s in scores[lab])), "IQM": iqm,
                      "ci_low": lo, "ci_high": hi, "mean rank": ranks[lab][0],
                      **{f"rank: {t}": r for t, r in zip(tasks, ranks[lab][1])}})  # fmt: skip
    table = pd.DataFrame(lines).sort_values("mean rank", kind="stable").reset_index(drop=True)
    return Aggregate(table, scores, methods, tasks, left_out)


def profiles(agg: Aggregate, points: int = 41) -> tuple[np.ndarray, dict[str, tuple]]:
    """Performance profiles of every label over a grid of tau spanning the scores."""
    every = np.concatenate([s for lab in agg.scores.values() for s in lab])
    taus = np.linspace(min(0.0, every.min()), max(1.0, every.max()), points)
    return taus, {lab: stats.performance_profile(s, taus) for lab, s in agg.scores.items()}


def markdown(agg: Aggregate) -> str:
    if agg.table.empty:
        return ""
    rank_cols = [c for c in agg.table.columns if c.startswith("rank: ")]
    header = ["row", "tasks", "runs", "IQM [95% CI]", "mean rank", *rank_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in agg.table.iterrows():
        cells = [r["row"], str(r["tasks"]), str(r["runs"]), f"{r['IQM']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                 f"{r['mean rank']:.2f}", *(f"{r[c]:g}" for c in rank_cols)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
