import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WAB = [sys.executable, "-m", "wab.cli"]


def _run(args, cwd):
    return subprocess.run(WAB + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_wab_train_takes_hydra_overrides(tmp_path):
    out = tmp_path / "runs"
    p = _run(
        ["train", "method=independent", "data=digits", "population.size=2", "model.width=4", "trainer.epochs=1",
         "trainer.batch_size=256", "trainer.progress=false", "device=cpu", f"out_dir={out}"],
        tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_dir,) = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "done" and final["population_size"] == 2
    assert f"done: {run_dir}" in p.stdout


def test_wab_train_reports_a_bad_method_with_the_known_ones(tmp_path):
    p = _run(["train", "method.name=wahs", "trainer.progress=false", f"out_dir={tmp_path / 'runs'}"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("wab: error: unknown method 'wahs' (did you mean 'wash'?); known: ")
    assert "independent" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["method=wash", "method.p=2"], "wab: error: wash p must be in [0, 1], got 2.0"),
        (["trainer.epoch=3"], "wab: error: unknown key trainer.epoch (did you mean 'trainer.epochs'?)"),
        (["+method.alpah=0.9", "method=papa"], "wab: error: unknown key method.alpah (did you mean 'method.alpha'?)"),
        (["data=cifar10", "data.root=/nonexistent"], "wab: error: dataset 'cifar10' not found"),
        (["method=soups", "data.heldout_fraction=0"], "wab: error: soups needs a held-out split"),
        (["trainer.batch_size=0"], "wab: error: trainer.batch_size=0 must be an integer >= 1"),
        (["trainer.batch_size=-5"], "wab: error: trainer.batch_size=-5 must be an integer >= 1"),
        (["optim.lr=-1"], "wab: error: optim.lr=-1 must be a number > 0"),
        (["trainer.eval_every=-1"], "wab: error: trainer.eval_every=-1 must be an integer >= 0"),
        (["method=wash", "population.size=1"], "wab: error: population.size=1: wash needs at least 2 members"),
    ],
)
def test_a_bad_value_is_one_line_and_leaves_no_run_behind(tmp_path, args, message):
    env = {**os.environ, "WAB_DATA": str(tmp_path / "no-data"), "HOME": str(tmp_path)}
    p = subprocess.run([*WAB, "train", *args, f"out_dir={tmp_path / 'runs'}"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=env)  # fmt: skip
    assert p.returncode == 2 and p.stderr.startswith(message), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()  # no failed run left behind


@pytest.mark.slow
def test_an_unusable_output_directory_is_one_line_for_train_report_and_sweep(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("not a directory")
    cases = [
        (["train", "data=digits", f"out_dir={afile}"], f"wab: error: out_dir={afile}: {afile} is a file, not a"),
        (["train", "data=digits", "out_dir=/proc/wab-runs"], "wab: error: out_dir=/proc/wab-runs is not writable"),
        (["report", str(Path(__file__).parent / "data" / "golden"), "--out", str(afile / "report")],
         f"wab: error: --out={afile / 'report'}: {afile} is a file, not a directory"),
    ]  # fmt: skip
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nout_dir: {afile}/sweep\nvariants:\n  - method: [independent]\n")
    cases.append(
        (["sweep", str(sweep), "--cluster", "debug"], f"wab: error: {sweep}: out_dir={afile}/sweep: {afile} is a")
    )
    for args, message in cases:
        p = _run(args, tmp_path)
        assert p.returncode == 2 and p.stderr.startswith(message), (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a-file", "s.yaml"]  # nothing created


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["method=wash,papx"], "wab: error: unknown method 'papx' (did you mean 'papa'?)"),
        (["method=papa", "+method.alpah=0.9", "seed=0,1"], "wab: error: unknown key method.alpah (did you mean"),
        (["trainer.epoch=1,2"], "wab: error: unknown key trainer.epoch (did you mean 'trainer.epochs'?)"),
    ],
)
def test_a_multirun_with_a_bad_key_or_method_is_one_line(tmp_path, args, message):
    p = _run(["train", "-m", *args, f"out_dir={tmp_path / 'multi'}"], tmp_path)
    assert p.returncode == 2 and p.stderr.startswith(message), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "multi").exists()


def test_compare_says_which_runs_differ(tmp_path):
    import shutil

    golden = Path(__file__).parent / "data" / "golden"
    shutil.copytree(golden, tmp_path / "a")
    shutil.copytree(golden, tmp_path / "b")
    p = _run(["compare", str(tmp_path / "a"), str(tmp_path / "b")], tmp_path)
    assert p.returncode == 0 and "every run in both directories has the same metrics" in p.stdout
    final = next((tmp_path / "b").glob("wash-*/final.json"))
    rec = json.loads(final.read_text())
    rec["metrics"]["ensemble_acc"] += 0.01
    final.write_text(json.dumps(rec))
    p = _run(["compare", str(tmp_path / "a"), str(tmp_path / "b")], tmp_path)
    assert p.returncode == 1 and f"{final.parent.name}: 1 metrics differ, e.g. ensemble_acc" in p.stdout
    assert "5 runs equal, 1 differ or are missing" in p.stdout


