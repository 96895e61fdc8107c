"""PAPA: Population Parameter Averaging (Jolicoeur-Martineau et al., TMLR 2024), EMA variant.

Every ``every`` steps (counted within the epoch, as in the authors' code) each member is pulled
toward the population mean, buffers included:
theta_i <- alpha_t * theta_i + (1 - alpha_t) * mean, with 1 - alpha_t = (lr_t / lr_0) * (1 - alpha).
alpha = 0.99 from scratch (0.9995 when fine-tuning). Communication ~ (D + B) / every per member
per step. The final model is the uniform average (after BatchNorm recalibration).
"""

from wab.method import Method, RunState, register


@register("papa")
class Papa(Method):
    """PAPA: a small lr-scaled pull of every member toward the mean every k steps."""

    # alpha = 0.99 is tuned for 300 epochs (~23k pulls); the demo's few hundred steps need more pull
    demo_overrides = ("method.alpha=0.9",)

    def setup(self, run: RunState) -> None:
        self.alpha = float(self.cfg.get("alpha", 0.99))
        self.every = int(self.cfg.get("every", 10))
        self.include_buffers = bool(self.cfg.get("include_buffers", True))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"papa alpha must be in [0, 1], got {self.alpha}")
        if self.every < 1:
            raise ValueError(f"papa every must be >= 1 step, got {self.every}")

    def pull_weight(self, run: RunState) -> float:
        """1 - alpha_t = (lr_t / lr_0) * (1 - alpha)."""
        return (run.lr / run.lr0) * (1.0 - self.alpha)

    def after_step(self, run: RunState) -> None:
        if run.epoch_step % self.every == 0:
            run.population.lerp_toward_mean(self.pull_weight(run), self.include_buffers)
