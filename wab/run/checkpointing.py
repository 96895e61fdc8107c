"""Saving and restoring everything stateful of a run: the population, the optimizer, the method,
the members' data order and random streams, the ledger, the records' clock, traffic and
evaluation lines. Each process writes its own members' rows (``torch.distributed.checkpoint``
shards, :mod:`wab.core.member_rows`); the main process writes ``checkpoint.pt`` last, the commit
point, and keeps the previous one. A resume reads the newest checkpoint every process can read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from wab.core.distributed import LocalComm
from wab.core.member_rows import MemberRows, new_shard_dir, remove_unreferenced, write_shards
from wab.run.build import BuiltRun
from wab.run.recorder import Recorder
from wab.run.records import RunDir, atomic_torch_save

log = logging.getLogger("wab")


class Checkpointer:
    """The checkpoint files of one run directory, for one process of the run."""

    def __init__(self, run_dir: RunDir, built: BuiltRun, recorder: Recorder, group: LocalComm) -> None:
        self.dir, self.built, self.recorder, self.group = run_dir, built, recorder, group
        self.is_main = group.rank == 0
        self.latest_shards = ""  # the shard directory checkpoint.pt names
        self.path: Path | None = None  # the checkpoint the run resumed from

    def save(self, perms: list[torch.Tensor] | None, epoch_losses: list[float]) -> None:
        """Every process writes its members' rows; the main process then commits ``checkpoint.pt``."""
        b, s, pop = self.built, self.built.state, self.built.population
        name = new_shard_dir(self.dir.path, s.step).name if self.is_main else None
        name = self.group.all_gather_objects(name, "checkpoint_name")[0]  # the main process's
        per_member = {
            "population": pop.state_dict(),
            "optimizer": pop.optimizer_state_dict(b.optimizer),
            "method": b.method.state_dict(s),
            "perms": MemberRows(torch.stack(perms)) if perms is not None else None,
        }
        skeleton, tensors = pop.shard_state(per_member)
        write_shards(tensors, self.dir.path / name, self.group.world)  # each process its own members' rows
        records = self.recorder.state_dict()
        ckpt = {
            "step": s.step, "epoch": s.epoch, "epoch_step": s.epoch_step, "lr": s.lr,
            "wall_time_s": records["wall_time_s"], "eval_time_s": records["eval_time_s"],
            "epoch_losses": epoch_losses, "shards": name, "state": skeleton, "ledger": b.ledger.state_dict(),
            "member_rngs": pop.all_members([r.bit_generator.state for r in b.rngs]),
            "order_rng": b.order_rng.bit_generator.state if b.order_rng is not None else None,
            "traffic": records["traffic"], "process_counts": records["process_counts"],
            "metric_lines": records["metric_lines"], "method_rng": s.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if b.device.type == "cuda" else [],
        }  # fmt: skip
        if self.is_main:  # the commit point: the shards are complete once every process has written
            atomic_torch_save(self.dir.checkpoint, ckpt, keep=self.dir.previous_checkpoint)
            remove_unreferenced(self.dir.path, [name, self.latest_shards])  # those of the new and the kept one
        self.latest_shards = name

    def read(self) -> dict | None:
        """The newest checkpoint every process can read (the previous one when the latest, or one
        of its shards, is damaged), with this process's members' rows; or None."""
        for path in (self.dir.checkpoint, self.dir.previous_checkpoint):
            if not self.group.any_of(path.exists())[0]:
                continue
            ckpt, problem = None, ""
            try:
                ckpt = torch.load(path, map_location=self.built.device, weights_only=True)
                if "shards" not in ckpt:
                    raise ValueError("written by a wab before checkpoints were sharded by member")
                ckpt["state"] = self.built.population.unshard_state(ckpt["state"], self.dir.path / ckpt["shards"])
            except Exception as e:  # truncated, a shard missing or damaged, or not a checkpoint at all
                ckpt, problem = None, f"{type(e).__name__}: {str(e)[:160]}"
            if self.group.any_of(ckpt is None)[0]:  # every process falls back together
                log.warning("checkpoint %s is unreadable%s; trying an older one", path,
                            f" ({problem})" if problem else " on another process")  # fmt: skip
                continue
            self.path = path
            # checkpoint.pt's shards, which it keeps once it becomes the previous checkpoint
            self.latest_shards = ckpt["shards"] if path == self.dir.checkpoint else ""
            return ckpt
        return None

    def load(self, ckpt: dict[str, Any]) -> tuple[list[torch.Tensor] | None, list[float]]:
        """Restore every component from ``ckpt``; returns the epoch's data orders and losses so far."""
        b, s, pop = self.built, self.built.state, self.built.population
        s.step, s.epoch, s.epoch_step, s.lr = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt["lr"]
        state = ckpt["state"]
        pop.load_state_dict(state["population"])
        pop.load_optimizer_state_dict(b.optimizer, state["optimizer"])
        b.method.load_state_dict(s, state["method"])
        b.ledger.load_state_dict(ckpt["ledger"])
        for rng, st in zip(b.rngs, pop.held(ckpt["member_rngs"])):
            rng.bit_generator.state = st
        if b.order_rng is not None:
            b.order_rng.bit_generator.state = ckpt["order_rng"]
        self.recorder.load_state_dict(ckpt)
        s.rng.set_state(ckpt["method_rng"].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["cuda_rng"]])
        log.info("resumed from %s at step %d (epoch %d)", self.path, s.step, s.epoch)
        perms = list(state["perms"].rows) if state["perms"] is not None else None
        return perms, list(ckpt["epoch_losses"])
