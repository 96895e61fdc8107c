"""What a run cost, and what it cost to reach a target (AlgoPerf's time-to-target rule).

Training FLOPs are measured rather than written by hand: one member's forward and backward on
one batch, counted once per model by ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (nothing is allocated, nothing is computed); a run's training FLOPs are
members x steps x that count. The counter counts matrix products and convolutions (the FLOPs
that matter), not element-wise operations (BatchNorm, activations, the optimizer step), and not
the extra passes a method makes outside training steps (held-out evaluations, TWA's training).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode


def step_flops(build: Callable[[], nn.Module], batch_size: int, channels: int, image_size: int, classes: int) -> int:
    """FLOPs of one member's forward and backward pass (cross-entropy loss) on one batch."""
    with torch.device("meta"):
        model = build()
        x = torch.empty(batch_size, channels, image_size, image_size)
        y = torch.zeros(batch_size, dtype=torch.long)
    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=64)
def _cached(model_json: str, batch_size: int, channels: int, image_size: int, classes: int) -> int:
    from wab.parts.models import model_factory

    mcfg = json.loads(model_json)
    build = model_factory(mcfg.pop("name"), channels, image_size, classes, **mcfg)
    return step_flops(build, batch_size, channels, image_size, classes)


def run_flops(cfg: dict[str, Any], steps: int) -> dict[str, int]:
    """``{"per_member_step", "per_step", "train"}`` FLOPs of a run with config ``cfg`` (a resolved
    config) after ``steps`` optimizer steps: per_step = members x per_member_step and
    train = steps x per_step."""
    from wab.parts.data import SHAPES, dataset_shape

    d = cfg["data"]
    shape = SHAPES.get(d["name"]) or dataset_shape(d["name"], d.get("root"), False, int(d.get("image_size", 32)))
    per_member = _cached(json.dumps(cfg["model"], sort_keys=True), int(cfg["trainer"]["batch_size"]),
                         shape.channels, shape.image_size, shape.num_classes)  # fmt: skip
    per_step = per_member * int(cfg["population"]["size"])
    return {"per_member_step": per_member, "per_step": per_step, "train": per_step * int(steps)}


def time_to_target(
    lines: list[dict], target: float, flops_per_step: int | None, metric: str = "final_acc"
) -> dict[str, float | int | None]:
    """The cost at the first evaluation whose ``metric`` reaches ``target`` (a fraction), from a
    run's evaluation lines (metrics.jsonl): its step, training FLOPs, bytes one member sent and
    training time (``train_time_s``: evaluation excluded, averaging and finalizers included;
    None for records that predate it). ``{"reached": False}`` when no evaluation reached it.
    The resolution is one evaluation (``trainer.eval_every`` epochs)."""
    for line in sorted(lines, key=lambda r: r["step"]):
        value = line.get(metric)
        if value is not None and value >= target:
            comm = line.get("comm") or {}
            return {
                "reached": True,
                "step": int(line["step"]),
                "epoch": int(line["epoch"]),
                "flops": int(line["step"]) * flops_per_step if flops_per_step else None,
                "bytes": comm.get("bytes_total"),
                "train_time_s": line.get("train_time_s"),
            }
    return {"reached": False}
