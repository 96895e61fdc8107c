"""LAWA: LAtest Weight Averaging per member (Kaddour, 2022, "Stop wasting my time! Saving days of
ImageNet and BERT training with latest weight averaging"; Sanyal et al., 2023, "Early weight
averaging meets high learning rates"): one checkpoint of each member at the end of every epoch,
and each member's delivered model is the uniform average of its latest k checkpoints
(``lawa_<i>``, ``lawa_0`` the final model), evaluated after BatchNorm recalibration. ``k`` counts the checkpoints
averaged (default 5): Kaddour's scripts average the last 5 on ImageNet (their ``ks=(4)`` is an
index into the list of k values, not k) and Sanyal et al. average groups of K = 5. Communication 0.
"""

from __future__ import annotations

import torch

from wab.method import MemberRows, Method, Range, RunState, register


@register("lawa")
class Lawa(Method):
    """LAWA: each member's latest k per-epoch checkpoints, averaged."""

    constraints = {"k": Range(1)}

    min_members = 1

    def setup(self, run: RunState) -> None:
        self.k = self.hp.k
        self.snapshots: list[list[torch.Tensor]] = []  # per epoch: the held members' rows, per group

    def after_epoch(self, run: RunState) -> None:
        self.snapshots = [*self.snapshots, [p.detach().clone() for p in run.population.params]][-self.k :]

    def finalize(self, run: RunState) -> dict:
        pop = run.population
        latest = [torch.stack([s[g] for s in self.snapshots]).mean(0) for g in range(len(pop.params))]
        return pop.member_models("lawa", lambda k: pop.model_from([a[k] for a in latest]))

    def report(self, run: RunState) -> dict:
        return {"checkpoints_averaged": len(self.snapshots)}

    def state_dict(self, run: RunState) -> dict:
        return {"snapshots": [[MemberRows(g) for g in s] for s in self.snapshots]}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        self.snapshots = [[g.rows.clone() for g in s] for s in state["snapshots"]]
