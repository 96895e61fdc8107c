"""DiLoCo (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models",
arXiv 2311.08105): every member trains with its own inner AdamW for H steps (paper: 500); then
the outer gradient Delta = theta_global - mean_i theta_i is applied to the global model by an
outer Nesterov SGD (lr 0.7, momentum 0.9, the paper's best), and every member restarts from the
new global model. As in the public code (OpenDiLoCo, EXO Gym), Delta uses the members' average
(never their sum), the outer momentum persists across rounds and is checkpointed, and the inner
AdamW state is never reset. BatchNorm buffers (absent from the paper's transformers) are set to
the members' mean (``include_buffers``). This config selects ``optim=adamw`` for the inner steps.

With the outer SGD at lr 1 and no momentum the outer step sets theta_global to the members' mean:
local SGD every H steps. Communication: one all-reduce of D (+ B) every H steps; the outer step
runs identically on every worker, so nothing else travels.
"""

from __future__ import annotations

import torch

from wab.method import Method, Range, RunState, register


@register("diloco")
class DiLoCo(Method):
    """DiLoCo: H inner AdamW steps per member, then an outer Nesterov step on the global model."""

    synchronizes = True  # every member set to one state: the anchor of task-vector merges

    constraints = {
        "every_steps": Range(1),
        "outer_lr": Range(0, low_open=True),
        "outer_momentum": Range(0, 1, high_open=True),
    }

    demo_overrides = ("method.every_steps=10",)
    demo_note = "every_steps=10 instead of 500: the demo has 350 steps"

    def setup(self, run: RunState) -> None:
        hp = self.hp
        self.every, self.include_buffers = hp.every_steps, hp.include_buffers
        lr, momentum = hp.outer_lr, hp.outer_momentum
        if hp.outer_nesterov and momentum == 0:
            raise ValueError("diloco outer_nesterov needs outer_momentum > 0 (torch's Nesterov SGD refuses 0)")
        pop = run.population
        start, start_buffers = pop.member_state(0)
        pop.load_all(start, start_buffers)  # every member starts from the global model (a resume loads over it)
        self.global_params = [torch.nn.Parameter(p.clone()) for p in start]
        self.outer = torch.optim.SGD(self.global_params, lr=lr, momentum=momentum, nesterov=hp.outer_nesterov)
        self.rounds = 0

    @torch.no_grad()
    def after_step(self, run: RunState) -> None:
        if run.step % self.every:
            return
        pop = run.population
        means, buffers = pop.mean(self.include_buffers)  # the one all-reduce of a round
        for g, m in zip(self.global_params, means):
            g.grad = g.detach() - m  # the outer gradient: global minus the members' average
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        pop.load_all([g.detach() for g in self.global_params], buffers if self.include_buffers else None)
        self.rounds += 1

    def report(self, run: RunState) -> dict:
        return {"outer_steps": self.rounds}

    def state_dict(self, run: RunState) -> dict:
        return {"global": [g.detach().clone() for g in self.global_params], "outer": self.outer.state_dict(),
                "rounds": self.rounds}  # fmt: skip

    def load_state_dict(self, run: RunState, state: dict) -> None:
        with torch.no_grad():
            for g, v in zip(self.global_params, state["global"]):
                g.copy_(v)
        self.outer.load_state_dict(state["outer"])
        self.rounds = int(state["rounds"])
