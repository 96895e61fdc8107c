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
import torch.distributed as dist

from wab.analysis.collect import collect_runs
from wab.analysis.tables import summary_tables
from wab.population import member_slice

from .run_methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="torch.distributed without gloo")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(procs: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
            f"--master_port={_port()}", *args]  # fmt: skip


def _close(a, b, path=""):
    """a == b, floats to a relative 1e-5 (the fused optimizer may round the last bit of an
    element differently when the rows it steps are split among processes)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), path
    else:
        assert a == b, path


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
        for method in METHODS:
            run_dir = next(out.glob(f"{method}-*"))
            ref = json.loads(next((tmp_path / "local").glob(f"{run_dir.name}/final.json")).read_text())
            got = json.loads((run_dir / "final.json").read_text())  # the same run id: backend is not hashed
            assert got["status"] == "done", (method, got.get("error"))
            _close(got["metrics"], ref["metrics"], method)
            _close(got["method_report"], ref["method_report"], method)
            measured = got["comm"].pop("measured")
            ref["comm"].pop("measured", None)
            _close(got["comm"], ref["comm"], method)  # the analytic ledger is the backend's business neither
            assert measured["processes"] == procs
            if ref["comm"]["elements_total"] > 0 and method not in ("soups", "twa"):
                assert measured["bytes_per_member_per_step"] > 0, method
            if method == "wash":  # only the shuffled values travel: N/(N-1) times what the ledger counts
                analytic = got["comm"]["ops"]["permute_elements"]["bytes"] / got["steps"]
                wire = measured["bytes_per_process"]["permute_elements"] * procs / 4 / got["steps"]
                assert 1.0 <= wire / analytic <= 1.5
                assert wire < 0.2 * 4 * got["comm"]["model_elements"]  # far from a full exchange
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # written once, by the main process
            assert sorted(p.name for p in (run_dir / "models").glob("*.pt"))  # saved once too
        assert len(list(out.glob("*-*"))) == len(METHODS)
        df, _ = collect_runs(out)
        (table,) = summary_tables(df).values()  # the report shows the wire beside the ledger
        wash = table.rows.set_index("method").loc["wash (p=0.1)"]
        assert wash["wire bytes/step"] not in ("–", "0") and wash["bytes/step"] not in ("–", "0")


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
