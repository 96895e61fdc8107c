"""Comparison figures (matplotlib; PNG and PDF), one colour per method kept across all figures."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from wab.analysis.stats import MIN_SEEDS  # noqa: E402

KNOWN_ORDER = ["independent", "wash", "wash_opt", "papa", "papa_all", "papa_2", "dart", "swa", "aswa", "twa", "soups",
               "local_sgd", "diloco", "sparta", "gossip", "lookaround", "ema", "lawa"]  # fmt: skip
# Trubetskoy's 20 distinct colours, the palest last: one per known method, in KNOWN_ORDER, and the
# rest for the methods a report holds beyond them (plugins)
_HEX = ["#4363d8", "#e6194b", "#f58231", "#3cb44b", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#000000",
        "#808000", "#469990", "#800000", "#000075", "#bfef45", "#a9a9a9", "#fabed4", "#dcbeff", "#d4b000",
        "#ffd8b1", "#aaffc3"]  # fmt: skip
_DISTINCT = [to_rgb(c) for c in _HEX]
_KNOWN_COLORS = _DISTINCT[: len(KNOWN_ORDER)]
_OTHER_COLORS = [*_DISTINCT[len(KNOWN_ORDER) :], *plt.get_cmap("Dark2").colors, *plt.get_cmap("Set1").colors]
_OTHERS: dict[str, tuple] = {}  # the methods beyond KNOWN_ORDER of the report being drawn
# variants of one method: same colour, other marker
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "8"]


def method_order(methods: Iterable[str]) -> list[str]:
    """Known methods in a fixed order, then any others alphabetically."""
    methods = set(methods)
    return [m for m in KNOWN_ORDER if m in methods] + sorted(methods - set(KNOWN_ORDER))


def use_methods(methods: Iterable[str]) -> None:
    """Give the methods of a report beyond the known ones (plugins) colours of their own: in
    alphabetical order, none shared with another method while there are colours left."""
    _OTHERS.clear()
    for i, m in enumerate(sorted(set(methods) - set(KNOWN_ORDER))):
        _OTHERS[m] = _OTHER_COLORS[i % len(_OTHER_COLORS)]


def method_color(method: str) -> tuple:
    """The same colour for a method in every figure: a known method's everywhere, a plugin's in
    every figure of one report (:func:`use_methods`)."""
    if method in KNOWN_ORDER:
        return _KNOWN_COLORS[KNOWN_ORDER.index(method)]
    if method in _OTHERS:
        return _OTHERS[method]
    return _OTHER_COLORS[sum(map(ord, method)) % len(_OTHER_COLORS)]


def save(fig: plt.Figure, out: Path, name: str) -> Path:
    """Write the figure as PNG and PDF; returns the PNG's path."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=130, bbox_inches="tight")
    fig.savefig(out / f"{name}.pdf", bbox_inches="tight")
    plt.close(fig)
    return png


AVG_BN_LABEL = "averaged model accuracy after BN recal. (%)"


def _outside_legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend for every axis, outside the plotting area on the right (it never hides data)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=True)


