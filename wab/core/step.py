"""The population step: every member's forward and backward on its own batch into the flat
gradient rows, then one optimizer step of the flat [N, P] tensor. Imports the population, the
augmentation's batches and the optimizer's per-member recipes.
"""

from __future__ import annotations

import numpy as np
import torch

from wab.core.batched import BatchedMembers
from wab.core.population import Population
from wab.parts.augment import Batch
from wab.parts.optim import MemberRecipes


def forward_backward(
    population: Population, batches: list[Batch], autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Every member's forward and backward on its own batch, accumulating into the flat gradient.
    Each member's graph is back-propagated and freed before the next member's forward (faster on
    CPU than one backward of the summed losses, and a lower memory peak); with ``autocast_dtype``
    (bf16 on CUDA) the forward runs under autocast. Returns the summed loss, on the device."""
    total = torch.zeros((), device=population.device)
    for member, batch in zip(population.members, batches):
        with torch.autocast(
            population.device.type, dtype=autocast_dtype or torch.float32, enabled=bool(autocast_dtype)
        ):
            loss = batch.loss(member(batch.x))
        loss.backward()
        total += loss.detach()
    return total


def population_step(
    population: Population,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    check_finite: bool = False,
    autocast_dtype: torch.dtype | None = None,
    recipes: MemberRecipes | None = None,
    clip_norm: float = 0.0,
    batched: BatchedMembers | None = None,
) -> float:
    """One optimizer step of every member on its own batch (:func:`forward_backward`), as one
    optimizer step of the flat tensor (with ``recipes``, each member's own lr scale and weight
    decay; with ``clip_norm`` > 0, each member's gradient clipped to that L2 norm first). Returns
    the loss summed over every member of the population (read back from the device only when
    ``check_finite``; a non-finite loss, on any process, skips the step). With ``batched``, the
    members' forward and backward are one computation (:mod:`wab.core.batched`)."""
    population.zero_grad()
    if batched is not None:
        total = batched.forward_backward(batches, autocast_dtype)
    else:
        total = forward_backward(population, batches, autocast_dtype)
    loss = 0.0
    if check_finite:
        with population.comm.counting("control"):
            loss = population.comm.all_reduce_sum(total.double().view(1), "loss_check").item()
    if np.isfinite(loss):
        if clip_norm > 0:
            clip_member_gradients(population, clip_norm)
        lr = optimizer.param_groups[0]["lr"]
        if recipes is not None:
            recipes.before_step(lr)
        optimizer.step()
        if recipes is not None:
            recipes.after_step(lr)
    return loss


@torch.no_grad()
def clip_member_gradients(population: Population, max_norm: float) -> None:
    """Each member's gradient scaled to L2 norm at most ``max_norm``, as torch's
    ``clip_grad_norm_`` on that member's parameters (coefficient max_norm / (norm + 1e-6),
    at most 1)."""
    norms = torch.stack([g.float().norm(dim=1) for g in population.grads]).norm(dim=0)  # [n_local]
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in population.grads:
        g.mul_(coef.to(g.dtype).unsqueeze(1))
