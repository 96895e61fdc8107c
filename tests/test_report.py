"""wab report: a golden test against a small committed sweep, and plots checked by their data."""

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from wab.analysis import aggregate, plots
from wab.analysis.collect import collect_curves, collect_runs, label_settings
from wab.analysis.report import write_report
from wab.analysis.stats import mean_ci
from wab.analysis.tables import summary_tables
from wab.errors import UserError
from wab.run.config import compose_config
from wab.run.lifecycle import run
from wab.run.records import run_id

GOLDEN = Path(__file__).parent / "data" / "golden"
EXPECTED_TABLE = Path(__file__).parent / "data" / "golden_table.md"


@pytest.fixture
def golden(tmp_path):
    dst = tmp_path / "golden"
    shutil.copytree(GOLDEN, dst)
    return dst


def test_report_matches_the_golden_table_and_lists_what_it_skipped(golden, tmp_path):
    summary = write_report(golden, tmp_path / "report")
    table = (tmp_path / "report" / "tables" / "table_digits_cnn_2.md").read_text()
    assert table == EXPECTED_TABLE.read_text()
    text = summary.read_text()
    assert table.split("\n", 2)[2].strip() in text  # the summary embeds the table
    assert "failed: ValueError: unknown model 'nope'" in text
    assert "broken-000000000000 | skipped: unreadable final.json" in text
    for name in ("accuracy_vs_communication", "ensemble_vs_average", "accuracy_over_epochs", "disagreement_vs_average",
                 "sensitivity_p"):  # fmt: skip
        assert f"figures/{name}_digits_cnn_2.png" in text
        assert (tmp_path / "report" / "figures" / f"{name}_digits_cnn_2.pdf").exists()
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(runs) == 7 and (runs["status"] == "done").sum() == 6
    tex = (tmp_path / "report" / "tables" / "table_digits_cnn_2.tex").read_text()
    assert r"Accuracy (\%)" in tex and r"wash (p=0.1)" in tex and r"papa\_all" in tex and "& 20.69 &" in tex
    # the golden runs' PAPA-all predates its per-member regularisation (papa_grid): not its default now
    assert (
        "Every row: model.width=4, population.member\\_augment=[], population.size=2, trainer.batch\\_size=256, "
        "trainer.epochs=2."
    ) in tex
    # one seed is said once per table, never as "± 0.00 (1)" in each cell
    assert "(1)" not in table and text.count("Rows with fewer than 3 seeds show the mean alone") == 1
    assert "95% percentile bootstrap CI of the mean over seeds" in table  # the caption states the method
    for section in ("### Paired verdicts (digits, cnn, N=2)", "**final model against the baseline**",
                    "**averaged+BN against the row's ensemble**", "### Time to target (digits, cnn, N=2)",
                    "## Accuracy against cost: digits, cnn", "figures/fronts_digits_cnn.png"):  # fmt: skip
        assert section in text
    csv = pd.read_csv(tmp_path / "report" / "tables" / "table_digits_cnn_2.csv").set_index("method")
    for stat in ("mean", "ci_low", "ci_high", "std", "n"):
        assert f"final acc {stat}" in csv.columns
    verdicts = pd.read_csv(tmp_path / "report" / "tables" / "verdicts.csv")
    assert {"difference", "ci_low", "ci_high", "P(improvement)", "p (Holm)", "verdict"} <= set(verdicts.columns)


