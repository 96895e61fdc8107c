"""DART: Diversify-Aggregate-Repeat Training (Jain et al., CVPR 2023).

(1) The members start from one shared initialisation (``population.same_init: true``, as the
paper diversifies copies of one network), with an optional shared ERM warm-up of
``warmup_epochs``: member 0 (with the first augmentation, plain crop+flip) trains alone in effect,
and after each of its steps every other member is set to a copy of it, optimizer state included.
(2) Each member then trains with its own augmentation: ``population.member_augment: dart``
(crop+flip, Cutout, CutMix, mixup, TrivialAugment, assigned to members in order, cycling), the
population any method may be given, so that an independent population with the same
augmentations is DART's exact control. (3) Every ``every_steps`` steps every member is replaced by the uniform
average, weights and buffers, each member keeping its optimizer state: as in the authors' code,
after the 0-based step s with s % T == 0 and s != 0 (counted from the end of the warm-up), i.e.
after steps T+1, 2T+1, ... (4) Repeat. Communication (D + B) / T per member per step.

The final model (``final``): ``heldout`` (the authors' code) is the aggregated model, evaluated
right after each aggregation, with the best held-out accuracy (the earliest of ties), as it was
(its buffers averaged, no recalibration); ``average`` is the uniform average at the end, after
BN recalibration (``avg_bn``).

Unverified (config options): T, N and the architecture for CIFAR (DomainBed's code uses
T = 600-1000 steps and N = 4).
"""

from wab.method import Method, OneOf, Range, RunState, heldout_selection, register

FINALS = ("heldout", "average")


@register("dart")
class Dart(Method):
    """DART: per-member augmentations, averaged into every member every T steps."""

    synchronizes = True  # every member set to one state: the anchor of task-vector merges

    constraints = {"every_steps": Range(1), "final": OneOf(FINALS), "warmup_epochs": Range(0)}

    demo_overrides = ("method.every_steps=20",)
    demo_note = "every_steps=20 instead of 600, so that the demo's 350 steps aggregate at all"
    recalibrate_outputs = False  # the held-out choice is delivered as it was evaluated

    def setup(self, run: RunState) -> None:
        self.every, self.final = self.hp.every_steps, self.hp.final
        if self.final == "heldout" and len(run.data.heldout) == 0:
            raise ValueError("dart final=heldout chooses on the held-out split: set data.heldout_fraction > 0")
        self.warmup_steps = self.hp.warmup_epochs * run.steps_per_epoch
        self.heldout_size = len(run.data.heldout)
        self.aggregations: list[dict] = []  # step and held-out accuracy of each aggregation
        self.best = None  # (params, buffers) of the best aggregated model on held-out data

    def after_step(self, run: RunState) -> None:
        pop = run.population
        if run.step <= self.warmup_steps:  # shared ERM warm-up: everyone follows member 0
            pop.copy_member_to_all(0, run.optimizer)
            return
        s = run.step - self.warmup_steps - 1  # the authors' 0-based step
        if s > 0 and s % self.every == 0:
            pop.average_into_members(include_buffers=True)
            entry: dict = {"step": run.step}
            if self.final == "heldout":
                entry["heldout_acc"] = run.evaluator.accuracy(pop.members[0], "heldout")
                if self.best is None or entry["heldout_acc"] > self.aggregations[self.best_index]["heldout_acc"]:
                    self.best = pop.member_state(0)
                    self.best_index = len(self.aggregations)
            self.aggregations.append(entry)

    def finalize(self, run: RunState) -> dict:
        if self.final != "heldout" or self.best is None:  # no aggregation yet: the average stands
            return {}
        return {"dart_heldout": run.population.model_from(*self.best)}

    def report(self, run: RunState) -> dict:
        best = self.aggregations[self.best_index] if self.best is not None else None
        out = {"aggregations": self.aggregations, "final": self.final, "chosen": best}
        if best is not None:
            out["selection"] = heldout_selection(best["heldout_acc"], self.heldout_size)
        return out

    def state_dict(self, run: RunState) -> dict:
        state: dict = {"aggregations": self.aggregations}
        if self.best is not None:
            state.update(best_params=self.best[0], best_buffers=self.best[1], best_index=self.best_index)
        return state

    def load_state_dict(self, run: RunState, state: dict) -> None:
        self.aggregations = [dict(a) for a in state["aggregations"]]
        if "best_params" in state:
            self.best = (list(state["best_params"]), list(state["best_buffers"]))
            self.best_index = int(state["best_index"])
