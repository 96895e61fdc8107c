"""Memory layout of convolutions on this device: one model's forward+backward with weights and
inputs channels-last (NHWC) against the default NCHW, side by side, alternating, median time.
This is the figure behind ``trainer.channels_last=auto`` (on with CUDA and CPU).

    .venv/bin/python -m benchmarks.bench_layout [--models cnn resnet20 resnet18 vgg16_bn] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from wab.parts.models import model_factory

REPS = {"cnn": 30, "mlp": 30, "resnet20": 8}


def train_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cnn", "resnet20", "resnet18", "vgg16_bn"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=0, help="timed passes per layout (default: 30 cnn, 8 resnet20, 5 else)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch {args.batch_size}, 32x32")
    print(f"{'model':>10s} {'NCHW ms':>9s} {'NHWC ms':>9s} {'NHWC/NCHW':>10s}")
    gen = torch.Generator().manual_seed(0)
    for name in args.models:
        build = model_factory(name, 3, 32, 10)
        x = torch.randn(args.batch_size, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (args.batch_size,), generator=gen)
        sides = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            model = build().to(memory_format=fmt).train()
            sides[fmt] = (model, x.contiguous(memory_format=fmt))

        times = {fmt: [] for fmt in sides}
        order = list(sides)
        for r in range(1 + (args.reps or REPS.get(name, 5))):
            for fmt in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                train_pass(*sides[fmt], y)
                if r:  # the first pass of each is a warm-up
                    times[fmt].append(time.perf_counter() - t0)
        a, b = (statistics.median(times[f]) for f in order)
        print(f"{name:>10s} {1e3 * a:>9.1f} {1e3 * b:>9.1f} {b / a:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
