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

from wab.launch.status import SlurmJob, directory_status, is_launch_job, slurm_jobs
from wab.launch.sweep import cancel, launch, load_sweep, plan
from wab.run.lifecycle import run
from wab.run.records import RunDir


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
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]

TINY = ["data=digits", "model=cnn", "model.width=4", "population.size=2", "trainer.epochs=1",
        "trainer.batch_size=256", "device=cpu"]  # fmt: skip
RESOURCES = {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 15, "array_parallelism": 2}


def sweep(tmp_path, name, grid, base=TINY, **resources):
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, "out_dir": str(tmp_path / name), "base": base, "grid": grid,
            "resources": {**RESOURCES, **resources}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def wait(spec, until, timeout, every=1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = directory_status(spec.out_dir)
        if until(rows):
            return rows
        time.sleep(every)
    logs = "\n".join(p.read_text()[-2000:] for p in spec.out_dir.glob(".submitit/*/*_log.err"))
    raise AssertionError(f"timed out: {[(r.state, r.detail) for r in rows]}\n{logs}")


def finished(rows):
    return all(r.state in ("done", "diverged", "failed") for r in rows)


def wait_for_an_idle_cluster(timeout=180):
    """Until no job is queued, running or completing: a test that needs every slot at once must not
    start beside the last test's jobs, whose CPUs SLURM frees only at its next scheduling pass."""
    deadline = time.time() + timeout
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, (
            "the cluster stayed busy: " + subprocess.run(["squeue"], capture_output=True, text=True).stdout
        )
        time.sleep(1)


def test_a_2x2_grid_finishes_and_a_second_launch_submits_nothing(tmp_path):
    spec = sweep(tmp_path, "grid", {"seed": [0, 1], "method": ["independent", "wash"]})
    t0 = time.time()
    result = launch(spec, "slurm")
    assert time.time() - t0 < 60  # returns after submission
    job_ids = set(result.manifest["launches"][-1]["jobs"].values())
    assert len(job_ids) == 4 and len({j.split("_")[0] for j in job_ids}) == 1  # one job array
    wait(spec, finished, 600)
    cmd = [sys.executable, "-m", "wab.cli", "status", str(spec.out_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "4 done, 0 failed (4 runs)" in out
    again = launch(spec, "slurm")
    assert again.submitted == []


def test_a_crashing_config_does_not_stop_the_others(tmp_path):
    from .test_sweep import corrupt_cifar10

    root = corrupt_cifar10(tmp_path / "corrupt")
    spec = sweep(tmp_path, "crash", {"seed": [0], "data": ["digits", "cifar10"], "data.root": [str(root)]},
                 base=[t for t in TINY if not t.startswith("data=")])  # fmt: skip
    launch(spec, "slurm")
    rows = wait(spec, finished, 600)
    assert sorted(r.state for r in rows) == ["done", "failed"]
    (bad,) = [r for r in rows if r.state == "failed"]
    final = json.loads((spec.out_dir / bad.run_id / "final.json").read_text())
    assert "md5" in final["error"] and "Traceback" in final["traceback"]
    again = launch(spec, "slurm")
    assert again.submitted == [bad.run_id]  # only the failed run goes again


def test_a_relaunch_while_a_run_trains_or_waits_submits_neither_again(tmp_path):
    base = [*TINY[:-3], "trainer.epochs=8", "trainer.batch_size=16", "model.width=8", "device=cpu"]
    spec = sweep(tmp_path, "relaunch", {"seed": [0, 1]}, base=base, array_parallelism=1)
    first = launch(spec, "slurm")
    assert len(first.submitted) == 2
    rows = wait(spec, lambda rows: [r.state for r in rows] == ["running", "queued"], 300, every=0.2)
    assert "pid" in rows[0].detail and "pending" in rows[1].detail  # the lease holder; the scheduler's word
    again = launch(spec, "slurm")  # the same command again, while one run trains and one waits
    assert again.submitted == [] and again.manifest["launches"][-1]["left_alone"] == {"running": 1, "queued": 1}
    assert "1 running and 1 queued left alone" in again.summary()
    rows = wait(spec, finished, 600)
    assert [r.state for r in rows] == ["done", "done"]
    for r in rows:  # each run trained by one process, once
        rd = spec.out_dir / r.run_id
        assert [json.loads(x)["epoch"] for x in (rd / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
        assert (rd / "train.log").read_text().count("starts (wab") == 1


def test_a_preempted_job_is_requeued_and_resumes_to_the_same_result(tmp_path):
    base = [*TINY[:-3], "trainer.epochs=6", "trainer.batch_size=16", "model.width=8", "method=wash", "device=cpu"]
    spec = sweep(tmp_path, "preempt", {"seed": [0]}, base=base)
    (planned,) = plan(spec)
    reference = run({**planned.config, "out_dir": str(tmp_path / "reference")})  # the job's config: its threads
    assert reference["status"] == "done"
    result = launch(spec, "slurm")
    (job_id,) = result.manifest["launches"][-1]["jobs"].values()
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
    assert rows[0].state == "done"
    assert "resumed from" in planned.dir.log.read_text()
    final = json.loads(planned.dir.final.read_text())
    assert final["metrics"] == reference["metrics"] and final["steps"] == reference["steps"]


def test_the_hydra_launcher_path_gives_the_same_run_directories(tmp_path):
    out = tmp_path / "hydra"
    cmd = [sys.executable, "-m", "wab.cli", "train", "-m", "method=independent,wash", "seed=0,1",
           "hydra/launcher=slurm", *TINY, "trainer.progress=false", f"out_dir={out}"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Bypassing sacct error" not in p.stdout + p.stderr  # submitit's polling, when sacct has no database
    spec = sweep(tmp_path, "same", {"method": ["wash", "independent"], "seed": [1, 0]})  # another order
    assert {d.name for d in out.iterdir() if (d / "done").exists()} == {r.run_id for r in plan(spec)}


def test_the_hydra_path_names_its_jobs_and_a_term_is_one_line(tmp_path):
    """wab status names a hydra job and links its log; scancel (TERM) checkpoints and the job's
    log ends in wab train's one line, not a traceback."""
    out = tmp_path / "hydra"
    long = [a.replace("trainer.epochs=1", "trainer.epochs=400") for a in TINY]
    cmd = [sys.executable, "-m", "wab.cli", "train", "-m", "seed=0", "hydra/launcher=slurm", *long,
           "trainer.progress=false", f"out_dir={out}"]  # fmt: skip
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("*/metrics.jsonl")):
            time.sleep(1)
        (row,) = [r for r in directory_status(out) if r.state == "running"]
        assert row.job in (slurm_jobs() or {}) and "log " in row.detail
        subprocess.run(["scancel", row.job], check=True)
        launcher.wait(timeout=300)
    finally:
        launcher.kill()
    log = (row.path / "job.err").read_text()
    assert "interrupted: stopped at step" in log and "Traceback" not in log, log[-2000:]
    assert RunDir(row.path).checkpoint.exists()


def test_no_reachable_controller_is_one_line_and_nothing_is_submitted(tmp_path):
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(
        yaml.safe_dump({"name": "s", "out_dir": str(tmp_path / "s"), "base": TINY, "grid": {"seed": [0]}})
    )
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "no-such-slurm.conf")}
    p = subprocess.run([sys.executable, "-m", "wab.cli", "sweep", str(spec_path), "--cluster", "slurm"],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert p.returncode == 2 and p.stderr.startswith("wab: error: no SLURM controller")
    assert "Traceback" not in p.stderr and not (tmp_path / "s").exists()


# ----------------------------------------------------------------------- a real shared cluster
SLOW = [*TINY[:-3], "trainer.epochs=6", "trainer.batch_size=16", "model.width=8", "device=cpu"]


def reference_run(tmp_path, planned, config=None):
    """The uninterrupted run (of ``config``, default the planned one's: the threads the jobs use)."""
    return run({**(config or planned.config), "out_dir": str(tmp_path / "reference" / planned.run_id)})


def job_of(spec, run_id):
    return json.loads((spec.out_dir / "manifest.json").read_text())["launches"][-1]["jobs"][run_id]


def wait_for_lines(rd, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and len(rd.read_metrics()) < n:
        time.sleep(0.1)
    assert len(rd.read_metrics()) >= n, "the job never reached its evaluations"


def test_sigterm_checkpoints_at_a_step_boundary_and_a_damaged_sweep_still_finishes_identically(tmp_path):
    """scancel's TERM stops a run with a checkpoint; then a corrupt final.json (another run) and a
    truncated checkpoint (this run) neither block status, report nor relaunch, and both runs end
    as an untouched run does."""
    base = [o for o in SLOW if not o.startswith("trainer.epochs")]
    spec = sweep(tmp_path, "term", {"trainer.epochs": [1, 8]}, base=base)
    short, long = plan(spec)
    references = {p.run_id: reference_run(tmp_path, p) for p in (short, long)}
    launch(spec, "slurm")
    rd = long.dir
    wait_for_lines(rd, 2)
    wait(spec, lambda rows: rows[0].state == "done", 300, every=0.2)
    subprocess.run(["scancel", "--signal=TERM", job_of(spec, long.run_id)], check=True)
    rows = wait(spec, lambda rows: [r.state for r in rows] == ["done", "dead"], 300, every=0.5)
    log = rd.log.read_text()
    assert "stop requested: checkpoint saved at step" in log and "TERM received: checkpoint saved" in log
    assert (rd.path / "job.err").is_symlink() and "log " in rows[1].detail
    assert "Traceback" not in (rd.path / "job.err").read_text()  # stopped, not crashed: no Interrupted traceback
    assert "launch the sweep again with wab sweep to resume it" in log
    # damage: random bytes for the finished run's record, half of the stopped run's latest checkpoint
    short.dir.final.write_bytes(os.urandom(64))
    rd.checkpoint.write_bytes(rd.checkpoint.read_bytes()[: rd.checkpoint.stat().st_size // 2])
    states = {r.run_id: r.state for r in directory_status(spec.out_dir)}
    assert states == {short.run_id: "corrupt", long.run_id: "dead"}
    status = subprocess.run([sys.executable, "-m", "wab.cli", "status", str(spec.out_dir)], capture_output=True,
                            text=True)  # fmt: skip
    assert status.returncode == 0 and "1 corrupt" in status.stdout and "1 dead" in status.stdout
    report = subprocess.run([sys.executable, "-m", "wab.cli", "report", str(spec.out_dir)], capture_output=True,
                            text=True)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "skipped: unreadable final.json" in (spec.out_dir / "report" / "summary.md").read_text()
    again = launch(spec, "slurm")
    assert sorted(again.submitted) == sorted([short.run_id, long.run_id])
    wait(spec, finished, 600)
    for run_id in (short.run_id, long.run_id):
        final = json.loads((spec.out_dir / run_id / "final.json").read_text())
        assert final["metrics"] == references[run_id]["metrics"], run_id
        lines = RunDir(spec.out_dir / run_id).read_metrics()
        assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1)) and len(lines) in (1, 8)
    assert "is unreadable" in rd.log.read_text()  # it fell back to the previous checkpoint


def test_a_killed_job_shows_as_dead_and_a_relaunch_finishes_it(tmp_path):
    spec = sweep(tmp_path, "killed", {"seed": [0]}, base=SLOW)
    (planned,) = plan(spec)
    reference = reference_run(tmp_path, planned)
    launch(spec, "slurm")
    wait_for_lines(planned.dir, 2)
    subprocess.run(["scancel", "--signal=KILL", job_of(spec, planned.run_id)], check=True)
    (row,) = wait(spec, lambda rows: rows[0].state == "dead", 300, every=0.5)
    assert "last progress" in row.detail and row.job == job_of(spec, planned.run_id)
    again = launch(spec, "slurm")
    assert again.submitted == [planned.run_id]
    wait(spec, finished, 600)
    assert json.loads(planned.dir.final.read_text())["metrics"] == reference["metrics"]


def test_a_sweep_larger_than_max_array_size_goes_out_as_a_pool_that_keeps_every_slot_busy(tmp_path, monkeypatch):
    """More runs than one array may hold: one array of array_parallelism workers, each taking the
    next run no other holds, instead of arrays chained one after another (whose last runs leave
    slots idle while the next array waits). On a cluster whose MaxArraySize is large (the
    default of scripts/slurm_cluster.sh), wab is told it is 4."""
    from wab.launch import sweep

    limit = sweep.max_array_size()
    if not limit or limit > 8:
        limit = 4
        monkeypatch.setattr(sweep, "max_array_size", lambda: limit)
    spec = load_sweep("local_cluster")  # the README's example, as printed, into a temporary directory
    spec.out_dir = tmp_path / "local_cluster"
    spec.base = [*spec.base, "trainer.epochs=1", "population.size=2"]
    spec.resources = {**spec.resources, "array_parallelism": 2}
    wait_for_an_idle_cluster()  # both workers must start together for both to find runs left
    result = launch(spec, "slurm")
    la = result.manifest["launches"][-1]
    assert len(result.submitted) == 6 > limit and len(la["arrays"]) == 1 and len(la["workers"]) == 2
    rows = wait(spec, finished, 600)
    assert [r.state for r in rows] == ["done"] * 6
    workers = {os.readlink(r.path / "job.out").split("/")[-2] for r in rows}  # .submitit/<job>/ of who trained it
    assert workers == set(la["workers"])  # both slots worked
    cmd = [sys.executable, "-m", "wab.cli", "status", str(spec.out_dir)]
    assert "6 done, 0 failed (6 runs)" in subprocess.run(cmd, capture_output=True, text=True).stdout


def test_wab_cancel_stops_a_sweep(tmp_path):
    # long enough that the cancel lands while the first run trains (at 6 epochs it could end first)
    base = [*(o for o in SLOW if not o.startswith("trainer.epochs=")), "trainer.epochs=60"]
    spec = sweep(tmp_path, "cancel", {"seed": [0, 1]}, base=base, array_parallelism=1)
    launch(spec, "slurm")
    wait(spec, lambda rows: rows[0].state == "running", 300, every=0.2)
    p = subprocess.run([sys.executable, "-m", "wab.cli", "cancel", str(spec.out_dir)], capture_output=True, text=True)
    assert p.returncode == 0 and "cancelled: job array" in p.stdout
    rows = wait(spec, lambda rows: all(r.state == "dead" for r in rows), 300, every=0.5)
    assert [r.state for r in rows] == ["dead", "dead"]


def test_a_run_out_of_requeues_says_so_in_its_log(tmp_path):
    base = [*SLOW[:-1], "trainer.epochs=400", "device=cpu"]  # far longer than its time limit
    # SLURM may send the signal up to 60 s before it is due: with 2 minutes and 45 s it comes at
    # least 15 s into the job, once the run trains (with 1 minute it could come before the run started)
    spec = sweep(tmp_path, "budget", {"seed": [0]}, base=base, timeout_min=2, signal_delay_s=45, max_requeues=0)
    (planned,) = plan(spec)
    launch(spec, "slurm")
    (row,) = wait(spec, lambda rows: rows[0].state == "dead", 300, every=1.0)
    log = planned.dir.log.read_text()
    assert "stop requested: checkpoint saved at step" in log
    assert "the job gives up: Job not requeued because: timed-out too many times" in log
    assert "Launch the sweep again to continue" in log


def test_a_distributed_run_spans_two_slurm_tasks(tmp_path):
    from .test_distributed import _same

    base = [*TINY[:3], "population.size=4", "trainer.epochs=2", "trainer.batch_size=128", "method=wash",
            "method.p=0.1", "device=cpu", "population.backend=distributed"]  # fmt: skip
    spec = sweep(tmp_path, "dist", {"seed": [0]}, base=base, tasks_per_node=2)
    (planned,) = plan(spec)
    local = {**planned.config, "population": {**planned.config["population"], "backend": "local"}}
    reference = reference_run(tmp_path, planned, local)
    result = launch(spec, "slurm")
    assert len(result.submitted) == 1
    (row,) = wait(spec, finished, 600)
    final = json.loads(planned.dir.final.read_text())
    assert row.state == "done", final.get("error")
    assert final["comm"]["measured"]["processes"] == [2]
    final["comm"].pop("measured")
    _same(final["metrics"], reference["metrics"])
    _same(final["comm"], reference["comm"])


def _sleeping_job(name: str) -> str:
    """Another job of this user (sleeping 5 minutes), its id."""
    out = subprocess.run(
        ["sbatch", "--parsable", "-J", name, "--output=/dev/null", "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # no slurm-<id>.out in the checkout

    return out.strip().split(";")[0]


def _give_the_run_job(spec, job: str):
    """Make the manifest say the sweep's one run was sent to ``job``; returns the run's directory."""
    manifest = json.loads((spec.out_dir / "manifest.json").read_text())
    (entry,) = manifest["runs"]
    entry["job_id"] = manifest["launches"][-1]["jobs"][entry["run_id"]] = job
    (spec.out_dir / "manifest.json").write_text(json.dumps(manifest))
    return spec.out_dir / entry["run_id"]


def test_a_job_id_now_another_jobs_is_never_shown_waited_on_or_cancelled(tmp_path):
    """After a cluster restart ids start again: the sweep's old id may name another job. Status,
    relaunch and cancel verify a job is the sweep's (name, working directory, submit time)."""
    spec = sweep(tmp_path, "reuse", {"seed": [0]})
    result = launch(spec, "slurm")
    la = result.manifest["launches"][-1]
    alive = {j: info for j, info in (slurm_jobs() or {}).items() if j in la["jobs"].values()}
    assert alive and all(is_launch_job(info, la) for info in alive.values())  # its own jobs are recognised
    wait(spec, finished, 600)
    other = _sleeping_job("not-wab")
    try:
        run_dir = _give_the_run_job(spec, other)
        shutil.rmtree(run_dir)  # the run is lost: it is dead, not queued behind `other`
        (row,) = directory_status(spec.out_dir)
        assert row.state == "dead" and "left the queue" in row.detail, (row.state, row.detail)
        assert cancel(spec.out_dir) == []
        again = launch(spec, "slurm")
        assert again.manifest["launches"][-1]["waited_for"] == []  # not chained after the other job
        wait(spec, finished, 600)
        assert other in (slurm_jobs() or {})  # never cancelled
    finally:
        subprocess.run(["scancel", other], check=False)


def test_a_job_that_runs_on_after_its_run_finished_is_flagged_and_cancel_stale_ends_it(tmp_path, monkeypatch):
    """A killed slurmstepd leaves the job RUNNING while its run is done (stood in for here by a
    job of the sweep's name that sleeps): status flags it, ``wab cancel --stale`` ends it alone."""
    monkeypatch.setattr("wab.launch.status.STALE_AFTER_S", 0.0)  # no minute's grace for an exiting job here,
    monkeypatch.setenv("WAB_STALE_AFTER_S", "0")  # nor in the wab cancel below
    spec = sweep(tmp_path, "stale", {"seed": [0]})
    launch(spec, "slurm")
    wait(spec, finished, 600)
    stuck = _sleeping_job("wab-stale")
    try:
        _give_the_run_job(spec, stuck)
        (row,) = wait(spec, lambda rows: rows[0].stale, 120)
        assert row.state == "done" and "wab cancel --stale" in row.detail
        out = subprocess.run([sys.executable, "-m", "wab.cli", "cancel", "--stale", str(spec.out_dir)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"stale job {stuck}" in out
        deadline = time.time() + 60
        while stuck in (slurm_jobs() or {}) and time.time() < deadline:
            time.sleep(1)
        assert stuck not in (slurm_jobs() or {})
    finally:
        subprocess.run(["scancel", stuck], check=False)


def test_log_links_name_the_job_that_trains_even_after_a_lost_manifest_or_an_early_kill(tmp_path):
    """A duplicate job (the manifest was lost, the sweep launched again) finds the run trained by
    another and leaves its log links alone; a job killed before it could link its log still has
    its log named in status."""
    long = [a.replace("trainer.epochs=1", "trainer.epochs=400") for a in TINY]
    spec = sweep(tmp_path, "links", {"seed": [0]}, base=long)
    first = launch(spec, "slurm").manifest["launches"][-1]["jobs"]
    (row,) = wait(spec, lambda rows: rows[0].state == "running" and (rows[0].path / "job.err").is_symlink(), 300)
    target = os.readlink(row.path / "job.err")
    (spec.out_dir / "manifest.json").unlink()
    second = launch(spec, "slurm").manifest["launches"][-1]["jobs"]
    assert second and set(second.values()) != set(first.values())
    deadline = time.time() + 300
    while time.time() < deadline and set(second.values()) & set(slurm_jobs() or {}):
        time.sleep(1)  # the duplicate finds the run leased and returns
    assert os.readlink(row.path / "job.err") == target
    subprocess.run(["scancel", *first.values()], check=True)
    # a job killed (KILL, no handler runs) as soon as it starts: its log is still named
    spec2 = sweep(tmp_path, "early", {"seed": [1]}, base=long)
    (job,) = launch(spec2, "slurm").manifest["launches"][-1]["jobs"].values()
    deadline = time.time() + 120
    while time.time() < deadline and (slurm_jobs() or {}).get(job, SlurmJob("")).state != "RUNNING":
        time.sleep(0.2)
    subprocess.run(["scancel", "-s", "KILL", job], check=True)
    (row,) = wait(spec2, lambda rows: rows[0].state in ("dead", "not launched", "incomplete"), 120)
    assert f".submitit/{job}/{job}_0_log.err" in row.detail, (row.state, row.detail)
