"""Sweep expansion, validation, launching and status without a scheduler (debug and local executors)."""

import json
import os
import re
import shutil
import time
from datetime import datetime

import pytest
import yaml

from wab.errors import UserError
from wab.launch.status import (
    STALE_AFTER_S,
    SlurmJob,
    directory_status,
    format_status,
    is_launch_job,
    launch_job_states,
    run_status,
)
from wab.launch.sweep import InvalidSweep, expand, launch, load_sweep, plan
from wab.run.config import compose_config
from wab.run.lifecycle import run_dir_for
from wab.run.records import RunDir, config_hash

TINY = ["model=cnn", "model.width=4", "population.size=2", "trainer.epochs=1", "trainer.batch_size=256", "device=cpu"]


def write_sweep(tmp_path, grid, variants=None, name="s", base=("data=digits", *TINY), resources=None):
    spec = {"name": name, "out_dir": str(tmp_path / name), "base": list(base), "grid": grid}
    if variants:
        spec["variants"] = variants
    if resources:
        spec["resources"] = resources
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def corrupt_cifar10(root):
    """A data root whose CIFAR-10 files are all there but hold garbage: a run passes every check
    before it starts (the files exist) and fails when it reads them (a crash at run time)."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        (d / name).write_bytes(b"\0" * 3073)
    return root


def test_expansion_is_deterministic_and_adding_a_value_keeps_existing_ids(tmp_path):
    a = load_sweep(
        write_sweep(tmp_path, {"seed": [0, 1]}, [{"method": ["independent"]}, {"method": ["wash"], "method.p": [0.01]}])
    )
    assert expand(a) == expand(a)
    ids = [r.run_id for r in plan(a)]
    assert ids == [r.run_id for r in plan(a)] and len(ids) == 4 == len(set(ids))
    # a job has no terminal: progress is not switched off, so its train.log gets progress lines
    assert all(r.config["trainer"]["progress"] is True for r in plan(a))
    b = load_sweep(
        write_sweep(
            tmp_path, {"seed": [0, 1, 2]}, [{"method": ["independent"]}, {"method": ["wash"], "method.p": [0.01, 0.1]}]
        )
    )
    ids_b = [r.run_id for r in plan(b)]
    assert set(ids) < set(ids_b) and len(ids_b) == 3 + 6
    assert expand(a)[0] == ["data=digits", *TINY, "seed=0", "method=independent"]


def test_run_id_ignores_settings_that_leave_results_unchanged():
    base = compose_config([*TINY, "method=independent"])
    same = compose_config([*TINY, "method=independent", "optim.fused=true", "trainer.progress=false",
                           "trainer.save_models=false", "population.timeout_min=9", "trainer.threads=1"])  # fmt: skip
    assert config_hash(base) == config_hash(same)
    # another kernel, another device or another split of a reduction round differently
    for changed in ("optim.lr=0.1", "optim.fused=false", "device=cuda", "trainer.threads=2"):
        assert config_hash(base) != config_hash(compose_config([*TINY, "method=independent", changed])), changed


def test_bad_sweep_configs_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrids: {seed: [0]}\n")
    with pytest.raises(UserError, match=r"unknown sweep key\(s\) \['grids'\]"):
        load_sweep(bad)
    bad.write_text("name: x\nresources: {gpu_per_node: 1}\n")
    with pytest.raises(UserError, match=r"unknown resource\(s\) \['gpu_per_node'\] \(did you mean 'gpus_per_node'\?\)"):
        load_sweep(bad)
    bad.write_text("name: [x\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_sweep(bad)
    with pytest.raises(UserError, match="sweep config 'nope' not found"):
        load_sweep("nope")
    with pytest.raises(UserError, match="--cluster must be one of"):
        launch(load_sweep(write_sweep(tmp_path, {"seed": [0]})), "auto")


def test_a_sweep_with_bad_points_is_refused_whole_and_nothing_is_created(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path,
            {"seed": [0, 1]},
            [
                {"method": ["independent"]},
                {"method": ["wash"], "method.p": [0.01, 2.0]},
                {"method": ["wahs"]},
                {"method": ["papa"], "+method.alpah": [0.9]},
            ],
        )  # fmt: skip
    )
    with pytest.raises(InvalidSweep) as e:
        launch(spec, "debug")
    text = str(e.value)
    assert "6 of 10 runs are invalid; nothing was submitted" in text
    assert text.count("wash p must be in [0, 1], got 2.0") == 2  # every bad point is listed
    assert "unknown method 'wahs' (did you mean 'wash'?)" in text
    assert "unknown key method.alpah (did you mean 'method.alpha'?)" in text
    assert not spec.out_dir.exists()  # no run directory, no manifest


def test_debug_sweep_isolates_a_crash_and_a_relaunch_submits_only_what_is_missing(tmp_path):
    root = corrupt_cifar10(tmp_path / "corrupt")
    spec = load_sweep(
        write_sweep(
            tmp_path,
            {"seed": [0, 1]},
            [{"data": ["digits"]}, {"data": ["cifar10"], "data.root": [str(root)]}],
            base=TINY,
        )  # fmt: skip
    )
    result = launch(spec, "debug")
    assert len(result.submitted) == 4
    rows = directory_status(spec.out_dir)
    assert sorted(r.state for r in rows) == ["done", "done", "failed", "failed"]
    failed = [r for r in rows if r.state == "failed"]
    for r in failed:  # the error is in the status, its traceback in the run's own directory
        final = json.loads((spec.out_dir / r.run_id / "final.json").read_text())
        assert r.detail.startswith("ValueError: ") and "md5" in final["error"] and "Traceback" in final["traceback"]
    again = launch(spec, "debug")
    assert sorted(again.submitted) == sorted(r.run_id for r in failed)  # only the failed ones
    assert "2 done, 2 failed (4 runs)" in format_status(directory_status(spec.out_dir))


def test_status_reads_the_files_and_the_leases(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"seed": [0, 1, 2, 3]}))
    runs = plan(spec)
    launch(spec, "debug")
    runs[1].dir.done.unlink()  # as if killed before finishing
    runs[1].dir.final.unlink()
    shutil.rmtree(runs[2].dir.path)
    runs[3].dir.final.write_bytes(b"\xff\xfe garbage")
    states = [r.state for r in directory_status(spec.out_dir)]
    # the debug launch's jobs ran in this process: a run it left unfinished is dead, one it never made too
    assert states == ["done", "dead", "dead", "corrupt"]
    assert "unreadable final.json (UnicodeDecodeError" in directory_status(spec.out_dir)[3].detail
    # any results directory, not only a sweep's
    (spec.out_dir / "manifest.json").unlink()
    by_id = {r.run_id: r.state for r in directory_status(spec.out_dir)}
    assert by_id == {runs[0].run_id: "done", runs[1].run_id: "incomplete", runs[3].run_id: "corrupt"}


def _intervals(out_dir):
    """(start, end) of each run, from its train.log."""
    stamp = re.compile(r"^(\S+ \S+) INFO run \S+ (starts|ended)")
    spans = []
    for log in out_dir.glob("*/train.log"):
        times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                 for m in map(stamp.match, log.read_text().splitlines()) if m]  # fmt: skip
        spans.append((times[0], times[-1]))
    return spans


@pytest.mark.slow
def test_a_local_sweep_runs_at_most_array_parallelism_runs_at_once(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path,
            {"seed": [0, 1, 2, 3, 4]},
            base=("data=digits", *TINY[:-3], "trainer.epochs=3", "trainer.batch_size=32", "device=cpu"),
            resources={"array_parallelism": 2},
        )  # fmt: skip
    )
    t0 = time.time()
    result = launch(spec, "local")
    assert time.time() - t0 < 30 and len(result.submitted) == 5
    assert len(result.manifest["launches"][-1]["workers"]) == 2  # a pool of array_parallelism workers
    deadline = time.time() + 300
    while time.time() < deadline and any(r.state != "done" for r in directory_status(spec.out_dir)):
        time.sleep(1)
    rows = directory_status(spec.out_dir)
    assert [r.state for r in rows] == ["done"] * 5
    workers = result.manifest["launches"][-1]["workers"]
    assert all(r.job in workers for r in rows), [r.job for r in rows]  # the worker that trained it, not both pids
    spans = _intervals(spec.out_dir)
    assert len(spans) == 5
    most = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert most <= 2
    for d in spec.out_dir.glob("*-*"):  # no run trained twice
        epochs = [json.loads(line)["epoch"] for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]


def test_the_example_sweep_is_valid():
    """Every point is valid, and its only possible problem is CIFAR-10 missing here: the same
    grid on the embedded dataset has no invalid point (so this fails when every point is bad)."""
    spec = load_sweep("example")
    assert spec.resources["array_parallelism"] == 16 and len(expand(spec)) == 12
    runs = plan(spec, check=True, gpus=1)
    assert len(runs) == 12 and all(all("cifar10" in p for p in r.problems) for r in runs)
    spec.base = ["data=digits" if o.startswith("data=") else o for o in spec.base]
    assert [r.problems for r in plan(spec, check=True, gpus=1)] == [[]] * 12


def test_a_sweep_names_its_runs_by_the_device_and_threads_of_its_jobs(tmp_path):
    """device=auto and trainer.threads=auto are resolved from the jobs' resources before the runs
    are named, so the controller and the jobs (which run the config they are given) agree."""
    base = ("data=digits", *[o for o in TINY if o != "device=cpu"])
    cpu = plan(load_sweep(write_sweep(tmp_path, {"seed": [0]}, base=base, resources={"cpus_per_task": 3})), check=False)
    gpu = plan(load_sweep(write_sweep(tmp_path, {"seed": [0]}, base=base, resources={"gpus_per_node": 1})), check=False)
    one = plan(load_sweep(write_sweep(tmp_path, {"seed": [0]}, base=(*base, "trainer.threads=1"),
                                      resources={"cpus_per_task": 3})), check=False)  # fmt: skip
    assert (cpu[0].config["device"], cpu[0].config["trainer"]["threads"]) == ("cpu", 3)
    assert (gpu[0].config["device"], gpu[0].config["trainer"]["threads"]) == ("cuda", 1)
    assert one[0].config["trainer"]["threads"] == 1  # an explicit count is kept
    assert len({cpu[0].run_id, gpu[0].run_id, one[0].run_id}) == 3
    assert cpu[0].dir.path == run_dir_for(cpu[0].config).path  # what the job computes from its config


def test_the_local_cluster_example_runs_on_a_cpu_cluster():
    spec = load_sweep("local_cluster")
    runs = plan(spec, check=True, gpus=int(spec.resources["gpus_per_node"]))
    assert len(runs) == 6 and all(r.problems == [] for r in runs)


def test_a_job_id_reused_by_another_job_is_not_the_sweeps():
    """Ids restart with the cluster: squeue's job under a launch's id must have its name, its
    working directory and a submit time no earlier than the launch."""
    launch_record = {"job_name": "wab-grid", "cwd": "/home/me/wab", "t": 1_800_000_000.0}
    ours = SlurmJob("RUNNING", "wab-grid", 1_800_000_010.0, "/home/me/wab")
    assert is_launch_job(ours, launch_record)
    assert not is_launch_job(SlurmJob("RUNNING", "someone-else", 1_800_000_010.0, "/home/me/wab"), launch_record)
    assert not is_launch_job(SlurmJob("RUNNING", "wab-grid", 1_800_000_010.0, "/scratch/other"), launch_record)
    assert not is_launch_job(SlurmJob("PENDING", "wab-grid", 1_700_000_000.0, "/home/me/wab"), launch_record)
    states = launch_job_states({**launch_record, "cluster": "slurm", "jobs": {"a": "7_0", "b": "7_1", "c": "8_0"}},
                               {"7_0": ours, "7_1": SlurmJob("RUNNING", "other", 1_800_000_010.0, "/x")})  # fmt: skip
    assert states == {"7_0": "RUNNING", "7_1": "GONE", "8_0": "GONE"}  # 7_1: its id is another job's now


def _finished_run(path, status, error=""):
    path.mkdir(parents=True)
    (path / "final.json").write_text(json.dumps({"status": status, "error": error}))
    (path / "done").write_text("")
    return RunDir(path)


def test_status_gives_a_divergence_its_reason_and_flags_a_stale_job(tmp_path):
    diverged = run_status(_finished_run(tmp_path / "a", "diverged", "non-finite loss nan at step 12"))
    assert diverged.state == "diverged" and "non-finite loss nan at step 12" in diverged.detail
    # a killed slurmstepd: the run finished, SLURM still says its job runs
    ended = _finished_run(tmp_path / "b", "done")
    exiting = run_status(ended, job="9_1", job_state="RUNNING", submitted_at=0.0)
    assert not exiting.stale and "stale" not in exiting.detail  # it ended a moment ago: the job is still exiting
    long_ago = time.time() - 2 * STALE_AFTER_S
    os.utime(ended.final, (long_ago, long_ago))
    stale = run_status(ended, job="9_1", job_state="RUNNING", submitted_at=0.0)
    assert stale.state == "done" and stale.stale and "wab cancel --stale" in stale.detail
    fine = run_status(_finished_run(tmp_path / "c", "done"), job="9_2", job_state="GONE", submitted_at=0.0)
    assert not fine.stale and fine.detail == ""


def test_status_says_when_the_scheduler_could_not_be_asked(tmp_path, monkeypatch):
    monkeypatch.setattr("wab.launch.status.slurm_jobs", lambda: None)  # squeue failed: the controller is down
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "metrics.jsonl").write_text("")
    manifest = {"runs": [{"run_id": "r1", "overrides": ["seed=0"], "job_id": "5_0", "submitted_at": 1.0,
                          "launch": 0}],
                "launches": [{"cluster": "slurm", "t": 1.0, "jobs": {"r1": "5_0"}}]}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (row,) = directory_status(tmp_path)
    assert row.state == "incomplete" and "the scheduler did not answer: job 5_0 unknown" in row.detail
    assert "SLURM did not answer" in format_status([row])
