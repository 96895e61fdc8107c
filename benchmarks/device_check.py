"""The device check: what only a GPU can show, in one command that fits in 5 minutes on one
H100/H200 (``benchmarks/device_check.sh``, which also runs the CUDA tests). Each check trains
one small run and compares it with a reference run, writing every figure as Markdown and CSV
into the output directory:

- the trainer on the device against the same run on CPU (float32 on both: no autocast,
  contiguous layout), within float tolerance;
- the batched members (``trainer.members=batched``) against the loop on the device;
- bf16 autocast with channels-last (the CUDA defaults) against float32 on the device: it trains
  to a comparable accuracy;
- the distributed backend (NCCL on GPUs, one process per GPU; gloo with two processes on CPU)
  against the local backend on the device;
- then ``benchmarks/bench_gpu.py``'s table of loop against batched members.

``--smoke`` runs the same checks on CPU in under a minute (tiny runs, a one-row benchmark), so
that the device command cannot rot: ``.ci/run`` runs it.

    python -m benchmarks.device_check OUT [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import bench_gpu
from wab.run.config import compose_config
from wab.run.lifecycle import run, run_dir_for

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=digits", "model=cnn", "model.width=8", "population.size=4", "trainer.batch_size=64",
        "trainer.lmc_points=0", "trainer.progress=false", "trainer.save_models=false", "method=wash"]  # fmt: skip
FP32 = ["trainer.amp=false", "trainer.channels_last=false"]
METRICS = ("final_acc", "individual_mean", "ensemble_acc", "nll")


def _config(out: Path, device: str, epochs: int, *overrides: str) -> dict:
    threads = ["trainer.threads=1"] if device == "cpu" else []
    return compose_config([*TINY, f"trainer.epochs={epochs}", f"device={device}", f"out_dir={out}", *threads,
                           *overrides])  # fmt: skip


def _train(cfg: dict) -> dict:
    record = run(cfg)
    if record.get("status") != "done":
        raise SystemExit(f"device check: a run ended {record.get('status')}: {record.get('error')}")
    return json.loads((run_dir_for(cfg).path / "final.json").read_text())


def _compare(name: str, got: dict, ref: dict, acc_tol: float, nll_rtol: float, what: str) -> dict:
    """One check's row: each metric on both sides, the largest gap, and whether it is within tolerance."""
    gaps = {k: abs(got["metrics"][k] - ref["metrics"][k]) for k in METRICS}
    ok = all(gaps[k] <= acc_tol for k in METRICS if k != "nll") and gaps["nll"] <= nll_rtol * ref["metrics"]["nll"]
    return {"check": name, "compared with": what, "device": got["device_name"],
            "members": f"{got['members'].get('mode')} vs {ref['members'].get('mode')}",
            **{f"{k}": f"{got['metrics'][k]:.4f} vs {ref['metrics'][k]:.4f}" for k in METRICS},
            "largest accuracy gap": f"{max(v for k, v in gaps.items() if k != 'nll'):.4f}",
            "tolerance": f"accuracy {acc_tol:.4f}, nll {100 * nll_rtol:.1f}%",
            "result": "pass" if ok else "FAIL"}  # fmt: skip


def _distributed(out: Path, device: str, epochs: int, procs: int) -> dict:
    """The tiny run under torchrun with population.backend=distributed; returns its record."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = (
        "from pathlib import Path; from benchmarks.device_check import _config; from wab.run.lifecycle import run; "
        f"run(_config(Path({str(out)!r}), {device!r}, {epochs}, *{FP32!r}, "
        "'population.backend=distributed'))"
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "--no-python", sys.executable, "-c", script]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"device check: the distributed run failed:\n{p.stderr[-3000:]}")
    cfg = _config(out, device, epochs, *FP32, "population.backend=distributed")
    return json.loads((run_dir_for(cfg).path / "final.json").read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the directory the Markdown and CSV are written into")
    p.add_argument("--smoke", action="store_true", help="on CPU, tiny: that the command works (under a minute)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.smoke
    device, epochs = ("cuda", 6) if cuda else ("cpu", 2)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        loop = _train(_config(runs, device, epochs, *FP32))
        cpu = loop if not cuda else _train(_config(runs, "cpu", epochs, *FP32))
        test_images = 360  # digits' test split
        one = 1.01 / test_images
        # CUDA and CPU kernels add in other orders: a few images may change their prediction
        rows.append(_compare("device vs CPU (float32)", loop, cpu, 3 * one, 0.02, "the same run on CPU"))
        batched = _train(_config(runs, device, epochs, *FP32, "trainer.members=batched"))
        rows.append(_compare("batched members", batched, loop, 3 * one, 0.02, "the loop on the device"))
        amp = _train(_config(runs, device, epochs, "trainer.amp=true", "trainer.channels_last=true"))
        # another precision: a short run may end a few points apart, not tens
        rows.append(_compare("bf16 autocast + channels-last", amp, loop, 0.05, 0.1, "float32 on the device"))
        procs = torch.cuda.device_count() if cuda else 2
        dist = _distributed(runs, device, epochs, procs)
        backend = "NCCL" if cuda else "gloo"
        rows.append(_compare(f"distributed ({backend}, {procs} process{'es' if procs > 1 else ''})", dist, loop,
                             3 * one, 0.02, "the local backend on the device"))  # fmt: skip
    checks_s = time.perf_counter() - started
    bench_args = ["--out", str(args.out)]
    if not cuda:  # random pixels: no dataset to decode, so that the smoke run stays under a minute
        bench_args += ["--device", "cpu", "--grid", "cnn:2", "--steps", "2", "--warmup", "1", "--chunk", "1",
                       "--batch-size", "32", "--random-pixels"]  # fmt: skip
    if cuda:
        bench_args += ["--steps", "30", "--warmup", "5", "--chunk", "10"]
    bench_gpu.main(bench_args)
    name = torch.cuda.get_device_name() if cuda else "CPU (smoke)"
    date = time.strftime("%Y-%m-%d", time.gmtime())
    head = (f"# Device check: {name}, {date}, torch {torch.__version__}\n\n"
            f"Checks (tiny runs: digits, CNN width 8, N=4, WASH, {epochs} epoch(s)): {checks_s:.0f} s.\n")  # fmt: skip
    cols = list(rows[0])
    md = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    md += ["", "## Members in a loop and batched", "", (args.out / "bench_gpu.md").read_text()]
    (args.out / "device_check.md").write_text("\n".join(md) + "\n")
    with open(args.out / "device_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    print("\n".join(md))
    if any(r["result"] != "pass" for r in rows):
        raise SystemExit("device check: a check failed (device_check.md)")


if __name__ == "__main__":
    main()
