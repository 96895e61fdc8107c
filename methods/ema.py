"""EMA: an exponential moving average of each member's weights, delivered as that member's model
(zero communication; the per-member averages of Kaddour, 2022, "Stop wasting my time!", and of
Sanyal et al., 2023). After every step, for each member,
ema <- beta_t ema + (1 - beta_t) theta, with the warm-up beta_t = min(beta, (1 + t) / (10 + t)) at
step t (TensorFlow's ExponentialMovingAverage with num_updates), so early steps are not frozen
into the average. Parameters only: the models ``ema_<i>`` are evaluated after BatchNorm
recalibration (``ema_0`` is the final model). Communication 0.
"""

from __future__ import annotations

import torch

from wab.method import MemberRows, Method, Range, RunState, register


def ema_decay(beta: float, step: int) -> float:
    """beta_t with the warm-up, ``step`` the number of steps taken (>= 1)."""
    return min(beta, (1.0 + step) / (10.0 + step))


@register("ema")
class Ema(Method):
    """EMA of every member's weights, one delivered model per member."""

    constraints = {"decay": Range(0, 1, high_open=True)}

    min_members = 1

    def setup(self, run: RunState) -> None:
        self.beta = self.hp.decay
        self.averages = [p.detach().clone() for p in run.population.params]  # the members held here

    @torch.no_grad()
    def after_step(self, run: RunState) -> None:
        beta = ema_decay(self.beta, run.step)
        for avg, p in zip(self.averages, run.population.params):
            avg.lerp_(p, 1.0 - beta)

    def finalize(self, run: RunState) -> dict:
        pop = run.population
        return pop.member_models("ema", lambda k: pop.model_from([a[k] for a in self.averages]))

    def state_dict(self, run: RunState) -> dict:
        return {"averages": [MemberRows(a) for a in self.averages]}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        for a, s in zip(self.averages, state["averages"]):
            a.copy_(s.rows)
