"""DART: Diversify-Aggregate-Repeat Training (Jain et al., CVPR 2023).

(1) An optional shared ERM warm-up of ``warmup_epochs``: member 0 (with the first augmentation,
plain crop+flip) trains alone in effect, and after each of its steps every other member is set to
a copy of it, optimizer state included. (2) Each member then trains with its own augmentation
(``augmentations`` are assigned to members in order, cycling). (3) Every ``every_steps`` steps
every member is replaced by the uniform average, weights and buffers, each member keeping its
optimizer state. (4) Repeat. The final model is the average (after BatchNorm recalibration).
Communication (D + B) / T per member per step.

Unverified (config options): T, N and the architecture for CIFAR (DomainBed's code uses
T = 600-1000 steps and N = 4).
"""

from wab.method import Method, RunState, register

# Named augmentation recipes, as overrides of data.augment.
RECIPES = {
    "crop_flip": {},
    "cutout": {"cutout": 16},  # the size is set from cutout_size
    "cutmix": {"cutmix_alpha": 1.0},
    "mixup": {"mixup_alpha": 1.0},
    "trivialaugment": {"policy": "trivialaugment"},
    "autoaugment": {"policy": "autoaugment"},
}


@register("dart")
class Dart(Method):
    """DART: per-member augmentations, averaged into every member every T steps."""

    demo_overrides = ("method.every_steps=20",)

    def member_augment(self, size: int, image_size: int) -> list[dict]:
        names = list(self.cfg.get("augmentations", ["crop_flip", "cutout", "cutmix", "mixup", "trivialaugment"]))
        unknown = [n for n in names if n not in RECIPES]
        if unknown or not names:
            raise ValueError(f"dart augmentations {unknown or names} unknown; choose from {sorted(RECIPES)}")
        recipes = [dict(RECIPES[n]) for n in names]
        if "cutout" in names:  # default: half the image side (16 on CIFAR, as in DeVries & Taylor)
            recipes[names.index("cutout")]["cutout"] = int(self.cfg.get("cutout_size") or image_size // 2)
        return [recipes[i % len(recipes)] for i in range(size)]

    def setup(self, run: RunState) -> None:
        self.every = int(self.cfg.get("every_steps", 600))
        if self.every < 1:
            raise ValueError(f"dart every_steps must be >= 1, got {self.every}")
        self.warmup_steps = int(self.cfg.get("warmup_epochs", 0)) * run.steps_per_epoch

    def after_step(self, run: RunState) -> None:
        pop = run.population
        if run.step <= self.warmup_steps:  # shared ERM warm-up: everyone follows member 0
            params, buffers = pop.member_state(0)
            for i in range(1, pop.size):
                pop.load_member(i, params, buffers)
            for g in range(len(pop.params)):
                for state in pop.optimizer_state_rows(run.optimizer, g):
                    state[1:] = state[0]
            return
        if (run.step - self.warmup_steps) % self.every == 0:
            pop.average_into_members(include_buffers=True)
