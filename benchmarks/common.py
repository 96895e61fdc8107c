"""What the benchmarks share: the optimizer they train with, random CIFAR-shaped batches, a
trainer on CIFAR-10 with crop+flip, and a median timer."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch

from wab.parts.augment import Batch
from wab.parts.data import find_dataset
from wab.parts.device import to_device
from wab.run.config import compose_config
from wab.run.loop import Trainer
from wab.run.records import RunDir

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}


class SetupState:
    """The little of a RunState that a method's ``setup`` reads in the benchmarks (its population)."""

    def __init__(self, population) -> None:
        self.population = population


def method_cfg(name: str, **overrides) -> dict:
    """A method's config at its defaults (configs/method/<name>.yaml), with ``overrides``."""
    return {**compose_config([f"method={name}"])["method"], **overrides}


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


def random_cifar10(*_args, **_kwargs) -> tuple[np.ndarray, ...]:
    """CIFAR-10's shapes filled with random pixels and labels (50,000 + 10,000 images): what a
    throughput benchmark needs where the dataset is not (a GPU machine's copy of the tree)."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (50_000, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 50_000),
            rng.integers(0, 256, (10_000, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 10_000))  # fmt: skip


def cifar10_found() -> bool:
    """Whether CIFAR-10 is where wab looks for it ($WAB_DATA when set)."""
    return find_dataset("cifar10", os.environ.get("WAB_DATA")) is not None


def cifar10_trainer(*overrides: str, random_pixels: bool = False) -> Trainer:
    """wab's trainer on CIFAR-10 (from $WAB_DATA when set; with ``random_pixels``, on
    :func:`random_cifar10` instead) with random crop (padding 4) and flip, no held-out split, in
    a temporary directory, with the first epoch's data order drawn and the method set up, ready
    for ``train_step``."""
    cfg = compose_config(
        ["data=cifar10", "data.heldout_fraction=0", "data.augment.crop_padding=4", "data.augment.flip=true",
         "trainer.progress=false", f"out_dir={tempfile.mkdtemp()}", *overrides]
    )  # fmt: skip
    if os.environ.get("WAB_DATA"):
        cfg["data"]["root"] = os.environ["WAB_DATA"]
    if random_pixels:
        with mock.patch("wab.parts.data._load_arrays", random_cifar10):
            trainer = Trainer(cfg, RunDir(cfg["out_dir"]))
    else:
        trainer = Trainer(cfg, RunDir(cfg["out_dir"]))
    if "setup" in trainer.hooks:
        trainer.method.setup(trainer.state)
    n = len(trainer.data.train)
    trainer.perms = [to_device(r.permutation(n), trainer.device) for r in trainer.rngs]
    trainer.population.train()
    return trainer
