"""Comparison tables: one per (dataset, model, population size), one row per setting (the whole
config but the seed). Each accuracy, NLL and ECE cell is the mean over the row's seeds with its
95% bootstrap CI (:mod:`wab.analysis.stats`); cost cells (communication, FLOPs, time) are means.
Markdown and LaTeX for reading; CSV with mean, CI low/high, std and n as separate columns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wab.analysis import stats
from wab.analysis.collect import GROUP
from wab.analysis.plots import method_order

# (column in the runs DataFrame, header, kind): "acc" in % and "num" as is, both with a CI; "sci"
# (scientific notation) and "int" are cost columns, shown as means
COLUMNS = [
    ("metrics.individual_mean", "individual", "acc"),
    ("metrics.members_recal_mean", "individual+BN", "acc"),
    ("metrics.ensemble_acc", "ensemble", "acc"),
    ("metrics.avg_acc", "averaged", "acc"),
    ("metrics.avg_bn_acc", "averaged+BN", "acc"),
    ("metrics.final_acc", "final acc", "acc"),
    ("metrics.nll", "NLL", "num"),
    ("metrics.ece", "ECE", "num"),
    ("metrics.lmc.pair.acc_barrier", "LMC barrier", "acc"),
    ("comm.elements_per_step", "comm/step", "sci"),
    ("comm_fraction", "comm/step / D", "sci"),
    ("comm.bytes_per_step", "bytes/step", "sci"),
    ("comm.measured.bytes_per_member_per_step", "wire bytes/step", "sci"),
    ("comm.measured.ratio_to_ledger", "wire/ledger", "sci"),
    ("cost.train_flops", "train FLOPs", "sci"),
    ("cost.train_time_s", "train time (s)", "int"),
    ("wall_time_s", "time (s)", "int"),
]
_SCALE = {"acc": 100.0, "num": 1.0, "sci": 1.0, "int": 1.0}


@dataclass
class Table:
    """One comparison table and what its caption must say."""

    key: tuple
    rows: pd.DataFrame
    shared: str  # changed settings every row shares, as overrides
    single_seed: bool  # some row has fewer than stats.MIN_SEEDS seeds: its cells claim no interval
    runs: dict[str, list[str]]  # row label -> the run ids averaged in it
    numbers: pd.DataFrame  # per row and column: mean, ci_low, ci_high, std, n (the CSV)
    commits: list[str]  # the code the rows' runs were trained with ("unknown" for older records)
    builds: list[str]  # the torch builds and devices they ran on (neither is in the run id)
    loads: tuple[float, float] | None = None  # the least and most load per core runs ran under (None: unrecorded)

    @property
    def title(self) -> str:
        return title(self.key)

    def caption(self) -> str:
        """How cells are computed; what every row shares; single seeds and commits, once."""
        parts = [
            f"Accuracy (%), NLL and ECE: mean [{stats.CI_METHOD}]; with fewer than {stats.FEW_SEEDS} seeds "
            "such an interval is narrower than it should be (see the paired verdicts). Cost columns: means "
            "(train FLOPs: members x steps x one member's forward and backward, counted by torch's flop "
            "counter; train time: wall time without evaluation)."
        ]
        if (self.rows.get("wire bytes/step", pd.Series(dtype=str)) != "–").any():
            parts.append(
                "Wire bytes/step (runs on several processes): the training bytes the processes handed to "
                "torch.distributed collectives, per member and step (evaluation, checkpoint and control traffic "
                "are apart, in each record's comm.measured); wire/ledger is its ratio to the ledger's bytes/step, "
                "above 1 where an all-gather hands a process's rows to every other process, below 1 where rows "
                "held by one process need not travel."
            )
        if self.shared:
            parts.append(f"Every row: {self.shared}.")
        parts.append("Settings not shown are wab's defaults.")
        if self.single_seed:
            parts.append(f"Rows with fewer than {stats.MIN_SEEDS} seeds show the mean alone: no interval is claimed "
                         "(nor for a cell with the same value on every seed).")
        if len(self.commits) > 1:
            parts.append(f"**Rows come from {len(self.commits)} different commits ({', '.join(self.commits)}).**")
        if self.loads is not None and uneven_load(*self.loads):
            low, high = self.loads
            parts.append(
                f"**Runs ran under different machine loads ({low:.2f} to {high:.2f} load average per core): "
                "their time columns measure the load as well as the method; compare FLOPs, or rerun on an idle "
                "machine.**"
            )
        if len(self.builds) > 1:
            parts.append(
                f"**Runs ran on {len(self.builds)} torch builds or devices ({', '.join(self.builds)}), which may "
                "round differently.**"
            )
        return " ".join(parts)


def _numbers(values: pd.Series, kind: str) -> dict[str, float]:
    """mean, ci_low, ci_high, std and n of a column over a row's seeds (in the shown unit)."""
    v = _SCALE[kind] * pd.to_numeric(values, errors="coerce").dropna()
    ci = stats.mean_ci(v.to_numpy()) if kind in ("acc", "num") else None
    low, high = ci if ci else (np.nan, np.nan)
    std = v.std(ddof=1) if len(v) > 1 else np.nan
    return {"mean": v.mean() if len(v) else np.nan, "ci_low": low, "ci_high": high, "std": std, "n": len(v)}


