"""Merges of task vectors tau_i = theta_i - theta_0 against the population's anchor theta_0 (its
shared initialisation, or its last synchronisation): the finalizers ``task_arithmetic``, ``ties``
and ``dare``. A population without an anchor is refused before the run starts; one that shared
no state before the end reports ``skipped``. Buffers are the members' mean (recalibrated before
evaluation).

- Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
  theta = theta_0 + lambda sum_i tau_i, lambda chosen on the held-out split from 0, 0.05, ..., 1
  (their protocol; ``scale: heldout``) or given. lambda = 1/N is the uniform average.
- TIES (Yadav et al., "TIES-Merging", NeurIPS 2023; code: prateeky2806/ties-merging): each tau_i
  trimmed to the entries of magnitude at least its k-th largest over the whole vector (their
  ``topk_values_mask``, k = ``k`` of the entries), a sign elected per entry (``sign: mass``: the
  sign of the sum of the trimmed vectors, zeros given the majority sign), the entries that agree
  with it averaged (their ``disjoint_merge``, "dis-mean"), theta = theta_0 + lambda tau. With
  k = 1 and no election it is task arithmetic with lambda = 1/N wherever no tau_i is exactly 0.
- DARE (Yu et al., "Language Models are Super Mario", ICML 2024; code: yule-BUAA/MergeLM): each
  entry of tau_i dropped with probability p and the rest divided by 1 - p (``rescale``), on the
  member's own random stream (the same draws on any number of processes), then combined
  (``combine``: average, MergeLM's default; task_arithmetic or ties, with their settings). Its
  expectation is its input.

Communication: each member's task vector once (and, for TIES, its kept-entry indicators).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wab.method import OneOf, Range, RunState, register_finalizer
from wab.methods._merging import (
    add_scaled,
    anchor,
    chosen_scale,
    inputs_and_name,
    member_generators,
    record,
    settings,
    settings_check,
    task_vectors,
    uniform_buffers,
)

TA_RULES = {"scale": (OneOf(("heldout",)), Range()), "bn": OneOf(("average", "recalibrate"))}
TIES_RULES = {"k": Range(0, 1, low_open=True), "sign": OneOf(("mass", "none")), "scale": Range()}
DARE_RULES = {"p": Range(0, 1, high_open=True), "rescale": OneOf((True, False)),
              "combine": OneOf(("average", "task_arithmetic", "ties"))}  # fmt: skip


def trim(taus: list[Tensor], k: float) -> list[Tensor]:
    """Each member's task vector (one row per member held here, over every group) with the
    entries below its k-th largest magnitude set to 0 (ties at the threshold kept)."""
    out = [t.clone() for t in taus]
    for r in range(len(out[0])):
        magnitudes = torch.cat([t[r].abs().float() for t in out])
        d = magnitudes.numel()
        rank = d - int(d * k)  # as their topk_values_mask: the kth value of the bottom d - int(d k)
        if rank < 1:
            continue  # k = 1 keeps everything
        threshold = magnitudes.kthvalue(rank).values
        for t in out:
            t[r][t[r].abs() < threshold] = 0
    return out


def elect_and_merge(run: RunState, trimmed: list[Tensor], sign: str, op: str) -> tuple[list[Tensor], float]:
    """The disjoint mean of the trimmed task vectors over the entries that agree with the elected
    sign (every nonzero entry with ``sign: none``), float64 per group, and the fraction of
    members' entries kept."""
    pop = run.population
    if sign == "mass":
        signs = [torch.sign(pop.sum_rows(t, op)) for t in trimmed]
        majority = torch.sign(torch.tensor(sum(float(s.sum()) for s in signs)))
        signs = [torch.where(s == 0, majority.to(s), s) for s in signs]
        selected = [t * torch.where(s > 0, t > 0, t < 0) for t, s in zip(trimmed, signs)]
    else:
        selected = trimmed
    merged, kept, total = [], 0.0, 0
    for t in selected:
        count = pop.sum_rows((t != 0).to(t.dtype), f"{op}_counts")
        merged.append(pop.sum_rows(t, op) / count.clamp(min=1))
        kept += float(count.sum())
        total += t.shape[1] * pop.size
    return merged, kept / total


def task_arithmetic_merge(
    run: RunState, name: str, base, taus: list[Tensor], inputs, cfg: dict, op: str
) -> tuple[nn.Module, dict]:
    pop = run.population
    total = [pop.sum_rows(t, op) for t in taus]
    buffers = uniform_buffers(run, inputs, op)

    def candidate(scale: float) -> nn.Module:
        return pop.model_from(add_scaled(base[0], scale, total), buffers)

    if cfg["scale"] == "heldout":
        scale, selection = chosen_scale(run, name, candidate, cfg["bn"])
        report = {"scale": scale, "selection": selection}
    else:
        scale, report = float(cfg["scale"]), {"scale": float(cfg["scale"])}
    return candidate(scale), report


