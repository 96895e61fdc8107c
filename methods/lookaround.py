"""Lookaround (Zhang et al., "Lookaround Optimizer: k steps around, 1 step average", NeurIPS 2023):
from a common point, each head takes k SGD steps on its own augmentation of the same batches,
then every head is replaced by the heads' mean; repeat. The authors' CIFAR setting: 3 heads with
random horizontal flip, AutoAugment and RandAugment, k = 5, SGD lr 0.1 momentum 0.9 wd 5e-4,
batch 128, 200 epochs. Each head keeps its own momentum (never reset or averaged).

Here the heads are the members (``population.size: 3``, ``same_init: true``), they take the same
batches in the same order (``shared_data_order``), and head i gets ``augmentations[i]`` on top of
``data.augment``. In the authors' code the BatchNorm buffers are shared by all heads; members
here keep their own, and ``average_buffers`` (default true) averages them with the weights every
k steps, the nearest to sharing. Communication: one all-reduce of D (+ B) every k steps.
"""

from wab.method import Method, Range, RunState, register
from wab.parts.augment import recipe


@register("lookaround")
class Lookaround(Method):
    """Lookaround: heads on their own augmentations of the same batches, averaged every k steps."""

    constraints = {"every_steps": Range(1)}

    shared_data_order = True

    def member_augment(self, size: int, image_size: int) -> list[dict]:
        names = list(self.hp.augmentations)
        if not names:
            raise ValueError("lookaround augmentations must name at least one recipe")
        return [recipe(names[i % len(names)], image_size) for i in range(size)]

    def setup(self, run: RunState) -> None:
        self.k, self.average_buffers = self.hp.every_steps, self.hp.average_buffers

    def after_step(self, run: RunState) -> None:
        if run.step % self.k == 0:
            run.population.average_into_members(self.average_buffers)
