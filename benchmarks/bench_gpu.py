"""A population epoch on the GPU: N=5 ResNet-18 on CIFAR-10 through wab's trainer (bf16 autocast
and channels-last on CUDA by default; --compile adds torch.compile), one epoch of data order and
augmentation. Prints images per second per member, peak GPU memory, and the share of the step
spent outside forward/backward. That share is measured side by side: the trainer's step (data,
augmentation, zeroing, optimizer, method hook) against the members' forward+backward alone on
ready batches of the same shapes and settings, in alternating chunks.

    WAB_DATA=../shared/data .venv/bin/python -m benchmarks.bench_gpu [--size 5] [--steps K] [--compile]
    WAB_DATA=../shared/data .venv/bin/python -m benchmarks.bench_gpu --device cpu --steps 2   # a check
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from benchmarks.common import cifar10_trainer
from wab.core.step import forward_backward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--method", default="independent")
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="timed trainer steps (default: the rest of one epoch)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator, cudnn)")
    p.add_argument("--chunk", type=int, default=20, help="steps per alternating chunk")
    args = p.parse_args()
    trainer = cifar10_trainer(
        f"model={args.model}", f"method={args.method}", f"population.size={args.size}", f"device={args.device}",
        f"trainer.batch_size={args.batch_size}", f"trainer.compile={str(args.compile).lower()}",
    )  # fmt: skip
    cuda = trainer.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    data = trainer.data.train
    bs = trainer.batch_size
    batches = [aug(data.x[trainer.perms[i][:bs]], data.y[trainer.perms[i][:bs]], trainer.rngs[i])
               for i, aug in enumerate(trainer.augmenters)]  # fmt: skip
    steps = args.steps or trainer.steps_per_epoch - args.warmup
    for k in range(args.warmup):
        trainer.train_step(k)
        forward_backward(trainer.population, batches, trainer.autocast_dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_step = t_fb = 0.0
    for start in range(args.warmup, args.warmup + steps, args.chunk):
        ks = range(start, min(start + args.chunk, args.warmup + steps))
        sync()
        t0 = time.perf_counter()
        for k in ks:
            trainer.train_step(k)
        sync()
        t1 = time.perf_counter()
        for _ in ks:
            forward_backward(trainer.population, batches, trainer.autocast_dtype)
        sync()
        t_step += t1 - t0
        t_fb += time.perf_counter() - t1
    step, fb = t_step / steps, t_fb / steps
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {args.model} N={args.size}, batch {bs} per member, "
          f"amp={trainer.autocast_dtype}, channels_last={trainer.population.channels_last}, "
          f"compile={args.compile}, method={args.method}, {steps} timed steps")  # fmt: skip
    print(f"  step: {1e3 * step:.1f} ms; images/s per member: {bs / step:,.0f} "
          f"(population: {args.size * bs / step:,.0f})")  # fmt: skip
    print(f"  forward+backward alone: {1e3 * fb:.1f} ms; share of the step outside it: {100 * (1 - fb / step):.1f}%")
    if cuda:
        gib = 2**30
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / gib:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / gib:.2f} GiB reserved")  # fmt: skip
    else:
        print(f"  peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
