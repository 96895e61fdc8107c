"""ASWA: Adaptive Stochastic Weight Averaging (Demir, Sharma and Ngonga Ngomo, 2024), per member.

SWA with an acceptance test on the held-out split; the running model is never modified. At the
end of every epoch, with v_run the held-out accuracy of the member theta, theta_A its current
average of n snapshots and v_A the accuracy of theta_A:

1. first epoch: theta_A <- theta, n <- 1;
2. theta_prov = (n theta_A + theta) / (n + 1), v_prov its held-out accuracy;
3. hard update if v_run > v_prov and v_run > v_A: theta_A <- theta, n <- 1;
4. else soft update if v_prov > v_A: theta_A <- theta_prov, n <- n + 1;
5. else reject.

This is the authors' CIFAR script (its ``ASWA`` class): a hard update stores the running model
with ``sample_counter = 1``, a soft update increments it, a rejection leaves the stored average
and counter as they were (its look-ahead updates the in-memory average in place before the test;
the saved state, which the next epoch starts from, is unchanged on a rejection). The authors'
knowledge-graph callback (dice-embeddings' ``ASWA``) keeps a list of weights instead: the first
epoch and each soft update append 1, a rejection appends 0, and a hard update empties the list,
so the next look-ahead averages the stored model with weight sum(list) = 0, i.e. replaces it by
the new running model. wab follows the CIFAR script (n = 1 after a hard update).

Buffers are averaged like the weights so that theta_prov can be evaluated as it stands (no
recalibration inside the loop: two extra held-out passes per member per epoch); the final models
``aswa_<i>`` are recalibrated before the test evaluation. Communication 0.
"""

from __future__ import annotations

import torch

from wab.method import MemberRows, MemberValues, Method, RunState, heldout_selection, register


def aswa_decision(v_run: float, v_prov: float, v_avg: float) -> str:
    """'hard', 'soft' or 'reject' (steps 3-5)."""
    if v_run > v_prov and v_run > v_avg:
        return "hard"
    if v_prov > v_avg:
        return "soft"
    return "reject"


@register("aswa")
class Aswa(Method):
    """ASWA: accept a member's snapshot into its average only if held-out accuracy improves."""

    needs_heldout = True
    min_members = 1  # one trajectory, like SWA

    def setup(self, run: RunState) -> None:
        self.heldout_size = len(run.data.heldout)
        pop = run.population
        held = len(pop.members)  # each process keeps the averages of the members it holds
        self.params = [torch.zeros_like(p) for p in pop.params]
        self.buffers = [torch.zeros_like(b) for b in pop.buffers]
        self.n = [0] * held
        self.acc = [0.0] * held
        self.decisions: list[list[str]] = [[] for _ in range(held)]

    def _model(self, run: RunState, params, buffers):
        return run.population.model_from(params, buffers)

    @torch.no_grad()
    def after_epoch(self, run: RunState) -> None:
        pop, ev = run.population, run.evaluator
        for k, (theta_p, theta_b) in enumerate(pop.local_states()):  # no communication: per member
            if self.n[k] == 0:
                self._store(k, theta_p, theta_b, 1, ev.accuracy(self._model(run, theta_p, theta_b)))
                self.decisions[k].append("first")
                continue
            v_run = ev.accuracy(pop.members[k])
            n = self.n[k]
            prov_p = [(n * a[k] + t) / (n + 1) for a, t in zip(self.params, theta_p)]
            prov_b = [(n * a[k] + t) / (n + 1) for a, t in zip(self.buffers, theta_b)]
            v_prov = ev.accuracy(self._model(run, prov_p, prov_b))
            decision = aswa_decision(v_run, v_prov, self.acc[k])
            if decision == "hard":
                self._store(k, theta_p, theta_b, 1, v_run)
            elif decision == "soft":
                self._store(k, prov_p, prov_b, n + 1, v_prov)
            self.decisions[k].append(decision)

    def _store(self, k: int, params, buffers, n: int, acc: float) -> None:
        for a, v in zip(self.params + self.buffers, list(params) + list(buffers)):
            a[k].copy_(v)
        self.n[k], self.acc[k] = n, acc

    def finalize(self, run: RunState) -> dict:
        pop = run.population

        def build(k: int) -> torch.nn.Module:  # the member's average, or the member itself if it has none
            rows = (self.params, self.buffers) if self.n[k] else (pop.params, pop.buffers)
            return self._model(run, [a[k] for a in rows[0]], [b[k] for b in rows[1]])

        return pop.member_models("aswa", build)

    def report(self, run: RunState) -> dict:
        """Each member's decisions, and the held-out accuracy its average was accepted on."""
        selection = [heldout_selection(a, self.heldout_size) for a in self.acc]
        return {"decisions": MemberValues(self.decisions), "selection": MemberValues(selection)}

    def state_dict(self, run: RunState) -> dict:
        return {
            "params": [MemberRows(a) for a in self.params],
            "buffers": [MemberRows(b) for b in self.buffers],
            "n": MemberValues(self.n),
            "acc": MemberValues(self.acc),
            "decisions": MemberValues(self.decisions),
        }

    def load_state_dict(self, run: RunState, state: dict) -> None:
        for a, v in zip(self.params + self.buffers, state["params"] + state["buffers"]):
            a.copy_(v.rows)
        self.n, self.acc = list(state["n"].values), list(state["acc"].values)
        self.decisions = [list(d) for d in state["decisions"].values]
