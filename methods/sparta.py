"""SPARTA: sparse parameter averaging (as in EXO Gym's SPARTA strategy, p = 0.005): after every
step, each element of every parameter tensor is chosen independently with probability p (a
fresh mask each step, the same mask for every member), and the chosen positions of every member
are replaced by the members' mean there. The population mean is unchanged and the chosen
positions become equal across members.

The mask is drawn from the run's method random stream, which every worker shares, so no index
travels (as WASH's positions): the same positions on one process or many. Positions are drawn
as WASH draws them (a binomial count per tensor, then that many distinct positions), at a cost
proportional to the number chosen. BatchNorm buffers are not averaged (``include_buffers``,
default false: the strategy averages parameters). Communication: an all-reduce of the p D chosen
values per member per step.
"""

from __future__ import annotations

import torch

from wab.method import Method, Range, RunState, register
from wab.methods.wash import sample_positions
from wab.parts.device import to_device


@register("sparta")
class Sparta(Method):
    """SPARTA: average a random fraction p of parameter positions across members every step."""

    constraints = {"p": Range(0, 1, low_open=True)}

    demo_overrides = ("method.p=0.05",)
    demo_note = "p=0.05: the default 0.005 mixes independent members too little in the demo's 350 steps"

    def setup(self, run: RunState) -> None:
        self.p, self.include_buffers = self.hp.p, self.hp.include_buffers

    def after_step(self, run: RunState) -> None:
        pop = run.population
        kinds = [(pop.param_segments, False)] + ([(pop.buffer_segments, True)] if self.include_buffers else [])
        for segments, buffers in kinds:
            for g in sorted({s.group for s in segments}):
                segs = [s for s in segments if s.group == g]
                probs = torch.full((len(segs),), self.p, dtype=torch.float64)
                cols = sample_positions(segs, probs, run.rng)
                pop.average_elements(g, to_device(cols, pop.device), buffers=buffers)
