"""Interval estimates and paired verdicts for the report (Agarwal et al., NeurIPS 2021, "Deep
RL at the edge of the statistical precipice"; Schuirmann, 1987, for the two one-sided tests).

- A cell's 95% confidence interval over seeds is a percentile bootstrap of the mean
  (``scipy.stats.bootstrap``; over one task rliable's stratified bootstrap is this IID bootstrap).
- A paired comparison of two rows uses the seeds both rows share: the mean difference, its
  Student-t 95% interval, a paired t-test (is there a difference?) and two one-sided t-tests
  against a margin delta (is the difference within +-delta?), Holm-corrected across the rows of a
  table, and the probability of improvement as rliable defines it.
- Across tasks: the interquartile mean of normalised scores with stratified-bootstrap CIs (runs
  resampled within each task), performance profiles (the fraction of runs above each threshold,
  with the same bootstrap), and mean ranks.

rliable's own package is not used: its release caps ``arch < 8``, and arch 7 fails to import
with pandas 3. ``scipy.stats.bootstrap`` resamples each task's runs independently when given one
sample per task, which is rliable's stratified bootstrap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise error rate of a table's verdicts (Holm)
RESAMPLES = 10_000
CI_METHOD = "95% percentile bootstrap CI of the mean over seeds (scipy.stats.bootstrap, 10,000 resamples)"
FEW_SEEDS = 5  # below this many seeds a bootstrap interval is narrower than it should be
MIN_SEEDS = 3  # below this many seeds (or with no spread) no interval or verdict is claimed


def mean_ci(values: np.ndarray | list[float], seed: int = 0) -> tuple[float, float] | None:
    """The 95% percentile-bootstrap interval of the mean of ``values``; None (no interval is
    claimed) for fewer than :data:`MIN_SEEDS` values or when every value is the same."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < MIN_SEEDS or np.all(v == v[0]):
        return None
    res = stats.bootstrap((v,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile",
                          random_state=np.random.default_rng(seed))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, outside the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass
class Paired:
    """A paired comparison of a row with its baseline over the seeds they share (x - y)."""

    n: int
    diff: float = float("nan")  # mean of x - y
    ci: tuple[float, float] | None = None  # Student-t 95% interval of the mean difference
    p_diff: float = float("nan")  # paired t-test, two-sided, H0: mean difference 0
    p_equiv: float = float("nan")  # TOST, H0: |mean difference| >= margin
    prob_improvement: float = float("nan")  # rliable: P(X > Y) + P(X = Y) / 2


def paired(x: np.ndarray | list[float], y: np.ndarray | list[float], margin: float) -> Paired:
    """Compare paired samples x and y (same seeds, same order) with margin ``margin``.

    Below :data:`MIN_SEEDS` shared seeds, or when the difference is the same on every seed (no
    spread: one test image in every seed reads as certainty to a t-test), no interval and no
    p-value is given: the comparison stays out of its Holm family and :func:`untested` says why."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n == 0:
        return Paired(0)
    d = x - y
    out = Paired(n, diff=float(d.mean()))
    out.prob_improvement = probability_of_improvement(x, y)
    if n < MIN_SEEDS or np.all(d == d[0]):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_1samp(d, 0.0)
        low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    ci = test.confidence_interval(CONFIDENCE)
    out.ci = (float(ci.low), float(ci.high))
    out.p_diff = float(test.pvalue)
    out.p_equiv = float(max(low, high))
    return out


def untested(result: Paired) -> str | None:
    """Why a paired comparison gets no verdict (no shared seed, too few, no spread), or None."""
    if result.n == 0:
        return "no shared seeds"
    if result.n < MIN_SEEDS:
        return f"no verdict ({result.n} shared seed{'s' if result.n > 1 else ''}: at least {MIN_SEEDS} needed)"
    if result.ci is None:
        same = "the same numbers" if result.diff == 0 else f"the same difference {result.diff:+.2f}"
        return f"no verdict ({same} on every seed: no spread to test)"
    return None


def verdict(p_diff_adj: float, p_equiv_adj: float, diff: float, margin_text: str) -> str:
    """The outcome of a tested comparison from its Holm-adjusted p-values (the report's caption and
    docs/reports.md define each): better | worse, "better, within ±δ" | "worse, within ±δ"
    (significant and TOST-equivalent), "equivalent (±δ)", inconclusive."""
    side = "better" if diff > 0 else "worse"
    shown, equivalent = p_diff_adj < ALPHA, p_equiv_adj < ALPHA
    if shown:
        return f"{side}, within ±{margin_text}" if equivalent else side
    return f"equivalent (±{margin_text})" if equivalent else "inconclusive"


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's P(X > Y) + P(X = Y) / 2 over every pair of a run of X and a run of Y (the
    Mann-Whitney U statistic over n_x n_y); 0.5 when the samples are identical."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.array_equal(x, y):
        return 0.5
    return float(stats.mannwhitneyu(x, y, alternative="greater").statistic / (len(x) * len(y)))


# ------------------------------------------------------------------------------ across tasks
def _iqm(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(np.concatenate(tasks, axis=axis), 0.25, axis=axis)


def _stratified(tasks: list[np.ndarray], statistic, seed: int) -> tuple[float, float]:
    """A 95% percentile interval of ``statistic`` with each task's runs resampled on their own
    (a task of one run resamples to itself, so it enters every resample as it is)."""
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    varying = [t for t in tasks if len(t) > 1]
    fixed = [t for t in tasks if len(t) == 1]
    if not varying or all(np.all(t == tasks[0][0]) for t in tasks):
        value = float(statistic(*tasks))
        return value, value

    def with_fixed(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        batch = samples[0].shape[:-1]
        return statistic(*samples, *(np.broadcast_to(f, (*batch, len(f))) for f in fixed), axis=axis)

    res = stats.bootstrap(varying, with_fixed, n_resamples=RESAMPLES, method="percentile", vectorized=True,
                          random_state=np.random.default_rng(seed))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm_interval(tasks: list[np.ndarray], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """The interquartile mean of every run's score over every task (25% trimmed each side), and
    its stratified-bootstrap 95% CI; ``tasks`` holds one array of run scores per task."""
    return float(_iqm(*tasks)), _stratified(tasks, _iqm, seed)


def performance_profile(
    tasks: list[np.ndarray], taus: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rliable's score distribution: the fraction of runs (over every task) whose score exceeds
    each tau, with a stratified-bootstrap 95% band; returns (profile, low, high)."""
    profile, low, high = [], [], []
    for tau in taus:

        def above(*t: np.ndarray, axis: int = -1, tau: float = float(tau)) -> np.ndarray:
            return (np.concatenate(t, axis=axis) > tau).mean(axis=axis)

        profile.append(float(above(*[np.asarray(t, dtype=float) for t in tasks])))
        lo, hi = _stratified(tasks, above, seed)
        low.append(lo)
        high.append(hi)
    return np.array(profile), np.array(low), np.array(high)


def mean_ranks(task_means: dict[str, dict[str, float]]) -> dict[str, tuple[float, list[float]]]:
    """{method: (mean rank, rank per task)} from {task: {method: mean score}}; rank 1 is best,
    ties share their average rank (scipy.stats.rankdata)."""
    ranks: dict[str, list[float]] = {}
    for means in task_means.values():
        names = list(means)
        r = stats.rankdata([-means[k] for k in names], method="average")
        for k, v in zip(names, r):
            ranks.setdefault(k, []).append(float(v))
    return {k: (float(np.mean(v)), v) for k, v in ranks.items()}
