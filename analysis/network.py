"""``wab report --network``: each row's modelled communication time per step on named links
(:mod:`wab.parts.network`, an estimate) beside its measured compute time per step, so a reader sees
where a method stops being bound by computation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from wab.analysis.verdicts import Row
from wab.parts.network import step_time

CAPTION = (
    "Modelled, not measured: the ledger's bytes and rounds per operation costed on each link (ring all-reduce "
    "2(n-1)/n S/B + 2(n-1)L per call, ring all-gather (n-1)(S/B + L), neighbour exchange S/B + L, tree broadcast "
    "S/B + log2(n) L; n members, one per worker; no overlap with computation). Compute: measured training time "
    "per step on the machine that ran the row (wall time where the record predates it). In brackets: "
    "communication / compute."
)


def _ops(run: pd.Series) -> dict[str, dict]:
    ops: dict[str, dict] = {}
    for col, value in run.items():
        if isinstance(col, str) and col.startswith("comm.ops.") and pd.notna(value):
            name, field = col.removeprefix("comm.ops.").rsplit(".", 1)
            ops.setdefault(name, {})[field] = value
    return ops


def network_table(rows: list[Row], links: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One line per row: compute seconds per step and, per link, modelled communication seconds."""
    lines = []
    for row in rows:
        compute, comm = [], {name: [] for name in links}
        for _, run in row.runs.iterrows():
            steps = int(run.get("steps") or 0)
            if steps < 1:
                continue
            train = run.get("cost.train_time_s")
            compute.append(float(train if pd.notna(train) else run["wall_time_s"]) / steps)
            ops, n = _ops(run), int(run["population_size"])
            for name, (bw, lat) in links.items():
                comm[name].append(step_time(ops, n, steps, bw, lat))
        if compute:
            lines.append({"row": row.label, "compute (s/step)": float(np.mean(compute)),
                          **{name: float(np.mean(v)) for name, v in comm.items()}})  # fmt: skip
    return pd.DataFrame(lines)


def markdown(table: pd.DataFrame, links: dict) -> str:
    if table.empty:
        return ""
    header = ["row", "compute (s/step)", *(f"{name} (s/step)" for name in links)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        compute = r["compute (s/step)"]
        cells = [r["row"], f"{compute:.3g}"]
        cells += [f"{r[n]:.3g} ({r[n] / compute:.2g}x)" if r[n] > 0 else "0" for n in links]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def network_times(runs: pd.DataFrame, link: tuple[float, float]) -> pd.Series:
    """Each run's modelled communication time over its whole training on ``link`` (bandwidth,
    latency), in seconds: the per-step model of :func:`network_table` times the steps."""
    out = []
    for _, run in runs.iterrows():
        steps = int(run.get("steps") or 0)
        out.append(step_time(_ops(run), int(run["population_size"]), steps, *link) * steps if steps else np.nan)
    return pd.Series(out, index=runs.index, dtype=float)
