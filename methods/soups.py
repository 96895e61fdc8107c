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

from wab.method import Method, RunState, heldout_selection, register, register_finalizer

Rows = tuple[list[torch.Tensor], list[torch.Tensor]]


def _gather(run: RunState) -> Rows:
    """Every member's weights and buffers, gathered once for however many soups are made of them
    (recorded once as ``soup_gather``: D per member)."""
    pop = run.population
    if "soup_gather" not in run.ledger.ops:
        run.ledger.record("soup_gather", pop.num_params, pop.params[0].element_size(), "all_gather")
    return [pop.all_rows(p, "soup_gather") for p in pop.params], [pop.all_rows(b, "soup_gather") for b in pop.buffers]


def _soup(run: RunState, rows: Rows, ingredients: list[int]) -> nn.Module:
    idx = torch.tensor(ingredients, device=run.population.device)
    return run.population.model_from([p[idx].mean(0) for p in rows[0]], [b[idx].mean(0) for b in rows[1]])


def _heldout_accuracy(run: RunState, model: nn.Module, bn: str) -> float:
    if bn == "recalibrate":
        model = run.evaluator.recalibrate_bn(copy.deepcopy(model))
    return run.evaluator.accuracy(model, "heldout")


def _uniform(run: RunState, rows: Rows) -> dict[str, nn.Module]:
    return {"uniform_soup": _soup(run, rows, list(range(run.population.size)))}


@register_finalizer("uniform_soup")
def uniform_soup(run: RunState) -> dict[str, nn.Module]:
    """The mean of every member."""
    return _uniform(run, _gather(run))


def greedy_ingredients(run: RunState, bn: str = "average", rows: Rows | None = None) -> tuple[list[int], list[float]]:
    """The members greedy soup keeps, and the held-out accuracy of the soup after each candidate."""
    pop = run.population
    rows = rows or _gather(run)
    accs = [_heldout_accuracy(run, _soup(run, rows, [i]), bn) for i in range(pop.size)]
    # as model-soups: an ascending (stable) sort, reversed, so ties go to the later member first
    order = sorted(range(pop.size), key=lambda i: accs[i])[::-1]
    chosen, best = [order[0]], accs[order[0]]
    trace = [best]
    for i in order[1:]:
        acc = _heldout_accuracy(run, _soup(run, rows, [*chosen, i]), bn)
        if acc > best:
            chosen.append(i)
            best = acc
        trace.append(best)
    return chosen, trace


def _greedy(run: RunState, rows: Rows) -> dict[str, nn.Module]:
    chosen, trace = greedy_ingredients(run, str(run.method_cfg.get("bn", "average")), rows)
    run.reports["greedy_soup"] = {"ingredients": chosen, **heldout_selection(trace[-1], len(run.data.heldout))}
    return {"greedy_soup": _soup(run, rows, chosen)}


@register_finalizer("greedy_soup", needs_heldout=True)
def greedy_soup(run: RunState) -> dict[str, nn.Module]:
    """Members added in order of held-out accuracy while the soup strictly improves."""
    return _greedy(run, _gather(run))


@register("soups")
class Soups(Method):
    """Independent members, delivered as a greedy and a uniform soup."""

    needs_heldout = True

    def finalize(self, run: RunState) -> dict[str, nn.Module]:
        rows = _gather(run)
        return {**_greedy(run, rows), **_uniform(run, rows)}
