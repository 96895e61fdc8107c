"""Git Re-Basin weight matching before averaging (Ainsworth et al., ICLR 2023), then REPAIR
(Jordan et al., ICLR 2023): the finalizer ``rebasin`` any method can end with
(``population.finalizers=[rebasin]``), the baseline PAPA's paper compares against ("independent +
alignment + REPAIR").

Every member is aligned to member 0 by permuting its hidden units (:mod:`wab.permutation`: the
permutation structure is traced from the model with torch.fx; a model it cannot trace is refused
before the run starts), the aligned members are averaged (weights and buffers), and REPAIR
rescales the average's convolutions to the aligned members' mean channel statistics on 5 batches
of 500 training images, as after PAPA's merges (a model without convolutions, the MLP, is left
as averaged; its BatchNorm is recalibrated before evaluation like every final model).
Communication: every member's weights gathered once (D per member, ``rebasin_gather``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from wab.method import RunState, register_finalizer
from wab.permutation import NotPermutable, apply_permutation, permutation_spec, weight_matching
from wab.repair import conv_statistics, mixed_goals, repair

REPAIR_BATCHES, REPAIR_BATCH_SIZE = 5, 500


def _example(run: RunState) -> torch.Tensor:
    x = run.data.train.x[:2]
    return run.evaluator.normalize(x) if x.device.type != "meta" else torch.zeros(x.shape, device="meta")


def _spec(run: RunState, model: nn.Module):
    example = _example(run)
    try:
        return permutation_spec(copy.deepcopy(model).to(example.device), example)
    except NotPermutable as e:
        raise ValueError(f"finalizer rebasin cannot align model {run.cfg['model']['name']}: {e}") from None


def check(run: RunState) -> None:
    """Refuse a model whose permutation structure cannot be traced, before anything runs."""
    with torch.device("meta"):
        model = run.population.build_member()
    _spec(run, model)


@register_finalizer("rebasin", check=check)
def rebasin(run: RunState) -> dict[str, nn.Module]:
    """Members aligned to member 0, averaged, then REPAIRed."""
    pop = run.population
    run.ledger.record("rebasin_gather", pop.num_params, pop.params[0].element_size(), "all_gather")
    models = [pop.model_from(*pop.member_state(i)) for i in range(pop.size)]
    spec = _spec(run, models[0])
    reference = models[0].state_dict()
    moved = []
    for i, model in enumerate(models[1:], start=1):
        perms = weight_matching(spec, reference, model.state_dict(), seed=i)
        model.load_state_dict(apply_permutation(spec, model.state_dict(), perms))
        moved.append(sum(int((p != torch.arange(len(p), device=p.device)).sum()) for p in perms.values()))
    states = [pop.state_of(m) for m in models]
    mean = [torch.stack([s[0][g] for s in states]).mean(0) for g in range(len(pop.params))]
    buffers = [torch.stack([s[1][g] for s in states]).mean(0) for g in range(len(pop.buffers))]
    merged = pop.model_from(mean, buffers)
    train = run.data.train
    order = torch.randperm(len(train), generator=run.rng)[: REPAIR_BATCHES * REPAIR_BATCH_SIZE].to(train.x.device)
    batches = [run.evaluator.normalize(train.x[idx]) for idx in order.split(REPAIR_BATCH_SIZE)]
    stats = [conv_statistics(m, batches) for m in models]
    repaired = repair(merged, mixed_goals(stats, [1.0 / pop.size] * pop.size), batches)
    units = sum(spec.sizes.values())
    run.reports["rebasin"] = {"groups": len(spec.sizes), "units": units, "units_moved": moved,
                              "repaired_convs": repaired}  # fmt: skip
    return {"rebasin": merged}
