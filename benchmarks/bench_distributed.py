"""The distributed population's collectives against a training step, and the bytes they put on
the wire against the analytic ledger.

ResNet-18 at 32x32, N=4 members on 2 gloo processes (2 members each), CPU: the time per step of
the WASH shuffle (p=0.01, linear schedule, after every step) and of the PAPA pull (every 10
steps, so a tenth of one pull per step), against the population's training step, each a median
over repetitions with a barrier around it; and for each operation the bytes each process handed
to collectives, per member per call, beside what the ledger counts (one member's share,
parameter-server convention).

    OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --nproc_per_node=2 \\
        -m benchmarks.bench_distributed [--size 4] [--batch-size 32]
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from benchmarks.common import SGD, SetupState, median_time, method_cfg, synthetic_batches
from wab.core.distributed import init
from wab.core.ledger import CommLedger
from wab.core.population import Population
from wab.core.step import population_step
from wab.methods.wash import Wash
from wab.parts.models import model_factory
from wab.parts.optim import build_optimizer


def synced(fn):
    def call():
        dist.barrier()
        fn()
        dist.barrier()

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--step-reps", type=int, default=3)
    p.add_argument("--op-reps", type=int, default=10)
    args = p.parse_args()
    comm = init("cpu")
    ledger = CommLedger()
    pop = Population(model_factory(args.model, 3, 32, 10), range(args.size), "cpu", ledger, True, comm)
    opt = build_optimizer(pop.params, SGD)
    batches = synthetic_batches(len(pop.members), args.batch_size, channels_last=True, seed=comm.rank)
    step = median_time(synced(lambda: population_step(pop, opt, batches)), args.step_reps)
    rng = torch.Generator().manual_seed(1)  # the same stream on every process: no index travels
    wash = Wash(method_cfg("wash", p=0.01, schedule="linear"))
    wash.setup(SetupState(pop))
    ops = {
        "WASH shuffle p=0.01": ("permute_elements", 1.0, lambda: wash.shuffle(pop, rng)),
        "PAPA pull (every 10 steps)": ("lerp_toward_mean", 0.1, lambda: pop.lerp_toward_mean(0.01)),
    }
    rows = []
    for name, (op, per_step, fn) in ops.items():
        ledger.ops.clear()
        sent0 = comm.traffic.get("train", {}).get(op, [0.0])[0]
        t = median_time(synced(fn), args.op_reps)
        calls = ledger.ops[op].calls
        wire = (comm.traffic["train"][op][0] - sent0) / calls / len(pop.members)  # bytes per member per call
        analytic = ledger.ops[op].bytes / calls
        rows.append((name, t, per_step, wire, analytic))
    if comm.rank == 0:
        print(f"torch {torch.__version__}, {comm.world} gloo processes x {torch.get_num_threads()} thread(s), CPU; "
              f"{args.model}, N={args.size} ({len(pop.members)} per process), D={pop.num_params:,}, "
              f"batch {args.batch_size} per member")  # fmt: skip
        print(f"training step: {1e3 * step:.1f} ms")
        print(f"{'operation':>28s} {'ms per call':>12s} {'% of step':>10s} {'bytes/member/call':>18s} "
              f"{'ledger bytes':>13s} {'wire/ledger':>12s}")  # fmt: skip
        for name, t, per_step, wire, analytic in rows:
            print(f"{name:>28s} {1e3 * t:>12.2f} {100 * t * per_step / step:>9.3f}% {wire:>18,.0f} {analytic:>13,.0f} "
                  f"{wire / analytic:>12.2f}")  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
