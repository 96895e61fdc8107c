"""Sweeps through a real SLURM cluster (scripts/slurm_cluster.sh start; SLURM_CONF exported).

They skip with the reason where no cluster answers, except when WAB_REQUIRE_SLURM=1 (CI), where
a missing cluster is a failure.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from wab.run import run
from wab.sweep import launch, load_sweep, plan, sweep_status


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch not found (scripts/slurm_cluster.sh install)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0 or not any(s in out.stdout for s in ("idle", "mixed", "allocated")):
        conf = os.environ.get("SLURM_CONF")
        return f"no SLURM node up (scripts/slurm_cluster.sh start; SLURM_CONF={conf}): {out.stderr.strip()}"
    return None


PROBLEM = _cluster_problem()
if PROBLEM and os.environ.get("WAB_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"WAB_REQUIRE_SLURM=1 but {PROBLEM}")
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]

TINY = ["data=digits", "model=cnn", "model.width=4", "population.size=2", "trainer.epochs=1",
        "trainer.batch_size=256", "device=cpu"]  # fmt: skip
RESOURCES = {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 15, "array_parallelism": 2}


def sweep(tmp_path, name, grid, base=TINY):
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, "out_dir": str(tmp_path / name), "base": base, "grid": grid, "resources": RESOURCES}
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def wait(spec, until, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = sweep_status(spec.out_dir)
        if until(rows):
            return rows
        time.sleep(2)
    logs = "\n".join(p.read_text()[-2000:] for p in spec.out_dir.glob(".submitit/*/*_log.err"))
    raise AssertionError(f"timed out: {[r['state'] for r in rows]}\n{logs}")


def finished(rows):
    return all(r["state"] in ("done", "diverged", "failed") for r in rows)


def test_a_2x2_grid_finishes_and_a_second_launch_submits_nothing(tmp_path):
    spec = sweep(tmp_path, "grid", {"seed": [0, 1], "method": ["independent", "wash"]})
    t0 = time.time()
    manifest = launch(spec, "slurm")
    assert time.time() - t0 < 60  # returns after submission
    job_ids = set(manifest["launches"][-1]["jobs"].values())
    assert len(job_ids) == 4 and len({j.split("_")[0] for j in job_ids}) == 1  # one job array
    wait(spec, finished, 600)
    cmd = [sys.executable, "-m", "wab.cli", "status", str(spec.out_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "4 done, 0 diverged, 0 failed, 0 incomplete, 0 not launched (4 runs)" in out
    again = launch(spec, "slurm")
    assert again["launches"][-1]["submitted"] == 0


def test_a_crashing_config_does_not_stop_the_others(tmp_path):
    spec = sweep(tmp_path, "crash", {"seed": [0], "model.name": ["cnn", "nope", "mlp"]})
    launch(spec, "slurm")
    rows = wait(spec, finished, 600)
    assert sorted(r["state"] for r in rows) == ["done", "done", "failed"]
    (bad,) = [r for r in rows if r["state"] == "failed"]
    final = json.loads((spec.out_dir / bad["run_id"] / "final.json").read_text())
    assert "unknown model 'nope'" in final["error"] and "Traceback" in final["traceback"]
    again = launch(spec, "slurm")
    assert set(again["launches"][-1]["jobs"]) == {bad["run_id"]}  # only the failed run goes again


def test_a_preempted_job_is_requeued_and_resumes_to_the_same_result(tmp_path):
    base = [*TINY[:-3], "trainer.epochs=6", "trainer.batch_size=16", "model.width=8", "method=wash", "device=cpu"]
    spec = sweep(tmp_path, "preempt", {"seed": [0]}, base=base)
    (planned,) = plan(spec)
    reference = run({**planned.config, "out_dir": str(tmp_path / "reference")})
    assert reference["status"] == "done"
    manifest = launch(spec, "slurm")
    (job_id,) = manifest["launches"][-1]["jobs"].values()
    metrics = planned.dir.metrics
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.5)
    assert metrics.exists(), "the job never reached its first evaluation"
    # submitit's preemption signal: the run stops at a step boundary, checkpoints, and is requeued
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    deadline = time.time() + 120
    while time.time() < deadline and "stop requested" not in planned.dir.log.read_text():
        time.sleep(0.5)
    assert "stop requested: checkpoint saved" in planned.dir.log.read_text()
    rows = wait(spec, finished, 600)  # SLURM holds a requeued job about 2 minutes
    assert rows[0]["state"] == "done"
    assert "resumed from" in planned.dir.log.read_text()
    final = json.loads(planned.dir.final.read_text())
    assert final["metrics"] == reference["metrics"] and final["steps"] == reference["steps"]


def test_the_hydra_launcher_path_gives_the_same_run_directories(tmp_path):
    out = tmp_path / "hydra"
    cmd = [sys.executable, "-m", "wab.cli", "train", "-m", "method=independent,wash", "seed=0,1",
           "hydra/launcher=slurm", *TINY, "trainer.progress=false", f"out_dir={out}"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    spec = sweep(tmp_path, "same", {"method": ["wash", "independent"], "seed": [1, 0]})  # another order
    assert {d.name for d in out.iterdir() if (d / "done").exists()} == {r.run_id for r in plan(spec)}
