"""One optimizer over the population's flat tensors, and the learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step", "swa")


def build_optimizer(params: Sequence[Tensor], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov, weight decay) or AdamW over the flat [N, P] tensors.

    Every update rule here is element-wise, so one step over [N, P] equals N separate steps.
    ``fused`` (default true) selects torch's fused kernel: one pass over each member's row with no
    [N, P] temporaries (ResNet-18, N=10, CPU: SGD 0.05 s against 0.32 s per step; see BENCHMARKS.md).
    It is applied to each row as a tensor of its own (:class:`RowwiseFusedSGD`), so that a
    member's rounding does not depend on which rows share its process; ``fused=false`` uses
    torch's per-element (foreach) path, which rounds differently and is hashed into the run id.
    """
    name = cfg["name"]
    check_optim(cfg)
    fused = bool(cfg.get("fused", True))
    if name == "sgd":
        kwargs = dict(lr=cfg["lr"], momentum=cfg.get("momentum", 0.0), nesterov=cfg.get("nesterov", False),
                      weight_decay=cfg.get("weight_decay", 0.0))  # fmt: skip
        return RowwiseFusedSGD(list(params), **kwargs) if fused else torch.optim.SGD(list(params), **kwargs)
    if name == "adamw":
        kwargs = dict(lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=cfg.get("eps", 1e-8),
                      weight_decay=cfg.get("weight_decay", 0.01))  # fmt: skip
        return RowwiseFusedAdamW(list(params), **kwargs) if fused else torch.optim.AdamW(list(params), **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")


def _rows(t: Tensor) -> list[Tensor]:
    return list(t.unbind(0))


class RowwiseFusedSGD(torch.optim.SGD):
    """torch's fused SGD kernel, run on each member's row of a flat [N, P] tensor as a tensor of
    its own. On one flat tensor the kernel's vector/scalar split and thread chunks fall at
    offsets that depend on how many rows the tensor has, so a member trained beside 3 others
    rounds differently from the same member beside 1 (up to 0.8 points of accuracy after a few
    hundred steps); per row they fall at the same offsets on any number of processes. The state
    (``momentum_buffer`` [N, P]) and the update are torch's."""

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                first = momentum != 0 and "momentum_buffer" not in state
                if first:
                    state["momentum_buffer"] = torch.empty_like(p)
                torch._fused_sgd_(
                    _rows(p), _rows(p.grad), _rows(state["momentum_buffer"]) if momentum != 0 else [],
                    weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                    dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                    is_first_step=first,
                )  # fmt: skip


class RowwiseFusedAdamW(torch.optim.AdamW):
    """torch's fused AdamW kernel, run on each member's row as a tensor of its own (see
    :class:`RowwiseFusedSGD`); the state (``step``, ``exp_avg``, ``exp_avg_sq``) is torch's."""

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"].add_(1)
                torch._fused_adamw_(
                    _rows(p), _rows(p.grad), _rows(state["exp_avg"]), _rows(state["exp_avg_sq"]), [],
                    [state["step"]] * len(p), amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                )  # fmt: skip


def check_optim(cfg: Mapping[str, Any]) -> None:
    """Refuse optimizer settings torch would reject (or silently misuse), naming the key."""
    checks = [("lr", lambda v: v > 0, "> 0"), ("lr_min", lambda v: v >= 0, ">= 0"),
              ("weight_decay", lambda v: v >= 0, ">= 0"), ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
              ("eps", lambda v: v > 0, "> 0"), ("warmup_epochs", lambda v: v >= 0, ">= 0"),
              ("clip_norm", lambda v: v >= 0, ">= 0 (0: no clipping)")]  # fmt: skip
    for key, ok, allowed in checks:
        if key in cfg and not (isinstance(cfg[key], int | float) and ok(cfg[key])):
            raise ValueError(f"optim.{key}={cfg[key]} must be a number {allowed}")
    betas = cfg.get("betas")
    if betas is not None and not (len(betas) == 2 and all(isinstance(b, int | float) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"optim.betas={list(betas)} must be two numbers in [0, 1)")


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: Mapping[str, Any]) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    - ``constant``: lr.
    - ``cosine``: per step from lr down to ``lr_min`` (PAPA: 0.1 -> 1e-4).
    - ``step``: lr times ``gamma`` per passed milestone; milestones are fractions of training.
    - ``swa``: the schedule of Izmailov et al. (2018), per epoch as in their code: lr for the
      first half of the pre-SWA phase, linear decay to ``swa_lr`` by 90% of it, then ``swa_lr``;
      ``swa_start`` is a fraction of the epochs.
    A linear warm-up over ``warmup_epochs`` multiplies any of them.
    """
    lr0 = cfg["lr"]
    schedule = cfg.get("schedule", "constant")
    t = step / max(total_steps, 1)
    if schedule == "constant":
        lr = lr0
    elif schedule == "cosine":
        lr_min = cfg.get("lr_min", 0.0)
        lr = lr_min + (lr0 - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == "step":
        passed = sum(t >= m for m in cfg.get("milestones", (0.5, 0.75)))
        lr = lr0 * cfg.get("gamma", 0.1) ** passed
    elif schedule == "swa":
        epochs = total_steps / steps_per_epoch
        start = cfg.get("swa_start", 0.55) * epochs
        ratio = cfg.get("swa_lr", 0.05) / lr0
        u = (step // steps_per_epoch) / max(start, 1e-12)
        factor = 1.0 if u <= 0.5 else (1.0 - (1.0 - ratio) * (u - 0.5) / 0.4 if u <= 0.9 else ratio)
        lr = lr0 * factor
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}; known schedules: {', '.join(SCHEDULES)}")
    warmup = cfg.get("warmup_epochs", 0) * steps_per_epoch
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


RECIPE_KEYS = ("lr_scale", "weight_decay")  # per-member optimizer overrides in population.member_augment


class MemberRecipes:
    """Per-member learning-rate scale and weight decay over the one flat optimizer (PAPA's and
    the soups papers' per-member recipes): member i trains as if its own optimizer had lr_i =
    lr_scale_i * lr and weight decay wd_i, the others' defaults being 1 and optim.weight_decay.

    The optimizer is built with no weight decay. SGD (momentum and Nesterov are linear in the
    gradient): each member's gradient row gets + wd_i theta_i and is scaled by lr_scale_i before
    the step. AdamW (invariant to a gradient's scale, with decoupled decay): after the step,
    theta_i <- theta_i + lr_scale_i (delta_i - lr wd_i theta_i) with delta_i the step's change,
    which is torch's decay-then-update with lr_i. Nothing is done for a population without such
    overrides."""

    def __init__(self, params: Sequence[Tensor], cfg: Mapping[str, Any], rows: Sequence[Mapping[str, float]]) -> None:
        self.name = cfg["name"]
        base_wd = float(cfg.get("weight_decay", 0.0))
        self.params = list(params)
        device = self.params[0].device
        self.scale = torch.tensor([float(r.get("lr_scale", 1.0)) for r in rows], device=device).view(-1, 1)
        self.wd = torch.tensor([float(r.get("weight_decay", base_wd)) for r in rows], device=device).view(-1, 1)
        self._before: list[Tensor] = []

    @staticmethod
    def check(entries: Sequence[Mapping[str, Any]], optimizer: str) -> None:
        for i, e in enumerate(entries):
            if "lr_scale" in e and not (isinstance(e["lr_scale"], int | float) and e["lr_scale"] > 0):
                raise ValueError(f"population.member_augment[{i}].lr_scale={e['lr_scale']} must be a number > 0")
            if "weight_decay" in e and not (isinstance(e["weight_decay"], int | float) and e["weight_decay"] >= 0):
                raise ValueError(f"population.member_augment[{i}].weight_decay={e['weight_decay']} must be >= 0")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"per-member lr_scale and weight_decay need optim sgd or adamw, got {optimizer!r}")

    @torch.no_grad()
    def before_step(self, lr: float) -> None:
        if self.name == "sgd":
            for p in self.params:
                p.grad.add_(p * self.wd).mul_(self.scale)
        else:
            self._before = [p.clone() for p in self.params]

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        if self.name == "adamw":
            for p, before in zip(self.params, self._before):
                delta = p - before
                p.copy_(before + self.scale * (delta - lr * self.wd * before))
            self._before = []
