"""The verdict rules a reviewer reads: the outcomes, one Holm family per table and comparison
kind, comparisons identical by construction and duplicates left out of their family, and the
headroom that decides whether an average can be tested against its ensemble and members."""

import numpy as np
import pandas as pd
import pytest

from wab.analysis import stats, verdicts
from wab.analysis.report import _verdicts
from wab.analysis.verdicts import Margin, Rooms, Row, parse_baseline, parse_margin
from wab.errors import UserError

SEEDS = range(6)
RNG = np.random.default_rng(3)


def _row(label: str, method: str, members: list[list[float]], ensemble: list[float], avg: list[float],
         final: list[float] | None = None, final_model: str = "avg_bn", setting: dict | None = None,
         size: int = 4, flops: float = 4e9) -> Row:  # fmt: skip
    """A row of len(SEEDS) runs: per-seed member accuracies, ensemble, averaged+BN, final model."""
    runs = pd.DataFrame({
        "metrics.individual": [str(m) for m in members],
        "metrics.individual_mean": [float(np.mean(m)) for m in members],
        "metrics.ensemble_acc": ensemble,
        "metrics.avg_bn_acc": avg,
        "metrics.final_acc": final if final is not None else avg,
        "metrics.final_model": final_model,
        "population_size": size,
        "cost.train_flops": flops,
    }, index=pd.Index(list(SEEDS), name="seed"))  # fmt: skip
    return Row(label, label, method, {"method.name": method, **(setting or {})}, runs)


def _members(mean: float, spread: float = 0.004) -> list[list[float]]:
    return [list(np.round(mean + RNG.normal(0, spread, 4), 4)) for _ in SEEDS]


def _noisy(values, shift: float, sd: float = 0.001) -> list[float]:
    return list(np.asarray(values) + shift + RNG.normal(0, sd, len(values)))


def _table(gain: float) -> list[Row]:
    """An independent population whose ensemble beats its mean member by ``gain`` (fraction), a
    method whose average sits at the ensemble, and a row with the independent members (a soup)."""
    members = _members(0.85)
    mean = [float(np.mean(m)) for m in members]
    ens = _noisy(mean, gain)
    indep = _row("independent", "independent", members, ens, _noisy(mean, -0.2))
    soup = _row("soups", "soups", members, ens, indep.runs["metrics.avg_bn_acc"].tolist(), final=_noisy(mean, 0.002),
                final_model="greedy_soup")  # fmt: skip
    wmembers = _members(0.851)
    wmean = [float(np.mean(m)) for m in wmembers]
    wens = _noisy(wmean, gain)
    wash = _row("wash", "wash", wmembers, wens, _noisy(wens, 0.0, 0.0005))
    return [indep, soup, wash]


def test_the_margin_is_points_or_a_fraction_of_the_headroom():
    assert parse_margin("0.5") == Margin(0.5) and parse_margin(0.5) == Margin(0.5)
    assert parse_margin("0.3h") == Margin(0.3, relative=True)
    for bad in ("-1", "0", "h", "abc", "0.3x"):
        with pytest.raises(UserError, match=r"--margin .*positive number of accuracy points \(0.5\)"):
            parse_margin(bad)
    rows = _table(0.02)
    room = Rooms(rows, []).of(rows[2])  # wash reads its independent baseline's headroom
    assert room.row == "independent" and room.ensemble.diff == pytest.approx(2.0, abs=0.2)
    assert Margin(0.3, relative=True).of(room) == pytest.approx(0.3 * room.ensemble.diff)
    assert Margin(0.3, relative=True).of(None) is None and Margin(0.5).of(None) == 0.5


