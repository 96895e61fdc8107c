"""REPAIR (Jordan et al., ICLR 2023) for merged members, as PAPA's code applies it after a merge.

A merged network's channels lose variance. REPAIR measures, on a few batches of training data in
train mode, the mean and standard deviation of every convolution's output channels in each
parent, sets the goal of each child channel to the parents' statistics mixed with the child's
merge weights, and rescales each convolution of the child so that its output channels reach the
goal standard deviation (and, with a bias, the goal mean); the child's BatchNorm statistics are
then recomputed on the same batches. As in PAPA's code (``recombine/repair.py``), every
``nn.Conv2d`` is repaired; a model without convolutions (an MLP) is left as merged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

EPS = 1e-5  # BatchNorm's default, as in the authors' fused rescale


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


class _ChannelStats:
    """Cumulative per-channel mean and (unbiased) variance of a conv output over batches, as a
    BatchNorm with momentum None would track them."""

    def __init__(self) -> None:
        self.batches = 0
        self.mean: Tensor | None = None
        self.var: Tensor | None = None

    def add(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.float()
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=True)
        self.batches += 1
        if self.mean is None:
            self.mean, self.var = mean.clone(), var.clone()
        else:
            self.mean += (mean - self.mean) / self.batches
            self.var += (var - self.var) / self.batches
        return mean, x.var((0, 2, 3), unbiased=False)


@torch.no_grad()
def _run(model: nn.Module, batches: Sequence[Tensor], hook: Callable) -> None:
    handles = [c.register_forward_hook(hook(i)) for i, c in enumerate(_convs(model))]
    was_training = model.training
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def conv_statistics(model: nn.Module, batches: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """(mean, std) of every conv's output channels, over ``batches``, in train mode."""
    stats = [_ChannelStats() for _ in _convs(model)]

    def hook(i):
        def track(module, inputs, out):
            stats[i].add(out)

        return track

    _run(model, batches, hook)
    return [(s.mean, s.var.sqrt()) for s in stats]


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Sequence[Tensor]) -> None:
    """BatchNorm running statistics as the cumulative average over ``batches`` (train mode)."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    _run(model, batches, lambda i: lambda module, inputs, out: None)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum


@torch.no_grad()
def repair(model: nn.Module, goals: Sequence[tuple[Tensor, Tensor]], batches: Sequence[Tensor]) -> int:
    """Rescale the convs of ``model`` (in place) so that their output channels reach the goal
    (mean, std), each conv's input already repaired upstream; returns how many convs."""
    convs = _convs(model)
    if not convs:
        return 0
    stats = [_ChannelStats() for _ in convs]

    def hook(i):
        goal_mean, goal_std = goals[i]

        def correct(module, inputs, out):
            mean, var = stats[i].add(out)
            shape = (1, -1, 1, 1)
            normed = (out - mean.view(shape).to(out.dtype)) / (var.view(shape) + EPS).sqrt().to(out.dtype)
            return normed * goal_std.view(shape).to(out.dtype) + goal_mean.view(shape).to(out.dtype)

        return correct

    _run(model, batches, hook)
    for conv, s, (goal_mean, goal_std) in zip(convs, stats, goals):
        gamma = goal_std / (s.var + EPS).sqrt()
        if conv.bias is not None:
            conv.bias.copy_(goal_mean + gamma * (conv.bias - s.mean))
        conv.weight.mul_(gamma.view(-1, 1, 1, 1).to(conv.weight.dtype))
    recompute_bn(model, batches)
    return len(convs)


def mixed_goals(
    parent_stats: Sequence[Sequence[tuple[Tensor, Tensor]]], weights: Sequence[float]
) -> list[tuple[Tensor, Tensor]]:
    """Each conv's goal (mean, std): the parents' statistics mixed with the child's weights."""
    goals = []
    for layer in zip(*parent_stats):
        mean = sum(w * m for w, (m, _) in zip(weights, layer) if w)
        std = sum(w * s for w, (_, s) in zip(weights, layer) if w)
        goals.append((mean, std))
    return goals
