"""``wab report``: every run under a directory into a DataFrame, tables, paired verdicts, time to
target, figures (fronts of accuracy against cost among them), an across-task aggregate and a
summary page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from wab.analysis import aggregate, mechanisms, merging, network, plots, targets, verdicts
from wab.analysis.collect import GROUP, collect_curves, collect_runs
from wab.analysis.tables import markdown, summary_tables, write_tables
from wab.errors import UserError, did_you_mean, directory_problem
from wab.parts.network import load_links


def _slug(key: tuple) -> str:
    return "_".join(str(k) for k in key)


def write_report(
    results: str | Path,
    out: str | Path | None = None,
    baseline: str | None = None,
    margin: float | str = 0.5,
    target: float | None = None,
    metrics: list[str] | None = None,
    links: str | None = None,
    versus: list[str] | None = None,
) -> Path:
    """Write runs.csv (and runs.parquet with pyarrow), tables, verdicts, time to target, figures
    and summary.md; returns the summary's path. Unreadable or unfinished runs are listed in the
    summary, never dropped. A missing directory, or one without any run, is a :class:`UserError`.

    ``baseline``: each row's baseline (a row label, or overrides; default ``method=independent``);
    ``margin``: the equivalence margin in accuracy points, or a fraction of each row's headroom
    (``"0.3h"``); ``target``: the time-to-target accuracy
    in percent (default: the runs' ``trainer.target_acc``, else the baseline's mean member
    accuracy minus the margin); ``metrics``: the accuracies verdicts are given for; ``links``: a
    YAML file of network links (``""``: the default ``configs/network.yaml``) to model each row's
    communication time on (``--network``); ``versus``: ``A:B`` claims between two methods, each row
    of method A against the row of method B with otherwise the same settings (``--versus``)."""
    margin = verdicts.parse_margin(margin)
    if target is not None and not 0 < target <= 100:
        raise UserError(f"--target {target} must be an accuracy in percent, in (0, 100]")
    if target is not None and target <= 1:  # trainer.target_acc is a fraction: say which was meant
        raise UserError(f"--target {target} is in percent ({target}% is below chance): for {target * 100:g}% write "
                        f"--target {target * 100:g}")  # fmt: skip
    metric_cols = [verdicts.metric_column(m) for m in metrics] if metrics else verdicts.HEADLINE
    link_table = load_links(links or None) if links is not None else None
    spec = verdicts.parse_baseline(baseline)
    pairs = verdicts.parse_versus(versus)
    results = Path(results)
    if not results.is_dir():
        raise UserError(f"results directory {results} does not exist")
    df, skipped = collect_runs(results)
    if df.empty and not skipped:
        raise UserError(f"no runs under {results} (a run directory holds config.yaml); nothing to report")
    _check_methods_named(df, baseline, spec, pairs, results)
    out = Path(out) if out else results / "report"
    if problem := directory_problem(out, "--out"):
        raise UserError(problem)
    final_out, out = out, _staging(out)  # written aside, then moved into place whole
    try:
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
        done = df[df["status"] == "done"].astype({"population_size": int}) if not df.empty else df
        curves = collect_curves(done) if tables else pd.DataFrame()
        plots.use_methods(done["method"].unique() if not done.empty else [])  # a colour of its own for each plugin
        all_verdicts, all_targets, all_network, all_grids, all_rooms, all_mechanisms = [], [], [], [], [], []
        if isinstance(spec, str) and tables and not any(spec in t.runs for t in tables.values()):
            raise UserError(f"--baseline {spec!r} is neither a row label nor overrides (k=v); rows: "
                            + ", ".join(sorted({lab for t in tables.values() for lab in t.runs})))  # fmt: skip
        for key, table in tables.items():
            lines += ["", f"## {table.title}", "", markdown(table)]
            lines += ["<details><summary>runs in each row</summary>", ""]
            lines += [f"- {label}: {', '.join(ids)}" for label, ids in table.runs.items()]
            lines += ["", "</details>", ""]
            group = done
            for col, value in zip(GROUP, key):
                group = group[group[col] == value]
            rows = verdicts.rows_of(group.loc[group["setting_id"].map(_table_order(table, group)).sort_values().index])
            same_task = (done["dataset"] == key[0]) & (done["model"] == key[1])
            one_model = same_task & (done["population_size"] == 1) & (done["method"] == "independent")
            singles = verdicts.rows_of(done[one_model])
            rooms = verdicts.Rooms(rows, singles)
            room = verdicts.headroom_table(rooms, margin)
            if not room.empty:
                lines += ["", f"### Room to gain ({table.title})", "", verdicts.headroom_markdown(room), "",
                          verdicts.HEADROOM_CAPTION, ""]  # fmt: skip
                all_rooms.append(room.assign(table=table.title))
            acted = mechanisms.mechanism_table(rows)
            if not acted.empty:
                lines += ["", f"### How often each mechanism acted ({table.title})", "", mechanisms.markdown(acted), "",
                          mechanisms.CAPTION, ""]  # fmt: skip
                all_mechanisms.append(acted.assign(table=table.title))
            found = _verdicts(rows, singles if key[2] != 1 else [], spec, metric_cols, margin, key[2] == 1, pairs,
                              rooms)  # fmt: skip
            if found:
                lines += ["", f"### Paired verdicts ({table.title})", ""]
                for title, frame in found:
                    lines += [f"**{title}**", "", verdicts.markdown(frame), ""]
                    all_verdicts.append(frame.assign(table=table.title, comparison=title))
                families = list(dict.fromkeys(f for _, frame in found for f in frame["family"]))
                lines += [verdicts.caption(margin, families), ""]
            points = _points_margin(margin, rooms)
            grid = merging.merging_grid(rows, points)
            if not grid.empty:
                lines += ["", f"### Training method × merge ({table.title})", "", merging.markdown(grid), "",
                          merging.caption(points), ""]  # fmt: skip
                all_grids.append(grid.assign(table=table.title))
            tt = targets.targets(rows, curves, spec, target, points)
            if not tt.empty:
                lines += ["", f"### Time to target ({table.title})", "", targets.markdown(tt), "", targets.CAPTION, ""]
                all_targets.append(tt.assign(table=table.title))
            if link_table:
                nt = network.network_table(rows, link_table)
                lines += ["", f"### Communication on a network: an estimate ({table.title})", "",
                          network.markdown(nt, link_table), "", network.CAPTION, ""]  # fmt: skip
                all_network.append(nt.assign(table=table.title))
            figures = [
                ("accuracy_vs_communication", plots.accuracy_vs_communication(group, table.title)),
                ("lmc_barriers", plots.lmc_barriers(group, table.title)),
                ("ensemble_vs_average", plots.ensemble_vs_average(group, table.title)),
                ("disagreement_vs_average", plots.disagreement_vs_average(group, table.title)),
            ]
            gcurves = curves[curves["run_dir"].isin(group["run_dir"])] if not curves.empty else curves
            if not gcurves.empty:
                figures.append(("accuracy_over_epochs", plots.accuracy_over_epochs(gcurves, table.title)))
            for param in plots.varied_hyperparameters(group):
                figures.append((f"sensitivity_{param}", plots.sensitivity(group, param, f"{table.title}: {param}")))
            for name, fig in figures:
                if fig is None:
                    continue
                png = plots.save(fig, out / "figures", f"{name}_{_slug(key)}")
                lines += [f"![{name}](figures/{png.name})", ""]
        lines += _fronts(done, out, link_table)
        lines += _across_tasks(done, out)
        write_tables(tables, out / "tables")
        if all_verdicts:
            pd.concat(all_verdicts, ignore_index=True).to_csv(out / "tables" / "verdicts.csv", index=False)
        if all_targets:
            pd.concat(all_targets, ignore_index=True).to_csv(out / "tables" / "time_to_target.csv", index=False)
        if all_grids:
            pd.concat(all_grids, ignore_index=True).to_csv(out / "tables" / "merging.csv", index=False)
        if all_rooms:
            pd.concat(all_rooms, ignore_index=True).to_csv(out / "tables" / "headroom.csv", index=False)
        if all_mechanisms:
            pd.concat(all_mechanisms, ignore_index=True).to_csv(out / "tables" / "mechanisms.csv", index=False)
        if all_network:
            pd.concat(all_network, ignore_index=True).to_csv(out / "tables" / "network.csv", index=False)
        failed = df[df["status"] != "done"] if not df.empty else df
        if len(failed) or skipped:
            lines += ["", "## Runs not in the tables", "", "| run | reason |", "|---|---|"]
            for _, r in failed.iterrows():
                reason = str(r.get("error") or r["status"]).splitlines()[0][:120]
                lines.append(f"| {Path(r['run_dir']).name} | {r['status']}: {reason} |")
            for run_dir, reason in skipped:
                lines.append(f"| {Path(run_dir).name} | skipped: {reason} |")
        lines += ["", _how(spec, margin)]
        (out / "summary.md").write_text("\n".join(lines) + "\n")
    except BaseException:  # an error or Ctrl-C: the previous report stays as it was, nothing half-written
        shutil.rmtree(out, ignore_errors=True)
        raise
    _publish(out, final_out)
    return final_out / "summary.md"


def _staging(out: Path) -> Path:
    """A fresh hidden directory beside ``out`` to write a report into."""
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Replace ``out`` by the finished report in ``staging`` (the old one is removed after)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _table_order(table, group: pd.DataFrame) -> dict:
    """setting_id -> its row's position in the table (verdicts follow the table's order)."""
    order = list(table.runs)
    labels = group.drop_duplicates("setting_id").set_index("setting_id")["variant"]
    return {sid: order.index(lab) if lab in order else len(order) for sid, lab in labels.items()}


def _check_methods_named(df: pd.DataFrame, baseline: str | None, spec: dict | str, pairs: list[tuple[str, str]],
                         results: Path) -> None:  # fmt: skip
    """A method that ``--baseline method=...`` or ``--versus A:B`` names must have runs here: a
    comparison with nothing would leave its tables out without a word."""
    methods = set(df["method"].dropna().astype(str)) if not df.empty else set()
    named = [("--baseline", spec["method.name"])] if baseline is not None and isinstance(spec, dict) and \
        "method.name" in spec else []  # fmt: skip
    named += [("--versus", m) for pair in pairs for m in pair if not verdicts.is_row_label(m)]
    for option, method in named:
        if method not in methods:
            raise UserError(f"{option}: no run of method {method!r} under {results}"
                            f"{did_you_mean(method, methods)}; methods there: {', '.join(sorted(methods)) or 'none'}")
    labels = set(df["variant"].dropna().astype(str)) if not df.empty else set()
    for label in (b for _, b in pairs if verdicts.is_row_label(b)):
        if label not in labels:
            raise UserError(f"--versus: no row labelled {label!r} under {results}{did_you_mean(label, labels)}; "
                            "a row's label is as its table writes it")  # fmt: skip


def _verdicts(
    rows, singles, spec, metric_cols: list[str], margin: verdicts.Margin, single: bool, pairs: list[tuple[str, str]],
    rooms: verdicts.Rooms,
) -> list[tuple[str, pd.DataFrame]]:
    """The table's verdicts, one Holm family per comparison kind (:data:`verdicts.KINDS`), shown
    per (kind, metric): against the baseline, between the methods of ``--versus``, within each
    row (the average against its ensemble, the final model against its members and against the
    uniform average), and each row against a single model at equal FLOPs."""
    kinds: dict[str, list[dict]] = {k: [] for k in verdicts.KINDS}
    for col in metric_cols:
        for e in verdicts.baseline_entries(rows, spec, col, rooms):
            kinds["baseline"].append({**e, "_title": f"{verdicts.shown(col)} against the baseline"})
    for col, ref in verdicts.AGAINST_BASELINE_MEMBERS if not single else []:
        for e in verdicts.baseline_entries(rows, spec, col, rooms, reference=ref):
            kinds["baseline_members"].append({**e, "_title": f"{verdicts.shown(col)} against the baseline's "
                                                             f"{verdicts.shown(ref)}"})  # fmt: skip
    for e in verdicts.versus_entries(rows, pairs, "metrics.final_acc", rooms):
        kinds["versus"].append({**e, "_title": "final model against another method's"})
    within = [w for w in verdicts.WITHIN if not single or w[1] in ("metrics.individual_mean", "metrics.own_member_acc")]
    for col, ref in within:
        for e in verdicts.within_entries(rows, col, ref, rooms):
            kinds["within"].append({**e, "_title": f"{verdicts.shown(col)} against the row's {verdicts.shown(ref)}"})
    for e in verdicts.equal_flops_entries(rows, singles, "metrics.final_acc", rooms):
        kinds["flops"].append({**e, "_title": "final model against one model at equal training FLOPs"})
    found = []
    for kind, entries in kinds.items():
        titles = [e.pop("_title") for e in entries]
        frame = verdicts.judge(entries, margin)
        if frame.empty:
            continue
        frame = frame.assign(family=verdicts.KINDS[kind], _title=titles)
        for title, part in frame.groupby("_title", sort=False):
            found.append((title, part.drop(columns="_title").reset_index(drop=True)))
    return found


def _fronts(done: pd.DataFrame, out: Path, links: dict[str, tuple[float, float]] | None) -> list[str]:
    """One figure of accuracy against bytes, FLOPs and time per (dataset, model), every N on it;
    with ``--network``, also against the modelled communication time on the slowest link."""
    lines: list[str] = []
    if done.empty:
        return lines
    slowest = min(links, key=lambda name: links[name][0]) if links else None
    for (dataset, model), group in done.groupby(["dataset", "model"], sort=True):
        title = f"{dataset}, {model}"
        if slowest:
            group = group.copy().assign(**{"cost.network_time_s": network.network_times(group, links[slowest])})
        png = plots.save(plots.fronts(group, title, network=slowest), out / "figures", f"fronts_{dataset}_{model}")
        lines += ["", f"## Accuracy against cost: {title}", "", f"![fronts](figures/{png.name})", ""]
    return lines


def _across_tasks(done: pd.DataFrame, out: Path) -> list[str]:
    agg = aggregate.aggregate(done) if len(done) else None
    if agg is None:
        return []
    lines = ["", "## Across tasks", "", f"Normalisation: {aggregate.NORMALISATION}.", ""]
    if not agg.table.empty:
        lines += [aggregate.markdown(agg), "",
                  "IQM: interquartile mean of every run's normalised final-model score over every task, with a "
                  "stratified-bootstrap 95% CI (runs resampled within each task). Ranks: by mean final-model "
                  "accuracy within each task (1 is best; ties share their mean rank).", ""]  # fmt: skip
        taus, profs = aggregate.profiles(agg)
        png = plots.save(plots.performance_profiles(profs, taus, agg.methods, "performance profiles"),
                         out / "figures", "performance_profiles")  # fmt: skip
        lines += [f"![performance profiles](figures/{png.name})", ""]
        (out / "tables").mkdir(parents=True, exist_ok=True)
        agg.table.to_csv(out / "tables" / "across_tasks.csv", index=False)
    if agg.left_out:
        lines += ["Left out of the aggregate:", "", *(f"- {w}" for w in agg.left_out), ""]
    return lines


def _points_margin(margin: verdicts.Margin, rooms: verdicts.Rooms) -> float:
    """The margin in points for a table's merge grid and time to target: the margin itself, or
    (relative) its fraction of the table's first measured headroom (0.5 points without one)."""
    if not margin.relative:
        return margin.value
    deltas = [d for h in rooms.measured.values() if (d := margin.of(h)) is not None]
    return deltas[0] if deltas else 0.5


def _how(spec, margin: verdicts.Margin) -> str:
    base = spec if isinstance(spec, str) else " ".join(f"{k}={v}" for k, v in spec.items())
    return (f"Verdicts compare each row with its baseline ({base}), with the equivalence margin ±{margin.text()} "
            "accuracy points (`wab report --baseline ... --margin ...`; a margin such as `0.3h` is that fraction of "
            "each row's headroom).")  # fmt: skip
