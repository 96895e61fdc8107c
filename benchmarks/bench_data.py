"""Data path: wab's on-device uint8 dataset with batched augmentation against torchvision's
Dataset + DataLoader with PIL transforms, one epoch of CIFAR-10 (../shared/data), random crop
(padding 4) + horizontal flip + normalisation, batches of 128, CPU, data alone (no model).
Target: wab at least 3x faster per epoch.

    WAB_DATA=../shared/data .venv/bin/python -m benchmarks.bench_data [--workers 0 2] [--subset K]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.papers_loop import member_loaders
from wab.parts.augment import Augment, Augmenter, Normalizer
from wab.parts.data import load_data


def wab_epoch(data, batch_size: int, rng: np.random.Generator) -> int:
    aug = Augmenter(Augment(crop_padding=4, flip=True), Normalizer(data.mean, data.std, torch.device("cpu")))
    perm = torch.from_numpy(rng.permutation(len(data.train)))
    n = 0
    for k in range(len(perm) // batch_size):
        idx = perm[k * batch_size : (k + 1) * batch_size]
        n += len(aug(data.train.x[idx], data.train.y[idx], rng).x)
    return n


def torchvision_epoch(loader) -> int:
    return sum(len(x) for x, _ in loader)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", nargs="+", type=int, default=[0, 2], help="DataLoader workers to compare with")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=int, default=None, help="first k training images only")
    args = p.parse_args()
    data = load_data("cifar10", root=os.environ.get("WAB_DATA"), heldout_fraction=0.0, train_subset=args.subset)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; CIFAR-10, "
          f"{len(data.train)} images, batch {args.batch_size}, crop+flip+normalise")  # fmt: skip
    rng = np.random.default_rng(0)
    wab_epoch(data, args.batch_size, rng)  # warm-up
    t0 = time.perf_counter()
    n = wab_epoch(data, args.batch_size, rng)
    t_wab = time.perf_counter() - t0
    print(f"wab on-device batched: {t_wab:.2f} s/epoch ({n / t_wab:,.0f} images/s)")
    for w in args.workers:
        (loader,) = member_loaders(data.train, data.mean, data.std, 1, args.batch_size, w)
        t0 = time.perf_counter()
        m = torchvision_epoch(loader)
        t_tv = time.perf_counter() - t0
        print(f"torchvision DataLoader + PIL, {w} workers: {t_tv:.2f} s/epoch ({m / t_tv:,.0f} images/s); "
              f"wab is {t_tv / t_wab:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
