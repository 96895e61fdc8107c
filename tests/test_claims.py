"""Claims between methods (--versus), the within-row verdicts, the LMC figure, and the README's
study verdicts: every number is the report's, looked up, never typed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from wab.analysis import plots, verdicts
from wab.analysis.claims import END, START, claims_markdown, markers, replace_block
from wab.analysis.report import write_report
from wab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "golden"
TABLE = "digits, cnn, N=2"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    shutil.copytree(GOLDEN, tmp / "golden")
    write_report(tmp / "golden", tmp / "report", versus=["wash:papa_all"])
    return tmp / "report"


def _acc(runs: pd.DataFrame, label: str) -> pd.Series:
    return 100 * runs[runs["variant"] == label].set_index("seed")["metrics.final_acc"].astype(float)


def test_versus_pairs_like_for_like_rows_of_two_methods_by_seed(report):
    v = pd.read_csv(report / "tables" / "verdicts.csv")
    rows = v[v["comparison"] == "final model against another method's"]
    assert set(rows["row"]) == {"wash", "wash (p=0.1)"} and set(rows["baseline"]) == {"papa_all"}
    runs = pd.read_csv(report / "runs.csv")
    a, b = _acc(runs, "wash"), _acc(runs, "papa_all")
    seeds = sorted(set(a.index) & set(b.index))
    assert rows.set_index("row").loc["wash", "difference"] == pytest.approx((a[seeds] - b[seeds]).mean())
    assert rows.set_index("row").loc["wash", "seeds"] == len(seeds)


def test_versus_is_checked_and_skips_rows_whose_settings_differ():
    with pytest.raises(UserError, match="must be two different methods as A:B"):
        verdicts.parse_versus(["twa"])
    with pytest.raises(UserError, match="must be two different methods"):
        verdicts.parse_versus(["swa:swa"])
    runs = pd.DataFrame({"metrics.final_acc": [0.5, 0.6]}, index=pd.Index([0, 1], name="seed"))
    base = {"data.name": "digits", "model.name": "cnn", "optim.name": "sgd", "trainer.epochs": 2}
    twa = verdicts.Row("a", "twa", "twa", {**base, "population.same_init": True, "optim.schedule": "cosine"}, runs)
    swa = {**base, "population.same_init": False, "optim.schedule": "swa"}
    swa_same = verdicts.Row("b", "swa", "swa", swa, runs)
    swa_longer = verdicts.Row("c", "swa (epochs=4)", "swa", {**swa, "trainer.epochs": 4}, runs)
    # each at its own method's defaults (TWA's shared init, SWA's schedule): like for like; a budget apart: not
    assert verdicts.like_for_like(twa, swa_same) and not verdicts.like_for_like(twa, swa_longer)
    frame = verdicts.versus([twa, swa_same, swa_longer], [("twa", "swa")], "metrics.final_acc", 0.5)
    assert list(frame["baseline"]) == ["swa"]


def test_a_within_row_verdict_needs_two_different_metrics():
    same = [0.80, 0.82, 0.81]
    members = [0.78, 0.79, 0.80]
    runs = pd.DataFrame({"metrics.final_acc": same, "metrics.avg_bn_acc": same, "metrics.individual_mean": members,
                         "metrics.final_model": "avg_bn"}, index=pd.Index([0, 1, 2], name="seed"))  # fmt: skip
    row = verdicts.Row("a", "papa", "papa", {}, runs)
    same_model = verdicts.within_rows([row], "metrics.final_acc", "metrics.avg_bn_acc", 0.5)
    assert same_model["verdict"].tolist() == ["the same model (its final model is its averaged+BN)"]
    assert not same_model["in family"].iloc[0]
    frame = verdicts.within_rows([row], "metrics.final_acc", "metrics.individual_mean", 0.5)
    assert frame["difference"].iloc[0] == pytest.approx(100 * np.mean([0.02, 0.03, 0.01]))


def test_lmc_barriers_show_each_rows_mean_and_seeds():
    col = "metrics.lmc.pair.acc_barrier"
    df = pd.DataFrame({"method": ["independent"] * 3 + ["wash"] * 3, "variant": ["independent"] * 3 + ["wash"] * 3,
                       col: [0.05, 0.06, 0.07, 0.0, 0.001, 0.002]})  # fmt: skip
    fig = plots.lmc_barriers(df, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["independent", "wash"]
    assert ax.containers[0].lines[0].get_xdata()[0] == pytest.approx(6.0)  # the mean in accuracy points
    assert ax.containers[1].lines[0].get_xdata()[0] == pytest.approx(0.1)
    dots = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets()) == 3])
    assert sorted(dots) == pytest.approx([0.0, 0.1, 0.2, 5.0, 6.0, 7.0])  # every seed
    plt.close(fig)
    assert plots.lmc_barriers(df.drop(columns=[col]), "t") is None  # records without LMC: no figure


CLAIMS = [
    {"paper": "P", "claim": "c", "table": TABLE, "comparison": "final model against the baseline", "rows": ["papa_all"],
     "confounds": "none known"},
    {"paper": "Q", "claim": "d", "table": TABLE, "comparison": "final model against another method's",
     "rows": ["wash (p=0.1)"], "baselines": ["papa_all"]},
    {"paper": "R", "claim": "e", "table": TABLE, "column": "comm/step", "rows": ["wash", "wash (p=0.1)"]},
]  # fmt: skip


def test_claims_quote_the_reports_verdicts_and_costs(report):
    text = claims_markdown(report, CLAIMS)
    v = pd.read_csv(report / "tables" / "verdicts.csv").set_index(["comparison", "row"])
    r = v.loc[("final model against the baseline", "papa_all")]
    ci = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if np.isfinite(r["ci_low"]) else "(no interval)"
    assert (f"`papa_all` against {r['baseline']} (2 epochs): **{r['verdict']}**, {r['difference']:+.2f} "
            f"{ci} points over {int(r['seeds'])} seeds") in text  # fmt: skip
    assert "Remaining confounds: none known" in text
    q = v.loc[("final model against another method's", "wash (p=0.1)")]
    assert f"`wash (p=0.1)` against papa_all (2 epochs): **{q['verdict']}**" in text
    t = pd.read_csv(report / "tables" / "table_digits_cnn_2.csv").set_index("method")["comm/step mean"]
    assert f"`wash` {t['wash']:.4g} against `wash (p=0.1)` {t['wash (p=0.1)']:.4g}" in text
    assert f"= {t['wash (p=0.1)'] / t['wash']:.3g}x" in text
    runs = pd.read_csv(report / "runs.csv")
    assert f"Provenance: {len(runs)} runs, trained at commit" in text


def test_a_claim_the_report_cannot_answer_is_an_error_naming_what_it_has(report):
    with pytest.raises(UserError, match=r"0 verdicts for row 'papa' .* the report has: .*'papa_all'"):
        claims_markdown(report, [{**CLAIMS[0], "rows": ["papa"]}])
    with pytest.raises(UserError, match="has no table 'digits, mlp, N=2'"):
        claims_markdown(report, [{**CLAIMS[2], "table": "digits, mlp, N=2"}])


def test_the_block_between_the_markers_is_replaced_and_nothing_else():
    text = f"before\n{START}\nold\n{END}\nafter\n"
    assert replace_block(text, "new") == f"before\n{START}\nnew\n{END}\nafter\n"
    with pytest.raises(UserError, match="lacks the markers"):
        replace_block("no markers", "new")


@pytest.mark.parametrize("study", ["reference", "study"])
def test_the_readmes_study_verdicts_are_what_the_committed_report_gives(study):
    """The README's verdict sections are the script's output from results/reference/report and
    results/study/report: a number typed into one by hand, or a report regenerated without the
    README, fails here."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_verdicts.py"), "--check", "--study", study],
                       cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


