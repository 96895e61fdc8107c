"""The distributed population: every method gives the local backend's result on 2 and 4 gloo
processes, records are written once, the measured traffic is there, and a killed distributed
run resumes to the uninterrupted result."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from wab.analysis.collect import collect_runs
from wab.analysis.tables import summary_tables
from wab.core.population import member_slice
from wab.run.lifecycle import run_dir_for

from .run_methods import configs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_gloo_available(), reason="torch.distributed without gloo"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(procs: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
            f"--master_port={_port()}", *args]  # fmt: skip


def _same(a, b, path=""):
    """a == b exactly, naming the first key that differs."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_member_slices_are_contiguous_and_cover_the_population():
    assert [list(member_slice(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(member_slice(4, r, 4)) for r in range(4)] == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="smaller than the 3 processes"):
        member_slice(2, 0, 3)


def test_every_method_gives_the_local_result_on_2_and_4_processes(tmp_path):
    script = str(ROOT / "tests" / "run_methods.py")
    local = subprocess.run([sys.executable, script, str(tmp_path / "local"), "local"], env=ENV, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    for procs in (2, 4):
        out = tmp_path / f"p{procs}"
        p = subprocess.run(_torchrun(procs, script, str(out), "distributed"), env=ENV, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
        assert p.returncode == 0, p.stderr[-3000:]
        for method, cfg in configs(str(out), "distributed").items():
            run_dir = run_dir_for(cfg).path  # the same run id as the local run's: the backend is not hashed
            ref = json.loads((tmp_path / "local" / run_dir.name / "final.json").read_text())
            got = json.loads((run_dir / "final.json").read_text())
            assert got["status"] == "done", (method, got.get("error"))
            _same(got["metrics"], ref["metrics"], method)
            _same(got["method_report"], ref["method_report"], method)
            measured = got["comm"].pop("measured")
            ref["comm"].pop("measured", None)
            _same(got["comm"], ref["comm"], method)  # the analytic ledger is the backend's business neither
            if ref["comm"]["elements_total"] > 0 and method not in ("soups", "twa", "twa_t"):
                assert measured["bytes_per_member_per_step"] > 0, method
            assert measured["processes"] == [procs]
            for ops in measured["bytes"].values():  # what one process sends, the others receive
                for op, v in ops.items():
                    if op not in ("objects", "traffic"):  # pickled objects differ in size between processes
                        # an all-reduce gets back what it gives; an all-gather or broadcast, from procs - 1 others
                        assert v["received"] in (pytest.approx(v["sent"]), pytest.approx(v["sent"] * (procs - 1))), (
                            method, op, v)  # fmt: skip
            assert measured["sent_by_phase"]["eval"] > 0 and measured["sent_by_phase"]["checkpoint"] > 0
            assert measured["sent_by_phase"]["control"] > 0
            if method == "wash":  # only the shuffled values travel: N/(N-1) times what the ledger counts
                analytic = got["comm"]["ops"]["permute_elements"]["bytes"] / got["steps"]
                wire = measured["bytes"]["train"]["permute_elements"]["sent"] / 4 / got["steps"]
                assert 1.0 <= wire / analytic <= 1.5
                assert measured["ratio_to_ledger"] == pytest.approx(measured["bytes_per_member_per_step"] /
                                                                    got["comm"]["bytes_per_step"])  # fmt: skip
                assert wire < 0.2 * 4 * got["comm"]["model_elements"]  # far from a full exchange
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # written once, by the main process
            # every delivered model saved, by whichever process held it, as the local run saved it
            meta = json.loads((run_dir / "models" / "meta.json").read_text())
            ref_dir = tmp_path / "local" / run_dir.name / "models"
            assert meta["models"] == json.loads((ref_dir / "meta.json").read_text())["models"]
            for name in meta["models"]:
                got_sd = torch.load(run_dir / "models" / f"{name}.pt", weights_only=True)
                ref_sd = torch.load(ref_dir / f"{name}.pt", weights_only=True)
                assert all(torch.equal(got_sd[k], ref_sd[k]) for k in ref_sd), (method, name)
        assert len(list(out.glob("*-*"))) == len(configs(str(out), "distributed"))
        df, _ = collect_runs(out)
        (table,) = summary_tables(df).values()  # the report shows the wire beside the ledger
        wash = table.rows.set_index("method").loc["wash (p=0.1)"]
        assert wash["wire bytes/step"] not in ("–", "0") and wash["bytes/step"] not in ("–", "0")
        assert 1.0 <= float(wash["wire/ledger"]) <= 1.5 and "wire/ledger is its ratio" in table.caption()


def test_a_plugin_written_against_the_documented_api_is_right_on_both_backends(tmp_path):
    """tests/plugin_example.py knows only docs/methods.md: the same records on 1 and 2 processes,
    through a checkpoint and a resume on another number of processes."""
    script = str(ROOT / "tests" / "plugin_example.py")
    args = ["data=digits", "model.width=8", "population.size=4", "trainer.epochs=2", "trainer.batch_size=64",
            "trainer.progress=false", "device=cpu"]  # fmt: skip
    local = subprocess.run([sys.executable, script, *args, f"out_dir={tmp_path / 'local'}"], env=ENV,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    out = tmp_path / "p2"
    p = subprocess.run(_torchrun(2, script, *args, "population.backend=distributed", f"out_dir={out}"), env=ENV,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    (ref,) = [json.loads(f.read_text()) for f in (tmp_path / "local").glob("*/final.json")]
    (got,) = [json.loads(f.read_text()) for f in out.glob("*/final.json")]
    _same(got["metrics"], ref["metrics"])
    _same(got["method_report"], ref["method_report"])
    assert len(ref["method_report"]["average_sq_norms"]) == 4 and ref["metrics"]["final_model"] == "mean_of_averages"
    # its last epoch's checkpoint (the one before the final evaluation), written by 2 processes,
    # read by 4: finalize again from the loaded averages
    (run_dir,) = list(out.glob("plugin_example-*"))
    for name in ("done", "final.json", "metrics.jsonl", "checkpoint.pt"):
        (run_dir / name).unlink()
    p = subprocess.run(_torchrun(4, script, *args, "population.backend=distributed", f"out_dir={out}"), env=ENV,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in (run_dir / "train.log").read_text()
    again = json.loads((run_dir / "final.json").read_text())
    _same(again["metrics"], ref["metrics"])
    _same(again["method_report"], ref["method_report"])


def test_the_defaults_give_the_same_numbers_on_1_2_and_4_processes_over_hundreds_of_steps(tmp_path):
    """The fused optimizer (the default) steps each member's row on its own, so splitting the
    rows among processes cannot change its rounding; hundreds of steps would amplify any drift."""
    args = ["data=digits", "model.width=8", "population.size=4", "trainer.epochs=4", "trainer.batch_size=16",
            "trainer.eval_every=0", "trainer.progress=false", "device=cpu", "method=papa"]  # fmt: skip
    train = ["-m", "wab.cli", "train", *args]
    p = subprocess.run([sys.executable, *train, f"out_dir={tmp_path / 'p1'}"], env=ENV, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    (ref,) = [json.loads(f.read_text()) for f in (tmp_path / "p1").glob("papa-*/final.json")]
    assert ref["steps"] >= 300
    for procs in (2, 4):
        out = tmp_path / f"p{procs}"
        p = subprocess.run(_torchrun(procs, *train, "population.backend=distributed", f"out_dir={out}"), env=ENV,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert p.returncode == 0, p.stderr[-3000:]
        (got,) = [json.loads(f.read_text()) for f in out.glob("papa-*/final.json")]
        _same(got["metrics"], ref["metrics"], f"{procs} processes")


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_on_one_process_ends_all_within_seconds_and_the_run_resumes(tmp_path, rank):
    """No collective on the error path: the failing process records its error and exits, which
    ends the other (torchrun stops it, or its collective sees a closed peer) long before the
    process group's timeout; no done marker, so the same command resumes from the checkpoint."""
    script = str(ROOT / "tests" / "fail_on_one_rank.py")
    args = ["data=digits", "model.width=8", "population.size=4", "trainer.epochs=3", "trainer.batch_size=64",
            "trainer.progress=false", "device=cpu", "population.backend=distributed", "population.timeout_min=5",
            f"out_dir={tmp_path}"]  # fmt: skip
    t0 = time.time()
    p = subprocess.run(_torchrun(2, script, str(rank), "30", *args), env=ENV, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    took = time.time() - t0
    assert p.returncode != 0
    assert took < 120, f"{took:.0f} s: the other process waited for the timeout"
    (run_dir,) = list(tmp_path.glob("test_fails_on_one_rank-*"))
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "failed" and f"disk full on rank {rank} at step 30" in final["error"], final["error"]
    assert final["steps"] >= 22 and not (run_dir / "done").exists()
    again = subprocess.run(_torchrun(2, script, "-1", "0", *args), env=ENV, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "final.json").read_text())["status"] == "done"
    assert not list(run_dir.glob("error.rank*"))


def test_the_measured_traffic_survives_a_resume_on_another_process_count(tmp_path):
    """4 processes to the first checkpoint (then one fails), 2 to the end: the record sums both
    lives, each process's every step (the loss check, 8 bytes per process and step)."""
    script = str(ROOT / "tests" / "fail_on_one_rank.py")
    args = ["data=digits", "model.width=8", "population.size=4", "trainer.epochs=3", "trainer.batch_size=64",
            "trainer.progress=false", "device=cpu", "population.backend=distributed",
            f"out_dir={tmp_path}"]  # fmt: skip
    subprocess.run(_torchrun(4, script, "2", "30", *args), env=ENV, capture_output=True, timeout=600)
    p = subprocess.run(_torchrun(2, script, "-1", "0", *args), env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (final,) = [json.loads(f.read_text()) for f in tmp_path.glob("*/final.json")]
    measured, steps = final["comm"]["measured"], final["steps"]
    first = steps // 3  # the checkpoint the second life resumed from: the end of epoch 1
    assert measured["processes"] == [2, 4]
    assert measured["bytes"]["control"]["loss_check"]["sent"] == 8 * (4 * first + 2 * (steps - first))
    assert "train" not in measured["bytes"]  # this method sends nothing; no collective of the harness counts as its


def test_the_process_group_wab_made_is_destroyed_before_the_interpreter_tears_down():
    # left to the teardown, gloo's threads can abort a finished process (SIGABRT): the device
    # check's distributed run once failed so in CI. atexit runs last-in first-out, so a hook
    # registered before the group was made sees whether it is gone by then.
    script = ("import atexit, torch.distributed as dist\n"
              "atexit.register(lambda: print('at exit, initialized:', dist.is_initialized()))\n"
              "from wab.core.distributed import init\n"
              "init('cpu')\n"
              "print('after init, initialized:', dist.is_initialized())\n")  # fmt: skip
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port())}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == ["after init, initialized: True", "at exit, initialized: False"], p.stdout


def test_a_launch_that_cannot_work_is_refused_before_anything_is_made(tmp_path):
    train = ["-m", "wab.cli", "train", "data=digits", "device=cpu", "trainer.progress=false", f"out_dir={tmp_path}"]
    p = subprocess.run(_torchrun(2, *train, "population.size=4"), env=ENV, capture_output=True, text=True, timeout=300)
    # torchrun reports its workers' exit status 2 with a traceback of its own
    assert p.returncode != 0 and "(WORLD_SIZE=2) but population.backend=local" in p.stderr, p.stderr[-2000:]
    assert "add population.backend=distributed" in p.stderr and "wab/run/lifecycle.py" not in p.stderr
    p = subprocess.run(_torchrun(2, *train, "population.size=1", "population.backend=distributed"), env=ENV,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode != 0 and "population.size=1 is smaller than the 2 processes" in p.stderr, p.stderr[-2000:]
    # processes with other CPU thread counts would name (and round) the run differently
    script = tmp_path.parent / "threads_by_rank.py"
    script.write_text("import os, sys, torch\nfrom wab.cli import main\n"
                      "torch.set_num_threads(1 + int(os.environ['RANK']))\nsys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    p = subprocess.run(_torchrun(2, str(script), *train[2:], "population.size=2", "population.backend=distributed"),
                       env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode != 0 and "resolve different run ids" in p.stderr, p.stderr[-2000:]
    assert "set device and trainer.threads" in p.stderr and "wab/run/lifecycle.py" not in p.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_killed_distributed_run_resumes_to_the_uninterrupted_result(tmp_path):
    args = ["data=digits", "model.width=8", "population.size=4", "trainer.epochs=5", "trainer.batch_size=16",
            "trainer.progress=false", "device=cpu", "method=wash", "population.backend=distributed"]  # fmt: skip
    train = ["-m", "wab.cli", "train", *args]
    ref = subprocess.run(_torchrun(2, *train, f"out_dir={tmp_path / 'ref'}"), env=ENV, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    p = subprocess.Popen(_torchrun(2, *train, f"out_dir={out}"), env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*/checkpoint.prev.pt")):
        time.sleep(0.1)
    # every process of the run, without warning (torchrun's workers live in sessions of their own)
    subprocess.run(["pkill", "-KILL", "-f", f"out_dir={out}"], check=False)
    p.wait()
    (run_dir,) = list(out.glob("wash-*"))
    assert not (run_dir / "done").exists()
    again = subprocess.run(_torchrun(2, *train, f"out_dir={out}"), env=ENV, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in (run_dir / "train.log").read_text()
    final = json.loads((run_dir / "final.json").read_text())
    reference = json.loads(next((tmp_path / "ref").glob("wash-*/final.json")).read_text())
    assert final["metrics"] == reference["metrics"]  # the same processes, the same sums: bit for bit
    assert [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
