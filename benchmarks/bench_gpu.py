"""How close a population step comes to the hardware, with the members in a loop and batched
(``trainer.members``), side by side in one run: wab's trainer on CIFAR-10 (random crop and flip;
bf16 autocast and channels-last on CUDA by default), for each model and population size. For
each it prints images/s per member and for the population, the achieved model FLOP/s (training
FLOPs from wab's counter, :mod:`wab.parts.cost`) over the measured peak of a large bf16 matrix
product on the same device (float32's printed beside it: on this project's CPU, oneDNN's float32
convolutions run faster than torch's float32 matrix product, so only bf16's is a ceiling), the
share of the step outside forward/backward, and peak memory.

That share is measured side by side: the trainer's step (data, augmentation, zeroing, optimizer,
method hook) against the members' forward+backward alone on ready batches of the same shapes and
settings, in alternating chunks. The two modes run one after the other, each in a fresh trainer.
Where CIFAR-10 is not found ($WAB_DATA), or with --random-pixels, random images of its shapes
stand in (throughput does not depend on the pixels), and the table's first line says so.

    WAB_DATA=../shared/data .venv/bin/python -m benchmarks.bench_gpu                 # on CUDA: the issue's grid
    WAB_DATA=../shared/data .venv/bin/python -m benchmarks.bench_gpu --device cpu    # the CPU counterpart
    ... --out DIR   # also writes DIR/bench_gpu.md and DIR/bench_gpu.csv
"""

from __future__ import annotations

import argparse
import csv
import gc
import resource
import time
from pathlib import Path

import torch

from benchmarks.common import cifar10_found, cifar10_trainer
from wab.core.step import forward_backward
from wab.parts.cost import run_flops