def test_verbose_shows_the_traceback(tmp_path):
    p = _run(["--verbose", "train", "method=wash", "method.p=2", f"out_dir={tmp_path / 'runs'}"], tmp_path)
    assert p.returncode == 2 and "Traceback" in p.stderr and "wab: error: wash p must be in [0, 1]" in p.stderr


@pytest.mark.slow
def test_user_errors_of_report_and_status_are_one_line(tmp_path):
    for args in (["report", str(tmp_path / "nope")], ["report", str(tmp_path)], ["status", str(tmp_path)],
                 ["sweep", "nope", "--cluster", "debug"]):  # fmt: skip
        p = _run(args, tmp_path)
        assert p.returncode == 2 and p.stderr.startswith("wab: error: ") and "Traceback" not in p.stderr, args
        assert len(p.stderr.strip().splitlines()) == 1


SLOW = ["data=digits", "model.width=8", "population.size=2", "trainer.epochs=6", "trainer.batch_size=16",
        "trainer.progress=false", "device=cpu"]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes_to_the_same_result(tmp_path):
    from wab.run.config import compose_config
    from wab.run.lifecycle import run, run_dir_for

    reference = run(compose_config([*SLOW, f"out_dir={tmp_path / 'reference'}"]))
    out = tmp_path / "runs"
    rd = run_dir_for(compose_config([*SLOW, f"out_dir={out}"]))
    cmd = [*WAB, "train", *SLOW, f"out_dir={out}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (rd.read_metrics() and rd.checkpoint.exists()):
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch's steps
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert re.search(rf"interrupted: stopped at step \d+ after saving a checkpoint in {rd.path}; run the same "
                     "command again to resume", err), err  # fmt: skip
    assert "Traceback" not in err and rd.checkpoint.exists() and not rd.final.exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in rd.log.read_text()
    final = json.loads(rd.final.read_text())
    assert final["metrics"] == reference["metrics"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"already done: {rd.path}")
    assert rd.log.read_text().count("starts (wab") == 2  # the third command trained nothing


def test_status_works_on_any_results_directory(tiny, tmp_path):
    from wab.run.lifecycle import run

    for seed in (0, 1):
        assert run(tiny(f"seed={seed}", "trainer.epochs=1"))["status"] == "done"
    p = _run(["status", str(tmp_path)], tmp_path)
    assert p.returncode == 0 and "2 done, 0 failed (2 runs)" in p.stdout


def test_wab_demo_compares_methods(tmp_path):
    p = _run(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--methods", "independent", "--threads", "1"],
             Path.cwd())  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "independent" in p.stdout and "ensemble" in p.stdout and "averaged+BN" in p.stdout
    assert "1 method, 1 CPU thread each\n" in p.stdout  # as asked: no note on free cores
    assert "1/2 independent: done in" in p.stdout and "2/2 + merges: done in" in p.stdout  # a counter
    assert len(list((tmp_path / "demo").glob("independent-*/done"))) == 1
    (row,) = [line.split() for line in p.stdout.splitlines() if line.split()[:1] == ["independent"]][-1:]
    individual, ensemble = float(row[1]), float(row[2])
    assert 1 < individual <= 100 and 1 < ensemble <= 100 and "(accuracies in %)" in p.stdout  # as the report


@pytest.mark.slow
def test_the_demo_runs_every_registered_method(tmp_path):
    """The demo's default is the registry: every method, a new one included, runs and gets a row."""
    from wab.method import available_methods

    p = _run(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"], Path.cwd())
    assert p.returncode == 0, p.stderr[-3000:]
    for name in available_methods():
        assert len(list((tmp_path / "demo").glob(f"{name}-*/done"))) == 1, name
        assert any(line.split()[:1] == [name] for line in p.stdout.splitlines()), name
    assert "  wash and wash_opt: " in p.stdout  # a note WASH+Opt shares with WASH is said once


@pytest.mark.slow
def test_wab_train_multirun_with_the_basic_launcher(tmp_path):
    out = tmp_path / "multi"
    p = _run(
        ["train", "-m", "seed=0,1", "data=digits", "population.size=2", "model.width=4", "trainer.epochs=1",
         "trainer.batch_size=256", "trainer.progress=false", "device=cpu", f"out_dir={out}"],
        tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert len(list(out.glob("independent-*/done"))) == 2


@pytest.mark.slow
def test_a_multirun_with_a_failing_run_exits_non_zero(tmp_path):
    from .test_sweep import corrupt_cifar10

    root = corrupt_cifar10(tmp_path / "corrupt")
    out = tmp_path / "multi"
    p = _run(["train", "-m", "data=digits,cifar10", f"data.root={root}", "population.size=2", "model.width=4",
              "trainer.epochs=1", "trainer.batch_size=256", "trainer.progress=false", "device=cpu",
              f"out_dir={out}"], tmp_path)  # fmt: skip
    assert p.returncode == 1 and "1 run(s) failed: independent-" in p.stderr
    assert len(list(out.glob("independent-*/done"))) == 1


def test_train_help_lists_the_groups_and_every_method(tmp_path):
    from wab.method import available_methods

    p = _run(["train", "--help"], tmp_path)
    assert p.returncode == 0 and "usage: wab train" in p.stdout and "Exception" not in p.stderr
    assert all(name in p.stdout for name in available_methods())


def test_a_negative_seed_is_named(tmp_path):
    p = _run(["train", "data=digits", "seed=-1", f"out_dir={tmp_path}"], tmp_path)
    assert p.returncode == 2 and "wab: error: seed=-1 must be an integer >= 0" in p.stderr


def test_the_slurm_script_without_a_command_prints_its_usage_and_changes_nothing():
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "WAB_SLURM_DIR": "/nonexistent/wab-slurm"})  # fmt: skip
    assert p.returncode == 2 and "scripts/slurm_cluster.sh install" in p.stderr and p.stdout == ""


def _repo(tmp_path, monkeypatch):
    """A git checkout with one method file, as the checkout provenance reads, in a fresh process."""
    from wab.run import provenance as prov

    repo = tmp_path / "repo"
    (repo / "methods").mkdir(parents=True)
    (repo / "methods" / "a.py").write_text("")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(prov, "_REPO", repo)
    monkeypatch.setattr(prov, "_FIRST", None)
    return prov, repo, git


def test_a_new_untracked_method_file_makes_the_checkout_dirty(tmp_path, monkeypatch):
    """Provenance counts files git does not track in the code folders (a new method), not run
    outputs, not even a committed study's manifest that its resumed sweep rewrites."""
    prov, repo, git = _repo(tmp_path, monkeypatch)
    (repo / "results").mkdir()
    (repo / "results" / "manifest.json").write_text("{}")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "a study"], check=True)
    (repo / "results" / "manifest.json").write_text('{"relaunched": true}')
    (repo / "results" / "run.json").write_text("{}")
    assert prov.provenance()["git_dirty"] is False  # run outputs do not count
    (repo / "methods" / "a.py").write_text("# changed")
    assert prov.provenance()["git_dirty"] is True
    subprocess.run([*git, "checkout", "-q", "methods/a.py"], check=True)
    monkeypatch.setattr(prov, "_FIRST", None)
    (repo / "methods" / "halfmean.py").write_text("# a new method")
    assert prov.provenance()["git_dirty"] is True


