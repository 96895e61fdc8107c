"""Paired verdicts: is a row better than, worse than or equivalent to its baseline, and how sure?

Each comparison pairs the runs of two rows by seed (only the seeds both rows share), takes the
mean difference of a metric in accuracy points, its 95% CI, the probability of improvement,
and a verdict from a paired t-test and two one-sided tests against a margin (:mod:`stats`),
Holm-corrected within one family per table and comparison kind (:data:`KINDS`), over all its
metrics. Four kinds of comparison:

- against a **baseline row**: ``--baseline`` is a row label of the table, or overrides that say
  how each row's baseline differs from the row (default ``method=independent``: the independent
  population with the same everything else; a row with no exact match is compared with the
  closest one and the verdict names the settings that differ);
- against **another method's** row with otherwise the same settings (``--versus A:B``);
- **within a row**: one metric against another of the same runs (the averaged model after BN
  recalibration against the ensemble: "the average matches its ensemble");
- at **equal training FLOPs**: against a population of one trained for as many FLOPs (an
  ``independent`` run with population.size=1 and N times the steps), when the results hold one.

Each table's **headroom** (:class:`Headroom`: an independent ensemble minus its mean member, and
one model at equal FLOPs minus a member) decides whether an average can be tested against its
ensemble or its members at all: below the margin, such a verdict reads ``not tested here``.
Comparisons identical by construction (one model on both sides, or a row whose members are its
baseline's) and duplicates (the same members compared again) are shown as such and left out of
their family, so that they neither dilute Holm nor read as findings.
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
# model against it too (a merge, a soup, re-basin: left out where the final model is that average), the final
# model against the mean of its members (SWA, ASWA: "the average beats SGD") and against the uniform
# average (greedy soup, TWA, re-basin: "better than averaging as it is"); the last is skipped for
# the rows whose final model is that average
WITHIN = [("metrics.avg_bn_acc", "metrics.ensemble_acc"), ("metrics.final_acc", "metrics.ensemble_acc"),
          ("metrics.final_acc", "metrics.individual_mean"),
          ("metrics.final_acc", "metrics.avg_bn_acc"), ("metrics.final_acc", "metrics.own_member_acc"),
          ("metrics.final_acc", "metrics.heldout_best_member_acc")]  # fmt: skip
# the last two, each paper's own baseline: EMA's, LAWA's and SWA's average against the last iterate of the
# same member; the greedy soup against the member it starts from, the best on the same held-out split
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
         "metrics.ensemble_acc": "ensemble", "metrics.avg_bn_acc": "averaged+BN",
         "metrics.own_member_acc": "member's last iterate",
         "metrics.heldout_best_member_acc": "best member on held-out"}  # fmt: skip


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


# ------------------------------------------------------------------------------------ margins
@dataclass(frozen=True)
class Margin:
    """The equivalence margin delta: a number of accuracy points, or (``relative``) a fraction of
    the headroom of each row's independent population (``--margin 0.3h``)."""

    value: float
    relative: bool = False

    def of(self, room: Headroom | None) -> float | None:
        """delta for a row whose independent population has headroom ``room`` (None: no margin, a
        relative one without a positive headroom)."""
        if not self.relative:
            return self.value
        if room is None or not np.isfinite(room.ensemble.diff) or room.ensemble.diff <= 0:
            return None
        return self.value * room.ensemble.diff

    def text(self) -> str:
        return f"{self.value:g} x the headroom" if self.relative else f"{self.value:g}"


def parse_margin(spec: float | str | Margin) -> Margin:
    """``--margin``: accuracy points (``0.5``) or a fraction of each row's headroom (``0.3h``)."""
    if isinstance(spec, Margin):
        return spec
    text = str(spec).strip()
    relative = text.endswith("h")
    try:
        value = float(text.removesuffix("h"))
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise UserError(f"--margin {spec}: give a positive number of accuracy points (0.5) or a positive fraction "
                        "of each row's headroom (0.3h)")  # fmt: skip
    return Margin(value, relative)


# ------------------------------------------------------------------------------------ headroom
@dataclass
class Headroom:
    """A table's room for gains, measured on one independent population (its ``row``): its
    ensemble minus its mean member, and one model trained for the population's FLOPs minus its
    mean member (None without such a run), paired by seed, in accuracy points."""

    row: str
    ensemble: stats.Paired
    equal_flops: stats.Paired | None
    single: str | None = None  # the one-model row at equal FLOPs


