"""How the processes of a population talk: one process (:class:`LocalComm`), or several over
``torch.distributed`` (:class:`DistComm`: gloo on CPU, NCCL on GPU), each holding a contiguous
slice of the members. Only :mod:`wab.population` calls these; it decides what travels.

:class:`DistComm` counts the bytes each rank hands to every collective (its contribution: the
tensor of an all-reduce, its rows of an all-gather, the tensor a broadcast sends from its owner),
so a run can set what went over the wire beside the analytic ledger.
"""

from __future__ import annotations

import datetime
import os
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

BACKENDS = ("local", "distributed")


class LocalComm:
    """All members in this process: every collective is the identity."""

    rank = 0
    world = 1

    def all_reduce_sum(self, t: Tensor, op: str = "") -> Tensor:
        return t

    def all_gather_rows(self, t: Tensor, counts: list[int], op: str = "") -> Tensor:
        return t

    def broadcast(self, t: Tensor, src: int, op: str = "") -> Tensor:
        return t

    def all_gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, set if it is set on any process (a stop asked for on one stops them all)."""
        return flags

    @property
    def sent(self) -> dict[str, float]:
        return {}

    def load_sent(self, state: dict[str, float]) -> None:
        pass


class DistComm(LocalComm):
    """Collectives over the default ``torch.distributed`` process group, with bytes counted."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self._sent: dict[str, float] = defaultdict(float)

    def _count(self, op: str, nbytes: int) -> None:
        if op:
            self._sent[op] += nbytes

    def all_reduce_sum(self, t: Tensor, op: str = "") -> Tensor:
        self._count(op, t.numel() * t.element_size())
        dist.all_reduce(t, dist.ReduceOp.SUM)
        return t

    def all_gather_rows(self, t: Tensor, counts: list[int], op: str = "") -> Tensor:
        """The rows of every rank, in rank order (rank r holds ``counts[r]`` rows)."""
        self._count(op, t.numel() * t.element_size())
        rows = max(counts)
        padded = t if t.shape[0] == rows else torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded.contiguous())
        return torch.cat([o[:c] for o, c in zip(out, counts)])

    def broadcast(self, t: Tensor, src: int, op: str = "") -> Tensor:
        if self.rank == src:
            self._count(op, t.numel() * t.element_size())
        dist.broadcast(t, src)
        return t

    def all_gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        t = torch.tensor([int(f) for f in flags], device=_device_of_group())
        dist.all_reduce(t, dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    @property
    def sent(self) -> dict[str, float]:
        """Bytes this rank handed to collectives, per operation."""
        return dict(self._sent)

    def load_sent(self, state: dict[str, float]) -> None:
        self._sent = defaultdict(float, state)


def _device_of_group() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_world() -> int:
    """How many processes the launcher started for this run (torchrun's or submitit's
    WORLD_SIZE; 1 without a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launch_problems(backend: str, size: int) -> list[str]:
    """What is wrong with launching a population of ``size`` members on this launcher's
    processes, checked before anything (a run directory, a process group) is made."""
    world = launched_world()
    if backend != "distributed" and world > 1:
        return [f"the launcher started {world} processes (WORLD_SIZE={world}) but population.backend={backend}: "
                "every process would train every member; add population.backend=distributed"]  # fmt: skip
    if backend == "distributed" and world > size:
        return [f"population.size={size} is smaller than the {world} processes the launcher started: each "
                f"process must hold a member (use at most {size} processes, or more members)"]  # fmt: skip
    return []


def init(device: str, timeout_min: float = 5.0) -> LocalComm:
    """Join the process group that the launcher described in the environment (``torchrun``:
    RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; SLURM tasks through submitit), with gloo on CPU
    and NCCL on GPU, and return the communicator of this process. A collective that waits
    longer than ``timeout_min`` (a process lost without a word) raises instead of hanging."""
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            from wab.errors import UserError

            raise UserError(
                f"population.backend=distributed needs a launcher that sets {', '.join(missing)}: "
                "torchrun --nproc_per_node=K -m wab.cli train ..., or a sweep with resources.tasks_per_node"
            )
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
    return DistComm()