def test_a_worker_whose_checkout_moves_on_records_the_new_commit_and_dirty(tmp_path, monkeypatch):
    """A long-lived worker (the local pool's) reads the commit at each run, not once: its runs
    after a new commit name that commit, and are dirty, as the modules it imported first are the
    old commit's; a fresh process at the new commit is clean."""
    prov, repo, git = _repo(tmp_path, monkeypatch)
    first = prov.provenance()
    assert first["git_dirty"] is False
    (repo / "methods" / "a.py").write_text("# changed")
    subprocess.run([*git, "commit", "-qam", "y"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    later = prov.provenance()
    assert later["git_commit"] == head != first["git_commit"]
    assert later["git_dirty"] is True
    monkeypatch.setattr(prov, "_FIRST", None)  # a process started at the new commit
    assert prov.provenance() == {**later, "git_dirty": False}


@pytest.mark.slow
def test_already_done_says_when_the_method_s_code_changed_since(tmp_path):
    module = tmp_path / "mymethods.py"
    module.write_text("from wab.method import Method\n\nclass Nudge(Method):\n    '''Does nothing.'''\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    args = [*WAB, "train", "method=mymethods:Nudge", "data=digits", "model.width=4", "population.size=2",
            "trainer.epochs=1", "trainer.batch_size=256", "trainer.progress=false", "device=cpu", f"out_dir={tmp_path}"]
    first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    same = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "already done" in same.stdout and "changed since" not in same.stderr
    module.write_text(module.read_text() + "\n# edited\n")
    edited = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "already done" in edited.stdout and "mymethods changed since this run was trained" in edited.stderr
