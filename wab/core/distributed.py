"""How the processes of a population talk: one process (:class:`LocalComm`), or several over
``torch.distributed`` (:class:`DistComm`: gloo on CPU, NCCL on GPU), each holding a contiguous
slice of the members. Only :mod:`wab.core.population` calls these; it decides what travels.

:class:`DistComm` counts the bytes each rank hands to every collective and gets back from the
others (an all-reduce: its tensor both ways; an all-gather: its rows out, the others' rows in; a
broadcast: out from its owner, in everywhere else), per phase (training, evaluation,
checkpoints, control flags) and operation, so a run can set what went over the wire beside the
analytic ledger.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import pickle
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

BACKENDS = ("local", "distributed")


PHASES = ("train", "eval", "checkpoint", "control")  # what a collective was for, counted apart


class LocalComm:
    """All members in this process: every collective is the identity, and nothing is counted.
    It still carries the traffic a run measured before it resumed here (``load_traffic``)."""

    rank = 0
    world = 1

    def __init__(self) -> None:
        self.phase = "train"
        self._traffic: dict[str, dict[str, list[float]]] = {}

    @contextlib.contextmanager
    def counting(self, phase: str) -> Iterator[None]:
        """Count the collectives inside as ``phase`` (one of PHASES) instead of training traffic."""
        if phase not in PHASES:
            raise ValueError(f"unknown traffic phase {phase!r}; known: {', '.join(PHASES)}")
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def _count(self, op: str, sent: float, received: float) -> None:
        pass

    def all_reduce_sum(self, t: Tensor, op: str = "") -> Tensor:
        return t

    def all_gather_rows(self, t: Tensor, counts: list[int], op: str = "") -> Tensor:
        return t

    def exchange(self, sends: list[tuple[Tensor, int]], recvs: list[tuple[Tensor, int]], op: str = "") -> None:
        """Point-to-point: send each (tensor, to rank) and receive into each (tensor, from rank);
        every process lists the transfers between any two processes in the same order."""

    def broadcast(self, t: Tensor, src: int, op: str = "") -> Tensor:
        return t

    def all_gather_objects(self, obj: Any, op: str = "objects") -> list[Any]:
        return [obj]

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, set if it is set on any process (a stop asked for on one stops them all)."""
        return flags

    @property
    def traffic(self) -> dict[str, dict[str, list[float]]]:
        """{phase: {operation: [bytes sent, bytes received]}} of this process, since the run
        began (with what :meth:`load_traffic` carried over)."""
        return {ph: {op: list(v) for op, v in ops.items()} for ph, ops in self._traffic.items()}

    def load_traffic(self, traffic: dict[str, dict[str, list[float]]]) -> None:
        self._traffic = {ph: {op: list(v) for op, v in ops.items()} for ph, ops in traffic.items()}


class DistComm(LocalComm):
    """Collectives over the default ``torch.distributed`` process group, with every byte counted:
    what this process hands to each collective (sent) and what it gets from the others
    (received), per phase and operation (an unnamed one by its kind: ``all_gather``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def _count(self, op: str, sent: float, received: float) -> None:
        entry = self._traffic.setdefault(self.phase, {}).setdefault(op, [0.0, 0.0])
        entry[0] += sent
        entry[1] += received

    def all_reduce_sum(self, t: Tensor, op: str = "") -> Tensor:
        nbytes = t.numel() * t.element_size()
        self._count(op or "all_reduce", nbytes, nbytes)
        dist.all_reduce(t, dist.ReduceOp.SUM)
        return t

    def all_gather_rows(self, t: Tensor, counts: list[int], op: str = "") -> Tensor:
        """The rows of every rank, in rank order (rank r holds ``counts[r]`` rows)."""
        padded = _padded(t, counts)
        nbytes = padded.numel() * padded.element_size()
        self._count(op or "all_gather", nbytes, nbytes * (self.world - 1))
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded.contiguous())
        return torch.cat([o[:c] for o, c in zip(out, counts)])

    def exchange(self, sends: list[tuple[Tensor, int]], recvs: list[tuple[Tensor, int]], op: str = "") -> None:
        ops = [dist.P2POp(dist.isend, t.contiguous(), peer) for t, peer in sends]
        ops += [dist.P2POp(dist.irecv, t, peer) for t, peer in recvs]
        self._count(op or "exchange", sum(t.numel() * t.element_size() for t, _ in sends),
                    sum(t.numel() * t.element_size() for t, _ in recvs))  # fmt: skip
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()

    def broadcast(self, t: Tensor, src: int, op: str = "") -> Tensor:
        nbytes = t.numel() * t.element_size()
        self._count(op or "broadcast", nbytes if self.rank == src else 0, 0 if self.rank == src else nbytes)
        dist.broadcast(t, src)
        return t

    def all_gather_objects(self, obj: Any, op: str = "objects") -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        sizes = [len(pickle.dumps(o)) for o in out]  # what torch pickled and moved, give or take its padding
        self._count(op, sizes[self.rank], sum(sizes) - sizes[self.rank])
        return out

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        t = torch.tensor([int(f) for f in flags], device=_device_of_group())
        with self.counting("control"):
            self._count("stop_flags", t.numel() * t.element_size(), t.numel() * t.element_size())
        dist.all_reduce(t, dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())


def _padded(t: Tensor, counts: list[int]) -> Tensor:
    """``t`` with zero rows added up to the most rows any rank holds (collectives want equal shapes)."""
    rows = max(counts)
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


def merge_traffic(parts: list[dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """The sum of several processes' :attr:`LocalComm.traffic`."""
    out: dict[str, dict[str, list[float]]] = {}
    for part in parts:
        for phase, ops in part.items():
            for op, (sent, received) in ops.items():
                entry = out.setdefault(phase, {}).setdefault(op, [0.0, 0.0])
                entry[0] += sent
                entry[1] += received
    return out


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
    longer than ``timeout_min`` (a process lost without a word) raises instead of hanging. A group
    made here is destroyed when the process exits, while the interpreter is still whole: left to
    the interpreter's teardown, gloo's threads can abort a finished process (SIGABRT, "terminate
    called without an active exception", pytorch/pytorch#190489)."""
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
        atexit.register(_leave_group)
    return DistComm()


def _leave_group() -> None:
    """Destroy the process group :func:`init` made, unless the process already did."""
    if dist.is_initialized():
        dist.destroy_process_group()