def test_without_headroom_an_average_against_its_ensemble_is_not_tested_here():
    low, high = _table(0.003), _table(0.02)  # the ensemble gains 0.3 points, or 2 points, over a member
    for rows, gated in ((low, True), (high, False)):
        rooms = Rooms(rows, [])
        within = verdicts.judge(verdicts.within_entries(rows, "metrics.avg_bn_acc", "metrics.ensemble_acc", rooms),
                                Margin(0.5)).set_index("row")  # fmt: skip
        verdict = within.loc["wash", "verdict"]
        if gated:
            h = rooms.of(rows[2]).ensemble.diff
            assert verdict == f"not tested here (headroom {h:+.2f} < ±0.5)" and within.loc["wash", "in family"]
        else:
            assert verdict == "equivalent (±0.5)" and within.loc["wash", "in family"]
        # a collapse far beyond the margin is shown whatever the headroom
        assert within.loc["independent", "verdict"] == "worse"
        table = verdicts.headroom_table(rooms, Margin(0.5)).set_index("row")
        assert bool(table.loc["independent", "tested"]) is not gated
        assert "not tested here" in verdicts.headroom_markdown(table.reset_index()) or not gated
    # a margin relative to the headroom tests the low-headroom table on its own scale
    rooms = Rooms(low, [])
    rel = verdicts.judge(verdicts.within_entries(low, "metrics.avg_bn_acc", "metrics.ensemble_acc", rooms),
                         Margin(0.5, relative=True)).set_index("row")  # fmt: skip
    assert rel.loc["wash", "margin"] == pytest.approx(0.5 * rooms.of(low[2]).ensemble.diff)
    assert not rel.loc["wash", "verdict"].startswith("not tested")


def test_an_average_against_an_ensemble_of_members_kept_together_is_not_tested_here():
    """SPARTA, gossip: members kept in sync leave their own ensemble no room above their average, so
    "the average matches its ensemble" is not tested for them even in a table with room to gain."""
    rows = _table(0.02)  # the independent ensemble gains 2 points: the table is tested
    members = _members(0.86, spread=0.0005)
    mean = [float(np.mean(m)) for m in members]
    ens = _noisy(mean, 0.001)  # its own ensemble gains 0.1 points over its members
    rows.append(_row("sparta", "sparta", members, ens, _noisy(ens, 0.0, 0.0005)))
    other = _members(0.86, spread=0.0005)
    other_ens = _noisy([float(np.mean(m)) for m in other], 0.001)
    rows.append(_row("collapsed", "sparta", other, other_ens, _noisy(other_ens, -0.05)))  # far beyond the margin
    rooms = Rooms(rows, [])
    assert rooms.of(rows[3]).ensemble.diff > 1.5
    entries = verdicts.within_entries(rows, "metrics.avg_bn_acc", "metrics.ensemble_acc", rooms)
    within = verdicts.judge(entries, Margin(0.5)).set_index("row")
    own = 100 * (rows[3].values("metrics.ensemble_acc") - rows[3].values("metrics.individual_mean")).mean()
    assert within.loc["sparta", "verdict"] == f"not tested here (its own ensemble − member {own:+.2f} < ±0.5)"
    assert within.loc["sparta", "in family"]
    assert within.loc["collapsed", "verdict"] == "worse"  # a collapse is shown whatever the room
    assert within.loc["wash", "verdict"] == "equivalent (±0.5)"  # its own ensemble gains 2 points
    # against its own members, the gate is the table's alone
    entries = verdicts.within_entries(rows, "metrics.avg_bn_acc", "metrics.individual_mean", rooms)
    members_verdict = verdicts.judge(entries, Margin(0.5)).set_index("row").loc["sparta", "verdict"]
    assert not members_verdict.startswith("not tested")


def test_identical_comparisons_and_duplicates_are_shown_and_left_out_of_the_family():
    rows = _table(0.02)
    entries = verdicts.baseline_entries(rows, parse_baseline(None), "metrics.individual_mean")
    table = verdicts.judge(entries, Margin(0.5)).set_index("row")
    # the soup trains the independent members: its members' accuracy is its baseline's by construction
    assert table.loc["soups", "verdict"] == "the same members as its baseline (identical by construction)"
    assert not table.loc["soups", "in family"] and np.isnan(table.loc["soups", "p (Holm)"])
    # left out, the family is wash alone: its Holm p is its own p
    x, y = verdicts._pair(rows[2].values("metrics.individual_mean"), rows[0].values("metrics.individual_mean"))
    assert table.loc["wash", "p (Holm)"] == pytest.approx(stats.paired(x, y, 0.5).p_diff)
    within = verdicts.judge(verdicts.within_entries(rows, "metrics.avg_bn_acc", "metrics.ensemble_acc"),
                            Margin(0.5)).set_index("row")  # fmt: skip
    assert within.loc["soups", "verdict"] == "duplicate of independent (the same members, the same comparison)"
    assert within["in family"].tolist() == [True, False, True]


