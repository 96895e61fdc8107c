"""SWA: Stochastic Weight Averaging (Izmailov et al., UAI 2018), run per member.

Each member follows its own SGD trajectory under the SWA learning-rate schedule (this method's
config sets ``optim.schedule: swa``: lr0 for the first half of the pre-SWA phase, linear decay to
``optim.swa_lr`` by 90% of it, then constant). From epoch ``swa_start`` (a fraction of the
epochs, the schedule's ``optim.swa_start``) at the end of every ``cycle`` epochs, each member's
running average is updated: theta_swa <- (n theta_swa + theta) / (n + 1). Parameters only; the
buffers of the returned models are recomputed by BatchNorm recalibration before evaluation (as
torch's ``swa_utils.update_bn``). ``finalize`` returns member i's SWA model as ``swa_<i>``
(``swa_0`` is the final model; with population.size=1 this is the paper's setting).
Communication 0.
"""

from __future__ import annotations

import math

import torch

from wab.method import MemberRows, Method, Range, RunState, register


@register("swa")
class Swa(Method):
    """SWA: a running average of each member's weights from swa_start, every c epochs."""

    constraints = {"start": Range(0, 1), "cycle": Range(1)}

    min_members = 1  # the paper's setting is one trajectory

    def setup(self, run: RunState) -> None:
        self.cycle = self.hp.cycle
        self.start_epoch = max(1, math.ceil(self.hp.start * run.epochs))  # 1-based, as swa_start in the authors' code
        self.averages = [torch.zeros_like(p) for p in run.population.params]  # one row per member held here
        self.n = 0

    def after_epoch(self, run: RunState) -> None:
        e = run.epoch + 1
        if e >= self.start_epoch and (e - self.start_epoch) % self.cycle == 0:
            self.update(run)

    @torch.no_grad()
    def update(self, run: RunState) -> None:
        for avg, p in zip(self.averages, run.population.params):
            avg.mul_(self.n / (self.n + 1)).add_(p, alpha=1.0 / (self.n + 1))
        self.n += 1

    def finalize(self, run: RunState) -> dict:
        pop = run.population
        if self.n == 0:  # never reached swa_start: the members themselves
            return pop.member_models("swa", lambda k: pop.model_from([p[k] for p in pop.params],
                                                                      [b[k] for b in pop.buffers]))  # fmt: skip
        return pop.member_models("swa", lambda k: pop.model_from([a[k] for a in self.averages]))

    def state_dict(self, run: RunState) -> dict:
        return {"averages": [MemberRows(a) for a in self.averages], "n": self.n}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        for a, s in zip(self.averages, state["averages"]):
            a.copy_(s.rows)
        self.n = int(state["n"])
