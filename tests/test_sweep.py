"""Sweep expansion, launching and status without a scheduler (debug and local executors)."""

import time

import pytest
import yaml

from wab.config import compose_config
from wab.records import config_hash
from wab.sweep import expand, format_status, launch, load_sweep, plan, sweep_status

TINY = ["data=digits", "model=cnn", "model.width=4", "population.size=2", "trainer.epochs=1",
        "trainer.batch_size=256", "device=cpu"]  # fmt: skip


def write_sweep(tmp_path, grid, variants=None, name="s", base=TINY):
    spec = {"name": name, "out_dir": str(tmp_path / name), "base": base, "grid": grid}
    if variants:
        spec["variants"] = variants
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expansion_is_deterministic_and_adding_a_value_keeps_existing_ids(tmp_path):
    a = load_sweep(
        write_sweep(tmp_path, {"seed": [0, 1]}, [{"method": ["independent"]}, {"method": ["wash"], "method.p": [0.01]}])
    )
    assert expand(a) == expand(a)
    ids = [r.run_id for r in plan(a)]
    assert ids == [r.run_id for r in plan(a)] and len(ids) == 4 == len(set(ids))
    b = load_sweep(
        write_sweep(
            tmp_path, {"seed": [0, 1, 2]}, [{"method": ["independent"]}, {"method": ["wash"], "method.p": [0.01, 0.1]}]
        )
    )
    ids_b = [r.run_id for r in plan(b)]
    assert set(ids) < set(ids_b) and len(ids_b) == 3 + 6
    assert expand(a)[0] == [*TINY, "seed=0", "method=independent"]


def test_run_id_ignores_settings_that_leave_results_unchanged():
    base = compose_config([*TINY, "method=independent"])
    same = compose_config([*TINY, "method=independent", "optim.fused=false", "trainer.progress=false", "device=cuda"])
    other = compose_config([*TINY, "method=independent", "optim.lr=0.1"])
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(other)


def test_bad_sweep_configs_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrids: {seed: [0]}\n")
    with pytest.raises(ValueError, match=r"unknown sweep key\(s\) \['grids'\]"):
        load_sweep(bad)
    bad.write_text("name: x\nresources: {gpus: 1}\n")
    with pytest.raises(ValueError, match=r"unknown resource\(s\) \['gpus'\]"):
        load_sweep(bad)
    with pytest.raises(FileNotFoundError, match="sweep config 'nope' not found"):
        load_sweep("nope")
    with pytest.raises(ValueError, match="--cluster must be one of"):
        launch(load_sweep(write_sweep(tmp_path, {"seed": [0]})), "auto")


def test_debug_sweep_isolates_a_crash_and_a_relaunch_submits_only_what_is_missing(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"seed": [0, 1], "model.name": ["cnn", "nope"]}))
    manifest = launch(spec, "debug")
    assert manifest["launches"][-1]["submitted"] == 4
    rows = sweep_status(spec.out_dir)
    states = sorted(r["state"] for r in rows)
    assert states == ["done", "done", "failed", "failed"]
    failed = [r for r in rows if r["state"] == "failed"]
    assert all("unknown model 'nope'" in r["error"] for r in failed)
    for r in failed:  # the traceback is in the run's own directory
        assert "Traceback" in (spec.out_dir / r["run_id"] / "final.json").read_text()
    again = launch(spec, "debug")
    assert again["launches"][-1]["submitted"] == 2  # only the failed ones
    assert set(again["launches"][-1]["jobs"]) == {r["run_id"] for r in failed}
    text = format_status(sweep_status(spec.out_dir))
    assert "2 done, 0 diverged, 2 failed, 0 incomplete, 0 not launched (4 runs)" in text


def test_status_reads_the_files_alone(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"seed": [0, 1, 2]}))
    runs = plan(spec)
    launch(spec, "debug")
    (runs[1].dir.done).unlink()  # as if killed before finishing
    (runs[1].dir.final).unlink()
    import shutil

    shutil.rmtree(runs[2].dir.path)
    assert [r["state"] for r in sweep_status(spec.out_dir)] == ["done", "incomplete", "not launched"]


def test_local_executor_runs_real_subprocesses_and_returns_at_once(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"seed": [0, 1]}))
    t0 = time.time()
    manifest = launch(spec, "local")
    assert time.time() - t0 < 20 and manifest["launches"][-1]["submitted"] == 2
    deadline = time.time() + 240
    while time.time() < deadline and any(r["state"] != "done" for r in sweep_status(spec.out_dir)):
        time.sleep(1)
    assert [r["state"] for r in sweep_status(spec.out_dir)] == ["done", "done"]


def test_the_example_sweep_is_valid():
    spec = load_sweep("example")
    assert spec.resources["array_parallelism"] == 16 and len(expand(spec)) == 12