def test_a_row_is_left_out_of_final_against_average_only_when_it_is_the_same_model():
    rows = _table(0.02)
    tie = rows[1].runs.copy()
    tie["metrics.final_acc"] = tie["metrics.avg_bn_acc"]  # the soup's final model ties its average by chance
    rows[1] = Row("soups", "soups", "soups", rows[1].setting, tie)
    table = verdicts.judge(verdicts.within_entries(rows, "metrics.final_acc", "metrics.avg_bn_acc"),
                           Margin(0.5)).set_index("row")  # fmt: skip
    assert table.loc["wash", "verdict"] == "the same model (its final model is its averaged+BN)"
    assert table.loc["independent", "verdict"].startswith("the same model")
    assert table.loc["soups", "verdict"] == "no verdict (the same numbers on every seed: no spread to test)"


def test_the_holm_family_is_the_comparison_kind_over_every_metric():
    rows = _table(0.02)
    found = dict(_verdicts(rows, [], parse_baseline(None), ["metrics.final_acc", "metrics.individual_mean"],
                           Margin(0.5), False, [], Rooms(rows, [])))  # fmt: skip
    final, members = found["final model against the baseline"], found["individual against the baseline"]
    assert set(final["family"]) == set(members["family"]) == {"against the baseline"}
    both = pd.concat([final, members])
    tested = both[both["in family"]]
    raw = []
    for _, r in tested.iterrows():
        col = "metrics.final_acc" if r["metric"] == "final model" else "metrics.individual_mean"
        row = next(x for x in rows if x.label == r["row"])
        raw.append(stats.paired(*verdicts._pair(row.values(col), rows[0].values(col)), 0.5).p_diff)
    assert len(tested) == 3  # wash and soups on the final model, wash on its members (the soup's are the baseline's)
    assert tested["p (Holm)"].tolist() == pytest.approx(stats.holm(raw))


def test_each_row_says_how_often_its_mechanism_acted_beside_its_papers_count():
    from wab.analysis import mechanisms

    def row(label: str, method: str, **cols) -> Row:
        return Row(label, label, method, {}, pd.DataFrame(cols, index=pd.Index([0, 1, 2], name="seed")))

    rows = [
        row("papa (epochs=8)", "papa", **{"comm.ops.lerp_toward_mean.calls": [344.0, 344.0, 344.0]}),
        row("papa_all", "papa_all", **{"comm.ops.average_into_members.calls": [30.0, 30.0, 30.0]}),
        row("soups", "soups", **{"method_report.greedy_soup.ingredients": ["[3]", "[1]", "[2]"]}),
        row("soups (grid)", "soups", **{"method_report.greedy_soup.ingredients": ["[3, 1]", "[1]", "[0, 2, 3]"]}),
        row("wash", "wash", steps=[10, 10, 10]),  # no shuffle in the ledger: it never acted
        row("gossip", "gossip", **{"comm.ops.gossip_ring.calls": [9.0, 9.0, 9.0]}),
        row("mine", "my_plugin"),
        row("lawa (old record)", "lawa", steps=[10, 10, 10]),  # its report lacks the count: not recorded, not 0
    ]
    t = mechanisms.mechanism_table(rows).set_index("row")
    papa = t.loc["papa (epochs=8)"]
    assert papa["paper"] == pytest.approx(300 * 782 / 10) and papa["ratio"] == pytest.approx(344 / 23460)
    assert papa["flag"] == "outside its paper's regime"
    assert t.loc["papa_all", "ratio"] == pytest.approx(0.5) and t.loc["papa_all", "flag"] == ""
    assert t.loc["soups", "flag"].startswith("one ingredient in every run")
    assert t.loc["soups (grid)", "count"] == pytest.approx(2.0) and t.loc["soups (grid)", "flag"] == ""
    assert t.loc["wash", "count"] == 0 and t.loc["wash", "flag"] == "outside its paper's regime"
    assert np.isnan(t.loc["gossip", "paper"]) and t.loc["gossip", "flag"] == ""  # no paper count: the count alone
    assert "mine" not in t.index
    assert np.isnan(t.loc["lawa (old record)", "count"]) and t.loc["lawa (old record)", "flag"] == "not recorded"
    assert "**outside its paper's regime**" in mechanisms.markdown(t.reset_index())