def _points(x: pd.Series, y: pd.Series) -> stats.Paired:
    a, b = _pair(x, y)
    return stats.paired(a, b, 1.0)  # the margin is unused: only the difference and its interval are read


def measure_headroom(row: Row, singles: list[Row]) -> Headroom | None:
    """The headroom of an independent population (None for one member or without ensembles)."""
    if row.method != "independent" or row.values("metrics.ensemble_acc").notna().sum() == 0:
        return None
    if (pd.to_numeric(row.runs.get("population_size", pd.Series([2])), errors="coerce") <= 1).all():
        return None
    member = row.values("metrics.individual_mean")
    match = equal_flops_single(row, singles)
    flops = _points(match[0].values("metrics.final_acc"), member) if match else None
    single = None
    if match:
        single = f"{match[0].label}, N=1" + (f"; differs in {', '.join(match[1])}" if match[1] else "")
    return Headroom(row.label, _points(row.values("metrics.ensemble_acc"), member), flops, single)


class Rooms:
    """The headroom of each independent population of a table, and which one each row's
    verdicts read: the row's own when it is one, else that of its ``method=independent``
    baseline (the closest independent row)."""

    def __init__(self, rows: list[Row], singles: list[Row]) -> None:
        self.rows = rows
        self.measured: dict[str, Headroom] = {}
        for r in rows:  # a row with the members of one measured before (a finalizer apart) has its headroom
            if (h := measure_headroom(r, singles)) is not None:
                twin = next((m for m in rows if m.label in self.measured and same_members(m, r)), None)
                self.measured[r.label] = self.measured[twin.label] if twin else h
        self.shown = [label for label, h in self.measured.items() if h.row == label]

    def of(self, row: Row) -> Headroom | None:
        if row.label in self.measured:
            return self.measured[row.label]
        base, _ = find_baseline(row, self.rows, {"method.name": "independent"})
        return self.measured.get(base.label) if base is not None else None


def headroom_table(rooms: Rooms, margin: Margin) -> pd.DataFrame:
    """One line per independent population: its two headrooms with CIs, and whether the
    comparisons of averages with ensembles and members can be tested against it."""
    out = []
    for label in rooms.shown:
        h = rooms.measured[label]
        delta = margin.of(h)
        line = {"row": label, "seeds": h.ensemble.n, "ensemble minus member": h.ensemble.diff,
                "ci_low": h.ensemble.ci[0] if h.ensemble.ci else np.nan,
                "ci_high": h.ensemble.ci[1] if h.ensemble.ci else np.nan,
                "one model at equal FLOPs": h.single or "", "equal FLOPs minus member": np.nan,
                "flops_ci_low": np.nan, "flops_ci_high": np.nan, "margin": delta if delta is not None else np.nan,
                "tested": delta is not None and h.ensemble.diff >= delta}  # fmt: skip
        if h.equal_flops is not None:
            line["equal FLOPs minus member"] = h.equal_flops.diff
            if h.equal_flops.ci:
                line["flops_ci_low"], line["flops_ci_high"] = h.equal_flops.ci
        out.append(line)
    return pd.DataFrame(out)


def headroom_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""

    def ci(low: float, high: float) -> str:
        return f" [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else " (no interval)"

    lines = ["| independent population | seeds | ensemble − member (points) | one model at equal FLOPs − member "
             "| margin δ | averages vs ensembles and members |", "|---|---|---|---|---|---|"]  # fmt: skip
    for _, r in table.iterrows():
        flops = "–" if not r["one model at equal FLOPs"] else (
            f"{r['equal FLOPs minus member']:+.2f}{ci(r['flops_ci_low'], r['flops_ci_high'])} "
            f"({r['one model at equal FLOPs']})")  # fmt: skip
        delta = f"±{r['margin']:.2f}" if np.isfinite(r["margin"]) else "none"
        lines.append(f"| {r['row']} | {r['seeds']} | {r['ensemble minus member']:+.2f}"
                     f"{ci(r['ci_low'], r['ci_high'])} | {flops} | {delta} | "
                     f"{'tested' if r['tested'] else '**not tested here**'} |")  # fmt: skip
    return "\n".join(lines)


