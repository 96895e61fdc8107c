"""The training device and CPU threads, and host-to-device copies that do not stall it.

Both the device type and, on CPU, the thread count change how results round (another kernel,
another split of a reduction: 1, 2 and 4 threads give NLLs that differ in the fifth digit on the
same run). So a run's config holds them explicitly (:func:`resolve_compute`) before its id is
computed, and :func:`compute_identity` is the part of them the id includes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def threads_here() -> int:
    """The threads ``trainer.threads=auto`` means in this process: the CPUs SLURM gave the job
    (``SLURM_CPUS_PER_TASK``), else torch's count (the cores, or ``OMP_NUM_THREADS``)."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or torch.get_num_threads()


def usable_cores() -> int:
    """The cores this process may run on (its CPU set; the machine's count where the OS has none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_cores() -> int:
    """The cores of this process's CPU set that other work leaves free now: their number minus the
    1-minute load average, at least 1 (on a shared node, more threads than free cores spin while
    they wait for each other and run several times slower)."""
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load)))


def resolve_compute(cfg: dict[str, Any], gpus: int | None = None, cpus: int | None = None) -> dict[str, Any]:
    """A copy of a run's config with ``device`` and ``trainer.threads`` explicit: ``auto`` resolved
    for this process (``gpus``/``cpus`` None), or for a cluster job given ``gpus`` GPUs and
    ``cpus`` CPUs (a sweep's resources). Explicit values are kept, so resolving twice changes
    nothing."""
    device = str(cfg.get("device", "auto"))
    if device == "auto":
        cuda = torch.cuda.is_available() if gpus is None else gpus > 0
        device = "cuda" if cuda else "cpu"
    trainer = cfg["trainer"]
    threads = trainer.get("threads", "auto")
    if threads == "auto":
        threads = threads_here() if cpus is None else cpus
    return {**cfg, "device": device, "trainer": {**trainer, "threads": threads}}


MEMBER_MODES = ("loop", "batched", "auto")


def resolve_members(mode: str, device: str) -> str:
    """``trainer.members``: ``loop`` (each member's forward and backward in turn) or ``batched``
    (all of a process's members as one vmapped computation, :mod:`wab.core.batched`); ``auto``
    is ``batched`` on CUDA, where one launch of each kernel for all members keeps the GPU busy,
    and ``loop`` on CPU, where the batched kernels are slower (BENCHMARKS.md, "Members
    batched")."""
    if mode not in MEMBER_MODES:
        raise ValueError(f"trainer.members={mode!r} must be one of {', '.join(MEMBER_MODES)}")
    if mode == "auto":
        return "batched" if str(device).startswith("cuda") else "loop"
    return mode


def compute_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What of the device, threads and member mode a run's id includes: ``{"device": "cuda"}`` on
    a GPU, ``{"threads": k}`` on k > 1 CPU threads, nothing on one CPU thread (so runs on one,
    such as the reference study's, keep the ids they had before threads counted); and
    ``{"members": "batched"}`` when the members are batched (:func:`resolve_members`: its
    kernels round differently from the loop's). An unresolved ``auto`` thread count (in a record
    from before) counts as one CPU thread."""
    device = str(cfg.get("device", "auto"))
    trainer = cfg.get("trainer") or {}
    members = trainer.get("members", "loop")
    is_batched = members in MEMBER_MODES and resolve_members(members, device) == "batched"
    mode = {"members": "batched"} if is_batched else {}
    if device.startswith("cuda"):
        return {"device": "cuda", **mode}
    threads = trainer.get("threads", "auto")
    return {**({"threads": threads} if isinstance(threads, int) and threads > 1 else {}), **mode}


def device_name(device: str) -> str:
    """The GPU's model, or ``cpu (<model>, <the vector instructions torch uses>)``: recorded, not
    in the run id, because devices of another model round differently (the same runs on two CPU
    models gave other numbers, BENCHMARKS.md), so a report flags a table that mixes them."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()})"
    return torch.cuda.get_device_name(torch.device(device))


@functools.cache
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; else the platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


@contextlib.contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """torch computes with ``threads`` CPU threads inside the block (as many as the run's id says)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_device(x: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """A host array or tensor on ``device``. To CUDA it goes through pinned memory without
    blocking: a plain ``.to("cuda")`` from pageable memory synchronises the stream, which would
    idle the GPU once per copy (the trainer copies random draws for every member every step)."""
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