def test_ema_and_soups_are_judged_against_the_members_their_papers_use():
    from wab.analysis.collect import member_baselines

    rec = {"metrics": {"individual": [0.80, 0.81, 0.82, 0.83], "members_recal": [0.70, 0.71, 0.72, 0.73],
                       "final_model": "ema_2"}}  # fmt: skip
    assert member_baselines(rec) == {"metrics.own_member_acc": 0.72}  # member 2's last iterate, recalibrated
    soup = {"metrics": {"individual": [0.80, 0.81, 0.82, 0.83], "final_model": "greedy_soup"},
            "method_report": {"greedy_soup": {"ingredients": [3, 0]}}}  # fmt: skip
    assert member_baselines(soup) == {"metrics.heldout_best_member_acc": 0.83}  # the one it starts from
    assert member_baselines({"metrics": {"individual": [0.8], "final_model": "avg_bn"}}) == {}
    assert ("metrics.final_acc", "metrics.own_member_acc") in verdicts.WITHIN
    assert ("metrics.final_acc", "metrics.heldout_best_member_acc") in verdicts.WITHIN


def test_a_verdict_without_a_difference_says_when_its_uncorrected_interval_excludes_zero():
    x = 80 + RNG.normal(0, 0.3, 10)
    z = np.array([-1.5, -1, -0.5, 0, 0.5, 1, 1.5, -0.2, 0.2, 0])
    y = x - (0.2 + 0.25 * z)  # +0.2, t about 2.6: the uncorrected CI excludes 0, 13 tests withhold it
    entries = [{"row": "a", "baseline": "b", "metric": "final model", "_x": x, "_y": y}]
    entries += [{"row": f"n{i}", "baseline": "b", "metric": "final model", "_x": x, "_y": x + RNG.normal(0, 1, 10)}
                for i in range(12)]  # fmt: skip  # a large family: Holm withholds the difference
    table = verdicts.judge(entries, Margin(0.5)).set_index("row")
    assert table.loc["a", "ci_low"] > 0 and table.loc["a", "p (Holm)"] >= 0.05
    assert table.loc["a", "verdict"].endswith("no difference after Holm, though the uncorrected CI excludes 0")


def test_versus_a_named_row_compares_a_methods_rows_with_that_row_of_their_table():
    """Local SGD, DiLoCo, SPARTA and gossip against synchronous data-parallel training, which is local SGD
    averaging after every step: ``--versus diloco:local_sgd (every_steps=1)`` and, for local SGD itself,
    ``local_sgd:local_sgd (every_steps=1)`` (a method against its own synchronous row, never itself)."""
    members = _members(0.85)
    sync = _row("local_sgd (every_steps=1)", "local_sgd", members, _noisy([0.86] * 6, 0), [0.86] * 6,
                setting={"method.every_steps": 1})  # fmt: skip
    local = _row("local_sgd", "local_sgd", members, _noisy([0.86] * 6, 0), _noisy([0.85] * 6, 0),
                 setting={"method.every_steps": 4})  # fmt: skip
    diloco = _row("diloco", "diloco", members, _noisy([0.86] * 6, 0), _noisy([0.84] * 6, 0))
    other = _row("local_sgd (finalizers=[ties])", "local_sgd", members, [0.86] * 6, [0.86] * 6,
                 setting={"method.every_steps": 4, "population.finalizers": ["ties"]})  # fmt: skip
    rows = [sync, local, diloco, other]
    pairs = verdicts.parse_versus(["local_sgd:local_sgd (every_steps=1)", "diloco:local_sgd (every_steps=1)"])
    entries = verdicts.versus_entries(rows, pairs, "metrics.final_acc")
    assert [(e["row"], e["baseline"]) for e in entries] == [
        ("local_sgd", "local_sgd (every_steps=1)"),  # not the synchronous row against itself, nor another setting
        ("diloco", "local_sgd (every_steps=1)"),
    ]
    x, y = entries[1]["_x"], entries[1]["_y"]
    assert np.allclose(x, 100 * diloco.values("metrics.final_acc")) and np.allclose(
        y, 100 * sync.values("metrics.final_acc")
    )
    assert verdicts.is_row_label("local_sgd (every_steps=1)") and not verdicts.is_row_label("local_sgd")


