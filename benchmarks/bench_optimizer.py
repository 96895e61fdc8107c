"""The optimizer step alone: wab's one step over the flat [N, P] tensors (torch's fused kernel,
the default, and the unfused one) against N separate torch.optim optimizers, one per member, as
the papers' code runs them. ResNet-18 at 32x32, random gradients, CPU, median over repetitions.

    .venv/bin/python -m benchmarks.bench_optimizer [--model resnet18] [--sizes 2 5 10] [--optimizers sgd adamw]
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import SGD, median_time
from wab.core.population import Population
from wab.parts.models import model_factory
from wab.parts.optim import build_optimizer

ADAMW = {"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--sizes", nargs="+", type=int, default=[2, 5, 10])
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.model}, median of {args.reps}")
    print(f"{'optim':>6s} {'N':>3s} {'fused ms':>9s} {'unfused ms':>11s} {'N optims ms':>12s} {'fused/N optims':>15s}")
    for name in args.optimizers:
        cfg = SGD if name == "sgd" else ADAMW
        torch_cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
        for n in args.sizes:
            pop = Population(model_factory(args.model, 3, 32, 10), seeds=range(n))
            models = [copy.deepcopy(m) for m in pop.members]
            gen = torch.Generator().manual_seed(0)
            for flat in pop.params:  # the members' .grad are views of these rows
                flat.grad.copy_(torch.randn(flat.shape, generator=gen))
            for m, member in zip(models, pop.members):
                for q, row in zip(m.parameters(), member.parameters()):
                    q.grad = row.grad.clone()
            fused = build_optimizer(pop.params, {**cfg, "fused": True})
            unfused = build_optimizer(pop.params, {**cfg, "fused": False})
            separate = [torch_cls(m.parameters(), **{k: v for k, v in cfg.items() if k != "name"}) for m in models]
            t_f = median_time(fused.step, args.reps)
            t_u = median_time(unfused.step, args.reps)
            t_s = median_time(lambda s=separate: [o.step() for o in s], args.reps)
            print(f"{name:>6s} {n:>3d} {1e3 * t_f:>9.1f} {1e3 * t_u:>11.1f} {1e3 * t_s:>12.1f} {t_f / t_s:>15.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