def test_a_table_cell_is_the_mean_and_bootstrap_interval_over_seeds(golden):
    src = next(p for p in golden.glob("papa_all-*") if (p / "done").exists())
    _copy_run(src, golden, seed=7)  # a third seed of the same row
    finals = [json.loads(p.read_text()) for p in golden.glob("papa_all-*/final.json")]
    accs = 100 * np.array([f["metrics"]["avg_bn_acc"] for f in finals])
    df, _ = collect_runs(golden)
    (table,) = summary_tables(df).values()
    row = table.rows.set_index("method").loc["papa_all"]
    low, high = sps.bootstrap((accs,), np.mean, n_resamples=10_000, method="percentile",
                              random_state=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert row["averaged+BN"] == f"{accs.mean():.2f} [{low:.2f}, {high:.2f}]" and row["seeds"] == 3
    nums = table.numbers.set_index("method").loc["papa_all"]
    assert nums["averaged+BN std"] == pytest.approx(accs.std(ddof=1)) and nums["averaged+BN n"] == 3
    # two seeds: the mean alone, no interval claimed
    indep = [json.loads(p.read_text()) for p in golden.glob("independent-*/final.json")]
    two = 100 * np.array([f["metrics"]["avg_bn_acc"] for f in indep if f["status"] == "done"])
    assert len(two) == 2 and table.rows.set_index("method").loc["independent", "averaged+BN"] == f"{two.mean():.2f}"


def test_a_missing_metric_is_shown_as_missing(golden):
    df, _ = collect_runs(golden)
    df.loc[df["method"] == "papa_all", "metrics.ece"] = None
    df.loc[df["run_dir"].str.contains("papa_all-565e"), "metrics.nll"] = None
    (table,) = summary_tables(df).values()
    row = table.rows.set_index("method").loc["papa_all"]
    assert row["ECE"] == "–" and row["NLL"].endswith("(1 of 2)")
    assert table.commits == ["unknown"]  # the golden records predate provenance


def _copy_run(src: Path, dst_root: Path, **changes) -> Path:
    """A copy of a run directory whose config (and record) differ by ``changes`` ({"trainer.epochs": 3}),
    under the run id that config hashes to, with every accuracy in its final.json lowered by 0.05."""
    final = json.loads((src / "final.json").read_text())
    cfg = final["config"]
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = cfg
        for k in path:
            node = node[k]
        node[last] = value
    rid = run_id(cfg)
    dst = dst_root / rid
    shutil.copytree(src, dst)
    final["run_id"] = rid
    final["metrics"] = {k: v - 0.05 if k.endswith("_acc") and v is not None else v for k, v in final["metrics"].items()}
    (dst / "final.json").write_text(json.dumps(final))
    (dst / "config.yaml").write_text(json.dumps(cfg))
    return dst


def test_runs_that_differ_only_in_epochs_are_two_rows_never_two_seeds(golden):
    for src in golden.glob("independent-*"):
        if (src / "done").exists():
            _copy_run(src, golden, **{"trainer.epochs": 3})
    df, _ = collect_runs(golden)
    (table,) = summary_tables(df).values()
    rows = table.rows.set_index("method")
    assert {"independent (epochs=2)", "independent (epochs=3)"} <= set(rows.index)
    assert rows.loc["independent (epochs=2)", "seeds"] == rows.loc["independent (epochs=3)", "seeds"] == 2
    for epochs in (2, 3):
        finals = [json.loads(p.read_text()) for p in golden.glob("independent-*/final.json")]
        accs = pd.Series([f["metrics"]["ensemble_acc"] for f in finals
                          if f["status"] == "done" and f["config"]["trainer"]["epochs"] == epochs])  # fmt: skip
        assert len(accs) == 2 and mean_ci(100 * accs.to_numpy()) is None  # two seeds: no interval claimed
        assert rows.loc[f"independent (epochs={epochs})", "ensemble"] == f"{100 * accs.mean():.2f}"
    # epochs now varies between rows: every row says its value, and it is no longer a shared setting
    assert "wash (epochs=2, p=0.1)" not in rows.index and "wash (p=0.1, epochs=2)" in rows.index
    assert "trainer.epochs" not in table.shared and table.runs["independent (epochs=3)"]


def test_labels_name_what_differs_from_the_defaults_or_between_rows():
    papa = compose_config(["method=papa", "method.alpha=0.9", "trainer.epochs=3"])
    papa_default = compose_config(["method=papa", "trainer.epochs=3"])
    dart = compose_config(["method=dart", "method.every_steps=50", "trainer.epochs=3"])
    soups = compose_config(["method=soups", "trainer.epochs=3"])  # same_init=true is soups' own default
    indep = compose_config(["method=independent", "trainer.epochs=3", "population.same_init=true"])
    from wab.analysis.collect import _defaults_of, setting_of

    cfgs = [papa, papa_default, dart, soups, indep]
    labels, shared = label_settings([setting_of(c) for c in cfgs], [_defaults_of(c) for c in cfgs])
    assert labels == ["papa (alpha=0.9)", "papa", "dart (every_steps=50)", "soups", "independent (same_init=true)"]
    assert shared == {"trainer.epochs": 3}


def test_rows_that_would_share_a_label_are_told_apart():
    a = {"method.name": "wash", "method.p": 0.01, "trainer.amp": "auto"}
    b = {"method.name": "wash", "method.p": 0.01}  # written before trainer.amp existed
    defaults = {"method.name": "wash", "method.p": 0.01, "trainer.amp": "auto"}
    labels, _ = label_settings([a, b], [defaults, defaults])
    assert labels == ["wash (amp=auto)", "wash (amp=–)"]


def test_a_run_copied_twice_is_counted_once(golden):
    shutil.copytree(golden / "papa_all-565e20b9af1c", golden / "copy" / "papa_all-565e20b9af1c")
    df, skipped = collect_runs(golden)
    assert (df["run_dir"].str.contains("papa_all-565e")).sum() == 1
    assert any("duplicate of" in reason for _, reason in skipped)


def _done(golden):
    df, _ = collect_runs(golden)
    return df[df["status"] == "done"]


def _points(fig):
    """{label: (x, y, axis)} of every errorbar point in the figure."""
    return {
        c.get_label(): (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0], ax, c.lines[0])
        for ax in fig.axes
        for c in ax.containers
    }


