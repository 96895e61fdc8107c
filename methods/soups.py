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
gathered once at the end (D per member, recorded as ``soup_gather``); on several processes the
candidates come one member at a time, so no process holds N members. Soups are means of float64
sums, the same on any number of processes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from wab.method import Method, RunState, heldout_selection, register, register_finalizer

Rows = tuple[list[torch.Tensor], list[torch.Tensor]]


def _record_gather(run: RunState) -> None:
    """The ledger's count: every member's weights gathered once, however many soups are made of
    them (``soup_gather``: D per member). On several processes no process holds them all: a
    candidate's members come one at a time from the processes that hold them."""
    pop = run.population
    if "soup_gather" not in run.ledger.ops:
        run.ledger.record("soup_gather", pop.num_params, pop.params[0].element_size(), "all_gather")


def _add(total: Rows | None, member: Rows) -> Rows:
    """Float64 running sums of members' (weights, buffers), in the order they are added."""
    if total is None:
        return [p.double() for p in member[0]], [b.double() for b in member[1]]
    return [t + p for t, p in zip(total[0], member[0])], [t + b for t, b in zip(total[1], member[1])]


def _soup(run: RunState, total: Rows, count: int) -> nn.Module:
    pop = run.population
    return pop.model_from([(t / count).to(p.dtype) for t, p in zip(total[0], pop.params)],
                          [(t / count).to(b.dtype) for t, b in zip(total[1], pop.buffers)])  # fmt: skip


def _heldout_accuracy(run: RunState, model: nn.Module, bn: str) -> float:
    if bn == "recalibrate":
        model = run.evaluator.recalibrate_bn(copy.deepcopy(model))
    return run.evaluator.accuracy(model, "heldout")


def _uniform(run: RunState) -> dict[str, nn.Module]:
    return {"uniform_soup": run.population.average_model()}  # exact float64 sums over every member


@register_finalizer("uniform_soup")
def uniform_soup(run: RunState) -> dict[str, nn.Module]:
    """The mean of every member."""
    _record_gather(run)
    return _uniform(run)


def greedy_ingredients(run: RunState, bn: str = "average") -> tuple[list[int], list[float], Rows]:
    """The members greedy soup keeps, the held-out accuracy of the soup after each candidate, and
    the float64 sums of the kept members. Each member's own held-out accuracy is measured by the
    process that holds it; each candidate is sent to every process in turn (memory: one member)."""
    pop = run.population
    accs = pop.all_members([_heldout_accuracy(run, pop.model_from(*state), bn) for state in pop.local_states()])
    # as model-soups: an ascending (stable) sort, reversed, so ties go to the later member first
    order = sorted(range(pop.size), key=lambda i: accs[i])[::-1]
    chosen, best = [order[0]], accs[order[0]]
    total = _add(None, pop.member_state(order[0]))
    trace = [best]
    for i in order[1:]:
        candidate = _add(total, pop.member_state(i))
        acc = _heldout_accuracy(run, _soup(run, candidate, len(chosen) + 1), bn)
        if acc > best:
            chosen.append(i)
            best, total = acc, candidate
        trace.append(best)
    return chosen, trace, total


def _greedy(run: RunState) -> dict[str, nn.Module]:
    chosen, trace, total = greedy_ingredients(run, str(run.method_cfg.get("bn", "average")))
    run.reports["greedy_soup"] = {"ingredients": chosen, **heldout_selection(trace[-1], len(run.data.heldout))}
    return {"greedy_soup": _soup(run, total, len(chosen))}


@register_finalizer("greedy_soup", needs_heldout=True)
def greedy_soup(run: RunState) -> dict[str, nn.Module]:
    """Members added in order of held-out accuracy while the soup strictly improves."""
    _record_gather(run)
    return _greedy(run)


@register("soups")
class Soups(Method):
    """Independent members, delivered as a greedy and a uniform soup."""

    needs_heldout = True

    def finalize(self, run: RunState) -> dict[str, nn.Module]:
        _record_gather(run)
        return {**_greedy(run), **_uniform(run)}
