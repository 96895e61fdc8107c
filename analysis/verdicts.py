"""Paired verdicts: is a row better than, worse than or equivalent to its baseline, and how sure?

Each comparison pairs the runs of two rows by seed (only the seeds both rows share), takes the
mean difference of a metric in accuracy points, its 95% CI, the probability of improvement,
and a verdict from a paired t-test and two one-sided tests against a margin, Holm-corrected
across the rows of a table (:mod:`wab.analysis.stats`). Three kinds of comparison:

- against a **baseline row**: ``--baseline`` is a row label of the table, or overrides that say
  how each row's baseline differs from the row (default ``method=independent``: the independent
  population with the same everything else; a row with no exact match is compared with the
  closest one and the verdict names the settings that differ);
- **within a row**: one metric against another of the same runs (the averaged model after BN
  recalibration against the ensemble: "the average matches its ensemble");
- at **equal training FLOPs**: against a population of one trained for as many FLOPs (an
  ``independent`` run with population.size=1 and N times the steps), when the results hold one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

from wab.analysis import stats
from wab.errors import UserError

HEADLINE = ["metrics.final_acc", "metrics.individual_mean"]  # the metrics verdicts are given for by default
# within each row: the average against its ensemble ("the average matches its ensemble"), the final
# model against the mean of its members (SWA, ASWA: "the average beats SGD") and against the uniform
# average (greedy soup, TWA, re-basin: "better than averaging as it is"); the last is skipped for
# the rows whose final model is that average
WITHIN = [("metrics.avg_bn_acc", "metrics.ensemble_acc"), ("metrics.final_acc", "metrics.individual_mean"),
          ("metrics.final_acc", "metrics.avg_bn_acc")]  # fmt: skip
ACCURACY_METRICS = {
    "final_acc": "metrics.final_acc",
    "individual_mean": "metrics.individual_mean",
    "members_recal_mean": "metrics.members_recal_mean",
    "ensemble_acc": "metrics.ensemble_acc",
    "ensemble_prob_acc": "metrics.ensemble_prob_acc",
    "avg_acc": "metrics.avg_acc",
    "avg_bn_acc": "metrics.avg_bn_acc",
}
NAMES = {v: k for k, v in ACCURACY_METRICS.items()}
SHOWN = {"metrics.final_acc": "final model", "metrics.individual_mean": "individual",
         "metrics.ensemble_acc": "ensemble", "metrics.avg_bn_acc": "averaged+BN"}  # fmt: skip


def metric_column(name: str) -> str:
    """The runs-table column of an accuracy metric named on the command line."""
    key = name.removeprefix("metrics.")
    if key not in ACCURACY_METRICS:
        raise UserError(f"--metric {name}: verdicts are for accuracies; choose from {', '.join(ACCURACY_METRICS)}")
    return ACCURACY_METRICS[key]


def shown(col: str) -> str:
    return SHOWN.get(col, NAMES.get(col, col))


@dataclass
class Row:
    """One table row (a setting): its label, method, flattened setting and runs by seed."""

    setting_id: str
    label: str
    method: str
    setting: dict[str, Any]
    runs: pd.DataFrame  # indexed by seed

    def values(self, col: str) -> pd.Series:
        return pd.to_numeric(self.runs[col], errors="coerce") if col in self.runs else pd.Series(dtype=float)


def rows_of(group: pd.DataFrame) -> list[Row]:
    """The rows of one table from its finished runs (ordered as the table)."""
    out = []
    for sid, sub in group.groupby("setting_id", sort=False):
        runs = sub.drop_duplicates("seed").set_index("seed").sort_index()
        out.append(Row(str(sid), str(sub["variant"].iloc[0]), str(sub["method"].iloc[0]),
                       json.loads(sub["setting"].iloc[0]), runs))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------ baseline
def parse_baseline(spec: str | None) -> dict[str, Any] | str:
    """``--baseline``: a row label (returned as is) or overrides ``k=v`` (space or comma
    separated) as a dict of dotted keys; ``method=X`` names the method."""
    spec = (spec or "method=independent").strip()
    parts = [p for chunk in spec.split() for p in chunk.split(",") if p]
    if not parts or not all("=" in p for p in parts):
        return spec
    out = {}
    for p in parts:
        k, v = p.split("=", 1)
        value = yaml.safe_load(v)
        if isinstance(value, str):  # YAML reads 1e-4 as a string; a config holds it as a number
            try:
                value = float(value)
            except ValueError:
                pass
        out["method.name" if k == "method" else k] = value
    return out


def _non_method(setting: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True) for k, v in setting.items() if not k.startswith("method.")}


def find_baseline(row: Row, rows: list[Row], spec: dict[str, Any] | str) -> tuple[Row | None, list[str]]:
    """The row ``row`` is compared with, and the settings in which it differs from what the spec
    asks (empty for an exact match); (None, []) when the table has no candidate."""
    if isinstance(spec, str):
        match = [r for r in rows if r.label == spec]
        return (match[0], []) if match else (None, [])
    method = spec.get("method.name", row.method)
    want = _non_method(row.setting)
    for k, v in spec.items():
        if k != "method.name" and not k.startswith("method."):
            want[k] = json.dumps(v, sort_keys=True)
    method_keys = {k: json.dumps(v, sort_keys=True) for k, v in spec.items() if k.startswith("method.")}
    candidates = []
    for r in rows:
        if r.method != method or any(json.dumps(r.setting.get(k), sort_keys=True) != v for k, v in method_keys.items()):
            continue
        have = _non_method(r.setting)
        differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        candidates.append((len(differ), r.label != method, r.label, r, differ))
    if not candidates:
        return None, []
    _, _, _, best, differ = min(candidates, key=lambda c: c[:3])
    return best, differ


# ------------------------------------------------------------------------------------ verdicts
def _pair(x: pd.Series, y: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    seeds = sorted(set(x.dropna().index) & set(y.dropna().index))
    return 100 * x.loc[seeds].to_numpy(float), 100 * y.loc[seeds].to_numpy(float)


def _family(entries: list[dict], margin: float) -> pd.DataFrame:
    """Holm-correct a table's comparisons of one kind and metric, and give each its verdict."""
    if not entries:
        return pd.DataFrame()
    results = [stats.paired(e.pop("_x"), e.pop("_y"), margin) for e in entries]
    p_diff = stats.holm([r.p_diff for r in results])
    p_equiv = stats.holm([r.p_equiv for r in results])
    for e, r, pd_, pe in zip(entries, results, p_diff, p_equiv):
        e.update({
            "seeds": r.n,
            "difference": r.diff,
            "ci_low": r.ci[0] if r.ci else np.nan,
            "ci_high": r.ci[1] if r.ci else np.nan,
            "P(improvement)": r.prob_improvement,
            "p (Holm)": pd_,
            "p equivalence (Holm)": pe,
            "verdict": e.pop("_why", None) or stats.verdict(pd_, pe, r.diff, f"{margin:g}", r.n),
        })  # fmt: skip
    return pd.DataFrame(entries)