def test_a_rows_final_model_is_judged_against_its_baselines_ensemble_and_members():
    """WASH's and PAPA's own claim: their average against the independent ensemble and members, not only the
    independent population's collapsed average; headroom-gated like every average against an ensemble."""
    low, high = _table(0.003), _table(0.02)
    for rows, gated in ((low, True), (high, False)):
        rooms = Rooms(rows, [])
        spec = parse_baseline(None)
        by_ref = {}
        for col, ref in verdicts.AGAINST_BASELINE_MEMBERS:
            entries = verdicts.baseline_entries(rows, spec, col, rooms, reference=ref)
            by_ref[ref] = verdicts.judge(entries, Margin(0.5)).set_index("row")
        ens = by_ref["metrics.ensemble_acc"]
        assert ens.loc["wash", "baseline"] == "independent: its ensemble"
        wash, indep = rows[2], rows[0]
        expected = 100 * (wash.values("metrics.final_acc") - indep.values("metrics.ensemble_acc"))
        assert ens.loc["wash", "difference"] == pytest.approx(expected.mean())
        members = by_ref["metrics.individual_mean"].loc["wash"]
        assert members["baseline"] == "independent: its individual"
        expected = 100 * (wash.values("metrics.final_acc") - indep.values("metrics.individual_mean"))
        assert members["difference"] == pytest.approx(expected.mean())
        assert ens.loc["wash", "verdict"].startswith("not tested here") is gated
        soup = by_ref["metrics.ensemble_acc"].loc["soups"]  # the independent members: its own ensemble, judged within
        assert (
            soup["verdict"] == "the same as its final model against its own ensemble (its members are its baseline's)"
        )
        assert not soup["in family"]
    rows = _table(0.02)
    report = dict(
        _verdicts(rows, [], parse_baseline(None), ["metrics.final_acc"], Margin(0.5), False, [], Rooms(rows, []))
    )
    family = report["final model against the baseline's ensemble"]["family"]
    assert set(family) == {"against the baseline's ensemble and members"}  # a family of its own
    assert "final model against the baseline's individual" in report


def test_a_final_model_against_its_ensemble_is_judged_unless_it_is_the_average_already_judged():
    """Re-Basin, a merge or a soup against the row's ensemble; a row whose final model is its averaged+BN
    would repeat that comparison, so it is shown as such and left out of the family."""
    rows = _table(0.02)
    entries = verdicts.within_entries(rows, "metrics.final_acc", "metrics.ensemble_acc", Rooms(rows, []))
    judged = verdicts.judge(entries, Margin(0.5)).set_index("row")
    assert judged.loc["wash", "verdict"].startswith("the same as its averaged+BN against its ensemble")
    assert not judged.loc["wash", "in family"]
    soup = rows[1]  # its final model is the greedy soup: judged, in the family
    expected = 100 * (soup.values("metrics.final_acc") - soup.values("metrics.ensemble_acc"))
    assert judged.loc["soups", "in family"] and judged.loc["soups", "difference"] == pytest.approx(expected.mean())