def ties_merge(run: RunState, base, taus: list[Tensor], inputs, cfg: dict, op: str) -> tuple[nn.Module, dict]:
    pop = run.population
    merged, kept = elect_and_merge(run, trim(taus, float(cfg["k"])), cfg["sign"], op)
    scale = float(cfg["scale"])
    model = pop.model_from(add_scaled(base[0], scale, merged), uniform_buffers(run, inputs, op))
    return model, {"k": cfg["k"], "sign": cfg["sign"], "scale": scale, "kept_fraction": kept}


def _task_vectors(run: RunState, name: str):
    inputs, named = inputs_and_name(run, name)
    base = anchor(run, named)
    return inputs, named, base, (task_vectors(inputs, base) if base is not None else None)


check_task_arithmetic = settings_check("task_arithmetic", TA_RULES)
check_ties = settings_check("ties", TIES_RULES)


@register_finalizer("task_arithmetic", check=check_task_arithmetic, needs_anchor=True, combines_inputs=True,
                    needs_heldout=lambda cfg: cfg.get("scale") == "heldout")  # fmt: skip
def task_arithmetic(run: RunState) -> dict[str, nn.Module]:
    """theta_0 + lambda sum_i tau_i (Ilharco et al.)."""
    cfg = settings(run, "task_arithmetic", TA_RULES)
    inputs, name, base, taus = _task_vectors(run, "task_arithmetic")
    if base is None:
        return {}
    model, report = task_arithmetic_merge(run, name, base, taus, inputs, cfg, "task_arithmetic_merge")
    record(run, "task_arithmetic_merge", 1)
    run.reports[name] = {"anchor": run.population.anchor_source, **report}
    return {name: model}


@register_finalizer("ties", check=check_ties, needs_anchor=True, combines_inputs=True)
def ties(run: RunState) -> dict[str, nn.Module]:
    """Trim, elect sign, disjoint mean (Yadav et al.)."""
    cfg = settings(run, "ties", TIES_RULES)
    inputs, name, base, taus = _task_vectors(run, "ties")
    if base is None:
        return {}
    model, report = ties_merge(run, base, taus, inputs, cfg, "ties_merge")
    record(run, "ties_merge", 2)
    run.reports[name] = {"anchor": run.population.anchor_source, **report}
    return {name: model}


def drop_and_rescale(run: RunState, taus: list[Tensor], p: float, rescale: bool) -> list[Tensor]:
    """Each held member's task vector with every entry dropped with probability p (kept ones
    divided by 1 - p with ``rescale``), drawn from the member's own stream (MergeLM's
    ``mask_input_with_mask_rate``)."""
    generators = member_generators(run)
    out = [t.clone() for t in taus]
    for k, i in enumerate(run.population.member_numbers()):
        for t in out:
            keep = torch.bernoulli(torch.full(t[k].shape, 1.0 - p), generator=generators[i]).to(t)
            t[k] = t[k] * keep
            if rescale:
                t[k] = t[k] / (1.0 - p)
    return out


def check_dare(run: RunState) -> None:
    cfg = settings(run, "dare", DARE_RULES)
    if cfg["combine"] == "task_arithmetic":
        check_task_arithmetic(run)
    elif cfg["combine"] == "ties":
        check_ties(run)


def _dare_needs_heldout(cfg: dict) -> bool:
    """Combined by task arithmetic, whose scale may be chosen on the held-out split."""
    return cfg.get("combine") == "task_arithmetic"


@register_finalizer(
    "dare", check=check_dare, needs_anchor=True, needs_heldout=_dare_needs_heldout, combines_inputs=True
)
def dare(run: RunState) -> dict[str, nn.Module]:
    """Drop and rescale each task vector, then combine (Yu et al.)."""
    cfg = settings(run, "dare", DARE_RULES)
    inputs, name, base, taus = _task_vectors(run, "dare")
    if base is None:
        return {}
    pop = run.population
    dropped = drop_and_rescale(run, taus, float(cfg["p"]), bool(cfg["rescale"]))
    report = {"p": cfg["p"], "rescale": cfg["rescale"], "combine": cfg["combine"]}
    if cfg["combine"] == "average":
        total = [pop.sum_rows(t, "dare_merge") for t in dropped]
        model = pop.model_from(add_scaled(base[0], 1.0 / pop.size, total), uniform_buffers(run, inputs, "dare_merge"))
    elif cfg["combine"] == "task_arithmetic":
        ta = settings(run, "task_arithmetic", TA_RULES)
        model, more = task_arithmetic_merge(run, name, base, dropped, inputs, ta, "dare_merge")
        report.update(more)
    else:
        model, more = ties_merge(run, base, dropped, inputs, settings(run, "ties", TIES_RULES), "dare_merge")
        report.update(more)
    record(run, "dare_merge", 2 if cfg["combine"] == "ties" else 1)
    run.reports[name] = {"anchor": pop.anchor_source, **report}
    return {name: model}