def test_accuracy_vs_communication_plots_the_means(golden):
    df = _done(golden)
    fig = plots.accuracy_vs_communication(df, "t")
    points = _points(fig)
    silent_ax, log_ax = fig.axes[:2]
    assert silent_ax.get_xlabel() == "no communication" and log_ax.get_xscale() == "log"
    for variant, sub in df.groupby("variant"):
        x, y, ax, _ = points[variant]
        assert y == pytest.approx(100 * sub["metrics.avg_bn_acc"].mean())
        comm = sub["comm.elements_per_step"].mean()
        if comm > 0:  # on the log axis, at its communication exactly (a hidden point is drawn aside, not moved)
            assert ax is log_ax and x == pytest.approx(comm)
            low, high = log_ax.get_xlim()
            assert low < comm < high and log_ax.get_ylim()[0] < y < log_ax.get_ylim()[1]  # inside the axes: seen
        else:  # in the panel of its own, never at an arbitrary point of the log axis
            assert ax is silent_ax
    colors = {k: p[3].get_color() for k, p in points.items()}
    method_of = dict(zip(df["variant"], df["method"]))
    for a in colors:  # one colour per method: the same for its variants, different from the others
        for b in colors:
            assert (colors[a] == colors[b]) == (method_of[a] == method_of[b])
    assert points["wash"][3].get_marker() != points["wash (p=0.1)"][3].get_marker()
    legend = fig.legends[0]
    assert {t.get_text() for t in legend.get_texts()} == set(df["variant"])
    plt.close(fig)


def test_no_method_hides_under_another(golden):
    df = _done(golden)
    twin = df[df["method"] == "papa_all"].copy()  # a second method with exactly papa_all's numbers
    twin["method"] = twin["variant"] = "papa_twin"
    df = pd.concat([df, twin], ignore_index=True)
    fig = plots.accuracy_vs_communication(df, "t")
    points = _points(fig)
    (xa, ya, _, la), (xb, yb, _, lb) = points["papa_all"], points["papa_twin"]
    assert ya == yb and xa == xb  # the plotted values are the numbers
    page_a, page_b = la.get_transform().transform((xa, ya)), lb.get_transform().transform((xb, yb))
    assert abs(page_a[0] - page_b[0]) > 3 and page_a[1] == pytest.approx(page_b[1])  # drawn apart on the page
    plt.close(fig)
    x = np.array([1.0, 1.0, 1.0, 5.0])
    y = np.array([2.0, 2.0, 9.0, 2.0])
    offsets = plots.dodge(x, y)
    assert offsets[0] != offsets[1] and offsets[2] == 0 and offsets[3] == 0
    assert offsets[0] + offsets[1] == pytest.approx(0.0)  # centred on their common position


