"""Model soups (Wortsman et al., ICML 2022): uniform and greedy soups of the members.

Uniform soup: the mean of all members. Greedy soup: sort the members by held-out accuracy, start
from the best, and add the next one only if the held-out accuracy of (n soup + new) / (n + 1)
strictly improves; so it is never worse than the best member on the held-out split. Members of
equal held-out accuracy are tried in model-soups' order (its ascending sort, reversed: the later
member first). Buffers are
averaged over the same ingredients (``bn: average``, cheap) or recalibrated for every candidate
(``bn: recalibrate``); the returned soups are recalibrated before the test evaluation.

The soups are finalizers: the ``soups`` method trains independent members and returns
``greedy_soup`` and ``uniform_soup``, and any other method gets them with
``population.finalizers=[greedy_soup,uniform_soup]``. Communication: every member's weights are
gathered once at the end (D per member, recorded as ``soup_gather``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from wab.method import Method, RunState, register, register_finalizer


def _soup(run: RunState, ingredients: list[int]) -> nn.Module:
    pop = run.population
    idx = torch.tensor(ingredients, device=pop.device)
    return pop.model_from([p[idx].mean(0) for p in pop.params], [b[idx].mean(0) for b in pop.buffers])


def _heldout_accuracy(run: RunState, model: nn.Module, bn: str) -> float:
    if bn == "recalibrate":
        model = run.evaluator.recalibrate_bn(copy.deepcopy(model))
    return run.evaluator.accuracy(model, "heldout")


def _gather(run: RunState) -> None:
    """Every member's weights travel once, however many soups are made of them."""
    if "soup_gather" not in run.ledger.ops:
        pop = run.population
        run.ledger.record("soup_gather", pop.num_params, pop.params[0].element_size())


@register_finalizer("uniform_soup")
def uniform_soup(run: RunState) -> dict[str, nn.Module]:
    """The mean of every member."""
    _gather(run)
    return {"uniform_soup": _soup(run, list(range(run.population.size)))}


def greedy_ingredients(run: RunState, bn: str = "average") -> tuple[list[int], list[float]]:
    """The members greedy soup keeps, and the held-out accuracy of the soup after each candidate."""
    pop = run.population
    accs = [_heldout_accuracy(run, _soup(run, [i]), bn) for i in range(pop.size)]
    # as model-soups: an ascending (stable) sort, reversed, so ties go to the later member first
    order = sorted(range(pop.size), key=lambda i: accs[i])[::-1]
    chosen, best = [order[0]], accs[order[0]]
    trace = [best]
    for i in order[1:]:
        acc = _heldout_accuracy(run, _soup(run, [*chosen, i]), bn)
        if acc > best:
            chosen.append(i)
            best = acc
        trace.append(best)
    return chosen, trace


@register_finalizer("greedy_soup", needs_heldout=True)
def greedy_soup(run: RunState) -> dict[str, nn.Module]:
    """Members added in order of held-out accuracy while the soup strictly improves."""
    _gather(run)
    chosen, _ = greedy_ingredients(run, str(run.method_cfg.get("bn", "average")))
    return {"greedy_soup": _soup(run, chosen)}


@register("soups")
class Soups(Method):
    """Independent members, delivered as a greedy and a uniform soup."""

    needs_heldout = True

    def finalize(self, run: RunState) -> dict[str, nn.Module]:
        return {**greedy_soup(run), **uniform_soup(run)}