def _fmt(num: dict[str, float], kind: str, seeds: int) -> str:
    if num["n"] == 0:
        return "–"
    spec = {"acc": ".2f", "int": ".0f", "num": ".3f", "sci": ".3g"}[kind]
    if kind == "sci" and num["mean"] == 0:  # counts are never negative: every seed sent nothing
        text = "0"
    else:
        text = f"{num['mean']:{spec}}"
        if np.isfinite(num["ci_low"]) and kind in ("acc", "num"):
            text += f" [{num['ci_low']:{spec}}, {num['ci_high']:{spec}}]"
    return text if num["n"] == seeds else f"{text} ({num['n']} of {seeds})"


def summary_tables(df: pd.DataFrame) -> dict[tuple, Table]:
    """{(dataset, model, N): Table} over runs that finished (status done)."""
    done = df[df["status"] == "done"].copy()
    if done.empty:
        return {}
    done["population_size"] = done["population_size"].astype(int)
    done["comm_fraction"] = pd.to_numeric(done["comm.elements_per_step"]) / pd.to_numeric(done["comm.model_elements"])
    tables = {}
    for key, group in done.groupby(GROUP, sort=True):
        order = method_order(group["method"].unique())
        settings = sorted(
            group.groupby("setting_id"), key=lambda kv: (order.index(kv[1]["method"].iloc[0]), kv[1]["variant"].iloc[0])
        )
        rows, runs, numbers = [], {}, []
        for _, sub in settings:
            label, seeds = sub["variant"].iloc[0], len(sub)
            row = {"method": label, "seeds": seeds, "final model": _final_names(sub)}
            nums = {"method": label, "seeds": seeds, "final model": row["final model"]}
            for col, header, kind in COLUMNS:
                num = _numbers(sub[col] if col in sub else pd.Series(dtype=float), kind)
                row[header] = _fmt(num, kind, seeds)
                nums.update({f"{header} {k}": v for k, v in num.items()})
            rows.append(row)
            numbers.append(nums)
            runs[label] = [Path(d).name for d in sub["run_dir"]]
        tables[tuple(key)] = Table(
            key=tuple(key),
            rows=pd.DataFrame(rows),
            shared=str(group["shared_settings"].iloc[0]),
            single_seed=any(r["seeds"] < stats.MIN_SEEDS for r in rows),
            runs=runs,
            numbers=pd.DataFrame(numbers),
            commits=commits_of(group),
            builds=builds_of(group),
            loads=loads_of(group),
        )
    return tables


def commits_of(runs: pd.DataFrame) -> list[str]:
    """The distinct commits (12 characters, ``+dirty`` for uncommitted changes) runs were trained
    with; ``unknown`` for records without one (older wab, or not a git checkout)."""
    out = set()
    for _, r in runs.iterrows():
        commit = r.get("git_commit")
        if not isinstance(commit, str) or not commit:
            out.add("unknown")
        else:
            out.add(commit[:12] + ("+dirty" if r.get("git_dirty") is True else ""))
    return sorted(out)


def loads_of(runs: pd.DataFrame) -> tuple[float, float] | None:
    """The least and the most load average per core among the runs that recorded one."""
    if "cost.load_average" not in runs or "cost.cores" not in runs:
        return None
    per_core = (pd.to_numeric(runs["cost.load_average"], errors="coerce")
                / pd.to_numeric(runs["cost.cores"], errors="coerce")).dropna()  # fmt: skip
    return (float(per_core.min()), float(per_core.max())) if len(per_core) else None


def uneven_load(low: float, high: float) -> bool:
    """Loads that make wall times incomparable: the busiest run's machine had more load than cores
    and at least half as much again as the idlest run's."""
    return high > 1.0 and high > 1.5 * low


def builds_of(runs: pd.DataFrame) -> list[str]:
    """The distinct torch builds and devices (``torch 2.14.1 on cpu``) runs ran on: the run id
    holds the device type and CPU threads, not the torch version or the GPU's model. Records
    from before ``device_name`` name the device their config gave, when it gave one."""
    out = set()
    for _, r in runs.iterrows():
        version = r.get("torch_version")
        device = r.get("device_name")
        if not isinstance(device, str):
            device = "cpu" if r.get("config.device") == "cpu" else "unknown device"
        out.add(f"torch {version if isinstance(version, str) else 'unknown'} on {device}")
    return sorted(out)


def _final_names(sub: pd.DataFrame) -> str:
    names = sorted(set(sub["metrics.final_model"].dropna().astype(str)))
    return ", ".join(names) if names else "–"


def title(key: tuple) -> str:
    dataset, model, n = key
    return f"{dataset}, {model}, N={n}"


def markdown(table: Table) -> str:
    """The table in Markdown with its caption below it."""
    return table.rows.to_markdown(index=False) + f"\n\n{table.caption()}\n"


def write_tables(tables: dict[tuple, Table], out: Path) -> list[Path]:
    """Markdown, LaTeX and CSV files, one set per table; returns the Markdown paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, table in tables.items():
        stem = "table_" + "_".join(str(k) for k in key)
        md = out / f"{stem}.md"
        md.write_text(f"### {table.title}\n\n" + markdown(table))
        caption = f"{table.title}. {table.caption()}".replace("_", r"\_").replace("%", r"\%").replace("**", "")
        latex = table.rows.to_latex(index=False, escape=True, caption=caption, label=f"tab:{stem}")
        (out / f"{stem}.tex").write_text(latex)
        table.numbers.to_csv(out / f"{stem}.csv", index=False)
        written.append(md)
    return written