def against_baseline(rows: list[Row], spec: dict | str, metric: str, margin: float) -> pd.DataFrame:
    """Each row against its baseline row on ``metric`` (one family, Holm-corrected)."""
    entries = []
    for row in rows:
        base, differ = find_baseline(row, rows, spec)
        if base is None or base is row:
            continue
        x, y = _pair(row.values(metric), base.values(metric))
        note = f"{base.label}" + (f" (differs in {', '.join(differ)})" if differ else "")
        entry = {"row": row.label, "baseline": note, "metric": shown(metric), "_x": x, "_y": y}
        if len(x) == 0:
            entry["_why"] = f"no shared seeds ({_seeds(row, metric)} against {_seeds(base, metric)})"
        entries.append(entry)
    return _family(entries, margin)


def within_rows(rows: list[Row], metric: str, reference: str, margin: float) -> pd.DataFrame:
    """``metric`` against ``reference`` in the same runs of each row (e.g. average vs ensemble)."""
    entries = []
    for row in rows:
        x, y = _pair(row.values(metric), row.values(reference))
        if len(x) and not np.array_equal(x, y):  # the same numbers (a final model that is the average): no claim
            entries.append({"row": row.label, "baseline": f"its own {shown(reference)}", "metric": shown(metric),
                            "_x": x, "_y": y})  # fmt: skip
    return _family(entries, margin)


def parse_versus(specs: list[str] | None) -> list[tuple[str, str]]:
    """``--versus A:B`` (repeatable): method A's rows against method B's rows with the same
    settings otherwise; a claim between two methods (TWA against SWA, WASH against PAPA)."""
    out = []
    for spec in specs or []:
        a, sep, b = spec.partition(":")
        if not sep or not a.strip() or not b.strip() or a.strip() == b.strip():
            raise UserError(f"--versus {spec!r} must be two different methods as A:B, e.g. twa:swa")
        out.append((a.strip(), b.strip()))
    return out


def _method_defaults(row: Row) -> dict[str, str]:
    """The non-method settings of wab's defaults for the row's method, dataset, model and optimizer
    (what a method's own config sets: SWA its lr schedule, PAPA its members' regularisation)."""
    from wab.analysis.collect import setting_of
    from wab.run.config import default_config

    s = row.setting
    cfg = {"data": {"name": s.get("data.name")}, "model": {"name": s.get("model.name")},
           "optim": {"name": s.get("optim.name")}, "method": {"name": row.method}}  # fmt: skip
    try:
        return _non_method(setting_of(default_config(cfg)))
    except Exception:  # a plugin without a config file: every setting must then be equal
        return {}