HEADROOM_CAPTION = (
    "Room to gain: what a population can win over one of its members (its ensemble, paired by seed) and what its "
    "compute could win spent on one model (one model trained for the population's FLOPs). Where the ensemble's "
    'gain is below the margin, an average that "matches its ensemble" cannot be told from taking one member: '
    "the verdicts of averages against ensembles and members are then **not tested here**."
)


# ------------------------------------------------------------------------------------ verdicts
# The Holm families of a table: one per comparison kind, over every metric and row of that kind
KINDS = {"baseline": "against the baseline", "versus": "against another method's", "within": "within the row",
         "flops": "at equal training FLOPs",
         "baseline_members": "against the baseline's ensemble and members"}  # fmt: skip
# the row's final model against its baseline's ensemble and mean member: WASH's and PAPA's own claim (their
# average matches the independent ensemble, beats independent members), not only the collapsed average
AGAINST_BASELINE_MEMBERS = [("metrics.final_acc", "metrics.ensemble_acc"),
                            ("metrics.final_acc", "metrics.individual_mean")]  # fmt: skip
# metrics that are functions of the members alone: rows with the same members share them
MEMBER_METRICS = {"metrics.individual_mean", "metrics.members_recal_mean", "metrics.ensemble_acc",
                  "metrics.ensemble_prob_acc", "metrics.avg_acc", "metrics.avg_bn_acc"}  # fmt: skip
MODEL_OF = {"metrics.avg_bn_acc": "avg_bn"}  # the final_model name of a metric's model
# within a row, the comparisons of an average with the ensemble or the members: headroom-gated
HEADROOM_GATED = {"metrics.ensemble_acc", "metrics.individual_mean"}


