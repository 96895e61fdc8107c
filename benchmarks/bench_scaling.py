"""Per-process cost of one population spread over 1, 2, 4 and 8 gloo processes: peak memory
and the bytes each process sends, per phase, for a whole run (training, evaluation with LMC,
checkpoints). With members, checkpoints and evaluation all held per process, both should fall
as N/world: the columns set each figure against the 1-process one and 1/world.

    .venv/bin/python -m benchmarks.bench_scaling [--size 16] [--width 16384] [--procs 1 2 4 8] [--method twa]

Each configuration is a fresh ``torchrun`` of a real ``wab.run.lifecycle.run`` (WASH, a one-hidden-layer
MLP on the embedded digits, 2 epochs, a checkpoint each epoch, evaluation batches of 100 so that
activations stay small). ``--method twa``: TWA-t on every member's final weights and last two
epochs' snapshots (3 candidates per member), 2 TWA epochs, whose fit each process does with its
own members' candidates. Peak memory is each process's peak resident set size minus its size
before the run started (imports done), the maximum over processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile


def child(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from wab.run.config import compose_config
    from wab.run.lifecycle import run

    method = ["method=wash"]
    if args.method == "twa":
        method = ["method=twa", "method.variant=t", "method.candidates=both", "method.snapshot_start=0",
                  "method.epochs=2"]  # fmt: skip
    cfg = compose_config([*method, "data=digits", "model=mlp", f"model.width={args.width}",
                          f"population.size={args.size}", "population.backend=distributed", "trainer.epochs=2",
                          "trainer.batch_size=64", "trainer.eval_batch_size=100", "trainer.progress=false",
                          "device=cpu", f"out_dir={args.out}"])  # fmt: skip
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = run(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mine = {"base_mb": base / 1024, "grown_mb": (peak - base) / 1024}
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"procs": dist.get_world_size(), "parts": parts, "record": record}))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--method", choices=["wash", "twa"], default="wash")
    p.add_argument("--child", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    if args.child:
        return child(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for procs in args.procs:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                   "--master_addr=127.0.0.1", f"--master_port={_port()}", "-m", "benchmarks.bench_scaling", "--child",
                   f"--size={args.size}", f"--width={args.width}", f"--out={out}",
                   f"--method={args.method}"]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{procs} processes failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(line.removeprefix("RESULT ")))
            if (status := rows[-1]["record"]["status"]) != "done":  # a failed run's figures measure nothing
                sys.exit(f"{procs} processes: the run is {status}: {rows[-1]['record'].get('error')}")
    rec = rows[0]["record"]
    n, d = rec["population_size"], rec["comm"]["model_elements"]
    print(f"N={n} MLP members of D={d:,} parameters ({4 * d / 2**20:.1f} MiB each), {args.method}, 2 epochs of digits, "
          f"1 thread per process, CPU gloo")  # fmt: skip
    print(f"{'procs':>5s} {'peak MB':>8s} {'vs 1':>6s} {'train MB':>9s} {'eval MB':>8s} {'ckpt MB':>8s} "
          f"{'control MB':>10s} {'total vs 1':>10s} {'1/procs':>8s} {'wall s':>7s}")  # fmt: skip
    first = None
    for row in rows:
        k = row["procs"]
        grown = max(part["grown_mb"] for part in row["parts"])
        m = row["record"]["comm"].get("measured") or {"sent_by_phase": {}}
        sent = {ph: v / k / 2**20 for ph, v in m["sent_by_phase"].items()}  # per process
        total = sum(sent.values())
        first = first or (grown, total)
        print(f"{k:>5d} {grown:>8.0f} {grown / first[0]:>6.2f} {sent.get('train', 0):>9.2f} "
              f"{sent.get('eval', 0):>8.2f} {sent.get('checkpoint', 0):>8.2f} {sent.get('control', 0):>10.3f} "
              f"{total / first[1] if first[1] else float('nan'):>10.2f} {1 / k:>8.3f} "
              f"{row['record']['wall_time_s']:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
