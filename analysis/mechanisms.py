"""How often each row's mechanism acted, beside the count its paper's setting implies.

A verdict on a method whose mechanism barely acted (PAPA pulling 344 times where its paper pulls
tens of thousands of times, a greedy soup that keeps one ingredient) says nothing about the
method. Each known method names what it counts, where its records hold the count (the ledger's
calls, ``method_report``), and the count its paper's setting implies, from ``METHODS.md``: PAPA's
k = 10 over 300 CIFAR epochs at batch 64 (782 steps an epoch), PAPA-all's K = 5 epochs of 300,
WASH's shuffle after every step, Lookaround's k = 5 over 200 epochs at batch 128, LAWA's 5
checkpoints; TWA's fit is counted by its weights' distance from uniform. A row more than 10x
away from its paper's count is flagged "outside its paper's regime"; a method without a paper
count is shown with its count alone.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wab.analysis.verdicts import Row

FACTOR = 10  # a count this many times away from the paper's is outside its regime
CIFAR_STEPS = {64: 782, 128: 391}  # steps per epoch on CIFAR's 50,000 images at a batch size


@dataclass(frozen=True)
class Mechanism:
    what: str  # what is counted
    column: str  # the runs-table column that holds the count per run
    paper: float | None = None  # the count the paper's setting implies
    source: str = ""  # how that count follows from the paper's setting
    per_list: bool = False  # the column holds a list: count its entries


MECHANISMS = {
    "papa": Mechanism("pulls toward the mean", "comm.ops.lerp_toward_mean.calls", 300 * CIFAR_STEPS[64] / 10,
                      "every k=10 steps, 300 epochs at batch 64"),
    "papa_all": Mechanism("merges", "comm.ops.average_into_members.calls", 60, "every K=5 epochs of 300, from epoch 0"),
    "papa_2": Mechanism("pair merges", "comm.ops.pair_average.calls", 60, "every K=5 epochs of 300, from epoch 0"),
    "wash": Mechanism("shuffle steps", "comm.ops.permute_elements.calls", 300 * CIFAR_STEPS[64],
                      "after every step, 300 epochs at batch 64"),
    "wash_opt": Mechanism("shuffle steps", "comm.ops.permute_elements.calls", 300 * CIFAR_STEPS[64],
                          "after every step, 300 epochs at batch 64"),
    "lookaround": Mechanism("averages of the heads", "comm.ops.average_into_members.calls", 200 * CIFAR_STEPS[128] / 5,
                            "every k=5 steps, 200 epochs at batch 128"),
    "lawa": Mechanism("checkpoints averaged", "method_report.checkpoints_averaged", 5, "the last k=5 epochs"),
    "local_sgd": Mechanism("averaging rounds", "comm.ops.average_into_members.calls"),
    "diloco": Mechanism("outer steps", "method_report.outer_steps"),
    "sparta": Mechanism("sparse averaging steps", "comm.ops.average_elements.calls"),
    "gossip": Mechanism("gossip rounds", "comm.ops.gossip_ring.calls"),
    "dart": Mechanism("aggregations", "comm.ops.average_into_members.calls"),
    "soups": Mechanism("soup ingredients chosen", "method_report.greedy_soup.ingredients", per_list=True),
    "twa": Mechanism("fitted weights' L1 distance from uniform", "method_report.fit.distance_from_uniform"),
}  # fmt: skip


def _count(value: object, per_list: bool) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if per_list:
        items = ast.literal_eval(value) if isinstance(value, str) else value
        return float(len(items))
    return float(value)


def mechanism_table(rows: list[Row]) -> pd.DataFrame:
    """One line per row of a known method: the mean count over its seeds (and its range), the
    paper's count and their ratio, and the flag."""
    out = []
    for row in rows:
        mech = MECHANISMS.get(row.method)
        if mech is None:
            continue
        values = row.runs[mech.column] if mech.column in row.runs else pd.Series([np.nan] * len(row.runs))
        counts = np.array([_count(v, mech.per_list) for v in values], dtype=float)
        if mech.column.startswith("comm.ops."):  # a ledger without the operation: it never ran
            counts = np.nan_to_num(counts, nan=0.0)
        counts = counts[np.isfinite(counts)]  # a method's report without the entry: not recorded
        mean = float(counts.mean()) if len(counts) else np.nan
        ratio = mean / mech.paper if mech.paper and len(counts) else np.nan
        flag = "" if len(counts) else "not recorded"
        if mech.paper and len(counts) and (mean == 0 or not 1 / FACTOR <= ratio <= FACTOR):
            flag = "outside its paper's regime"
        if mech.per_list and len(counts) and np.all(counts == 1):
            flag = "one ingredient in every run: held-out model selection, not a soup"
        out.append({"row": row.label, "counted": mech.what, "count": mean,
                    "min": float(counts.min()) if len(counts) else np.nan,
                    "max": float(counts.max()) if len(counts) else np.nan,
                    "paper": mech.paper if mech.paper else np.nan, "paper setting": mech.source,
                    "ratio": ratio, "flag": flag})  # fmt: skip
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    lines = [
        "| row | counted | count (mean; min-max over seeds) | paper's count | ratio | |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        if not np.isfinite(r["count"]):
            lines.append(f"| {r['row']} | {r['counted']} | – | – | – | not recorded |")
            continue
        span = f" ({r['min']:.0f}-{r['max']:.0f})" if r["min"] != r["max"] else ""
        paper = f"{r['paper']:.0f} ({r['paper setting']})" if np.isfinite(r["paper"]) else "–"
        ratio = f"{r['ratio']:.2g}" if np.isfinite(r["ratio"]) else "–"
        flag = f"**{r['flag']}**" if r["flag"] else ""
        lines.append(f"| {r['row']} | {r['counted']} | {r['count']:.4g}{span} | {paper} | {ratio} | {flag} |")
    return "\n".join(lines)


CAPTION = (
    f"How often each row's mechanism acted, per run (the ledger's operation counts or the method's report), beside "
    f"the count its paper's setting implies (METHODS.md); more than {FACTOR}x away: **outside its paper's "
    "regime**, where a verdict on the method says little about the method as its paper runs it."
)
