"""Local SGD / periodic averaging (Stich, ICLR 2019; Lin et al., "Don't use large mini-batches, use
local SGD", ICLR 2020): the members train alone and every H steps (``every_steps``; or every
``every_epochs`` epochs, at the epoch's end) each is replaced by the members' mean. Each member's
optimizer state stays its own. With H = 1 and plain SGD (no momentum, no weight decay) this is
synchronous data-parallel SGD on the members' union of batches.

Unverified (config options): H for CIFAR (the papers sweep H in {2, 4, 8, 16}; default 16, Lin et
al.'s post-local SGD setting) and whether BatchNorm buffers are averaged (``include_buffers``,
default true, like DART and PAPA; the mean of the running statistics). Communication: one
all-reduce of D (+ B) every H steps, (D + B) / H per member per step.
"""

from wab.method import Method, Range, RunState, register


@register("local_sgd")
class LocalSgd(Method):
    """Local SGD: every member replaced by the members' mean every H steps."""

    synchronizes = True  # every member set to one state: the anchor of task-vector merges

    constraints = {"every_steps": Range(0), "every_epochs": Range(0)}

    demo_overrides = ("method.every_steps=8",)
    demo_note = "every_steps=8 instead of 16, for the demo's short run"

    def setup(self, run: RunState) -> None:
        self.every_steps, self.every_epochs = self.hp.every_steps, self.hp.every_epochs
        self.include_buffers = self.hp.include_buffers
        if (self.every_steps > 0) == (self.every_epochs > 0):
            raise ValueError(
                f"local_sgd needs exactly one of every_steps and every_epochs >= 1 (the other 0), got "
                f"every_steps={self.every_steps}, every_epochs={self.every_epochs}"
            )

    def after_step(self, run: RunState) -> None:
        if self.every_steps and run.step % self.every_steps == 0:
            run.population.average_into_members(self.include_buffers)

    def after_epoch(self, run: RunState) -> None:
        if self.every_epochs and (run.epoch + 1) % self.every_epochs == 0:
            run.population.average_into_members(self.include_buffers)
