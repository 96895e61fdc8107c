"""What the step benchmarks share: the optimizer they train with, random CIFAR-shaped batches, and
a median timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from wab.augment import Batch

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}


def synthetic_batches(
    n: int, batch_size: int, image_size: int = 32, classes: int = 10, seed: int = 0, channels_last: bool = False
) -> list[Batch]:
    """One fixed batch of random 3-channel images and labels per member (no mixing)."""
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batches = []
    for _ in range(n):
        x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).contiguous(memory_format=fmt)
        y = torch.randint(0, classes, (batch_size,), generator=gen)
        batches.append(Batch(x, y, y, 1.0, 0.0))
    return batches


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``reps`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
