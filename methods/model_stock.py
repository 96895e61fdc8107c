"""Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV
2024; N-model rule as in mergekit's ``model_stock``): the finalizer ``model_stock``.

For every parameter tensor, with task vectors tau_i = theta_i - theta_0 against the anchor
theta_0 (the population's shared initialisation, or its last synchronisation), cos theta is the
mean over pairs i < j of cos(tau_i, tau_j) (each clamped to [-1, 1], norms' product floored at
1e-6 as in mergekit), t = N cos theta / (1 + (N - 1) cos theta), and the tensor is
t * mean_i theta_i + (1 - t) * theta_0. Buffers are the members' mean (recalibrated before
evaluation). Orthogonal task vectors give the anchor (t = 0), identical ones their mean (t = 1).
A population without an anchor is refused before the run starts; one that shared no state
before the end reports ``skipped``. Needs two members or more. Communication: each member's
task vector once (the pairwise dot products; ``model_stock_gram``) and its weights for the mean.
"""

from __future__ import annotations

import torch
from torch import nn

from wab.method import RunState, register_finalizer
from wab.methods._merging import anchor, inputs_and_name, record, task_vectors, uniform_buffers


def interpolation(gram: torch.Tensor) -> tuple[float, float]:
    """(cos theta, t) from the [N, N] dot products of one tensor's task vectors."""
    n = len(gram)
    norms = torch.diagonal(gram).clamp(min=0).sqrt()
    cosines = [float((gram[i, j] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
               for i in range(n) for j in range(i + 1, n)]  # fmt: skip
    cos = sum(cosines) / len(cosines)
    return cos, n * cos / (1 + (n - 1) * cos)


def check(run: RunState) -> None:
    if run.population.size < 2:
        raise ValueError("finalizer model_stock needs population.size >= 2: its angle is between members' task vectors")


@register_finalizer("model_stock", check=check, needs_anchor=True, combines_inputs=True)
def model_stock(run: RunState) -> dict[str, nn.Module]:
    """Each tensor interpolated between the members' mean and the anchor by Model Stock's rule."""
    pop = run.population
    inputs, name = inputs_and_name(run, "model_stock")
    base = anchor(run, name)
    if base is None:
        return {}
    taus = task_vectors(inputs, base)
    means = [pop.sum_rows(p, "model_stock_merge") / pop.size for p in inputs.params]
    params = [torch.empty_like(a) for a in base[0]]
    layers = {}
    for seg in pop.param_segments:
        cos, t = interpolation(pop.gram(taus[seg.group][:, seg.start : seg.stop], "model_stock_gram"))
        a = base[0][seg.group][seg.start : seg.stop].double()
        m = means[seg.group][seg.start : seg.stop]
        params[seg.group][seg.start : seg.stop] = (t * m + (1 - t) * a).to(params[seg.group].dtype)
        layers[seg.name] = {"cos": cos, "t": t}
    record(run, "model_stock_gram", 1)
    record(run, "model_stock_merge", 1)
    run.reports[name] = {"anchor": pop.anchor_source, "layers": layers}
    return {name: pop.model_from(params, uniform_buffers(run, inputs, "model_stock_merge"))}
