"""What the merging finalizers share (docs/merging.md): their inputs, the anchor and the task
vectors against it, the members' own random streams, the uniform average of what a merge does
not touch, and a scale chosen on the held-out split.

Every sum over members is a float64 sum computed the same way on any number of processes
(:meth:`~wab.core.population.Population.sum_rows`, exact for float32 rows, or
:meth:`~wab.core.population.Population.combine_rows`, added in member order), so a merge gives
the same bits on 1, 2 or 4 processes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from wab.method import MergeInputs, OneOf, Range, RunState, finalizer_settings, heldout_selection, merge_inputs

State = tuple[list[Tensor], list[Tensor]]

# Task arithmetic's candidates for its scaling coefficient (Ilharco et al.: 0, 0.05, ..., 1)
SCALES = tuple(round(0.05 * i, 2) for i in range(21))


def settings(run: RunState, name: str, rules: dict[str, Range | OneOf | tuple]) -> dict:
    """A finalizer's settings (``finalizer.<name>``), each checked against its rule: a number
    in its :class:`~wab.method.Range`, one of its :class:`~wab.method.OneOf` choices, or
    either (a tuple of rules). A missing, unknown or bad setting is a ValueError naming it."""
    given = finalizer_settings(run, name)
    if unknown := sorted(set(given) - set(rules)):
        raise ValueError(f"finalizer.{name} has no setting {', '.join(unknown)}; its settings: {', '.join(rules)}")
    for key, rule in rules.items():
        if key not in given:
            raise ValueError(f"finalizer.{name}.{key} is missing (configs/config.yaml gives its default)")
        problems = [_problem(r, given[key]) for r in (rule if isinstance(rule, tuple) else (rule,))]
        if all(problems):
            raise ValueError(f"finalizer.{name}.{key} {' or '.join(problems)}, got {given[key]!r}")
    return given


def settings_check(name: str, rules: dict[str, Range | OneOf | tuple]) -> Callable[[RunState], None]:
    """A finalizer's ``check``: its settings checked before the run starts (:func:`settings`)."""

    def check(run: RunState) -> None:
        settings(run, name, rules)

    return check


def _problem(rule: Range | OneOf, value) -> str | None:
    if isinstance(rule, OneOf):
        return rule.problem(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number {rule.problem(float('nan'))[5:]}"
    return rule.problem(value)


def anchor(run: RunState, name: str) -> State | None:
    """The population's anchor (its shared initialisation, or its last synchronisation), None
    with a note in the finalizer's report when the members never shared a state."""
    pop = run.population
    if pop.anchor is None:
        run.reports[name] = {"skipped": "no anchor: the members never shared a state before the end of training"}
        return None
    return pop.anchor


def task_vectors(inputs: MergeInputs, base: State) -> list[Tensor]:
    """tau_i = theta_i - theta_0 for the members held here: one [n_local, P] tensor per group."""
    return [p - a for p, a in zip(inputs.params, base[0])]


def uniform_buffers(run: RunState, inputs: MergeInputs, op: str) -> list[Tensor]:
    """The members' mean buffers (BatchNorm statistics; recalibrated before evaluation)."""
    return [run.population.mean_rows(b, f"{op}_buffers") for b in inputs.buffers]


def add_scaled(base: list[Tensor], scale: float, total: list[Tensor]) -> list[Tensor]:
    """theta_0 + scale * total, computed in float64, in each group's dtype."""
    return [(a.double() + scale * t).to(a.dtype) for a, t in zip(base, total)]


def member_generators(run: RunState) -> dict[int, torch.Generator]:
    """One random stream per member held here, from one draw of the method's stream (the same
    draw on every process): a member's draws do not depend on where it lives."""
    base = int(torch.randint(0, 2**62, (1,), generator=run.rng))
    return {i: torch.Generator().manual_seed(base + i) for i in run.population.member_numbers()}


def examples(run: RunState, count: int) -> tuple[Tensor, Tensor]:
    """``count`` training examples (normalized, not augmented) drawn without replacement from
    the method's stream, the same on every process; all of them when there are fewer."""
    train = run.data.train
    idx = torch.randperm(len(train), generator=run.rng)[:count].to(train.x.device)
    return run.evaluator.normalize(train.x[idx]), train.y[idx]


def record(run: RunState, op: str, rows_per_member: float) -> None:
    """The ledger's count for a merge: what one member sends, ``rows_per_member`` times D."""
    pop = run.population
    run.ledger.record(op, pop.num_params * rows_per_member, pop.params[0].element_size(), "all_reduce")


def chosen_scale(run: RunState, name: str, candidate: Callable[[float], nn.Module], bn: str) -> tuple[float, dict]:
    """The scale in :data:`SCALES` whose model is most accurate on the held-out split (the
    smallest of ties), and what the choice rests on, for the report. Every process evaluates
    every candidate (the same result everywhere)."""
    accs = []
    for s in run.bar(SCALES, f"{name}: choosing the scale"):
        model = candidate(s)
        if bn == "recalibrate":
            model = run.evaluator.recalibrate_bn(copy.deepcopy(model))
        accs.append(run.evaluator.accuracy(model, "heldout"))
    best = max(range(len(SCALES)), key=lambda i: (accs[i], -i))
    return SCALES[best], {
        "scales": list(SCALES),
        "heldout_accs": accs,
        "heldout_examples_read": len(SCALES) * len(run.data.heldout),  # by each process
        **heldout_selection(accs[best], len(run.data.heldout)),
    }


def inputs_and_name(run: RunState, name: str) -> tuple[MergeInputs, str]:
    """The members to merge and the name of the model made from them (``rebasin+<name>`` after an alignment)."""
    inputs = merge_inputs(run)
    return inputs, f"{inputs.prefix}{name}"
