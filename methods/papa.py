"""PAPA: Population Parameter Averaging (Jolicoeur-Martineau et al., TMLR 2024), EMA variant.

Every ``every`` steps (counted within the epoch) each member is pulled toward the population
mean, buffers included: theta_i <- alpha_t * theta_i + (1 - alpha_t) * mean, with
1 - alpha_t = (lr / lr_0) * (1 - alpha). alpha = 0.99 from scratch (0.9995 when fine-tuning).

``counter: authors`` (the default) is the authors' loop: the pull follows the optimizer step of
the 0-based batch i of the epoch with i % k == 0, so after steps 1, k+1, 2k+1, ... of every epoch
(ceil(S / k) pulls per epoch), with the lr read after the scheduler has stepped, that is, the lr
of the next step. ``counter: end`` pulls after steps k, 2k, ... (floor(S / k) per epoch) with the
lr of the step just taken. Communication ~ (D + B) / every per member per step. The final model
is the uniform average (after BatchNorm recalibration).
"""

from wab.method import Method, OneOf, Range, RunState, register

COUNTERS = ("authors", "end")


@register("papa")
class Papa(Method):
    """PAPA: a small lr-scaled pull of every member toward the mean every k steps."""

    constraints = {"alpha": Range(0, 1), "every": Range(1), "counter": OneOf(COUNTERS)}

    # alpha = 0.99 is tuned for 300 epochs (~23k pulls); the demo's few hundred steps need more pull
    demo_overrides = ("method.alpha=0.9",)
    demo_note = "alpha=0.9: the default 0.99 is tuned for ~23,000 pulls; the demo makes 40"

    def setup(self, run: RunState) -> None:
        self.alpha, self.every, self.counter = self.hp.alpha, self.hp.every, self.hp.counter
        self.include_buffers = self.hp.include_buffers

    def pulls_now(self, run: RunState) -> bool:
        """Whether a pull follows the step just taken (``run.epoch_step`` is 1-based)."""
        if self.counter == "authors":
            return (run.epoch_step - 1) % self.every == 0
        return run.epoch_step % self.every == 0

    def pull_weight(self, run: RunState) -> float:
        """1 - alpha_t = (lr / lr_0) * (1 - alpha), lr as ``counter`` reads it."""
        lr = run.lr_of(run.step) if self.counter == "authors" else run.lr
        return (lr / run.lr0) * (1.0 - self.alpha)

    def after_step(self, run: RunState) -> None:
        if self.pulls_now(run):
            run.population.lerp_toward_mean(self.pull_weight(run), self.include_buffers)
