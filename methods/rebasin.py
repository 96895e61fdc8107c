"""Git Re-Basin weight matching before averaging (Ainsworth et al., ICLR 2023), then REPAIR
(Jordan et al., ICLR 2023): the finalizer ``rebasin`` any method can end with
(``population.finalizers=[rebasin]``), the baseline PAPA's paper compares against ("independent +
alignment + REPAIR").

Every member is aligned to member 0 by permuting its hidden units (:mod:`wab.methods._permutation`: the
permutation structure is traced from the model with torch.fx; a model it cannot trace is refused
before the run starts), the aligned members are averaged (weights and buffers), and REPAIR
rescales the average's convolutions to the aligned members' mean channel statistics on 5 batches
of 500 training images, as after PAPA's merges (a model without convolutions, the MLP, is left
as averaged; its BatchNorm is recalibrated before evaluation like every final model).
Communication: every member's weights gathered once (D per member, ``rebasin_gather``); on several
processes member 0 travels and the aligned average is an all-reduce. The merging finalizers listed
after it (``population.finalizers=[rebasin,fisher]``) combine the aligned members, and their
models are named ``rebasin+<name>``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from wab.method import MergeInputs, RunState, register_finalizer
from wab.methods._permutation import NotPermutable, apply_permutation, permutation_spec, weight_matching
from wab.methods._repair import conv_statistics, mixed_goals, repair

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
    """Members aligned to member 0, averaged, then REPAIRed. Each process aligns the members it
    holds (member 0 is sent to every process) and measures their channel statistics; the average
    of the aligned members is an exact all-reduce: no process holds N members."""
    pop = run.population
    run.ledger.record("rebasin_gather", pop.num_params, pop.params[0].element_size(), "all_gather")
    reference_model = pop.model_from(*pop.member_state(0))
    spec = _spec(run, reference_model)
    reference = reference_model.state_dict()
    train = run.data.train
    order = torch.randperm(len(train), generator=run.rng)[: REPAIR_BATCHES * REPAIR_BATCH_SIZE].to(train.x.device)
    batches = [run.evaluator.normalize(train.x[idx]) for idx in order.split(REPAIR_BATCH_SIZE)]
    aligned_params = [torch.empty_like(p) for p in pop.params]
    aligned_buffers = [torch.empty_like(b) for b in pop.buffers]
    moved, stats = [], []
    for k, i in enumerate(pop.member_numbers()):  # member i is aligned to member 0 with seed i
        model = pop.model_from([p[k] for p in pop.params], [b[k] for b in pop.buffers])
        if i > 0:
            perms = weight_matching(spec, reference, model.state_dict(), seed=i)
            model.load_state_dict(apply_permutation(spec, model.state_dict(), perms))
        moved.append(sum(int((p != torch.arange(len(p), device=p.device)).sum()) for p in perms.values())
                     if i > 0 else None)  # fmt: skip
        params, buffers = pop.state_of(model)
        for flat, v in zip(aligned_params + aligned_buffers, params + buffers):
            flat[k].copy_(v)
        stats.append(conv_statistics(model, batches))
    merged = pop.model_from([pop.mean_rows(a) for a in aligned_params], [pop.mean_rows(b) for b in aligned_buffers])
    stats = pop.all_members(stats)
    repaired = repair(merged, mixed_goals(stats, [1.0 / pop.size] * pop.size), batches)
    units = sum(spec.sizes.values())
    moved = [m for m in pop.all_members(moved) if m is not None]  # members 1..N-1
    run.aligned = MergeInputs(aligned_params, aligned_buffers, "rebasin+")  # what later merging finalizers combine
    run.reports["rebasin"] = {"groups": len(spec.sizes), "units": units, "units_moved": moved,
                              "repaired_convs": repaired}  # fmt: skip
    return {"rebasin": merged}