def _pair(x: pd.Series, y: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    seeds = sorted(set(x.dropna().index) & set(y.dropna().index))
    return 100 * x.loc[seeds].to_numpy(float), 100 * y.loc[seeds].to_numpy(float)


def same_members(a: Row, b: Row) -> bool:
    """Whether two rows hold the same members: their per-member accuracies are identical on
    every seed they share (rows that train the same populations and differ after training)."""
    if "metrics.individual" not in a.runs or "metrics.individual" not in b.runs:
        return False
    x, y = a.runs["metrics.individual"].dropna(), b.runs["metrics.individual"].dropna()
    seeds = sorted(set(x.index) & set(y.index))
    return bool(seeds) and all(str(x[s]) == str(y[s]) for s in seeds)


def _members_of(row: Row, rows: list[Row]) -> str:
    """A name for a row's members: the label of the first row of the table that holds them."""
    return next(r.label for r in rows if r is row or same_members(r, row))


def judge(entries: list[dict], margin: Margin) -> pd.DataFrame:
    """One Holm family: every entry's paired comparison and verdict. Left out of the family, with
    the reason as their verdict: comparisons identical by construction (``_why`` set by the
    caller), duplicates of an earlier entry (the same members on both sides, ``_key``) and those
    untested for want of seeds or spread. An average against its ensemble or members (``_gated``)
    where the headroom is below the margin stays in the family (its p-values are adjusted with the
    rest, so that excluding it by its outcome cannot favour the others) and reads ``not tested
    here`` unless it shows a difference beyond the margin, the one outcome such a table can show.
    So does an average against its row's own ensemble when that ensemble gains less than the
    margin over the row's own members (``_own_room``: members kept together, as SPARTA's and
    gossip's, leave their ensemble no room above their average, whatever the table's headroom)."""
    if not entries:
        return pd.DataFrame()
    seen: dict[Any, str] = {}
    for e in entries:
        key = e.pop("_key", None)
        if key is not None and "_why" not in e:
            if key in seen:
                e["_why"] = f"duplicate of {seen[key]} (the same members, the same comparison)"
            else:
                seen[key] = e["row"]
    results, deltas = [], []
    for e in entries:
        room = e.pop("_room", None)
        delta = margin.of(room)
        deltas.append(delta)
        results.append(stats.paired(e.pop("_x"), e.pop("_y"), delta if delta is not None else 1.0))
        gated, own = e.pop("_gated", False), e.pop("_own_room", None)
        if "_why" not in e and delta is None:
            e["_why"] = "not tested here (no margin: a relative margin needs a positive headroom)"
        elif "_why" not in e and gated and room is not None and room.ensemble.diff < delta:
            e["_no_room"] = f"not tested here (headroom {room.ensemble.diff:+.2f} < ±{delta:.2g})"
        elif "_why" not in e and gated and own is not None and own.diff < delta:
            e["_no_room"] = f"not tested here (its own ensemble − member {own.diff:+.2f} < ±{delta:.2g})"
    in_family = [("_why" not in e) and stats.untested(r) is None for e, r in zip(entries, results)]
    p_diff = stats.holm([r.p_diff if k else np.nan for r, k in zip(results, in_family)])
    p_equiv = stats.holm([r.p_equiv if k else np.nan for r, k in zip(results, in_family)])
    for e, r, k, pd_, pe, delta in zip(entries, results, in_family, p_diff, p_equiv, deltas):
        why = e.pop("_why", None) or stats.untested(r)
        no_room = e.pop("_no_room", None)
        if not why and no_room and stats.verdict(pd_, pe, r.diff, "") not in ("better", "worse"):
            why = no_room  # without room, only a difference beyond the margin says anything (it stays in the family)
        e.update({
            "seeds": r.n,
            "difference": r.diff,
            "ci_low": r.ci[0] if r.ci else np.nan,
            "ci_high": r.ci[1] if r.ci else np.nan,
            "P(improvement)": r.prob_improvement,
            "margin": delta if delta is not None else np.nan,
            "in family": k,
            "p (Holm)": pd_,
            "p equivalence (Holm)": pe,
            "verdict": why or _with_note(stats.verdict(pd_, pe, r.diff, _delta_text(delta, margin)), r),
        })  # fmt: skip
    return pd.DataFrame(entries)


def _delta_text(delta: float, margin: Margin) -> str:
    return f"{delta:.2g}" if margin.relative else f"{delta:g}"


def _with_note(verdict: str, result: stats.Paired) -> str:
    """A verdict that shows no difference beside an interval (uncorrected) that excludes 0 says so:
    the family's correction, not the data, withholds the difference."""
    if verdict.startswith(("equivalent", "inconclusive")) and result.ci and (result.ci[0] > 0 or result.ci[1] < 0):
        return f"{verdict}; no difference after Holm, though the uncorrected CI excludes 0"
    return verdict


def baseline_entries(rows: list[Row], spec: dict | str, metric: str, rooms: Rooms | None = None,
                     reference: str | None = None) -> list[dict]:  # fmt: skip
    """Each row against its baseline row on ``metric`` (or on the baseline's ``reference``: the final
    model against the baseline's ensemble, headroom-gated like any average against an ensemble or
    members); a row whose members are its baseline's is the same numbers by construction on a
    members' metric."""
    entries = []
    for row in rows:
        base, differ = find_baseline(row, rows, spec)
        if base is None or base is row:
            continue
        x, y = _pair(row.values(metric), base.values(reference or metric))
        note = f"{base.label}" + (f" (differs in {', '.join(differ)})" if differ else "")
        if reference:
            note = f"{note}: its {shown(reference)}"
        entry = {"row": row.label, "baseline": note, "metric": shown(metric), "_x": x, "_y": y,
                 "_room": rooms.of(row) if rooms else None, "_gated": reference in HEADROOM_GATED}  # fmt: skip
        if len(x) == 0:
            entry["_why"] = f"no shared seeds ({_seeds(row, metric)} against {_seeds(base, reference or metric)})"
        elif reference and same_members(row, base):  # EMA, a soup, TWA: the members are the baseline's
            entry["_why"] = (f"the same as its {shown(metric)} against its own {shown(reference)} "
                             "(its members are its baseline's)")  # fmt: skip
        elif reference:
            pass  # the row's final model against the baseline's members: never one model on both sides
        elif metric in MEMBER_METRICS and same_members(row, base):
            entry["_why"] = "the same members as its baseline (identical by construction)"
        elif metric in MEMBER_METRICS:
            entry["_key"] = (metric, _members_of(row, rows), _members_of(base, rows))
        entries.append(entry)
    return entries


def against_baseline(rows: list[Row], spec: dict | str, metric: str, margin: float | Margin) -> pd.DataFrame:
    """Each row against its baseline row on ``metric`` (one family, Holm-corrected)."""
    return judge(baseline_entries(rows, spec, metric), parse_margin(margin))


def _final_model_metric(row: Row) -> str | None:
    """The metric that measures a row's final model in every run (``metrics.avg_bn_acc`` for a
    method that delivers its average after BN recalibration), or None."""
    names = set(row.runs["metrics.final_model"].dropna().astype(str)) if "metrics.final_model" in row.runs else set()
    return next((m for m, name in MODEL_OF.items() if names == {name}), None)


def _same_model(row: Row, metric: str, reference: str) -> str | None:
    """Why ``metric`` and ``reference`` measure one model in every run of a row, or None."""
    for a, b in ((metric, reference), (reference, metric)):
        if a == "metrics.final_acc" and b in MODEL_OF and _final_model_metric(row) == b:
            return f"the same model (its final model is its {shown(b)})"
    return None


def within_entries(rows: list[Row], metric: str, reference: str, rooms: Rooms | None = None) -> list[dict]:
    """``metric`` against ``reference`` in the same runs of each row (e.g. average vs ensemble);
    a row where both name one model is shown as such, and left out of the family."""
    entries = []
    for row in rows:
        x, y = _pair(row.values(metric), row.values(reference))
        if not len(x):
            continue
        entry = {"row": row.label, "baseline": f"its own {shown(reference)}", "metric": shown(metric),
                 "_x": x, "_y": y, "_room": rooms.of(row) if rooms else None,
                 "_gated": reference in HEADROOM_GATED, "_own_room": _own_headroom(row, reference)}  # fmt: skip
        stand_in = _final_model_metric(row) if metric == "metrics.final_acc" else None
        if why := _same_model(row, metric, reference):
            entry["_why"] = why
        elif stand_in and (stand_in, reference) in WITHIN:
            entry["_why"] = (f"the same as its {shown(stand_in)} against its {shown(reference)} "
                             f"(its final model is its {shown(stand_in)})")  # fmt: skip
        elif metric in MEMBER_METRICS and reference in MEMBER_METRICS:
            entry["_key"] = (metric, reference, _members_of(row, rows))
        entries.append(entry)
    return entries


def _own_headroom(row: Row, reference: str) -> stats.Paired | None:
    """The row's own ensemble minus its own mean member, when ``reference`` is that ensemble."""
    if reference != "metrics.ensemble_acc":
        return None
    ens, member = row.values("metrics.ensemble_acc"), row.values("metrics.individual_mean")
    return _points(ens, member) if len(_pair(ens, member)[0]) else None


def within_rows(rows: list[Row], metric: str, reference: str, margin: float | Margin) -> pd.DataFrame:
    """``metric`` against ``reference`` in the same runs of each row (one family)."""
    return judge(within_entries(rows, metric, reference), parse_margin(margin))


def parse_versus(specs: list[str] | None) -> list[tuple[str, str]]:
    """``--versus A:B`` (repeatable): method A's rows against method B's rows with the same
    settings otherwise; a claim between two methods (TWA against SWA, WASH against PAPA). B may
    instead be one row's label (it holds a parenthesis), e.g. ``diloco:local_sgd (every_steps=1)``,
    synchronous data-parallel training: A's rows against that row of their own table."""
    out = []
    for spec in specs or []:
        a, sep, b = spec.partition(":")
        if not sep or not a.strip() or not b.strip() or a.strip() == b.strip():
            raise UserError(f"--versus {spec!r} must be two different methods as A:B, e.g. twa:swa, or a method and "
                            "a row's label, e.g. 'diloco:local_sgd (every_steps=1)'")  # fmt: skip
        out.append((a.strip(), b.strip()))
    return out


def is_row_label(side: str) -> bool:
    """Whether a side of ``--versus`` names one row (``local_sgd (every_steps=1)``), not a method."""
    return "(" in side


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


def versus_entries(
    rows: list[Row], pairs: list[tuple[str, str]], metric: str, rooms: Rooms | None = None
) -> list[dict]:
    """Each row of method A against each row of method B (or the row B names) that is
    :func:`like_for_like` (no nearest match: a claim between methods holds only like for like)."""
    entries = []
    for a, b in pairs:
        side = "label" if is_row_label(b) else "method"
        for row in (r for r in rows if r.method == a):
            for base in (r for r in rows if getattr(r, side) == b and r is not row and like_for_like(row, r)):
                x, y = _pair(row.values(metric), base.values(metric))
                entry = {"row": row.label, "baseline": base.label, "metric": shown(metric), "_x": x, "_y": y,
                         "_room": rooms.of(row) if rooms else None}  # fmt: skip
                if len(x) == 0:
                    entry["_why"] = f"no shared seeds ({_seeds(row, metric)} against {_seeds(base, metric)})"
                entries.append(entry)
    return entries


def versus(rows: list[Row], pairs: list[tuple[str, str]], metric: str, margin: float | Margin) -> pd.DataFrame:
    """:func:`versus_entries` as one family, Holm-corrected."""
    return judge(versus_entries(rows, pairs, metric), parse_margin(margin))


EQUAL_FLOPS_FREE = ("population.size", "trainer.epochs", "population.same_init")  # what N x the steps changes


def equal_flops_single(row: Row, singles: list[Row]) -> tuple[Row, list[str]] | None:
    """The one-member run of the same dataset and model whose training FLOPs are the row's
    (within 1%); of several, the one whose other settings differ least (and those settings)."""
    flops = row.values("cost.train_flops").mean()
    if not np.isfinite(flops) or flops <= 0:
        return None
    match = []
    for s in singles:
        if s is not row and abs(s.values("cost.train_flops").mean() / flops - 1) < 0.01:
            want, have = _non_method(row.setting), _non_method(s.setting)
            differ = sorted(k for k in set(want) | set(have)
                            if want.get(k) != have.get(k) and k not in EQUAL_FLOPS_FREE)  # fmt: skip
            match.append((len(differ), s.label, s, differ))
    if not match:
        return None
    _, _, single, differ = min(match, key=lambda m: m[:2])
    return single, differ


def equal_flops_entries(rows: list[Row], singles: list[Row], metric: str, rooms: Rooms | None = None) -> list[dict]:
    """Each row against one model trained for the row's FLOPs: the comparison at equal compute."""
    entries = []
    for row in rows:
        match = equal_flops_single(row, singles)
        if match is None:
            continue
        single, differ = match
        x, y = _pair(row.values(metric), single.values("metrics.final_acc"))
        note = f"{single.label}, N=1 (equal FLOPs)" + (f" (differs in {', '.join(differ)})" if differ else "")
        entry = {"row": row.label, "baseline": note, "metric": shown(metric), "_x": x, "_y": y,
                 "_room": rooms.of(row) if rooms else None}  # fmt: skip
        if len(x) == 0:
            entry["_why"] = "no shared seeds"
        entries.append(entry)
    return entries


def at_equal_flops(rows: list[Row], singles: list[Row], metric: str, margin: float | Margin) -> pd.DataFrame:
    """:func:`equal_flops_entries` as one family, Holm-corrected."""
    return judge(equal_flops_entries(rows, singles, metric), parse_margin(margin))


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


def caption(margin: Margin, families: list[str]) -> str:
    """What the verdicts mean: the families they are corrected in, and each outcome."""
    delta = f"±{margin.text()}" + (" (of the row's independent population)" if margin.relative else "") + " points"
    return (
        "Paired by seed over the seeds both sides share; difference = row - compared, in accuracy points, "
        "with the Student-t 95% CI of the mean difference. Holm families (family-wise 5%), one per comparison "
        f"kind of this table, over all its metrics: {'; '.join(families)}. Outcomes, with the margin δ = {delta}: "
        "**better**/**worse**: a paired t-test shows a difference and two one-sided t-tests (TOST) do not put it "
        "within ±δ; **better, within ±δ**/**worse, within ±δ**: a difference is shown and TOST also puts it "
        "within ±δ (real, but negligible); **equivalent (±δ)**: no difference is shown and TOST puts it within "
        "±δ; **inconclusive**: neither; **not tested here**: an average against its ensemble or its members where "
        "the table's headroom (the ensemble's gain over a member) is below δ, so that the comparison cannot tell a "
        "method from taking one member, and an average against its row's own ensemble where that ensemble gains "
        "less than δ over the row's own members (members kept together); only a difference beyond δ is then "
        "reported (these comparisons stay in their family). Left out of their family, their reason as their "
        f"verdict: no verdict below {stats.MIN_SEEDS} shared seeds or when the difference is the same on every "
        "seed; comparisons identical by construction (the same model, or the same members on both sides) and "
        "duplicates of a row above. "
        "P(improvement) is rliable's probability that a run of the row beats a run of the other (0.5: no "
        "preference)."
    )