def test_ensemble_vs_average_draws_each_mean_at_its_value_on_a_zoomed_axis(golden):
    df = _done(golden)
    fig = plots.ensemble_vs_average(df, "t")
    ax = fig.axes[0]
    variants = [t.get_text() for t in ax.get_xticklabels()]
    drawn = {c.get_label(): (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers}
    values = []
    for (col, kind, _), offset in zip(plots.ENSEMBLE_KINDS, np.linspace(-0.3, 0.3, len(plots.ENSEMBLE_KINDS))):
        for i, v in enumerate(variants):
            expected = 100 * df[df["variant"] == v][col].mean()
            values.append(expected)
            x, y = drawn[f"{kind}: {v}"]  # at its own value, beside the row's tick
            assert y == pytest.approx(expected) and x == pytest.approx(i + offset)
    low, high = ax.get_ylim()
    assert low <= min(values) and max(values) <= high
    assert low > 0 or min(values) < 5  # zoomed to the values, not bars from 0
    fig.canvas.draw()  # the legend covers no point
    legend_box = ax.get_legend().get_window_extent()
    assert not any(legend_box.overlaps(c.lines[0].get_window_extent()) for c in ax.containers)
    plt.close(fig)
    collapsed = df.copy()  # every value near 90%, one average collapsed at 40%
    for k, (col, _, _) in enumerate(plots.ENSEMBLE_KINDS):
        collapsed[col] = 0.90 + 0.01 * k
    collapsed.loc[collapsed["method"] == "papa_all", "metrics.avg_acc"] = 0.40
    fig = plots.ensemble_vs_average(collapsed, "t")
    ax = fig.axes[0]
    assert ax.get_ylim()[0] > 40 and "40.0" in [t.get_text() for t in ax.texts] and "far below" in ax.get_ylabel()
    plt.close(fig)


def test_accuracy_over_epochs_splits_many_rows_into_families_and_draws_each_once(golden):
    df = _done(golden)
    curves = collect_curves(df)
    base = curves[curves["variant"] == "papa_all"]
    many = []
    for k, method in enumerate(["independent", "wash", "papa", "swa", "twa", "local_sgd", "gossip", "ema", "halfmean"]):
        for j in range(2 if method == "independent" else 1):
            many.append(
                base.assign(
                    method=method, variant=f"{method} ({j})", individual_mean=base["individual_mean"] - 0.01 * k
                )
            )
    curves = pd.concat(many, ignore_index=True)
    fig = plots.accuracy_over_epochs(curves, "t")
    rows = plots.curve_rows(plots._variants_in_order(curves))
    assert [name for name, _ in rows] == [
        "independent populations",
        "WASH and PAPA",
        "DART, SWA, ASWA, TWA, soups",
        "communication-efficient",
        "one member's average",
        "other methods",
    ]
    axes = np.array(fig.axes[: 3 * len(rows)]).reshape(len(rows), 3)
    for (name, members), row in zip(rows, axes):
        assert row[0].get_ylabel().startswith(name)
        for ax in row:
            assert sorted(ln.get_label() for ln in ax.lines) == sorted(v for _, v in members)
            assert len(ax.lines) <= plots.MAX_CURVES
    line = next(ln for ln in axes[1][0].lines if ln.get_label() == "wash (0)")
    expected = curves[curves["variant"] == "wash (0)"].groupby("step")["individual_mean"].mean()
    assert list(line.get_ydata()) == pytest.approx(list(100 * expected.values))  # its values, unchanged
    assert len({ax.get_ylim() for ax in fig.axes[: 3 * len(rows)]}) == 1  # one accuracy axis: rows compare
    plt.close(fig)
    assert len(plots.curve_rows([("wash", "wash"), ("papa", "papa")])) == 1  # a few rows: one panel row
    once = curves[curves["step"] == curves["step"].max()]  # evaluated at the end alone: no curve to draw
    assert plots.accuracy_over_epochs(once, "t") is None


def test_curves_and_sensitivity_plot_their_data(golden):
    src = next(p for p in golden.glob("papa_all-*") if (p / "done").exists())
    _copy_run(src, golden, seed=7)  # a third seed: its curves are src's
    df = _done(golden)
    curves = collect_curves(df)
    fig = plots.accuracy_over_epochs(curves, "t")
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "papa_all")
    by_step = curves[curves["variant"] == "papa_all"].groupby("step")["individual_mean"]
    expected = by_step.mean()
    assert list(line.get_xdata()) == list(expected.index)  # against training steps
    assert list(line.get_ydata()) == pytest.approx(list(100 * expected.values))
    # its band is the Student-t 95% CI of the mean over the 3 seeds, clipped to [0, 100]
    assert set(by_step.count()) == {3}
    half = sps.t.ppf(0.975, 2) * by_step.std(ddof=1) / np.sqrt(3)
    colour = plots.method_color("papa_all")[:3]
    band = next(c for c in fig.axes[0].collections if np.allclose(c.get_facecolor()[0][:3], colour))
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(100 * (expected + half).clip(upper=1).max()) and ys.min() == pytest.approx(
        100 * (expected - half).clip(lower=0).min())  # fmt: skip
    assert 0 <= ys.min() and ys.max() <= 100
    assert fig.axes[2].get_title() == "averaged model after BN recal."  # the headline metric
    line = next(ln for ln in fig.axes[2].lines if ln.get_label() == "papa_all")
    expected = curves[curves["variant"] == "papa_all"].groupby("step")["avg_bn_acc"].mean()
    assert list(line.get_ydata()) == pytest.approx(list(100 * expected.values))
    plt.close(fig)
    assert plots.varied_hyperparameters(df) == ["p"]
    fig = plots.sensitivity(df, "p", "t")
    (container,) = fig.axes[0].containers
    xs = list(container.lines[0].get_xdata())
    assert xs == [0.01, 0.1]
    wash = df[df["method"] == "wash"].sort_values("config.method.p")
    assert list(container.lines[0].get_ydata()) == pytest.approx(list(100 * wash["metrics.avg_bn_acc"]))
    plt.close(fig)


