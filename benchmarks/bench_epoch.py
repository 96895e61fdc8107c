"""One epoch of CIFAR-10 including data: wab's trainer against the loop of the papers' own code
(N separate models and optimizers, one torchvision-style Dataset + DataLoader with PIL
transforms per member; random crop + flip), side by side in one process, in alternating chunks of
steps, on CPU. Targets: wab at most 0.9x the loop's time with the tiny CNN, at most 1.0x with
ResNet-18 (on a subset of the epoch: --resnet-steps). Each side first takes --warmup untimed steps.
wab runs with its defaults (channels-last on CPU too); --wab trainer.channels_last=false gives it
the loop's memory layout, which isolates the harness from the layout.

    WAB_DATA=../shared/data .venv/bin/python -m benchmarks.bench_epoch [--models cnn resnet18] [--sizes 2 5 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from benchmarks.common import cifar10_trainer
from benchmarks.papers_loop import loop_step, member_loaders, sgd


def build(model: str, n: int, batch_size: int, workers: int, overrides: tuple[str, ...] = ()) -> tuple:
    trainer = cifar10_trainer(
        f"model={model}", f"population.size={n}", f"trainer.batch_size={batch_size}", "device=cpu", *overrides
    )
    # the same initial weights in their own storage, in the default layout the papers' code trains in
    models = [copy.deepcopy(m).to(memory_format=torch.contiguous_format) for m in trainer.population.members]
    loaders = member_loaders(trainer.data.train, trainer.data.mean, trainer.data.std, n, batch_size, workers)
    return trainer, models, sgd(models), [iter(dl) for dl in loaders]


def bench(
    model: str,
    n: int,
    steps: int | None,
    batch_size: int,
    workers: int,
    chunk: int,
    warmup: int,
    overrides: tuple[str, ...] = (),
) -> tuple[float, float, float, int]:
    """Total seconds of each side, the median of the paired chunk ratios (each wab chunk over the
    loop chunk run next to it, which cancels slow drifts of the machine's speed), and the steps."""
    trainer, models, opts, iters = build(model, n, batch_size, workers, overrides)
    for m in models:
        m.train()
    total = steps or trainer.steps_per_epoch - warmup
    for k in range(warmup):  # untimed, both sides: first-call allocations and caches
        trainer.train_step(k)
        loop_step(models, opts, iters)
    t_wab = t_loop = 0.0
    paired = []
    for start in range(warmup, warmup + total, chunk):
        ks = range(start, min(start + chunk, warmup + total))
        sides = ["wab", "loop"] if ((start - warmup) // chunk) % 2 == 0 else ["loop", "wab"]
        dt = {}
        for side in sides:
            t0 = time.perf_counter()
            for k in ks:
                trainer.train_step(k) if side == "wab" else loop_step(models, opts, iters)
            dt[side] = time.perf_counter() - t0
        t_wab, t_loop = t_wab + dt["wab"], t_loop + dt["loop"]
        paired.append(dt["wab"] / dt["loop"])
    return t_wab, t_loop, statistics.median(paired), total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    p.add_argument("--sizes", nargs="+", type=int, default=[2, 5, 10])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per member in the papers' loop")
    p.add_argument("--cnn-steps", type=int, default=None, help="default: the whole epoch")
    p.add_argument("--resnet-steps", type=int, default=4, help="ResNet-18 on CPU: this many steps of the epoch")
    p.add_argument("--chunk", type=int, default=10, help="steps per alternating chunk")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each side before timing")
    p.add_argument(
        "--wab",
        nargs="*",
        default=[],
        metavar="OVERRIDE",
        help="config overrides for wab's side, e.g. trainer.channels_last=false (the loop's layout)",
    )
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, CPU; CIFAR-10, "
          f"batch {args.batch_size} per member, loop DataLoader workers {args.workers}, "
          f"wab overrides {args.wab or 'none'}")  # fmt: skip
    print(f"{'model':>9s} {'N':>3s} {'steps':>6s} {'wab s':>8s} {'loop s':>8s} {'ratio':>6s} {'median paired':>14s}")
    for model in args.models:
        steps = args.resnet_steps if model == "resnet18" else args.cnn_steps
        chunk = min(args.chunk, steps) if steps else args.chunk
        for n in args.sizes:
            w, h, med, total = bench(
                model, n, steps, args.batch_size, args.workers, max(1, chunk), args.warmup, tuple(args.wab)
            )
            print(f"{model:>9s} {n:>3d} {total:>6d} {w:>8.2f} {h:>8.2f} {w / h:>6.3f} {med:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
