"""Checkpoints sharded by member, in ``torch.distributed.checkpoint`` (DCP) format.

Each process writes the rows of the members it holds and nothing else, so a checkpoint costs a
process O(N/world) memory and bytes whatever N. Per-member state (parameters, buffers, optimizer
moments, a method's running averages) is marked :class:`MemberRows` wherever it sits in a state
dict; it is stored one DCP entry per member (``<path>/m<i>``), so a run resumes on any number of
processes: each one reads the entries of its own members. Everything else (counters, RNG
states, the method's scalars) is small and goes, with the skeleton of where the rows belong, into
the ``checkpoint.pt`` the main process writes last: that file is the commit point, naming the
shard directory it belongs to.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.api import CheckpointException

_ROWS = "__member_rows__"
_VALUES = "__member_values__"


@dataclass
class MemberRows:
    """A tensor with one row per member this process holds ([n_local, ...]): saved per member,
    and handed back to ``load_state_dict`` as the rows of the members the loading process holds."""

    rows: Tensor


@dataclass
class MemberValues:
    """Python values with one entry per member this process holds (a count, a list of decisions):
    checkpointed and reported as the list over every member of the population, and handed back
    to ``load_state_dict`` as the entries of the members the loading process holds."""

    values: list


def gather_values(obj: Any, all_members: Callable[[list], list]) -> Any:
    """``obj`` with every :class:`MemberValues` replaced by the list over every member
    (``all_members``: the population's gather of one value per held member, a collective)."""
    if isinstance(obj, MemberValues):
        return {_VALUES: all_members(list(obj.values))}
    if isinstance(obj, dict):
        return {k: gather_values(v, all_members) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(gather_values(v, all_members) for v in obj)
    return obj


def held_values(obj: Any, held: Sequence[int]) -> Any:
    """The inverse of :func:`gather_values` for the members ``held`` (their indices)."""
    if isinstance(obj, dict) and _VALUES in obj:
        return MemberValues([obj[_VALUES][i] for i in held])
    if isinstance(obj, dict):
        return {k: held_values(v, held) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(held_values(v, held) for v in obj)
    return obj


def reported(obj: Any, all_members: Callable[[list], list]) -> Any:
    """A method's report with every :class:`MemberValues` as the plain list over every member."""
    if isinstance(obj, MemberValues):
        return all_members(list(obj.values))
    if isinstance(obj, dict):
        return {k: reported(v, all_members) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(reported(v, all_members) for v in obj)
    return obj


def split_state(obj: Any, members: Sequence[int], path: str = "") -> tuple[Any, dict[str, Tensor]]:
    """``obj`` with every :class:`MemberRows` replaced by a placeholder (the skeleton, the same on
    every process), and the per-member tensors this process writes, keyed ``<path>/m<i>``."""
    tensors: dict[str, Tensor] = {}

    def walk(o: Any, p: str) -> Any:
        if isinstance(o, MemberRows):
            if len(o.rows) != len(members):
                raise ValueError(f"{p}: {len(o.rows)} rows for the {len(members)} members this process holds")
            for k, i in enumerate(members):
                tensors[f"{p}/m{i}"] = o.rows[k]
            return {_ROWS: p, "shape": list(o.rows.shape[1:]), "dtype": str(o.rows.dtype).removeprefix("torch.")}
        if isinstance(o, dict):
            return {k: walk(v, f"{p}/{k}") for k, v in o.items()}
        if isinstance(o, list | tuple):
            return type(o)(walk(v, f"{p}/{j}") for j, v in enumerate(o))
        return o

    return walk(obj, path), tensors


def join_state(skeleton: Any, directory: Path, members: Sequence[int], device: torch.device) -> Any:
    """The state :func:`split_state` took apart, with the rows of ``members`` read from the shard
    directory (each process reads only its own members' entries, without a collective)."""
    request: dict[str, Tensor] = {}

    def walk(o: Any) -> Any:
        if isinstance(o, dict) and _ROWS in o:
            rows = torch.empty((len(members), *o["shape"]), dtype=getattr(torch, o["dtype"]), device=device)
            for k, i in enumerate(members):
                request[f"{o[_ROWS]}/m{i}"] = rows[k]
            return MemberRows(rows)
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return type(o)(walk(v) for v in o)
        return o

    state = walk(skeleton)
    with _plain_errors("reading", directory), warnings.catch_warnings():  # one process: DCP says it assumes so
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(request, checkpoint_id=str(directory), no_dist=True)
    return state


@contextlib.contextmanager
def _plain_errors(doing: str, directory: Path) -> Iterator[None]:
    """DCP's CheckpointException is a BaseException, which a run's error handling (and a caller's
    ``except Exception``) would let through: raise it as an OSError naming the first cause."""
    try:
        yield
    except CheckpointException as e:
        causes = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        cause = causes[0] if causes else e
        raise OSError(f"{doing} {directory.name}: {type(cause).__name__}: {str(cause).splitlines()[0][:200]}") from None


def write_shards(tensors: dict[str, Tensor], directory: Path, processes: int) -> None:
    """Every process writes its entries into ``directory``; with several processes a collective,
    after which the main one writes the directory's metadata."""
    with _plain_errors("writing", directory), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(tensors, checkpoint_id=str(directory), no_dist=processes == 1)


def new_shard_dir(run_dir: Path, step: int) -> Path:
    """A fresh name for a checkpoint's shards (never one a kept checkpoint refers to)."""
    return run_dir / f"checkpoint-{step:09d}-{uuid.uuid4().hex[:8]}.dcp"


def remove_unreferenced(run_dir: Path, keep: Sequence[str]) -> None:
    """Delete shard directories no kept checkpoint names (those of older or unfinished saves)."""
    for d in run_dir.glob("checkpoint-*.dcp"):
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
