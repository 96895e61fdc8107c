"""Linear mode connectivity at the end of a run (Frankle et al., ICML 2020): do the members share
a basin?

Along the straight path theta(t) = (1 - t) theta_a + t theta_b, at ``points`` evenly spaced t
(0 and 1 included), each model is BatchNorm-recalibrated and evaluated on the test split. A
path's barrier is the largest rise of the loss above the line between its ends,
max_t [L(t) - ((1 - t) L(0) + t L(1))], and likewise the largest fall of the accuracy below it
(both 0 when the path is flat or convex). Reported for the path between members 0 and 1 and for
the path from each member to the population's uniform average.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from wab.core.population import Population

State = tuple[list[Tensor], list[Tensor]]


def barrier(values: list[float], ts: list[float], sign: float = 1.0) -> float:
    """max_t sign * (v(t) - ((1 - t) v(0) + t v(1))), at least 0 (``sign=-1`` for an accuracy)."""
    v0, v1 = values[0], values[-1]
    return max(0.0, *(sign * (v - ((1 - t) * v0 + t * v1)) for v, t in zip(values, ts)))


def lerp_state(a: State, b: State, t: float) -> State:
    return [torch.lerp(x, y, t) for x, y in zip(a[0], b[0])], [torch.lerp(x, y, t) for x, y in zip(a[1], b[1])]


def path(
    evaluate: Callable[[State], dict], a: State, b: State, ts: list[float], ends: tuple[dict, dict] | None = None
) -> dict:
    """Loss and accuracy along a to b at ``ts``, and the barriers; ``ends`` reuses known
    evaluations of a and b."""
    evals = [ends[0] if ends and t == 0.0 else ends[1] if ends and t == 1.0 else evaluate(lerp_state(a, b, t))
             for t in ts]  # fmt: skip
    loss, acc = [e["nll"] for e in evals], [e["acc"] for e in evals]
    return {"loss": loss, "acc": acc, "loss_barrier": barrier(loss, ts), "acc_barrier": barrier(acc, ts, -1.0)}


def connectivity(
    pop: Population, evaluate: Callable[[State], dict], points: int, members: list[dict], average: dict
) -> dict:
    """The LMC diagnostics of a population (``members``: each member's recalibrated evaluation,
    ``average``: the recalibrated average's), ``points`` >= 2 per path. Each process walks the
    paths of its own members to the mean; the path between members 0 and 1 is walked by the
    process holding member 0, which is sent member 1 when it does not hold it."""
    ts = [i / (points - 1) for i in range(points)]
    mean = pop.mean(include_buffers=True, record=False)
    states = pop.local_states()
    out: dict = {"t": ts}
    if pop.size >= 2:
        second = pop.member_state(1) if pop.owner(1) != 0 else None  # to every process: one member, not N
        pair = None
        if pop.comm.rank == 0:
            pair = path(evaluate, states[0], second or states[1], ts, (members[0], members[1]))
        out["pair"] = pop.comm.all_gather_objects(pair, "lmc")[0]
    local = zip(states, members[pop.local_indices.start : pop.local_indices.stop])
    to_mean = pop.all_members([path(evaluate, s, mean, ts, (m, average)) for s, m in local])
    out["to_mean"] = {
        "loss_barrier": sum(p["loss_barrier"] for p in to_mean) / len(to_mean),
        "acc_barrier": sum(p["acc_barrier"] for p in to_mean) / len(to_mean),
        "members": to_mean,
    }
    return out
