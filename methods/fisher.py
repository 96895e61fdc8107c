"""Fisher-weighted averaging (Matena & Raffel, "Merging Models with Fisher-Weighted Averaging",
NeurIPS 2022; code: mmatena/model_merging): the finalizer ``fisher``.

Each member's diagonal Fisher is estimated on ``examples`` training examples (not augmented),
the model in evaluation mode, from per-example gradients of the log-likelihood:
``exact`` (their code) weights the squared gradient of every class's log-probability by that
class's probability, E_{y~p(y|x)} (d log p(y|x) / d theta)^2; ``sampled`` takes one label drawn
from p(y|x) (from the member's own random stream); ``empirical`` takes the true label. The merge
is their ``_merge_with_coeffs`` at their defaults: uniform coefficients 1/N, each divided by the
L2 norm of the member's whole Fisher (``normalize``), member 0's Fisher floored at ``floor``
(their ``favor_target_model``), theta = sum_i c_i F_i theta_i / sum_i c_i F_i element-wise.
Buffers are the members' mean (then recalibrated like every final model).

Equal Fishers give the uniform average, to the bit (the weights are divided by member 0's
first, which changes nothing else); one member is returned as it is. Communication: member 0's
weights to every process, then each member's c_i F_i theta_i and c_i F_i once (3 D,
``fisher_merge``); each process estimates the Fishers of the members it holds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from wab.method import OneOf, Range, RunState, register_finalizer
from wab.methods._merging import (
    examples,
    inputs_and_name,
    member_generators,
    record,
    settings,
    settings_check,
    uniform_buffers,
)

RULES = {"examples": Range(1), "variant": OneOf(("exact", "sampled", "empirical")), "normalize": OneOf((True, False)),
         "floor": Range(0)}  # fmt: skip
CHUNK_ELEMENTS = 1 << 25  # per-example gradients held at once (examples x classes x parameters)


def diagonal_fisher(
    model: nn.Module, x: Tensor, y: Tensor, variant: str, generator: torch.Generator | None
) -> list[Tensor]:
    """The diagonal Fisher of ``model`` (evaluation mode) on examples ``x`` (labels ``y``), one
    float64 tensor per parameter in ``named_parameters`` order: the mean over examples."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def log_probs(p: dict, xi: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0).log_softmax(-1)

    with torch.no_grad():
        classes = model(x[:1]).shape[-1]
    numel = sum(v.numel() for v in params.values())
    per_chunk = max(1, CHUNK_ELEMENTS // ((classes if variant == "exact" else 1) * numel))
    total = [torch.zeros(v.shape, dtype=torch.float64, device=v.device) for v in params.values()]
    for xs, ys in zip(x.split(per_chunk), y.split(per_chunk)):
        if variant == "exact":  # every class, weighted by its probability (their _compute_exact_fisher_for_batch)
            grads = vmap(jacrev(log_probs), in_dims=(None, 0))(params, xs)  # each [B, C, *shape]
            with torch.no_grad():
                probs = vmap(log_probs, in_dims=(None, 0))(params, xs).exp()  # [B, C]
            for t, g in zip(total, grads.values()):
                w = probs.view(*probs.shape, *([1] * (g.dim() - 2))).double()
                t += (w * g.double() ** 2).sum((0, 1))
            continue
        with torch.no_grad():
            logp = vmap(log_probs, in_dims=(None, 0))(params, xs)
        labels = (
            ys if variant == "empirical" else torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(1)
        )
        labels = labels.to(xs.device)

        def picked(p: dict, xi: Tensor, yi: Tensor) -> Tensor:
            return log_probs(p, xi).gather(0, yi.view(1)).squeeze(0)

        grads = vmap(torch.func.grad(picked), in_dims=(None, 0, 0))(params, xs, labels)
        for t, g in zip(total, grads.values()):
            t += (g.double() ** 2).sum(0)
    return [t / len(x) for t in total]


@register_finalizer("fisher", check=settings_check("fisher", RULES), combines_inputs=True)
def fisher(run: RunState) -> dict[str, nn.Module]:
    """The Fisher-weighted average of the members (Matena & Raffel's merge at its defaults)."""
    cfg = settings(run, "fisher", RULES)
    pop = run.population
    inputs, name = inputs_and_name(run, "fisher")
    x, y = examples(run, int(cfg["examples"]))
    generators = member_generators(run)
    # each held member's Fisher, as flat rows in the population's layout
    fishers = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in inputs.params]
    norms = []
    for k, i in enumerate(run.bar(pop.member_numbers(), "fisher: estimating the members' Fishers")):
        model = pop.model_from([p[k] for p in inputs.params], [b[k] for b in inputs.buffers])
        diag = diagonal_fisher(model, x, y, cfg["variant"], generators[i])
        for seg, f in zip(pop.param_segments, diag):
            seg.view(fishers[seg.group][k, seg.start : seg.stop]).copy_(f)
        norms.append(math.sqrt(sum(float((f * f).sum()) for f in diag)))
    weights, coefficients = [], []  # c_i F_i, member 0 floored
    for k, i in enumerate(pop.member_numbers()):
        coeff = 1.0 / pop.size / (norms[k] if cfg["normalize"] else 1.0)
        coefficients.append(coeff)
        weights.append([coeff * (f[k].clamp(min=float(cfg["floor"])) if i == 0 else f[k]) for f in fishers])
    params = []
    for g, flat in enumerate(inputs.params):
        w = torch.stack([row[g] for row in weights])
        # every weight divided by member 0's (floored, so positive; else 1): the merge is unchanged, and
        # equal Fishers give weights of exactly 1, so the merge is the uniform average to the bit
        ref = pop.member_row(w, 0, "fisher_reference")
        w = w / torch.where(ref > 0, ref, torch.ones_like(ref))
        num = pop.combine_rows(flat, w, "fisher_merge")
        den = pop.combine_rows(w, torch.ones(len(w), dtype=torch.float64, device=w.device), "fisher_merge")
        params.append((num / den).to(flat.dtype))
    record(run, "fisher_merge", 3)
    run.reports[name] = {"examples": len(x), "variant": cfg["variant"], "normalize": cfg["normalize"],
                         "floor": cfg["floor"], "fisher_norms": pop.all_members(norms),
                         "coefficients": pop.all_members(coefficients)}  # fmt: skip
    return {name: pop.model_from(params, uniform_buffers(run, inputs, "fisher_merge"))}