def test_method_colours_are_fixed_across_figures_and_far_apart_plugins_included():
    assert plots.method_color("wash") == plots.method_color("wash")
    plugins = ["halfmean", "my_avg", "zzz_sweep", "soft_papa"]  # whose old hashed colours collided
    plots.use_methods([*plots.KNOWN_ORDER, *plugins])
    colours = [np.array(plots.method_color(m)) for m in [*plots.KNOWN_ORDER, *plugins]]
    assert len({tuple(c) for c in colours}) == len(colours)
    # no two within a small RGB distance: two greens or four browns would be told apart only by their labels
    closest = min(np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1 :])
    assert closest > 0.15, closest


def test_report_of_an_empty_or_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs under"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nope")
    assert not (tmp_path / "report").exists()


def test_a_table_whose_rows_come_from_different_commits_says_so(golden):
    for i, path in enumerate(sorted(golden.glob("*/final.json"))):
        if path.parent.name.startswith("broken"):
            continue
        rec = json.loads(path.read_text())
        rec["git_commit"], rec["git_dirty"] = ("a" * 40, False) if i % 2 else ("b" * 40, True)
        path.write_text(json.dumps(rec))
    df, _ = collect_runs(golden)
    (table,) = summary_tables(df).values()
    assert table.commits == ["aaaaaaaaaaaa", "bbbbbbbbbbbb+dirty"]
    assert "Rows come from 2 different commits (aaaaaaaaaaaa, bbbbbbbbbbbb+dirty)" in table.caption()
    assert "torch builds" not in table.caption()  # one build, one device


def test_a_table_whose_runs_ran_on_other_torch_builds_or_gpus_says_so(golden):
    """Neither the torch version nor the GPU's model is in the run id: a table pooling them says so."""
    for i, path in enumerate(sorted(golden.glob("*/final.json"))):
        if path.parent.name.startswith("broken"):
            continue
        rec = json.loads(path.read_text())
        rec["torch_version"], rec["device_name"] = "2.14.1", ("NVIDIA H100" if i % 2 else "NVIDIA A100")
        path.write_text(json.dumps(rec))
    df, _ = collect_runs(golden)
    (table,) = summary_tables(df).values()
    assert table.builds == ["torch 2.14.1 on NVIDIA A100", "torch 2.14.1 on NVIDIA H100"]
    assert "Runs ran on 2 torch builds or devices (torch 2.14.1 on NVIDIA A100, torch 2.14.1 on" in table.caption()


def test_across_tasks_normalises_by_each_tasks_independent_population(golden, tmp_path):
    for path in golden.glob("independent-*/final.json"):  # a tiny golden ensemble is worse than its members:
        rec = json.loads(path.read_text())  # give it the usual order, else there is no scale to normalise by
        if rec["status"] == "done":
            rec["metrics"]["ensemble_acc"] = rec["metrics"]["individual_mean"] + 0.1
            path.write_text(json.dumps(rec))
    second = tmp_path / "second"
    for src in golden.glob("*-*"):
        if (src / "done").exists():
            dst = _copy_run(src, second, **{"data.name": "mnist"})
            rec = json.loads((dst / "final.json").read_text())
            rec["dataset"] = "mnist"
            (dst / "final.json").write_text(json.dumps(rec))
    shutil.copytree(second, golden / "second")
    df, _ = collect_runs(golden)
    done = df[df["status"] == "done"]
    agg = aggregate.aggregate(done)
    assert agg.tasks == ["digits, cnn, N=2", "mnist, cnn, N=2"]
    task = done[done["dataset"] == "digits"]
    ref = task[task["variant"] == "independent"]
    low, high = ref["metrics.individual_mean"].mean(), ref["metrics.ensemble_acc"].mean()
    papa = task[task["variant"] == "papa_all"]["metrics.final_acc"]
    assert sorted(agg.scores["papa_all"][0]) == pytest.approx(sorted((papa - low) / (high - low)))
    line = agg.table.set_index("row").loc["papa_all"]
    assert line["runs"] == 4 and line["ci_low"] <= line["IQM"] <= line["ci_high"]
    # ranks by mean final-model accuracy within each task: the highest is 1
    means = task.groupby("variant")["metrics.final_acc"].mean()
    best = means.idxmax()
    assert agg.table.set_index("row").loc[best, "rank: digits, cnn, N=2"] == 1.0
    assert agg.table.iloc[0]["row"] == best or agg.table.iloc[0]["mean rank"] == 1.0
    summary = write_report(golden, tmp_path / "report").read_text()
    assert "## Across tasks" in summary and "figures/performance_profiles.png" in summary
    assert (tmp_path / "report" / "tables" / "across_tasks.csv").exists()
    # tasks whose rows share no label (one table names the budget, the other not): said, no crash
    other = done.assign(variant=np.where(done["dataset"] == "mnist", done["variant"] + " (epochs=2)", done["variant"]))
    agg = aggregate.aggregate(other)
    assert agg.table.empty and "no row label is in every task: no aggregate" in agg.left_out


