"""Comparison figures (matplotlib; PNG and PDF), one colour per method kept across all figures."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

KNOWN_ORDER = ["independent", "wash", "wash_opt", "papa", "papa_all", "papa_2", "dart", "swa", "aswa", "twa", "soups"]
_KNOWN_COLORS = [*plt.get_cmap("tab10").colors, (0.0, 0.0, 0.0)]  # one distinct colour per known method
_OTHER_COLORS = plt.get_cmap("Dark2").colors
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]  # variants of one method: same colour, other marker


def method_order(methods: Iterable[str]) -> list[str]:
    """Known methods in a fixed order, then any others alphabetically."""
    methods = set(methods)
    return [m for m in KNOWN_ORDER if m in methods] + sorted(methods - set(KNOWN_ORDER))


def method_color(method: str) -> tuple:
    """The same colour for a method in every figure of every report."""
    if method in KNOWN_ORDER:
        return _KNOWN_COLORS[KNOWN_ORDER.index(method)]
    return _OTHER_COLORS[sum(map(ord, method)) % len(_OTHER_COLORS)]


def _save(fig: plt.Figure, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png = out / f"{name}.png"
    fig.savefig(png, dpi=130)
    fig.savefig(out / f"{name}.pdf")
    plt.close(fig)
    return png


def _label_averaged(ax: plt.Axes, xlabel: str, title: str) -> None:
    """Labels, grid and an outside legend for a figure whose y axis is the averaged model's accuracy."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("averaged model accuracy after BN recal. (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def _stats(df: pd.DataFrame, col: str) -> pd.DataFrame:
    g = df.groupby(["method", "variant"])[col]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.count()}).reset_index()


def _variants_in_order(df: pd.DataFrame) -> list[tuple[str, str]]:
    order = method_order(df["method"].unique())
    pairs = df[["method", "variant"]].drop_duplicates().itertuples(index=False)
    return sorted(((m, v) for m, v in pairs), key=lambda mv: (order.index(mv[0]), mv[1]))


def accuracy_vs_communication(df: pd.DataFrame, title: str) -> plt.Figure:
    """Averaged-model accuracy (after BN recalibration) against communication per step (log x)."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    acc = _stats(df, "metrics.avg_bn_acc")
    comm = _stats(df, "comm.elements_per_step")
    merged = acc.merge(comm, on=["method", "variant"], suffixes=("_acc", "_comm"))
    positive = merged["mean_comm"][merged["mean_comm"] > 0]
    floor = positive.min() / 10 if len(positive) else 1.0
    variants = _variants_in_order(df)
    for method, variant in variants:
        r = merged[(merged["method"] == method) & (merged["variant"] == variant)].iloc[0]
        x = r["mean_comm"] if r["mean_comm"] > 0 else floor
        marker = _MARKERS[[v for m, v in variants if m == method].index(variant) % len(_MARKERS)]
        ax.errorbar(x, 100 * r["mean_acc"], yerr=100 * r["std_acc"], fmt=marker, capsize=3, color=method_color(method),
                    label=variant, markersize=7)  # fmt: skip
    ax.set_xscale("log")
    if (merged["mean_comm"] == 0).any():  # methods that never communicate sit at the left edge
        ax.axvline(floor * 2, color="grey", linestyle=":", linewidth=1)
        ax.text(floor, ax.get_ylim()[1], " none", va="top", ha="left", fontsize=8, color="grey")
    _label_averaged(ax, "communication per member per step (elements, log scale)", title)
    return fig


def ensemble_vs_average(df: pd.DataFrame, title: str) -> plt.Figure:
    """Grouped bars per method: individual mean, ensemble, averaged, averaged after BN recal."""
    bars = [("metrics.individual_mean", "individual"), ("metrics.ensemble_acc", "ensemble"),
            ("metrics.avg_acc", "averaged"), ("metrics.avg_bn_acc", "averaged+BN")]  # fmt: skip
    variants = _variants_in_order(df)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(variants) + 2), 4.4))
    width = 0.8 / len(bars)
    x = np.arange(len(variants))
    hatches = ["", "//", "..", "xx"]
    for j, (col, label) in enumerate(bars):
        st = _stats(df, col).set_index("variant")
        means = [100 * st.loc[v, "mean"] for _, v in variants]
        stds = [100 * st.loc[v, "std"] for _, v in variants]
        colors = [method_color(m) for m, _ in variants]
        ax.bar(x + (j - 1.5) * width, means, width, yerr=stds, color=colors, hatch=hatches[j], edgecolor="black",
               linewidth=0.5, capsize=2, label=label)  # fmt: skip
    ax.set_xticks(x, [v for _, v in variants], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    legend = ax.legend(fontsize=8, loc="lower right")
    for patch in legend.get_patches():
        patch.set_facecolor("white")
    return fig


def accuracy_over_epochs(curves: pd.DataFrame, title: str) -> plt.Figure:
    """Individual mean, ensemble and averaged accuracy against epochs (mean over seeds)."""
    panels = [("individual_mean", "individual (mean of members)"), ("ensemble_acc", "ensemble"),
              ("avg_acc", "averaged (buffers averaged)")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    variants = _variants_in_order(curves)
    for ax, (col, label) in zip(axes, panels):
        for method, variant in variants:
            sub = curves[curves["variant"] == variant].groupby("epoch")[col].mean()
            ax.plot(sub.index, 100 * sub.values, marker="o", markersize=3, color=method_color(method), label=variant)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title)
    return fig


def disagreement_vs_average(df: pd.DataFrame, title: str) -> plt.Figure:
    """Members' disagreement against the averaged model's accuracy (one point per run)."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for method, variant in _variants_in_order(df):
        sub = df[df["variant"] == variant]
        ax.scatter(100 * sub["metrics.disagreement"], 100 * sub["metrics.avg_bn_acc"], color=method_color(method),
                   label=variant, s=30)  # fmt: skip
    _label_averaged(ax, "members' mean pairwise disagreement (%)", title)
    return fig


def sensitivity(df: pd.DataFrame, param: str, title: str) -> plt.Figure:
    """Averaged-model accuracy against one method hyper-parameter (config.method.<param>)."""
    col = f"config.method.{param}"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sub = df[df[col].notna()]
    for method in method_order(sub["method"].unique()):
        m = sub[sub["method"] == method]
        g = m.groupby(col)["metrics.avg_bn_acc"]
        stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0)}).sort_index()
        ax.errorbar(stats.index.astype(float), 100 * stats["mean"], yerr=100 * stats["std"], marker="o", capsize=3,
                    color=method_color(method), label=method)  # fmt: skip
    values = pd.to_numeric(sub[col], errors="coerce").dropna()
    if len(values) and values.min() > 0 and values.max() / values.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel("averaged model accuracy after BN recal. (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
