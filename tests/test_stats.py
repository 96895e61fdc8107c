"""The report's statistics against values computed by hand or by scipy on fixed samples."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from wab.analysis import stats
from wab.analysis.verdicts import Row, against_baseline, at_equal_flops, find_baseline, parse_baseline, within_rows


def test_the_cell_interval_is_scipys_percentile_bootstrap_of_the_mean():
    values = [0.871, 0.878, 0.869, 0.882, 0.875]
    low, high = stats.mean_ci(values)
    ref = sps.bootstrap((np.array(values),), np.mean, n_resamples=10_000, method="percentile",
                        random_state=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert (low, high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert min(values) <= low < np.mean(values) < high <= max(values)
    # below 3 values, or with no spread, no interval is claimed
    assert stats.mean_ci([0.5]) is None and stats.mean_ci([0.5, 0.6]) is None and stats.mean_ci([0.5] * 5) is None
    assert stats.mean_ci([0.5, 0.6, 0.7]) is not None


def test_the_paired_interval_and_tests_match_the_formulas():
    x = np.array([88.1, 88.4, 87.9, 88.6, 88.2])
    y = np.array([87.6, 88.0, 87.7, 88.1, 87.5])
    d = x - y
    res = stats.paired(x, y, margin=0.5)
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert res.diff == pytest.approx(d.mean()) and res.ci == (
        pytest.approx(d.mean() - half),
        pytest.approx(d.mean() + half),
    )
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert res.p_diff == pytest.approx(2 * sps.t.sf(abs(t), len(d) - 1))
    # TOST: the larger of the two one-sided p-values against -0.5 and +0.5
    se = d.std(ddof=1) / np.sqrt(len(d))
    p_low = sps.t.sf((d.mean() + 0.5) / se, len(d) - 1)
    p_high = sps.t.cdf((d.mean() - 0.5) / se, len(d) - 1)
    assert res.p_equiv == pytest.approx(max(p_low, p_high))


def test_tost_says_equivalent_for_a_tight_small_difference_and_not_for_a_large_one():
    rng = np.random.default_rng(0)
    base = 88 + rng.normal(0, 0.3, 10)
    close = base + rng.normal(0.05, 0.05, 10)
    far = base + rng.normal(1.5, 0.1, 10)
    tight = stats.paired(close, base, 0.5)
    assert tight.p_equiv < 0.05 and tight.p_diff > 0.05
    assert stats.verdict(tight.p_diff, tight.p_equiv, tight.diff, "0.5") == "equivalent (±0.5)"
    apart = stats.paired(far, base, 0.5)
    assert apart.p_diff < 0.05 and apart.p_equiv > 0.05
    assert stats.verdict(apart.p_diff, apart.p_equiv, apart.diff, "0.5") == "better"
    noisy = stats.paired(base + rng.normal(0, 2, 10), base, 0.5)
    assert stats.verdict(noisy.p_diff, noisy.p_equiv, noisy.diff, "0.5") == "inconclusive"
    # a difference that is shown and whose whole interval lies inside the margin: real but negligible
    small = stats.paired(base - rng.normal(0.2, 0.03, 10), base, 0.5)
    assert small.p_diff < 0.05 and small.p_equiv < 0.05 and -0.5 < small.ci[0] < small.ci[1] < 0
    assert stats.verdict(small.p_diff, small.p_equiv, small.diff, "0.5") == "worse, within ±0.5"


def test_no_verdict_below_three_seeds_or_without_spread():
    two = stats.paired([90.0, 91.0], [34.44, 35.44], 0.5)  # +55.56 twice: a t-test would call it certain
    assert (
        two.ci is None
        and np.isnan(two.p_diff)
        and stats.untested(two) == "no verdict (2 shared seeds: at least 3 needed)"
    )
    one_image = stats.paired([88.0, 87.0, 89.0], [88.28, 87.28, 89.28], 0.5)  # one test image in every seed
    assert one_image.ci is None and np.isnan(one_image.p_equiv)
    assert stats.untested(one_image) == "no verdict (the same difference -0.28 on every seed: no spread to test)"
    assert stats.untested(stats.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.5)).startswith(
        "no verdict (the same numbers"
    )
    assert stats.untested(stats.paired([], [], 0.5)) == "no shared seeds"
    assert stats.untested(stats.paired([1.0, 2.0, 3.5], [1.0, 2.1, 3.0], 0.5)) is None


def test_holm_adjusts_step_down():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.2, float("nan"), 0.001])
    assert adjusted[0] == pytest.approx(0.2) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.002)


def test_probability_of_improvement_counts_pairs_as_rliable_does():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 2.5])
    wins = sum((a > b) + 0.5 * (a == b) for a in x for b in y) / 9
    assert stats.probability_of_improvement(x, y) == pytest.approx(wins) == pytest.approx(5.5 / 9)
    assert stats.probability_of_improvement(x, x) == 0.5


def test_iqm_and_its_stratified_interval():
    tasks = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8])]
    iqm, (low, high) = stats.iqm_interval(tasks)
    assert iqm == pytest.approx(np.mean([0.3, 0.4, 0.5, 0.6]))  # the middle half of the 8 scores
    assert low < iqm < high
    profile, lo, hi = stats.performance_profile(tasks, np.array([0.0, 0.45, 1.0]))
    assert list(profile) == [1.0, 0.5, 0.0] and lo[1] <= 0.5 <= hi[1]
    assert stats.mean_ranks({"a": {"x": 0.9, "y": 0.8}, "b": {"x": 0.7, "y": 0.7}}) == {
        "x": (1.25, [1.0, 1.5]), "y": (1.75, [2.0, 1.5])}  # fmt: skip


def _row(label: str, method: str, setting: dict, values: dict[int, float], flops: float = 1e9) -> Row:
    runs = pd.DataFrame({"metrics.final_acc": values, "metrics.ensemble_acc": {s: v + 0.001 for s, v in values.items()},
                         "metrics.individual_mean": values, "cost.train_flops": flops})  # fmt: skip
    return Row(label, label, method, {"method.name": method, **setting}, runs)


def test_each_row_is_compared_with_its_own_baseline_and_rows_without_shared_seeds_say_so():
    indep = _row("independent", "independent", {"population.same_init": False}, {0: 0.80, 1: 0.81, 2: 0.79})
    indep_shared = _row("independent (same_init=true)", "independent", {"population.same_init": True},
                        {0: 0.86, 1: 0.87, 2: 0.88})  # fmt: skip
    wash = _row("wash (same_init=true)", "wash", {"population.same_init": True, "method.p": 0.01},
                {0: 0.87, 1: 0.88, 2: 0.89})  # fmt: skip
    swa = _row("swa", "swa", {"population.same_init": False, "optim.schedule": "swa"}, {5: 0.9, 6: 0.91})
    rows = [indep, indep_shared, wash, swa]
    assert find_baseline(wash, rows, parse_baseline(None)) == (indep_shared, [])
    assert find_baseline(swa, rows, parse_baseline(None)) == (indep, ["optim.schedule"])
    assert find_baseline(wash, rows, parse_baseline("independent")) == (indep, [])  # a row label
    table = against_baseline(rows, parse_baseline(None), "metrics.final_acc", 0.5).set_index("row")
    assert table.loc["wash (same_init=true)", "difference"] == pytest.approx(1.0)
    assert table.loc["swa", "verdict"].startswith("no shared seeds")
    assert "differs in optim.schedule" in table.loc["swa", "baseline"]
    within = within_rows(rows, "metrics.final_acc", "metrics.ensemble_acc", 0.5).set_index("row")
    assert within.loc["independent", "difference"] == pytest.approx(-0.1)
    # the same -0.1 on every seed: no spread, so no verdict is claimed (a t-test would call it certain)
    assert (
        within.loc["independent", "verdict"]
        == "no verdict (the same difference -0.10 on every seed: no spread to test)"
    )


def test_the_equal_compute_baseline_is_the_one_model_of_the_same_flops():
    pop = _row("wash", "wash", {}, {0: 0.88, 1: 0.89}, flops=4e9)
    single = _row("independent (epochs=32)", "independent", {}, {0: 0.87, 1: 0.875}, flops=4e9)
    other = _row("independent", "independent", {}, {0: 0.5, 1: 0.5}, flops=1e9)
    table = at_equal_flops([pop], [other, single], "metrics.final_acc", 0.5)
    assert list(table["baseline"]) == ["independent (epochs=32), N=1 (equal FLOPs)"]
    assert table["difference"].iloc[0] == pytest.approx(100 * np.mean([0.01, 0.015]))
    assert json.dumps(parse_baseline("method=papa population.same_init=true")) == json.dumps(
        {"method.name": "papa", "population.same_init": True})  # fmt: skip