def test_the_pareto_front_keeps_the_points_nothing_beats():
    x = np.array([1.0, 2.0, 3.0, 2.5, 0.5])
    y = np.array([80.0, 85.0, 84.0, 86.0, 70.0])
    assert plots.pareto_front(x, y) == [4, 0, 1, 3]


def test_fronts_put_each_row_at_its_mean_cost_and_silent_rows_in_their_band(golden):
    df = _done(golden)
    fig = plots.fronts(df, "t")
    bytes_ax = fig.axes[0]
    points = {c.get_label(): c.lines[0] for c in bytes_ax.containers}
    for variant, sub in df.groupby("variant"):
        line = points[variant]
        assert line.get_ydata()[0] == pytest.approx(100 * sub["metrics.final_acc"].mean())
        total = sub["comm.bytes_total"].mean()
        if total > 0:
            assert line.get_xdata()[0] == pytest.approx(total)
        else:  # left of every row that sends something
            assert line.get_xdata()[0] < df.loc[df["comm.bytes_total"] > 0, "comm.bytes_total"].min()
    (band,) = [p for p in bytes_ax.patches if p.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
    lo, hi = band.get_x(), band.get_x() + band.get_width()  # axvspan: a rectangle in data x
    assert np.floor(np.log10(lo)) == np.floor(np.log10(hi))  # no decade tick inside the "0 sent" band
    assert hi < df.loc[df["comm.bytes_total"] > 0, "comm.bytes_total"].min()
    if (df.groupby("variant").size() < 3).any():
        assert "95% CI where a row has 3+ seeds" in fig._suptitle.get_text()
    # every row trained the same FLOPs: that panel would be one vertical stack, so it is said, not drawn
    assert df["cost.train_flops"].nunique() == 1
    assert [ax.get_xlabel().split(" (")[0] for ax in fig.axes] == ["bytes one member sent", "wall time, s"]
    assert f"training FLOPs {df['cost.train_flops'].iloc[0]:.3g} for every row: that panel left out" in (
        fig._suptitle.get_text())  # fmt: skip
    plt.close(fig)
    df.loc[df["method"] == "wash", "cost.train_flops"] *= 2
    fig = plots.fronts(df, "t")
    flops_ax = fig.axes[1]
    assert {c.lines[0].get_xdata()[0] for c in flops_ax.containers} == set(df["cost.train_flops"])
    assert "left out" not in fig._suptitle.get_text()
    plt.close(fig)


def test_report_options_are_checked(golden, tmp_path):
    with pytest.raises(UserError, match=r"--margin -1.0: give a positive number of accuracy points \(0.5\)"):
        write_report(golden, tmp_path / "r", margin=-1.0)
    with pytest.raises(UserError, match="--target 150.0 must be an accuracy in percent"):
        write_report(golden, tmp_path / "r", target=150.0)
    with pytest.raises(UserError, match="--metric nll: verdicts are for accuracies"):
        write_report(golden, tmp_path / "r", metrics=["nll"])
    with pytest.raises(UserError, match="--baseline 'indep' is neither a row label nor overrides"):
        write_report(golden, tmp_path / "r", baseline="indep")
    with pytest.raises(UserError, match=r"--target 0.85 is in percent .*write --target 85"):
        write_report(golden, tmp_path / "r", target=0.85)
    with pytest.raises(UserError, match="--baseline: no run of method 'nosuchmethod' under .*methods there: .*wash"):
        write_report(golden, tmp_path / "r", baseline="method=nosuchmethod")
    with pytest.raises(UserError, match="--versus: no run of method 'nosuch'"):
        write_report(golden, tmp_path / "r", versus=["wash:nosuch"])
    with pytest.raises(UserError, match=r"--versus: no row labelled 'wash \(p=0.2\)' .*did you mean 'wash \(p=0.1\)'"):
        write_report(golden, tmp_path / "r", versus=["papa_all:wash (p=0.2)"])
    write_report(golden, tmp_path / "named", versus=["papa_all:wash (p=0.1)"])  # a method against one named row
    named = pd.read_csv(tmp_path / "named" / "tables" / "verdicts.csv")
    named = named[named["comparison"] == "final model against another method's"]
    assert named[["row", "baseline"]].values.tolist() == [["papa_all", "wash (p=0.1)"]]
    text = write_report(golden, tmp_path / "r", baseline="papa_all", target=10.0).read_text()
    assert "| wash | papa_all | final model |" in text
    assert "| 10.00 | --target; near chance (10%): not a test of speed |" in text


def test_figures_tell_settings_apart_and_never_move_a_value_out_of_its_range(golden):
    df = _done(golden)
    second = df[df["method"] == "wash"].copy()  # wash at the same two p with another setting of everything else
    second["setting"] = [s.replace('"trainer.epochs": 2', '"trainer.epochs": 3') for s in second["setting"]]
    second["variant"] = second["variant"] + " (epochs=3)"
    fig = plots.sensitivity(pd.concat([df, second], ignore_index=True), "p", "t")
    lines = [c.lines[0] for c in fig.axes[0].containers]
    assert len(lines) == 2 and lines[0].get_color() == lines[1].get_color()  # one method, one colour
    assert (lines[0].get_linestyle(), lines[0].get_marker()) != (lines[1].get_linestyle(), lines[1].get_marker())
    assert len(fig.legends[0].get_texts()) == 2
    plt.close(fig)
    offsets = plots.dodge(np.array([0.0, 0.0, 0.0, 9.0]), np.array([5.0, 5.0, 5.0, 1.0]))
    assert len(set(offsets[:3])) == 3 and offsets[3] == 0


def test_a_rows_label_follows_its_own_config_order_whatever_shares_its_table():
    wash = {"method.name": "wash", "method.p": 0.05, "method.lr_scaled": True}
    defaults = {"method.name": "wash", "method.p": 0.01, "method.schedule": "linear", "method.lr_scaled": False}
    sparta = {"method.name": "sparta", "method.p": 0.05}
    sparta_defaults = {"method.name": "sparta", "method.p": 0.005}
    alone, _ = label_settings([wash], [defaults])
    other = ({"method.name": "x", "method.lr_scaled": True}, {"method.name": "x", "method.lr_scaled": False})
    beside, _ = label_settings([other[0], sparta, wash], [other[1], sparta_defaults, defaults])
    assert alone == ["wash (p=0.05, lr_scaled=true)"] and beside[2] == alone[0]


def test_a_folder_of_links_to_run_directories_is_collected_once_each(golden, tmp_path):
    """Runs gathered from elsewhere as symbolic links are found; a link back into the folder
    does not count a run twice."""
    links = tmp_path / "links"
    links.mkdir()
    for run_dir in sorted(p for p in golden.iterdir() if (p / "config.yaml").exists()):
        (links / run_dir.name).symlink_to(run_dir, target_is_directory=True)
    (links / "again").symlink_to(links, target_is_directory=True)
    df_links, skipped_links = collect_runs(links)
    df, skipped = collect_runs(golden)
    assert len(df_links) == len(df) > 0 and len(skipped_links) == len(skipped)


def test_an_interrupted_report_leaves_the_previous_one_whole(golden, tmp_path, monkeypatch):
    out = tmp_path / "r"
    summary = write_report(golden, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_report(golden, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert summary.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["golden", "r"]  # no partial copy


def test_the_method_by_merge_grid_pairs_each_merge_with_the_uniform_average_of_its_runs(tiny, tmp_path):
    from wab.analysis import merging
    from wab.analysis.collect import collect_runs
    from wab.analysis.verdicts import rows_of

    merges = "population.finalizers=[task_arithmetic,ties,fisher]"
    for seed in (0, 1, 2):
        assert run(tiny(f"seed={seed}", "population.same_init=true", merges, "finalizer.fisher.examples=16",
                        "finalizer.ties.k=0.05"))["status"] == "done"  # fmt: skip
        assert run(tiny(f"seed={seed}", "method=local_sgd", "method.every_steps=1000", "population.finalizers=[ties]"))[
            "status"] == "done"  # fmt: skip
    df, _ = collect_runs(tmp_path)
    grid = merging.merging_grid(rows_of(df[df["status"] == "done"]), 0.5)
    cells = {(r["row"].split(" ")[0], r["column"]): r for _, r in grid.iterrows()}
    ties_cell = cells[("independent", "ties")]
    runs = df[df["method"] == "independent"].sort_values("seed")
    x, y = 100 * runs["metrics.final.ties.acc"].to_numpy(), 100 * runs["metrics.avg_bn_acc"].to_numpy()
    assert ties_cell["seeds"] == 3 and ties_cell["mean"] == pytest.approx(x.mean())
    assert ties_cell["difference"] == pytest.approx((x - y).mean())  # paired with the same runs' uniform average
    assert ties_cell["verdict"] in ("better", "worse", "inconclusive", "equivalent (±0.5)")
    assert cells[("local_sgd", "ties")]["verdict"].startswith("skipped: no anchor")  # never synchronised
    assert list(dict.fromkeys(grid["column"]))[:2] == ["ensemble", "uniform average"]
    summary = write_report(tmp_path, tmp_path / "report").read_text()
    assert "### Training method × merge" in summary and "skipped (no anchor)" in summary
    assert (tmp_path / "report" / "tables" / "merging.csv").exists()


def test_the_default_time_to_target_comes_from_the_baselines_members_and_flags_chance(golden, tmp_path):
    write_report(golden, tmp_path / "r", baseline="papa_all")
    tt = pd.read_csv(tmp_path / "r" / "tables" / "time_to_target.csv")
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")
    base = runs[(runs["method"] == "papa_all") & (runs["status"] == "done")]
    members = pd.to_numeric(base["metrics.individual_mean"]).mean()
    row = tt.iloc[0]
    assert row["target from"].startswith("papa_all's members - ")
    margin = float(row["target from"].split(" - ")[1].split(";")[0])
    assert row["target (%)"] == pytest.approx(100 * members - margin)  # not the baseline's final model
    assert row["target (%)"] < 20 and "near chance (10%)" in row["target from"]  # digits' 10 classes; tiny runs
    write_report(golden, tmp_path / "far", baseline="papa_all", target=50.0)
    row = pd.read_csv(tmp_path / "far" / "tables" / "time_to_target.csv").iloc[0]
    assert row["target from"] == "--target"  # 40 points above chance: no flag


def test_a_table_whose_runs_ran_under_different_loads_says_so(golden, tmp_path):
    from wab.analysis.tables import loads_of, uneven_load

    runs = pd.DataFrame({"cost.load_average": [2.1, 1.9, 6.0], "cost.cores": [2, 2, 2]})
    assert loads_of(runs) == (0.95, 3.0) and uneven_load(0.95, 3.0)
    assert not uneven_load(0.95, 1.05) and not uneven_load(0.2, 0.9)  # an idle or evenly loaded machine
    assert loads_of(pd.DataFrame({"wall_time_s": [1.0]})) is None  # records from before: nothing claimed
    busy = True
    for final in sorted(golden.glob("*/final.json")):  # the first run on a busy machine
        try:
            rec = json.loads(final.read_text())
        except json.JSONDecodeError:  # the golden set's corrupt record
            continue
        if rec.get("status") != "done":
            continue
        rec.setdefault("cost", {}).update({"load_average": 8.0 if busy else 2.0, "cores": 2, "cpu_time_s": 1.0})
        final.write_text(json.dumps(rec))
        busy = False
    text = write_report(golden, tmp_path / "r").read_text()
    assert "Runs ran under different machine loads (1.00 to 4.00 load average per core)" in text


def test_a_collapsed_row_does_not_squash_the_fronts_axis_and_keeps_its_value_written(golden):
    df = _done(golden)
    variants = sorted(df["variant"].unique())
    assert len(variants) >= 3
    for k, v in enumerate(variants):  # one row collapsed at 40%, the others within a few points of 95%
        df.loc[df["variant"] == v, "metrics.final_acc"] = 0.40 if k == 0 else 0.95 + 0.01 * (k % 3)
    fig = plots.fronts(df, "t")
    low, high = fig.axes[0].get_ylim()
    assert 40 < low < 95 and high > 97  # zoomed on the rows that did not collapse
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "40.0" in texts  # the collapsed row's value, written at the bottom edge
    assert "far below" in fig.axes[0].get_ylabel()
    plt.close(fig)
    df["metrics.avg_bn_acc"] = df["metrics.final_acc"]
    fig = plots.accuracy_vs_communication(df, "t")
    assert 40 < fig.axes[0].get_ylim()[0] and "40.0" in [t.get_text() for ax in fig.axes for t in ax.texts]
    plt.close(fig)
    assert len(plots.collapsed(np.array([88.0, 87.0, 86.0, 85.0]))) == 0  # nothing collapsed: no zoom