GRID = "resnet18:4,resnet20:4,resnet20:8,resnet20:16,cnn:4,cnn:8,cnn:16"
COLUMNS = ["model", "N", "members", "step ms", "img/s per member", "img/s population", "TFLOP/s", "of peak",
           "outside fwd/bwd", "peak memory MiB"]  # fmt: skip


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 10) -> float:
    """FLOP/s of an n x n matrix product in ``dtype`` on ``device`` (the best of ``reps``)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: str, size: int, members: str, args: argparse.Namespace) -> dict:
    """One (model, N, member mode): the step, forward+backward alone, FLOP/s and peak memory."""
    trainer = cifar10_trainer(
        f"model={model}", f"method={args.method}", f"population.size={size}", f"device={args.device}",
        f"trainer.batch_size={args.batch_size}", f"trainer.members={members}", random_pixels=args.random_pixels,
    )  # fmt: skip
    device, pop = trainer.device, trainer.population
    data, bs = trainer.data.train, trainer.spec.batch_size
    batches = [aug(data.x[trainer.perms[i][:bs]], data.y[trainer.perms[i][:bs]], trainer.rngs[i])
               for i, aug in enumerate(trainer.augmenters)]  # fmt: skip

    def fb() -> None:
        if trainer.batched is not None:
            trainer.batched.forward_backward(batches, trainer.autocast_dtype)
        else:
            forward_backward(pop, batches, trainer.autocast_dtype)

    for k in range(args.warmup):
        trainer.train_step(k)
        fb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_step = t_fb = 0.0
    chunks = []  # step seconds per step of each chunk: their spread is the run-to-run noise
    k = args.warmup
    for start in range(0, args.steps, args.chunk):
        n = min(args.chunk, args.steps - start)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            trainer.train_step(k)
            k += 1
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(n):
            fb()
        _sync(device)
        t_step += t1 - t0
        t_fb += time.perf_counter() - t1
        chunks.append((t1 - t0) / n)
    step, fwd_bwd = t_step / args.steps, t_fb / args.steps
    flops = run_flops(trainer.cfg, 1)["per_step"]
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:  # the process's peak resident memory so far: it only grows, so read it row after row
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "N": size, "members": trainer.members_mode["mode"], "step ms": 1e3 * step,
            "img/s per member": bs / step,
            "img/s population": size * bs / step, "FLOP/s": flops / step,
            "outside fwd/bwd": 1 - fwd_bwd / step, "peak memory MiB": memory,
            "chunk spread": (max(chunks) - min(chunks)) / step}  # fmt: skip


def table(rows: list[dict], peak: float) -> list[list[str]]:
    out = []
    for r in rows:
        out.append([r["model"], str(r["N"]), r["members"], f"{r['step ms']:.1f}", f"{r['img/s per member']:,.0f}",
                    f"{r['img/s population']:,.0f}", f"{r['FLOP/s'] / 1e12:.3f}", f"{100 * r['FLOP/s'] / peak:.1f}%",
                    f"{100 * r['outside fwd/bwd']:.1f}%", f"{r['peak memory MiB']:,.0f}"])  # fmt: skip
    return out


def targets(rows: list[dict], cuda: bool, noise: float) -> list[str]:
    """The issue's targets, each with its measured figure and whether it is met."""
    lines = []
    by = {(r["model"], r["N"], r["members"]): r for r in rows}
    if cuda:
        worst = max(rows, key=lambda r: r["outside fwd/bwd"])
        met = worst["outside fwd/bwd"] < 0.05
        lines.append(f"harness share of a step < 5%: worst {100 * worst['outside fwd/bwd']:.1f}% "
                     f"({worst['model']} N={worst['N']} {worst['members']}): {'met' if met else 'MISSED'}")  # fmt: skip
        if ("resnet20", 8, "loop") in by and ("resnet20", 8, "batched") in by:
            ratio = by["resnet20", 8, "batched"]["img/s population"] / by["resnet20", 8, "loop"]["img/s population"]
            lines.append(f"batched >= 2x the loop's population img/s, ResNet-20 N=8: {ratio:.2f}x: "
                         f"{'met' if ratio >= 2 else 'MISSED'}")  # fmt: skip
    else:  # on CPU auto is the loop (wab.parts.device.resolve_members): never slower than it
        slower = [(m, n, by[m, n, "batched"]["step ms"] / by[m, n, "loop"]["step ms"])
                  for m, n, mode in by if mode == "loop" and (m, n, "batched") in by]  # fmt: skip
        text = ", ".join(f"{m} N={n} {x:.2f}x" for m, n, x in slower)
        lines.append(f"auto = loop on CPU; batched step time over the loop's: {text} (the largest spread of a "
                     f"row's chunk times: {100 * noise:.0f}%): auto is the loop, so never slower than it")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=GRID, help=f"model:N pairs (default {GRID})")
    p.add_argument("--modes", default="loop,batched")
    p.add_argument("--method", default="independent")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=40, help="timed trainer steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, cudnn)")
    p.add_argument("--chunk", type=int, default=10, help="steps per alternating chunk")
    p.add_argument("--out", type=Path, default=None, help="also write bench_gpu.md and bench_gpu.csv here")
    p.add_argument("--random-pixels", action="store_true", help="random CIFAR-shaped images even where CIFAR-10 is")
    args = p.parse_args(argv)
    args.random_pixels = args.random_pixels or not cifar10_found()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    peaks = {"bf16": matmul_peak(device, torch.bfloat16, 8192 if cuda else 2048, 10 if cuda else 3),
             "fp32": matmul_peak(device, torch.float32, 8192 if cuda else 2048, 10 if cuda else 3)}  # fmt: skip
    peak = peaks["bf16"]
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    data = "random CIFAR-shaped images" if args.random_pixels else "CIFAR-10"
    head = (f"{name}; torch {torch.__version__}; {data}; {args.method}, batch {args.batch_size} per member, "
            f"{args.steps} timed steps per row; matrix-product peak: bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s, "
            f"fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s ('of peak' is over bf16's)")  # fmt: skip
    print(head, flush=True)
    rows = []
    for item in args.grid.split(","):
        model, n = item.split(":")
        for mode in args.modes.split(","):
            rows.append(measure(model, int(n), mode, args))
            gc.collect()  # the row's trainer is gone before the next is built
            if cuda:
                torch.cuda.empty_cache()
            print("  " + " | ".join(table(rows[-1:], peak)[0]), flush=True)
    noise = max(r["chunk spread"] for r in rows)
    md = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(r) + " |" for r in table(rows, peak)]
    md += ["", *[f"- {t}" for t in targets(rows, cuda, noise)]]
    print("\n".join(md[-len(targets(rows, cuda, noise)) :]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_gpu.md").write_text("\n".join(md) + "\n")
        with open(args.out / "bench_gpu.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
