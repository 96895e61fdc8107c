"""EMA: an exponential moving average of each member's weights, delivered as that member's model
(zero communication; the per-member averages of Kaddour, 2022, "Stop wasting my time!", and of
Sanyal et al., 2023, "Early weight averaging meets high learning rates", whose scripts use the
ema-pytorch ``EMA`` class with beta = 0.9, update_after_step = 0, update_every = 1).

``warmup: ema_pytorch`` (default, their code): the update counter c starts at 0 and each step
increments it; when c % update_every == 0, the first update_after_step + 1 updates, and the first
one after them, copy the weights; the later ones set ema <- d ema + (1 - d) theta with
d = min(beta, 1 - (1 + e / inv_gamma)^(-power)), e = c - update_after_step - 1 (power 2/3).
``warmup: tensorflow`` (wab's earlier rule, TensorFlow's ExponentialMovingAverage with
num_updates): from the initial weights, d = min(beta, (1 + t) / (10 + t)) at step t.
Parameters only (ema-pytorch also averages float buffers, which BatchNorm recalibration
replaces): the models ``ema_<i>`` are evaluated after BatchNorm recalibration (``ema_0`` is the
final model). Communication 0.
"""

from __future__ import annotations

import torch

from wab.method import MemberRows, Method, OneOf, Range, RunState, register

WARMUPS = ("ema_pytorch", "tensorflow")


def ema_decay(beta: float, step: int) -> float:
    """TensorFlow's beta_t with num_updates, ``step`` the number of steps taken (>= 1)."""
    return min(beta, (1.0 + step) / (10.0 + step))


def ema_pytorch_decay(beta: float, counter: int, update_after_step: int, inv_gamma: float, power: float) -> float:
    """ema-pytorch's get_current_decay at its step counter (already incremented by this update)."""
    epoch = max(counter - update_after_step - 1, 0)
    if epoch <= 0:
        return 0.0
    return min(max(1.0 - (1.0 + epoch / inv_gamma) ** -power, 0.0), beta)


@register("ema")
class Ema(Method):
    """EMA of every member's weights, one delivered model per member."""

    constraints = {
        "decay": Range(0, 1, high_open=True),
        "warmup": OneOf(WARMUPS),
        "update_after_step": Range(0),
        "update_every": Range(1),
        "inv_gamma": Range(0, low_open=True),
        "power": Range(0, low_open=True),
    }

    min_members = 1

    def setup(self, run: RunState) -> None:
        self.beta = self.hp.decay
        self.averages = [p.detach().clone() for p in run.population.params]  # the members held here
        self.counter, self.initted = 0, False  # ema-pytorch's step and initted

    @torch.no_grad()
    def after_step(self, run: RunState) -> None:
        params = run.population.params
        if self.hp.warmup == "tensorflow":
            beta = ema_decay(self.beta, run.step)
            for avg, p in zip(self.averages, params):
                avg.lerp_(p, 1.0 - beta)
            return
        step, self.counter = self.counter, self.counter + 1
        if step % self.hp.update_every:
            return
        if step <= self.hp.update_after_step or not self.initted:
            for avg, p in zip(self.averages, params):
                avg.copy_(p)
            if step <= self.hp.update_after_step:
                return
            self.initted = True
        d = ema_pytorch_decay(self.beta, self.counter, self.hp.update_after_step, self.hp.inv_gamma, self.hp.power)
        for avg, p in zip(self.averages, params):
            avg.lerp_(p, 1.0 - d)

    def finalize(self, run: RunState) -> dict:
        pop = run.population
        return pop.member_models("ema", lambda k: pop.model_from([a[k] for a in self.averages]))

    def state_dict(self, run: RunState) -> dict:
        return {"averages": [MemberRows(a) for a in self.averages], "counter": self.counter, "initted": self.initted}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        for a, s in zip(self.averages, state["averages"]):
            a.copy_(s.rows)
        self.counter, self.initted = int(state.get("counter", 0)), bool(state.get("initted", False))
