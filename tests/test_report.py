"""wab report: a golden test against a small committed sweep, and plots checked by their data."""

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from wab.analysis import plots
from wab.analysis.collect import collect_curves, collect_runs
from wab.analysis.report import write_report
from wab.analysis.tables import summary_tables

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
    assert r"\pm" in tex and "wash (p=0.1)" in tex


def test_a_table_cell_is_the_mean_and_std_over_seeds(golden):
    finals = [json.loads(p.read_text()) for p in golden.glob("papa_all-*/final.json")]
    accs = pd.Series([f["metrics"]["avg_bn_acc"] for f in finals])
    df, _ = collect_runs(golden)
    (table,) = summary_tables(df).values()
    cell = table.set_index("method").loc["papa_all", "averaged+BN"]
    assert cell == f"{100 * accs.mean():.2f} ± {100 * accs.std(ddof=1):.2f} (2)"


def test_a_missing_metric_is_shown_as_missing(golden):
    df, _ = collect_runs(golden)
    df.loc[df["method"] == "papa_all", "metrics.ece"] = None
    (table,) = summary_tables(df).values()
    assert table.set_index("method").loc["papa_all", "ECE"] == "–"


def _done(golden):
    df, _ = collect_runs(golden)
    return df[df["status"] == "done"]


def test_accuracy_vs_communication_plots_the_means(golden):
    df = _done(golden)
    fig = plots.accuracy_vs_communication(df, "t")
    ax = fig.axes[0]
    points = {}
    for container in ax.containers:
        line = container.lines[0]
        points[container.get_label()] = (line.get_xdata()[0], line.get_ydata()[0])
    for variant, sub in df.groupby("variant"):
        x, y = points[variant]
        assert y == pytest.approx(100 * sub["metrics.avg_bn_acc"].mean())
        comm = sub["comm.elements_per_step"].mean()
        if comm > 0:
            assert x == pytest.approx(comm)
    assert ax.get_xscale() == "log"
    colors = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    method_of = dict(zip(df["variant"], df["method"]))
    for a in colors:  # one colour per method: the same for its variants, different from the others
        for b in colors:
            assert (colors[a] == colors[b]) == (method_of[a] == method_of[b])
    markers = {c.get_label(): c.lines[0].get_marker() for c in ax.containers}
    assert markers["wash (p=0.01)"] != markers["wash (p=0.1)"]
    plt.close(fig)


def test_ensemble_vs_average_bars_hold_the_means(golden):
    df = _done(golden)
    fig = plots.ensemble_vs_average(df, "t")
    ax = fig.axes[0]
    variants = [t.get_text() for t in ax.get_xticklabels()]
    heights = [p.get_height() for p in ax.patches]
    n = len(variants)
    for j, col in enumerate(
        ["metrics.individual_mean", "metrics.ensemble_acc", "metrics.avg_acc", "metrics.avg_bn_acc"]
    ):
        expected = [100 * df[df["variant"] == v][col].mean() for v in variants]
        assert heights[j * n : (j + 1) * n] == pytest.approx(expected)
    plt.close(fig)


def test_curves_and_sensitivity_plot_their_data(golden):
    df = _done(golden)
    curves = collect_curves(df)
    fig = plots.accuracy_over_epochs(curves, "t")
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "papa_all")
    expected = curves[curves["variant"] == "papa_all"].groupby("epoch")["individual_mean"].mean()
    assert list(line.get_xdata()) == list(expected.index)
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


def test_method_colours_are_fixed_across_figures():
    assert plots.method_color("wash") == plots.method_color("wash")
    known = [plots.method_color(m) for m in plots.KNOWN_ORDER]
    assert len(set(known)) == len(known)


def test_report_of_an_empty_or_missing_directory(tmp_path):
    summary = write_report(tmp_path)
    assert "0 runs collected" in summary.read_text()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")