def test_each_studys_verdicts_replace_only_their_own_block():
    reference, study = (f"{a}\nold\n{b}" for a, b in (markers("reference"), markers("study")))
    text = replace_block(f"{reference}\n{study}\n", "new", "study")
    assert text == f"{reference}\n{markers('study')[0]}\nnew\n{markers('study')[1]}\n"
    with pytest.raises(UserError, match="lacks the markers '<!-- study-verdicts"):
        replace_block(reference, "new", "study")


def test_provenance_names_the_held_out_split_and_its_standard_error(report, tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    runs = pd.read_csv(copy / "runs.csv")
    runs["method_report.greedy_soup.heldout_size"] = 5400
    runs["method_report.greedy_soup.selection_se"] = np.linspace(0.004, 0.0045, len(runs))
    runs.to_csv(copy / "runs.csv", index=False)
    text = claims_markdown(copy, CLAIMS[:1])
    assert "held-out split for selection: 5400 images, standard error of one held-out accuracy 0.40-0.45 points" in text


def test_provenance_counts_the_runs_of_each_commit_and_names_a_refresh(report, tmp_path):
    copy = tmp_path / "results" / "report"
    shutil.copytree(report, copy)
    runs = pd.read_csv(copy / "runs.csv")
    runs["git_commit"] = ["a" * 40] * (len(runs) - 2) + ["b" * 40] * 2  # two runs trained again later
    runs.to_csv(copy / "runs.csv", index=False)
    study = {"minutes": 100, "machine": "2 CPU cores", "workers": 2, "commit": "a" * 40,
             "refreshes": [{"runs": 2, "minutes": 4, "commit": "b" * 40}]}  # fmt: skip
    (copy.parent / "study.json").write_text(json.dumps(study))
    text = claims_markdown(copy, CLAIMS[:1])
    assert f"trained at commit aaaaaaaaaaaa ({len(runs) - 2} runs), bbbbbbbbbbbb (2 runs)" in text
    assert "the study took 100 minutes on 2 CPU cores" in text
    assert "then 4 minutes to train 2 runs again at bbbbbbbbbbbb" in text


def test_provenance_names_each_part_of_a_study_trained_by_seed(report, tmp_path):
    copy = tmp_path / "results" / "report"
    shutil.copytree(report, copy)
    parts = [{"seeds": [0], "runs": 31, "already_finished": 0, "minutes": 124, "commit": "a" * 40},
             {"seeds": [1, 2], "runs": 62, "already_finished": 31, "minutes": 250, "commit": "b" * 40}]  # fmt: skip
    study = {"minutes": 374, "machine": "2 CPU cores", "workers": 2, "commit": "a" * 40, "parts": parts}
    (copy.parent / "study.json").write_text(json.dumps(study))
    text = claims_markdown(copy, CLAIMS[:1])
    assert "the study took 374 minutes on 2 CPU cores" in text
    assert "in 2 parts (seed 0: 124 minutes at aaaaaaaaaaaa; seeds 1, 2: 250 minutes at bbbbbbbbbbbb)" in text
    study["parts"] = parts[:1]  # one part is the study itself: nothing to list
    (copy.parent / "study.json").write_text(json.dumps(study))
    assert " parts (" not in claims_markdown(copy, CLAIMS[:1])


def test_a_claim_states_a_hypothesis_and_never_its_outcome(tmp_path):
    from wab.analysis.claims import load_claims

    good = {"paper": "P", "claim": "whether the average matches its ensemble", "table": TABLE, "rows": ["a"],
            "comparison": "x"}  # fmt: skip
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump([good]))
    assert load_claims(path)[0]["claim"] == good["claim"]
    for bad, why in [("the average matches its ensemble", "worded 'whether ...'"),
                     ("whether it falls far below its ensemble", "'far' asserts how large"),
                     ("whether it falls below; from one initialisation it stays close", "two statements")]:  # fmt: skip
        path.write_text(yaml.safe_dump([{**good, "claim": bad}]))
        with pytest.raises(UserError, match=f"claim 0 .* is not neutral: .*{why}"):
            load_claims(path)
    # the study's own claims pass
    assert load_claims(ROOT / "configs" / "study" / "claims.yaml")


