"""Comparison tables: one per (dataset, model, population size), one row per setting (the whole
config but the seed), each cell the mean ± std over the row's seeds; Markdown, LaTeX and CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wab.analysis.collect import GROUP
from wab.analysis.plots import method_order

# (column in the runs DataFrame, header, kind): "acc" shown in %, "num" as is, "sci" in scientific notation
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
    ("wall_time_s", "time (s)", "int"),
]


@dataclass
class Table:
    """One comparison table and what its caption must say."""

    key: tuple
    rows: pd.DataFrame
    shared: str  # changed settings every row shares, as overrides
    single_seed: bool  # some row has one seed: its cells have no spread
    runs: dict[str, list[str]]  # row label -> the run ids averaged in it

    @property
    def title(self) -> str:
        return title(self.key)

    def caption(self) -> str:
        """Mean ± std over seeds; what every row shares; the note on single seeds, once."""
        parts = ["Mean ± std over the seeds of each row (accuracies in %)."]
        if self.shared:
            parts.append(f"Every row: {self.shared}.")
        parts.append("Settings not shown are wab's defaults.")
        if self.single_seed:
            parts.append("Rows with 1 seed show the value alone: no spread.")
        return " ".join(parts)


def _fmt(values: pd.Series, kind: str, seeds: int) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "–"
    mean, std, n = v.mean(), v.std(ddof=1), len(v)
    scale, spec = {"acc": (100.0, ".2f"), "int": (1.0, ".0f"), "num": (1.0, ".3f"), "sci": (1.0, ".3g")}[kind]
    if kind == "sci" and mean == 0 and (v == 0).all():
        return "0"
    text = f"{scale * mean:{spec}}" + (f" ± {scale * std:{'.2g' if kind == 'sci' else spec}}" if n > 1 else "")
    return text if n == seeds else f"{text} ({n} of {seeds})"


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
        rows, runs = [], {}
        for _, sub in settings:
            label, seeds = sub["variant"].iloc[0], len(sub)
            row = {"method": label, "seeds": seeds, "final model": _final_names(sub)}
            for col, header, kind in COLUMNS:
                row[header] = _fmt(sub[col], kind, seeds) if col in sub else "–"
            rows.append(row)
            runs[label] = [Path(d).name for d in sub["run_dir"]]
        tables[tuple(key)] = Table(
            key=tuple(key),
            rows=pd.DataFrame(rows),
            shared=str(group["shared_settings"].iloc[0]),
            single_seed=any(r["seeds"] == 1 for r in rows),
            runs=runs,
        )
    return tables


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
        caption = f"{table.title}. {table.caption()}".replace("_", r"\_").replace("±", r"$\pm$")
        latex = table.rows.to_latex(index=False, escape=True, caption=caption, label=f"tab:{stem}")
        (out / f"{stem}.tex").write_text(latex.replace("±", r"$\pm$"))
        table.rows.to_csv(out / f"{stem}.csv", index=False)
        written.append(md)
    return written