def dodge(x: np.ndarray, y: np.ndarray, tol: float = 0.03, step: float = 6.0) -> np.ndarray:
    """Horizontal marker offsets, in points, that keep points from hiding each other: points
    within ``tol`` of each other (in units of the axes' data ranges) are drawn ``step`` points
    apart, centred on their common position. The plotted values never change: only where the
    marker is drawn does (:func:`shifted`), and the captions say so."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out = np.zeros(len(x))
    if len(x) < 2:
        return out
    span_x = float(np.ptp(x)) or 1.0
    span_y = float(np.ptp(y)) or 1.0
    u, v = (x - x.min()) / span_x, (y - y.min()) / span_y
    unassigned = list(np.argsort(u, kind="stable"))
    while unassigned:
        first = unassigned.pop(0)
        cluster = [first] + [j for j in unassigned if abs(u[j] - u[first]) < tol and abs(v[j] - v[first]) < tol]
        unassigned = [j for j in unassigned if j not in cluster]
        for k, j in enumerate(cluster):
            out[j] = (k - (len(cluster) - 1) / 2) * step
    return out


def shifted(ax: plt.Axes, points: float) -> matplotlib.transforms.Transform:
    """The data transform of ``ax``, moved ``points`` to the right on the page. matplotlib does
    not scale an axis to artists drawn through it: give their values to :func:`include`."""
    return offset_copy(ax.transData, fig=ax.figure, x=points, y=0.0, units="points")


def include(ax: plt.Axes, x: Iterable[float], y: Iterable[float]) -> None:
    """Scale ``ax`` to hold the points (x, y) too (values drawn through :func:`shifted`)."""
    ax.update_datalim(np.column_stack([np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)]))
    ax.autoscale_view()


def collapsed(values: np.ndarray, share: float = 0.4) -> np.ndarray:
    """The indices of values far below the rest (collapsed averages): those under the widest gap
    between consecutive values, when that gap spans more than ``share`` of their range and fewer
    values lie below it than above. An axis drawn for all of them would squash the others into
    its top."""
    v = np.asarray(values, dtype=float)
    finite = np.flatnonzero(np.isfinite(v))
    if len(finite) < 3:
        return np.array([], dtype=int)
    order = finite[np.argsort(v[finite])]
    gaps = np.diff(v[order])
    k = int(np.argmax(gaps))
    span = v[order[-1]] - v[order[0]]
    if span <= 0 or gaps[k] <= share * span or k + 1 >= len(order) - (k + 1):
        return np.array([], dtype=int)
    return np.sort(order[: k + 1])


def mark_below(ax: plt.Axes, xs: Iterable[float], ys: Iterable[float], colors: Iterable) -> None:
    """Rows below a zoomed axis: a downward marker at the axis' bottom edge, at each row's x, with
    its value written beside it (the value is not moved: it is written)."""
    trans = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for x, y, c in zip(xs, ys, colors):
        ax.plot([x], [0.0], marker="v", color=c, markersize=7, transform=trans, clip_on=False, linestyle="none")
        ax.annotate(f"{y:.1f}", (x, 0.0), xycoords=trans, xytext=(4, 3), textcoords="offset points", fontsize=6,
                    color=c)  # fmt: skip


def _stats(df: pd.DataFrame, col: str) -> pd.DataFrame:
    g = df.groupby(["method", "variant"])[col]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.count()}).reset_index()


def _variants_in_order(df: pd.DataFrame) -> list[tuple[str, str]]:
    order = method_order(df["method"].unique())
    pairs = df[["method", "variant"]].drop_duplicates().itertuples(index=False)
    return sorted(((m, v) for m, v in pairs), key=lambda mv: (order.index(mv[0]), mv[1]))


def _marker(variants: list[tuple[str, str]], method: str, variant: str) -> str:
    return _MARKERS[[v for m, v in variants if m == method].index(variant) % len(_MARKERS)]


def accuracy_vs_communication(df: pd.DataFrame, title: str) -> plt.Figure:
    """Averaged-model accuracy (after BN recalibration) against communication per step (log x).

    Methods that never communicate get a panel of their own on the left, one slot each, so they
    are not drawn at an arbitrary point of the log axis; points that would overlap on the log
    axis are drawn a few points apart on the page, their values unchanged (:func:`dodge`)."""
    acc = _stats(df, "metrics.avg_bn_acc")
    comm = _stats(df, "comm.elements_per_step")
    merged = acc.merge(comm, on=["method", "variant"], suffixes=("_acc", "_comm"))
    variants = _variants_in_order(df)
    rows = {(r.method, r.variant): r for r in merged.itertuples(index=False)}
    silent = [mv for mv in variants if rows[mv].mean_comm == 0]
    talking = [mv for mv in variants if rows[mv].mean_comm > 0]
    widths = ([0.5 + 0.35 * len(silent)] if silent else []) + ([5.0] if talking else [])
    # the silent rows' labels stand upright under their points, in lines of up to 30 characters:
    # the figure grows by their height, so that the axes keep theirs
    names = {mv: textwrap.fill(mv[1], 30) for mv in silent}
    below = 0.11 * max((len(line) for name in names.values() for line in name.split("\n")), default=0)
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths) + 1.5, 4.4 + below), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": widths})  # fmt: skip
    axes = list(axes[0])

    def draw(ax: plt.Axes, mvs: list[tuple[str, str]], xs: np.ndarray, offsets: np.ndarray | None = None) -> None:
        for k, ((method, variant), x) in enumerate(zip(mvs, xs)):
            r = rows[(method, variant)]
            ax.errorbar(x, 100 * r.mean_acc, yerr=100 * r.std_acc, fmt=_marker(variants, method, variant),
                        capsize=3, color=method_color(method), label=variant, markersize=7,
                        transform=shifted(ax, offsets[k]) if offsets is not None else ax.transData)  # fmt: skip
            if offsets is not None:
                low, high = 100 * (r.mean_acc - r.std_acc), 100 * (r.mean_acc + r.std_acc)
                include(ax, [x, x], [low, high])

    if silent:
        ax = axes[0]
        draw(ax, silent, np.arange(len(silent), dtype=float))
        ax.set_xlim(-0.6, len(silent) - 0.4)
        # upright labels, each under its own point: slanted ones reach left, under the y label
        ax.set_xticks(range(len(silent)), [names[mv] for mv in silent], rotation=90, ha="center", fontsize=7)
        ax.set_xlabel("no communication")
        ax.set_facecolor("#f4f4f4")
        ax.set_ylabel(AVG_BN_LABEL)
        ax.grid(axis="y", alpha=0.3)
    if talking:
        ax = axes[-1]
        logx = np.log10([rows[mv].mean_comm for mv in talking])
        ys = np.array([100 * rows[mv].mean_acc for mv in talking])
        draw(ax, talking, 10**logx, dodge(logx, ys))
        ax.set_xscale("log")
        ax.set_xlabel("elements sent per member per step (log;\ncoinciding points drawn apart)")
        if not silent:
            ax.set_ylabel(AVG_BN_LABEL)
        ax.grid(alpha=0.3)
    # rows far below the others (collapsed averages): a zoomed axis, their values written at its bottom
    placed = [(axes[0], mv, float(i)) for i, mv in enumerate(silent)]
    placed += [(axes[-1], mv, rows[mv].mean_comm) for mv in talking]
    ys = np.array([100 * rows[mv].mean_acc for _, mv, _ in placed])
    if len(low := collapsed(ys)):
        for ax in axes:
            here = [i for i in low if placed[i][0] is ax]
            mark_below(ax, [placed[i][2] for i in here], ys[here], [method_color(placed[i][1][0]) for i in here])
        rest = [rows[placed[i][1]] for i in range(len(placed)) if i not in set(low)]
        bottom = min(100 * (r.mean_acc - r.std_acc) for r in rest)
        top = max(100 * (r.mean_acc + r.std_acc) for r in rest)
        pad = 0.08 * (top - bottom or 1.0)
        axes[0].set_ylim(bottom - pad, top + pad)
        axes[0].set_ylabel(f"{AVG_BN_LABEL}\n({len(low)} far below: ▼ at the bottom, value written)")
    fig.suptitle(title)
    fig.tight_layout()
    _outside_legend(fig, axes)
    return fig


ENSEMBLE_KINDS = [("metrics.individual_mean", "individual (mean of members)", "o"),
                  ("metrics.ensemble_acc", "ensemble", "s"), ("metrics.avg_acc", "averaged", "^"),
                  ("metrics.avg_bn_acc", "averaged+BN", "D"),
                  ("metrics.final_acc", "final model", "*")]  # fmt: skip


def ensemble_vs_average(df: pd.DataFrame, title: str) -> plt.Figure:
    """Per row: its members' mean, its ensemble, its uniform average, that average after BN
    recalibration and the final model the method delivers (SWA's, TWA's, a soup's: often not the
    uniform average), side by side (one marker shape each, in the row's colour), mean ± one standard
    deviation over seeds, on an axis zoomed to the values: bars from 0 would leave the differences a
    sliver at the top of a 0-100 axis. Values far below the rest (collapsed averages) are markers
    at the bottom edge with their value written (:func:`collapsed`). The legend sits above the axes."""
    variants = _variants_in_order(df)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(variants) + 2), 4.8))
    offsets = np.linspace(-0.3, 0.3, len(ENSEMBLE_KINDS))
    points = []  # (x, mean, std, (method, variant), kind)
    for j, (col, _, _) in enumerate(ENSEMBLE_KINDS):
        st = _stats(df, col).set_index("variant")
        for i, (method, variant) in enumerate(variants):
            points.append((i + offsets[j], 100 * st.loc[variant, "mean"], 100 * st.loc[variant, "std"],
                           (method, variant), j))  # fmt: skip
    means = np.array([p[1] for p in points])
    low = set(collapsed(means))
    for k, (x, mean, std, (method, variant), j) in enumerate(points):
        if k not in low:
            ax.errorbar(x, mean, yerr=std, fmt=ENSEMBLE_KINDS[j][2], color=method_color(method), markersize=6,
                        capsize=2, label=f"{ENSEMBLE_KINDS[j][1]}: {variant}")  # fmt: skip
    below = sorted(low)
    mark_below(ax, [points[k][0] for k in below], means[below], [method_color(points[k][3][0]) for k in below])
    for i in range(1, len(variants)):
        ax.axvline(i - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_xlim(-0.5, len(variants) - 0.5)
    ax.set_xticks(range(len(variants)), [v for _, v in variants], rotation=30, ha="right", fontsize=8)
    ylabel = "test accuracy (%; mean ± 1 s.d. over seeds)"
    if low:
        ylabel += f"\n({len(low)} far below: ▼ at the bottom, value written)"
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=28)
    ax.grid(axis="y", alpha=0.3)
    kinds = [plt.Line2D([], [], marker=m, color="0.35", linestyle="none", label=lab) for _, lab, m in ENSEMBLE_KINDS]
    ax.legend(handles=kinds, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(kinds), frameon=False)
    return fig


EPOCH_PANELS = [("individual_mean", "individual (mean of members)"), ("ensemble_acc", "ensemble"),
                ("avg_bn_acc", "averaged model after BN recal.")]  # fmt: skip


def _t_band(values: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
    """Per group of accuracies (fractions): mean and the Student-t 95% CI of the mean, clipped to
    [0, 1]; the mean alone below stats.MIN_SEEDS values (no interval is claimed)."""
    from scipy import stats as sps

    from wab.analysis.stats import MIN_SEEDS

    def one(v: pd.Series) -> pd.Series:
        v = v.dropna().to_numpy(float)
        half = sps.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) >= MIN_SEEDS else 0.0
        return pd.Series({"mean": v.mean(), "lo": max(v.mean() - half, 0.0), "hi": min(v.mean() + half, 1.0)})

    return values.apply(one).unstack()


# rows of accuracy_over_epochs: methods of one family share a row, so that no panel holds a tangle
CURVE_FAMILIES = [
    ("independent populations", ["independent"]),
    ("WASH and PAPA", ["wash", "wash_opt", "papa", "papa_all", "papa_2"]),
    ("DART, SWA, ASWA, TWA, soups", ["dart", "swa", "aswa", "twa", "soups"]),
    ("communication-efficient", ["local_sgd", "diloco", "sparta", "gossip", "lookaround"]),
    ("one member's average", ["ema", "lawa"]),
]
MAX_CURVES = 8  # lines a panel holds before the figure is split into rows of families


def curve_rows(variants: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The rows of :func:`accuracy_over_epochs`: all variants in one row when they are at most
    MAX_CURVES, otherwise one row per family of methods (CURVE_FAMILIES; plugins last, as "other
    methods"), a family of more than MAX_CURVES variants split over several rows."""
    if len(variants) <= MAX_CURVES:
        return [("", variants)]
    known = {m: name for name, methods in CURVE_FAMILIES for m in methods}
    names = [name for name, _ in CURVE_FAMILIES] + ["other methods"]
    rows = []
    for name in names:
        members = [mv for mv in variants if known.get(mv[0], "other methods") == name]
        parts = [members[i : i + MAX_CURVES] for i in range(0, len(members), MAX_CURVES)]
        rows += [(name if len(parts) == 1 else f"{name} ({k + 1}/{len(parts)})", part) for k, part in enumerate(parts)]
    return rows


def accuracy_over_epochs(curves: pd.DataFrame, title: str) -> plt.Figure | None:
    """Individual mean, ensemble and averaged accuracy (after BN recalibration, the headline
    metric) against training steps: mean over seeds with its Student-t 95% CI as a band. More than
    MAX_CURVES rows are drawn a family of methods a row (:func:`curve_rows`), every panel on one
    accuracy axis, so that rows compare. None when no row was evaluated more than once
    (``trainer.eval_every=0``): a curve of one point is the table's number again."""
    x = "step" if "step" in curves else "epoch"
    if curves.empty or curves.groupby("variant")[x].nunique().max() < 2:
        return None
    variants = _variants_in_order(curves)
    rows = curve_rows(variants)
    fig, grid = plt.subplots(len(rows), len(EPOCH_PANELS), figsize=(17, 0.8 + 3.0 * len(rows)), sharey=True,
                             sharex=True, squeeze=False, layout="constrained")  # fmt: skip
    for axes, (family, members) in zip(grid, rows):
        for ax, (col, _) in zip(axes, EPOCH_PANELS):
            drawn: list[pd.Series] = []
            for method, variant in members:
                band = _t_band(curves[curves["variant"] == variant].groupby(x)[col])
                sub = band["mean"]
                same = sum(_same_curve(sub, other) for other in drawn)  # a curve that would hide under another: dashed
                drawn.append(sub)
                ax.plot(sub.index, 100 * sub.values, marker=_marker(variants, method, variant), markersize=3,
                        color=method_color(method), label=variant, linestyle="--" if same else "-")  # fmt: skip
                ax.fill_between(sub.index, 100 * band["lo"].values, 100 * band["hi"].values,
                                color=method_color(method), alpha=0.12, linewidth=0)  # fmt: skip
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"{family}\ntest accuracy (%)" if family else "test accuracy (%)")
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=True)
    for ax, (_, label) in zip(grid[0], EPOCH_PANELS):
        ax.set_title(label)
    for ax in grid[-1]:
        ax.set_xlabel("training step" if x == "step" else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    few = curves.groupby("variant")["run_dir"].nunique().min() < MIN_SEEDS if "run_dir" in curves else True
    fig.suptitle(f"{title} (mean over seeds; band: 95% CI{f' where a row has {MIN_SEEDS}+ seeds' if few else ''})")
    return fig


def lmc_barriers(df: pd.DataFrame, title: str, col: str = "metrics.lmc.pair.acc_barrier") -> plt.Figure | None:
    """Each row's linear-mode-connectivity barrier between members 0 and 1 (the largest drop of
    accuracy along the straight path, BN recalibrated at each point): mean with its 95% CI and
    every seed as a dot. None when no run measured one."""
    if col not in df or pd.to_numeric(df[col], errors="coerce").notna().sum() == 0:
        return None
    variants = [(m, v) for m, v in _variants_in_order(df)
                if pd.to_numeric(df.loc[df["variant"] == v, col], errors="coerce").notna().any()]  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(variants) + 1.2))
    for i, (method, variant) in enumerate(variants):
        v = 100 * pd.to_numeric(df.loc[df["variant"] == variant, col], errors="coerce").dropna()
        mean, lo, hi = (100 * x for x in _mean_ci(v / 100))
        ax.errorbar(mean, i, xerr=[[mean - lo], [hi - mean]], fmt="o", color=method_color(method), capsize=2)
        ax.scatter(v, np.full(len(v), i) + 0.18, s=6, color=method_color(method), alpha=0.5)
    ax.set_yticks(range(len(variants)), [v for _, v in variants], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("LMC barrier between members 0 and 1 (accuracy points; mean, 95% CI, dots: seeds)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _same_curve(a: pd.Series, b: pd.Series, tol: float = 0.005) -> bool:
    """Two curves at the same epochs within ``tol`` (accuracy as a fraction) everywhere."""
    return list(a.index) == list(b.index) and bool(np.all(np.abs(a.to_numpy() - b.to_numpy()) < tol))


def disagreement_vs_average(df: pd.DataFrame, title: str) -> plt.Figure:
    """Members' disagreement against the averaged model's accuracy (one point per run; points
    that would hide each other are drawn a few points apart on the page, their values unchanged)."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    variants = _variants_in_order(df)
    runs = df[df["variant"].isin([v for _, v in variants])]
    x = 100 * pd.to_numeric(runs["metrics.disagreement"]).to_numpy(dtype=float)
    y = 100 * pd.to_numeric(runs["metrics.avg_bn_acc"]).to_numpy(dtype=float)
    offsets = pd.Series(dodge(x, y, tol=0.015, step=5.0), index=runs.index)
    for method, variant in variants:
        idx = runs.index[runs["variant"] == variant]
        for j, i in enumerate(idx):  # each marker at its own values, drawn a few points aside where it would hide
            at = runs.index.get_loc(i)
            ax.scatter([x[at]], [y[at]], color=method_color(method), label=variant if j == 0 else None,
                       marker=_marker(variants, method, variant), s=30, transform=shifted(ax, offsets[i]))  # fmt: skip
    include(ax, x, y)
    ax.set_xlabel("members' mean pairwise disagreement (%; coinciding points drawn a few points apart)")
    ax.set_ylabel(AVG_BN_LABEL)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _outside_legend(fig, [ax])
    return fig


def sensitivity(df: pd.DataFrame, param: str, title: str) -> plt.Figure:
    """Averaged-model accuracy against one method hyper-parameter (config.method.<param>): one
    line per method and setting of everything else, so no line mixes other changes."""
    col, key = f"config.method.{param}", f"method.{param}"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sub = df[df[col].notna()].copy()
    sub["_rest"] = [json.dumps({k: v for k, v in json.loads(s).items() if k != key}, sort_keys=True)
                    for s in sub["setting"]]  # fmt: skip
    strip = re.compile(rf"{re.escape(param)}=[^,)]*(, )?")
    styles = ["-", "--", ":", "-."]
    for method in method_order(sub["method"].unique()):
        for k, (_, line) in enumerate(sub[sub["method"] == method].groupby("_rest", sort=False)):
            label = strip.sub("", str(line["variant"].iloc[0])).replace(", )", ")").replace(" ()", "")
            g = line.groupby(col)["metrics.avg_bn_acc"]
            stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0)}).sort_index()
            # one colour per method; each setting of everything else its own line style and marker
            ax.errorbar(stats.index.astype(float), 100 * stats["mean"], yerr=100 * stats["std"],
                        marker=_MARKERS[k % len(_MARKERS)], linestyle=styles[k % len(styles)], capsize=3,
                        color=method_color(method), label=label)  # fmt: skip
    values = pd.to_numeric(sub[col], errors="coerce").dropna()
    if len(values) and values.min() > 0 and values.max() / values.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(AVG_BN_LABEL)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _outside_legend(fig, [ax])
    return fig


def varied_hyperparameters(df: pd.DataFrame) -> list[str]:
    """Numeric method hyper-parameters that take at least two values within one method."""
    out = []
    for col in sorted(c for c in df.columns if c.startswith("config.method.") and c != "config.method.name"):
        for _, sub in df.groupby("method"):
            values = pd.to_numeric(sub[col], errors="coerce").dropna()
            if values.nunique() >= 2:
                out.append(col.removeprefix("config.method."))
                break
    return out


def pareto_front(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the points no other point dominates (lower or equal cost x and higher or equal
    accuracy y, better in one), by increasing x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return front


FRONT_AXES = [
    ("comm.bytes_total", "bytes one member sent (log)", True),
    ("cost.train_flops", "training FLOPs (log)", False),
    ("cost.train_time_s", "training time, s (log; evaluation excluded)", False),
]
WALL_AXIS = ("wall_time_s", "wall time, s (log; with evaluation: records before wab timed training alone)", False)


def common_value(values: Iterable[float], rel: float = 1e-3) -> float | None:
    """The value every one of ``values`` has (within ``rel`` of the largest), or None when they
    differ or none is finite."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v) or np.ptp(v) > rel * np.abs(v).max():
        return None
    return float(np.median(v))


def _mean_ci(values: pd.Series) -> tuple[float, float, float]:
    from wab.analysis.stats import mean_ci

    v = pd.to_numeric(values, errors="coerce").dropna()
    ci = mean_ci(v.to_numpy())
    mean = float(v.mean()) if len(v) else np.nan
    return mean, *(ci if ci else (mean, mean))


def fronts(df: pd.DataFrame, title: str, metric: str = "metrics.final_acc", network: str | None = None) -> plt.Figure:
    """The final model's accuracy against bytes sent, training FLOPs and training time, one point
    per row (mean, with its 95% CI as error bars on both axes), each method's Pareto front drawn
    through its non-dominated rows and the front of every row dashed in grey. Rows that send
    nothing sit at a marked "0" position left of the bytes axis, spread apart within it (other
    points stay at their values: rows of equal cost overlap). An axis spanning less than a decade
    is linear. ``df``
    may hold several population sizes (a single model at equal FLOPs beside the populations):
    labels then say N. Records without a training time are drawn against wall time, labelled so.
    ``network``: the link whose modelled communication time (``cost.network_time_s``, from
    ``wab report --network``) is a fourth axis."""
    several = df["population_size"].nunique() > 1
    timed = "cost.train_time_s" in df and pd.to_numeric(df["cost.train_time_s"], errors="coerce").notna().all()
    axes_spec = FRONT_AXES if timed else [*FRONT_AXES[:2], WALL_AXIS]
    if network and "cost.network_time_s" in df:
        axes_spec = [*axes_spec, ("cost.network_time_s", f"modelled communication time on {network}, s (log)", True)]
    rows = []
    for (method, variant, n), sub in df.groupby(["method", "variant", "population_size"], sort=False):
        row = {"method": method, "label": f"{variant}, N={n}" if several else variant}
        row["y"], row["y_lo"], row["y_hi"] = (100 * v for v in _mean_ci(sub[metric]))
        for col, _, _ in axes_spec:
            row[col] = _mean_ci(sub[col]) if col in sub else (np.nan,) * 3
        rows.append(row)
    order = method_order([r["method"] for r in rows])
    rows.sort(key=lambda r: (order.index(r["method"]), r["label"]))
    labels = [(r["method"], r["label"]) for r in rows]
    # an axis on which every row has the same cost would be one vertical stack: said, not drawn
    alike = {col: common_value([r[col][0] for r in rows]) for col, _, _ in axes_spec}
    kept = [a for a in axes_spec if alike[a[0]] is None] or axes_spec[:1]
    left_out = [f"{xlabel.split(' (')[0].split(',')[0]} {alike[col]:.3g} for every row"
                for col, xlabel, _ in (a for a in axes_spec if a not in kept)]  # fmt: skip
    axes_spec = kept
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.7 * len(axes_spec) + 1.0, 4.6), sharey=True, squeeze=False)
    axes = list(axes[0])
    ys = np.array([r["y"] for r in rows])
    low = collapsed(ys)  # rows far below the others: written at the bottom edge of a zoomed axis
    for ax, (col, xlabel, has_zero) in zip(axes, axes_spec):
        x = np.array([r[col][0] for r in rows], dtype=float)
        ok = np.isfinite(x)
        positive = x[ok & (x > 0)]
        # rows that send nothing: half a decade below the lowest decade with data, so that the band
        # holds no decade tick (a "0" drawn on 10^4 reads as a byte count)
        zero_at = 10 ** (np.floor(np.log10(positive.min())) - 0.5 if len(positive) else 0.0) if has_zero else None
        xs = np.where(ok & (x > 0), x, zero_at if zero_at else np.nan)
        silent = np.flatnonzero(ok & (x == 0)) if zero_at else np.array([], dtype=int)
        drawn = xs.copy()
        if len(silent) > 1:  # a category, not a value: spread within the band
            drawn[silent] = zero_at * 10 ** (0.25 * (np.arange(len(silent)) / (len(silent) - 1) - 0.5))
        for r, xv, dx, (method, label) in zip(rows, xs, drawn, labels):
            if not np.isfinite(xv):
                continue
            lo, hi = (r[col][1], r[col][2]) if r[col][0] > 0 else (xv, xv)
            ax.errorbar(dx, r["y"], yerr=[[r["y"] - r["y_lo"]], [r["y_hi"] - r["y"]]],
                        xerr=[[max(xv - lo, 0)], [max(hi - xv, 0)]], fmt=_marker(labels, method, label),
                        color=method_color(method), capsize=2, markersize=6, label=label)  # fmt: skip
        for method in order:
            idx = [i for i, r in enumerate(rows) if r["method"] == method and np.isfinite(xs[i])]
            front = [idx[j] for j in pareto_front(xs[idx], ys[idx])]
            if len(front) > 1:
                ax.step(xs[front], ys[front], where="post", color=method_color(method), alpha=0.6, linewidth=1.2)
        valid = [i for i in range(len(rows)) if np.isfinite(xs[i])]
        overall = [valid[j] for j in pareto_front(xs[valid], ys[valid])]
        ax.step(xs[overall], ys[overall], where="post", color="grey", linestyle="--", linewidth=1, label="front")
        finite = xs[np.isfinite(xs)]
        if zero_at or (len(finite) and finite.max() >= 10 * finite.min()):
            ax.set_xscale("log")
        else:
            xlabel = xlabel.replace("(log", "(").replace("(; ", "(").replace(" ()", "")
        if zero_at:
            ax.axvspan(zero_at / 2, zero_at * 2, color="#eeeeee", zorder=0)
            ax.annotate("0 sent", (zero_at, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                        fontsize=7)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        shown = [i for i in low if np.isfinite(xs[i])]
        mark_below(ax, drawn[shown], ys[shown], [method_color(rows[i]["method"]) for i in shown])
    axes[0].set_ylabel("final model accuracy (%)")
    if len(low):
        rest = [i for i in range(len(rows)) if i not in set(low)]
        bottom = min(rows[i]["y_lo"] for i in rest)
        top = max(rows[i]["y_hi"] for i in rest)
        pad = 0.08 * (top - bottom or 1.0)
        axes[0].set_ylim(bottom - pad, top + pad)
        axes[0].set_ylabel(f"final model accuracy (%; {len(low)} row{'s' if len(low) > 1 else ''} far below: "
                           "▼ at the bottom, value written)")  # fmt: skip
    few = df.groupby(["method", "variant", "population_size"]).size().min() < MIN_SEEDS
    bars = f"95% CI where a row has {MIN_SEEDS}+ seeds" if few else "95% CI"
    note = f"\n{'; '.join(left_out)}: that panel left out" if left_out else ""
    fig.suptitle(f"{title}: accuracy against cost (mean, {bars}; lines: Pareto fronts){note}")
    fig.tight_layout()
    _outside_legend(fig, list(axes))
    return fig


def performance_profiles(profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], taus: np.ndarray,
                         methods: dict[str, str], title: str) -> plt.Figure:  # fmt: skip
    """rliable's performance profiles: the fraction of runs whose normalised score exceeds tau,
    with a 95% band, one line per row label."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    labels = list(profiles)
    pairs = [(methods[lab], lab) for lab in labels]
    for k, lab in enumerate(labels):
        p, lo, hi = profiles[lab]
        color = method_color(methods[lab])
        ax.plot(taus, p, color=color, label=lab, marker=_marker(pairs, methods[lab], lab), markersize=5,
                markevery=max(1, len(taus) // 8), linestyle=["-", "--", ":", "-."][k % 4])  # fmt: skip
        ax.fill_between(taus, lo, hi, color=color, alpha=0.12)
    ax.set_xlabel("normalised score τ (0: a single independent member, 1: the independent ensemble)")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _outside_legend(fig, [ax])
    return fig
