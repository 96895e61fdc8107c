"""Peak memory of a CPU population run (N members in the flat tensors, one optimizer) printed
next to N times the peak of one model trained alone, each measured in a fresh process (peak
resident set size, minus the process's size before the model is built). Channels-last, as the
trainer's default.

    .venv/bin/python -m benchmarks.bench_memory [--model resnet18] [--size 5] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import resource, sys
from benchmarks.common import SGD, synthetic_batches
from wab.parts.models import model_factory
from wab.parts.optim import build_optimizer
from wab.core.population import Population
from wab.core.step import population_step
model, n, bs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
batches = synthetic_batches(n, bs, channels_last=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pop = Population(model_factory(model, 3, 32, 10), seeds=range(n), channels_last=True)
opt = build_optimizer(pop.params, SGD)
for _ in range(steps):
    population_step(pop, opt, batches)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak)
"""


def measure(model: str, n: int, batch_size: int, steps: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(n), str(batch_size), str(steps)],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return int(out[0]), int(out[1])  # KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    base1, peak1 = measure(args.model, 1, args.batch_size, args.steps)
    baseN, peakN = measure(args.model, args.size, args.batch_size, args.steps)
    single, pop = (peak1 - base1) / 1024, (peakN - baseN) / 1024
    print(f"{args.model}, batch {args.batch_size} per member, CPU, peak RSS above the process baseline:")
    print(f"  one model trained alone:          {single:8.0f} MiB")
    print(f"  {args.size} x one model:                  {args.size * single:8.0f} MiB")
    print(
        f"  wab population of N={args.size}:         {pop:8.0f} MiB  ({pop / (args.size * single):.2f}x of N x single)"
    )
    print(f"  (whole processes: {peak1 / 1024:.0f} MiB alone, {peakN / 1024:.0f} MiB population)")


if __name__ == "__main__":
    main()
