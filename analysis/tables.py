"""Comparison tables: one per (dataset, model, population size), one row per method variant,
each cell the mean ± std over seeds with the number of seeds; Markdown, LaTeX and CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wab.analysis.plots import method_order

GROUP = ["dataset", "model", "population_size"]

# (column in the runs DataFrame, header, kind): "acc" shown in %, "num" as is, "sci" in scientific notation
COLUMNS = [
    ("metrics.individual_mean", "individual", "acc"),
    ("metrics.ensemble_acc", "ensemble", "acc"),
    ("metrics.avg_acc", "averaged", "acc"),
    ("metrics.avg_bn_acc", "averaged+BN", "acc"),
    ("metrics.final_acc", "final acc", "acc"),
    ("metrics.nll", "NLL", "num"),
    ("metrics.ece", "ECE", "num"),
    ("comm.elements_per_step", "comm/step", "sci"),
    ("comm_fraction", "comm/step / D", "sci"),
    ("wall_time_s", "time (s)", "int"),
]


def _fmt(values: pd.Series, kind: str) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "–"
    mean, std, n = v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0), len(v)
    if kind == "acc":
        return f"{100 * mean:.2f} ± {100 * std:.2f} ({n})"
    if kind == "int":
        return f"{mean:.0f} ± {std:.0f} ({n})"
    if kind == "sci":
        return "0" if mean == 0 else f"{mean:.3g} ± {std:.2g} ({n})"
    return f"{mean:.3f} ± {std:.3f} ({n})"


def summary_tables(df: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """{(dataset, model, N): table} over runs that finished (status done)."""
    done = df[df["status"] == "done"].copy()
    if done.empty:
        return {}
    done["population_size"] = done["population_size"].astype(int)
    done["comm_fraction"] = pd.to_numeric(done["comm.elements_per_step"]) / pd.to_numeric(done["comm.model_elements"])
    tables = {}
    for key, group in done.groupby(GROUP, sort=True):
        rows = []
        order = method_order(group["method"].unique())
        by_variant = sorted(group.groupby("variant"), key=lambda kv: (order.index(kv[1]["method"].iloc[0]), kv[0]))
        for variant, sub in by_variant:
            row = {"method": variant, "final model": _final_names(sub)}
            for col, header, kind in COLUMNS:
                row[header] = _fmt(sub[col], kind) if col in sub else "–"
            rows.append(row)
        tables[tuple(key)] = pd.DataFrame(rows)
    return tables


def _final_names(sub: pd.DataFrame) -> str:
    names = sorted(set(sub["metrics.final_model"].dropna().astype(str)))
    return ", ".join(names) if names else "–"


def title(key: tuple) -> str:
    dataset, model, n = key
    return f"{dataset}, {model}, N={n}"


def write_tables(tables: dict[tuple, pd.DataFrame], out: Path) -> list[Path]:
    """Markdown, LaTeX and CSV files, one set per table; returns the Markdown paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, table in tables.items():
        stem = "table_" + "_".join(str(k) for k in key)
        md = out / f"{stem}.md"
        md.write_text(f"### {title(key)}\n\n" + table.to_markdown(index=False) + "\n")
        (out / f"{stem}.tex").write_text(
            table.to_latex(index=False, caption=title(key), label=f"tab:{stem}").replace("±", r"$\pm$")
        )
        table.to_csv(out / f"{stem}.csv", index=False)
        written.append(md)
    return written