def test_the_cifar10_studys_claims_name_rows_its_sweep_trains_and_comparisons_the_report_writes():
    """configs/study/claims_cifar10.yaml is written before its study is trained: each row and baseline it
    names is a label of the study's plan (the labels the report gives those runs), each comparison one the
    report writes (the reference report's verdicts.csv holds every kind), each claim worded neutrally."""
    from collections import defaultdict
    from dataclasses import replace

    from wab.analysis.claims import load_claims
    from wab.analysis.collect import _defaults_of, label_settings, setting_of
    from wab.launch.sweep import load_sweep, plan

    spec = load_sweep(str(ROOT / "configs" / "sweep" / "study.yaml"))
    spec = replace(spec, grid={**spec.grid, "seed": [0]})  # one seed: the same rows
    tables = defaultdict(list)
    for r in plan(spec, check=False):
        c = r.config
        tables[f"{c['data']['name']}, {c['model']['name']}, N={c['population']['size']}"].append(c)
    labels = {t: set(label_settings([setting_of(c) for c in cs], [_defaults_of(c) for c in cs])[0])
              for t, cs in tables.items()}  # fmt: skip
    comparisons = set(pd.read_csv(ROOT / "results" / "reference" / "report" / "tables" / "verdicts.csv")["comparison"])
    claims = load_claims(ROOT / "configs" / "study" / "claims_cifar10.yaml")
    assert len(claims) >= 15
    for c in claims:
        assert c["table"] in labels, c
        named = set(c["rows"]) | set(c.get("baselines") or [])
        assert named <= labels[c["table"]], (c["paper"], named - labels[c["table"]])
        if "baselines" in c:
            assert len(c["baselines"]) == len(c["rows"])
        assert "column" in c or c["comparison"] in comparisons, c["comparison"]
    swa = next(c for c in claims if c["paper"].startswith("SWA"))
    assert swa["baselines"] == ["independent (epochs=40)"]  # the conventional run of the same budget
