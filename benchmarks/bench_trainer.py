"""wab's population step against a hand-written PyTorch loop over N separate models and optimizers.

Both sides get the same architecture, initial weights and batches, and run side by side in one
process, alternating, so the ratio is measured under the same conditions. Prints the median step
time of each and their ratio (wab / loop; target <= 1.0).

    .venv/bin/python -m benchmarks.bench_trainer                 # tiny CNN and ResNet-18, N in {2, 5}
    .venv/bin/python -m benchmarks.bench_trainer --models cnn --sizes 2 5 10 --reps 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from benchmarks.common import SGD, synthetic_batches
from wab.core.population import Population
from wab.core.step import population_step
from wab.parts.augment import Batch
from wab.parts.models import model_factory
from wab.parts.optim import build_optimizer


def hand_written_step(models: list[nn.Module], optimizers: list[torch.optim.Optimizer], batches: list[Batch]) -> None:
    """The loop the papers' code runs: each model and its optimizer on its own."""
    for model, opt, b in zip(models, optimizers, batches):
        opt.zero_grad()
        nn.functional.cross_entropy(model(b.x), b.y_a).backward()
        opt.step()


def bench(model: str, n: int, batch_size: int, reps: int, warmup: int) -> tuple[float, float]:
    build = model_factory(model, 3, 32, 10)
    pop = Population(build, seeds=range(n))
    flat_opt = build_optimizer(pop.params, SGD)
    models = [copy.deepcopy(m) for m in pop.members]
    opts = [torch.optim.SGD(m.parameters(), **{k: v for k, v in SGD.items() if k != "name"}) for m in models]
    pop.train()
    for m in models:
        m.train()
    batches = synthetic_batches(n, batch_size)
    t_wab, t_loop = [], []
    sides = [
        (t_wab, lambda: population_step(pop, flat_opt, batches)),
        (t_loop, lambda: hand_written_step(models, opts, batches)),
    ]
    for r in range(warmup + reps):
        for times, step in sides if r % 2 == 0 else sides[::-1]:  # alternate which side goes first
            t0 = time.perf_counter()
            step()
            if r >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(t_wab), statistics.median(t_loop)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    p.add_argument("--sizes", nargs="+", type=int, default=[2, 5])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=0, help="timed steps (default: 30 for cnn, 5 otherwise)")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch {args.batch_size} per member")
    print(f"{'model':>10s} {'N':>3s} {'wab ms/step':>12s} {'loop ms/step':>13s} {'ratio':>7s}")
    for model in args.models:
        for n in args.sizes:
            reps = args.reps or (30 if model in ("cnn", "mlp") else 5)
            w, h = bench(model, n, args.batch_size, reps, args.warmup)
            print(f"{model:>10s} {n:>3d} {1e3 * w:>12.2f} {1e3 * h:>13.2f} {w / h:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
