"""``wab report``: every run under a directory into a DataFrame, tables, figures and a summary page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wab.analysis import plots
from wab.analysis.collect import GROUP, collect_curves, collect_runs
from wab.analysis.tables import markdown, summary_tables, write_tables
from wab.errors import UserError


def _slug(key: tuple) -> str:
    return "_".join(str(k) for k in key)


def write_report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write runs.csv (and runs.parquet with pyarrow), tables, figures and summary.md; returns
    the summary's path. Unreadable or unfinished runs are listed in the summary, never dropped.
    A missing directory, or one without any run, is a :class:`UserError`."""
    results = Path(results)
    if not results.is_dir():
        raise UserError(f"results directory {results} does not exist")
    df, skipped = collect_runs(results)
    if df.empty and not skipped:
        raise UserError(f"no runs under {results} (a run directory holds config.yaml); nothing to report")
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not df.empty:
        df.to_csv(out / "runs.csv", index=False)
        try:
            df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(out / "runs.parquet")
        except ImportError:
            pass
    lines = [f"# wab report: {results}", ""]
    statuses = df["status"].value_counts().to_dict() if not df.empty else {}
    lines.append(
        f"{len(df)} runs collected ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items())) or 'none'}); "
        f"{len(skipped)} skipped. One row per setting (the whole config but the seed); accuracies in %; "
        "communication in elements per member per step, and as a fraction of the model size D."
    )
    tables = summary_tables(df) if not df.empty else {}
    curves = collect_curves(df[df["status"] == "done"]) if tables else pd.DataFrame()
    for key, table in tables.items():
        lines += ["", f"## {table.title}", "", markdown(table)]
        lines += ["<details><summary>runs in each row</summary>", ""]
        lines += [f"- {label}: {', '.join(ids)}" for label, ids in table.runs.items()]
        lines += ["", "</details>", ""]
        group = df[(df["status"] == "done")]
        for col, value in zip(GROUP, key):
            group = group[group[col] == value]
        figures = [
            ("accuracy_vs_communication", plots.accuracy_vs_communication(group, table.title)),
            ("ensemble_vs_average", plots.ensemble_vs_average(group, table.title)),
            ("disagreement_vs_average", plots.disagreement_vs_average(group, table.title)),
        ]
        gcurves = curves[curves["run_dir"].isin(group["run_dir"])] if not curves.empty else curves
        if not gcurves.empty:
            figures.append(("accuracy_over_epochs", plots.accuracy_over_epochs(gcurves, table.title)))
        for param in plots.varied_hyperparameters(group):
            figures.append((f"sensitivity_{param}", plots.sensitivity(group, param, f"{table.title}: {param}")))
        for name, fig in figures:
            png = plots.save(fig, out / "figures", f"{name}_{_slug(key)}")
            lines += [f"![{name}](figures/{png.name})", ""]
    write_tables(tables, out / "tables")
    failed = df[df["status"] != "done"] if not df.empty else df
    if len(failed) or skipped:
        lines += ["", "## Runs not in the tables", "", "| run | reason |", "|---|---|"]
        for _, r in failed.iterrows():
            reason = str(r.get("error") or r["status"]).splitlines()[0][:120]
            lines.append(f"| {Path(r['run_dir']).name} | {r['status']}: {reason} |")
        for run_dir, reason in skipped:
            lines.append(f"| {Path(run_dir).name} | skipped: {reason} |")
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary
