"""Per-step cost of the methods' own operations as a fraction of a training step.

ResNet-18 at 32x32, N=5, CPU: the WASH shuffle (linear schedule) at p in {0.001, 0.01, 0.1}, the
WASH+Opt shuffle at p=0.01, and the PAPA pull (every 10 steps, so its per-step cost is a tenth
of one pull), against the population's training step on the same machine, in one process. The
population is channels-last, as the trainer's default.
Targets: the shuffle under 2% of a step at p=0.01, growing with p; the PAPA pull under 2%.

    .venv/bin/python -m benchmarks.bench_methods [--model resnet18] [--size 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import SGD, SetupState, median_time, method_cfg, synthetic_batches
from wab.core.population import Population
from wab.core.step import population_step
from wab.methods.wash import Wash
from wab.parts.models import model_factory
from wab.parts.optim import build_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--step-reps", type=int, default=3)
    p.add_argument("--op-reps", type=int, default=20)
    args = p.parse_args()
    pop = Population(model_factory(args.model, 3, 32, 10), seeds=range(args.size), channels_last=True)
    opt = build_optimizer(pop.params, SGD)
    bs = args.batch_size
    batches = synthetic_batches(args.size, bs, channels_last=True)
    step = median_time(lambda: population_step(pop, opt, batches), args.step_reps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.model}, N={args.size}, "
          f"D={pop.num_params:,}, batch {bs} per member")  # fmt: skip
    print(f"training step: {1e3 * step:.1f} ms")
    print(f"{'operation':>28s} {'ms per call':>12s} {'ms per step':>12s} {'% of step':>10s}")

    def report(name: str, per_call: float, calls_per_step: float) -> None:
        per_step = per_call * calls_per_step
        print(f"{name:>28s} {1e3 * per_call:>12.3f} {1e3 * per_step:>12.3f} {100 * per_step / step:>9.3f}%", flush=True)

    rng = torch.Generator().manual_seed(1)
    for prob in (0.001, 0.01, 0.1):
        wash = Wash(method_cfg("wash", p=prob, schedule="linear"))
        wash.setup(SetupState(pop))
        report(f"WASH shuffle p={prob}", median_time(lambda w=wash: w.shuffle(pop, rng), args.op_reps), 1)
    wash = Wash(method_cfg("wash", p=0.01, schedule="linear"))
    wash.setup(SetupState(pop))
    report("WASH+Opt shuffle p=0.01", median_time(lambda: wash.shuffle(pop, rng, opt), args.op_reps), 1)
    pull = median_time(lambda: pop.lerp_toward_mean(0.01), args.op_reps)
    report("PAPA pull (every 10 steps)", pull, 0.1)
    report("PAPA pull (one call)", pull, 1)


if __name__ == "__main__":
    main()