def like_for_like(row: Row, base: Row) -> bool:
    """Whether two rows of different methods differ only where each is at its own method's
    defaults (SWA's lr schedule against TWA's): every other setting is the same."""
    mine, theirs = _non_method(row.setting), _non_method(base.setting)
    d_mine, d_theirs = _method_defaults(row), _method_defaults(base)
    return all(mine.get(k) == theirs.get(k) or (mine.get(k) == d_mine.get(k) and theirs.get(k) == d_theirs.get(k))
               for k in set(mine) | set(theirs))  # fmt: skip


def versus(rows: list[Row], pairs: list[tuple[str, str]], metric: str, margin: float) -> pd.DataFrame:
    """Each row of method A against each row of method B that is :func:`like_for_like` (no nearest
    match: a claim between methods holds only like for like); one family, Holm-corrected."""
    entries = []
    for a, b in pairs:
        for row in (r for r in rows if r.method == a):
            for base in (r for r in rows if r.method == b and like_for_like(row, r)):
                x, y = _pair(row.values(metric), base.values(metric))
                entry = {"row": row.label, "baseline": base.label, "metric": shown(metric), "_x": x, "_y": y}
                if len(x) == 0:
                    entry["_why"] = f"no shared seeds ({_seeds(row, metric)} against {_seeds(base, metric)})"
                entries.append(entry)
    return _family(entries, margin)


EQUAL_FLOPS_FREE = ("population.size", "trainer.epochs", "population.same_init")  # what N x the steps changes


def at_equal_flops(rows: list[Row], singles: list[Row], metric: str, margin: float) -> pd.DataFrame:
    """Each row against a one-member run of the same dataset and model whose training FLOPs are
    the row's (within 1%): the comparison at equal compute. Of several, the one whose other
    settings differ least from the row's (the verdict names those that differ)."""
    entries = []
    for row in rows:
        flops = row.values("cost.train_flops").mean()
        if not np.isfinite(flops) or flops <= 0:
            continue
        match = []
        for s in singles:
            if s is not row and abs(s.values("cost.train_flops").mean() / flops - 1) < 0.01:
                want, have = _non_method(row.setting), _non_method(s.setting)
                differ = sorted(k for k in set(want) | set(have)
                                if want.get(k) != have.get(k) and k not in EQUAL_FLOPS_FREE)  # fmt: skip
                match.append((len(differ), s.label, s, differ))
        if not match:
            continue
        _, _, single, differ = min(match, key=lambda m: m[:2])
        x, y = _pair(row.values(metric), single.values("metrics.final_acc"))
        note = f"{single.label}, N=1 (equal FLOPs)" + (f" (differs in {', '.join(differ)})" if differ else "")
        entry = {"row": row.label, "baseline": note, "metric": shown(metric), "_x": x, "_y": y}
        if len(x) == 0:
            entry["_why"] = "no shared seeds"
        entries.append(entry)
    return _family(entries, margin)


def _seeds(row: Row, col: str) -> str:
    seeds = sorted(row.values(col).dropna().index)
    return "seeds " + ",".join(map(str, seeds)) if seeds else "no seeds"


def markdown(table: pd.DataFrame) -> str:
    """A verdict table for the report: difference and CI in points, probabilities, verdict."""
    if table.empty:
        return ""

    def fmt(r: pd.Series) -> list[str]:
        ci = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if np.isfinite(r["ci_low"]) else "–"
        diff = f"{r['difference']:+.2f}" if np.isfinite(r["difference"]) else "–"
        num = lambda v, f: f"{v:{f}}" if np.isfinite(v) else "–"  # noqa: E731
        return [r["row"], r["baseline"], r["metric"], str(r["seeds"]), diff, ci, num(r["P(improvement)"], ".2f"),
                num(r["p (Holm)"], ".3g"), num(r["p equivalence (Holm)"], ".3g"), f"**{r['verdict']}**"]  # fmt: skip

    header = ["row", "compared with", "metric", "seeds", "difference (points)", "95% CI", "P(improvement)",
              "p (Holm)", "p equivalence (Holm)", "verdict"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(r)) + " |" for _, r in table.iterrows()]
    return "\n".join(lines)


def caption(margin: float) -> str:
    return (
        "Paired by seed over the seeds both sides share; difference = row - compared, in accuracy points, "
        "with the Student-t 95% CI of the mean difference. Verdicts at a family-wise 5% across the rows "
        f"of this table (Holm): **better**/**worse** when a paired t-test shows a difference; **equivalent "
        f"(±{margin:g})** when it shows none and two one-sided t-tests put the difference within ±{margin:g} "
        "points; otherwise **inconclusive**. P(improvement) is rliable's probability that a run of the row "
        "beats a run of the other (0.5: no preference)."
    )
