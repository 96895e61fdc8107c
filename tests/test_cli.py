import json
import subprocess
import sys
from pathlib import Path

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
    p = _run(["train", "method.name=nope", "trainer.progress=false", f"out_dir={tmp_path}"], tmp_path)
    assert p.returncode == 1
    assert "unknown method 'nope'; known methods:" in p.stderr and "independent" in p.stderr


def test_wab_demo_compares_methods(tmp_path):
    p = _run(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--methods", "independent"], Path.cwd())
    assert p.returncode == 0, p.stderr
    assert "independent" in p.stdout and "ensemble" in p.stdout and "averaged+BN" in p.stdout
    assert len(list((tmp_path / "demo").glob("independent-*/done"))) == 1


def test_wab_train_multirun_with_the_basic_launcher(tmp_path):
    out = tmp_path / "multi"
    p = _run(
        ["train", "-m", "seed=0,1", "data=digits", "population.size=2", "model.width=4", "trainer.epochs=1",
         "trainer.batch_size=256", "trainer.progress=false", "device=cpu", f"out_dir={out}"],
        tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert len(list(out.glob("independent-*/done"))) == 2
