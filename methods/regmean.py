"""RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR
2023; code: bloomberg/dataless-model-merging): the finalizer ``regmean``.

For every linear layer (``nn.Linear``), with X_i the layer's inputs in member i on ``examples``
training examples (not augmented, the model in evaluation mode) and G_i = X_i^T X_i / n their
inner-product matrix, the off-diagonal entries scaled by ``alpha`` (their ``reduce_non_diag``:
alpha G_i + (1 - alpha) diag(G_i)), the merged weight is the closed form
W = (sum_i G_i)^-1 sum_i G_i W_i^T, transposed back (their ``regmean_mean_params``). As in their
code, only linear weights are merged this way; biases, convolutions and every other parameter
are the members' mean, and so are the buffers (recalibrated before evaluation). Their code
inverts sum_i G_i as it is; where it is singular (an input no example reaches: a dead unit)
wab adds 1e-6 times its mean diagonal to the diagonal and names the layer in the report
(``regularised``).

With identical inputs in every member it equals the uniform average; one member is returned as
it is. Communication: each member sends G_i W_i^T and G_i for each linear layer once
(``regmean_grams``, float64), and its parameters for the mean (``regmean_merge``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wab.method import Range, RunState, register_finalizer
from wab.methods._merging import examples, inputs_and_name, settings, settings_check, uniform_buffers

RULES = {"examples": Range(1), "alpha": Range(0, 1)}


def reduce_non_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """alpha G + (1 - alpha) diag(G): the off-diagonal entries scaled by alpha."""
    return alpha * gram + (1.0 - alpha) * torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))


def input_grams(model: nn.Module, x: Tensor, batch_size: int) -> dict[str, Tensor]:
    """Each linear layer's float64 inner-product matrix of its inputs on ``x``, X^T X / n (the
    model in evaluation mode), by module name."""
    model.eval()
    grams: dict[str, Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            grams[name] = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device=x.device)

            def hook(mod, args, out, name=name):
                inp = args[0].reshape(-1, args[0].shape[-1]).double()
                grams[name] += inp.T @ inp

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for chunk in x.split(batch_size):
                model(chunk)
    finally:
        for h in hooks:
            h.remove()
    return {k: g / len(x) for k, g in grams.items()}


@register_finalizer("regmean", check=settings_check("regmean", RULES), combines_inputs=True)
def regmean(run: RunState) -> dict[str, nn.Module]:
    """The members merged by RegMean's closed form on every linear layer, averaged elsewhere."""
    cfg = settings(run, "regmean", RULES)
    pop = run.population
    inputs, name = inputs_and_name(run, "regmean")
    x, _ = examples(run, int(cfg["examples"]))
    alpha = float(cfg["alpha"])
    segments = {seg.name: seg for seg in pop.param_segments}
    per_member = []  # for each member held here: {layer: (G~, G~ W^T)}
    for k in run.bar(range(len(pop.members)), "regmean: the members' input Gram matrices"):
        model = pop.model_from([p[k] for p in inputs.params], [b[k] for b in inputs.buffers])
        grams = input_grams(model, x, run.evaluator.batch_size)
        weights = dict(model.named_parameters())
        mine = {}
        for layer, gram in grams.items():
            gram = reduce_non_diagonal(gram, alpha)
            mine[layer] = (gram, gram @ weights[f"{layer}.weight"].double().T)
        per_member.append(mine)
    params = [pop.mean_rows(p, "regmean_merge") for p in inputs.params]
    layers = list(per_member[0])
    ones = torch.ones(len(per_member), dtype=torch.float64, device=params[0].device)
    regularised = []
    for layer in layers:
        gram_sum = pop.combine_rows(torch.stack([m[layer][0] for m in per_member]), ones, "regmean_merge")
        target = pop.combine_rows(torch.stack([m[layer][1] for m in per_member]), ones, "regmean_merge")
        try:
            merged = torch.linalg.solve(gram_sum, target)
        except torch.linalg.LinAlgError:
            ridge = 1e-6 * float(torch.diagonal(gram_sum).mean())
            merged = torch.linalg.solve(gram_sum + ridge * torch.eye(len(gram_sum), dtype=gram_sum.dtype,
                                                                     device=gram_sum.device), target)  # fmt: skip
            regularised.append(layer)
        seg = segments[f"{layer}.weight"]
        seg.view(params[seg.group][seg.start : seg.stop]).copy_(merged.T)
    run.ledger.record("regmean_merge", pop.num_params, pop.params[0].element_size(), "all_reduce")
    run.ledger.record("regmean_grams", sum(g.numel() + t.numel() for g, t in per_member[0].values()), 8, "all_reduce")
    run.reports[name] = {"examples": len(x), "alpha": alpha, "linear_layers": layers, "regularised": regularised}
    return {name: pop.model_from(params, uniform_buffers(run, inputs, "regmean_merge"))}
