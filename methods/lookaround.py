"""Lookaround (Zhang et al., "Lookaround Optimizer: k steps around, 1 step average", NeurIPS 2023;
code: Ardcy/Lookaround): from a common point, each head takes k SGD steps on its own augmentation
of the same batches, then every head is replaced by the heads' mean; repeat. The authors' CIFAR
setting: 3 heads, k = 5, SGD lr 0.1 momentum 0.9 wd 5e-4, batch 128, 200 epochs. Each head keeps
its own momentum (never reset or averaged).

Here the heads are the members (``population.size: 3``, ``same_init: true``) and take the same
batches in the same order (``shared_data_order``); head i gets ``augmentations[i]``.

- ``heads: authors`` (default, their ``build_transforms`` for CIFAR-10): every head crops
  (``data.augment``'s crop), then applies its own transform: the flip head
  ``RandomHorizontalFlip``; the policy heads ``AutoAugment()`` (torchvision's default, ImageNet
  policy: ``autoaugment_imagenet``) and ``RandAugment()`` after the crop and without the flip.
  (Their CIFAR-100 transforms add ``RandomRotation(15)``, which wab does not have.)
  ``heads: stacked``: each recipe on top of ``data.augment`` as it is (flip included, a policy
  before the crop), wab's earlier choice.
- ``buffers: shared`` (default): in their code the heads are one model, so one set of BatchNorm
  running statistics is updated by every head's batch in turn. wab's members keep their own and,
  after each step, all are set to what that sequence gives: with r the shared statistics before
  the step, m the momentum and r_i head i's own update of r, R = (1 - m)^H r + sum_i (1 - m)^(H-1-i)
  (r_i - (1 - m) r), exactly the sequential update of r by heads 0..H-1 (an exact float64 sum in
  head order, the same on any number of processes). ``averaged``: each head's own statistics,
  averaged with the weights every k steps; ``own``: never averaged.

Communication: one all-reduce of D (+ B with ``averaged``) every k steps; ``shared`` counts B per
head per step (``lookaround_shared_bn``), what sharing them costs where heads are processes.
"""

from __future__ import annotations

import torch

from wab.method import Method, OneOf, Range, RunState, register
from wab.parts.augment import recipe

HEADS = ("authors", "stacked")
BUFFERS = ("shared", "averaged", "own")


@register("lookaround")
class Lookaround(Method):
    """Lookaround: heads on their own augmentations of the same batches, averaged every k steps."""

    synchronizes = True  # every member set to one state: the anchor of task-vector merges

    constraints = {"every_steps": Range(1), "heads": OneOf(HEADS), "buffers": OneOf(BUFFERS)}

    shared_data_order = True

    def member_augment(self, size: int, image_size: int) -> list[dict]:
        names = list(self.hp.augmentations)
        if not names:
            raise ValueError("lookaround augmentations must name at least one recipe")
        out = []
        for i in range(size):
            entry = recipe(names[i % len(names)], image_size)
            if self.hp.heads == "authors" and entry.get("policy"):  # crop, then the policy; no flip
                entry = {**entry, "flip": False, "policy_after_crop": True}
            out.append(entry)
        return out

    def setup(self, run: RunState) -> None:
        self.k, self.buffers = self.hp.every_steps, self.hp.buffers
        pop = run.population
        self.shared = None
        if self.buffers == "shared" and pop.buffers:
            self.momentum = [torch.empty(b.shape[1], dtype=torch.float64, device=b.device) for b in pop.buffers]
            for seg in pop.buffer_segments:
                module = pop.members[0].get_submodule(seg.name.rpartition(".")[0])
                m = getattr(module, "momentum", None)
                if not isinstance(m, float):
                    raise ValueError(f"lookaround buffers=shared needs BatchNorm with a float momentum; "
                                     f"{seg.name} has momentum {m!r}: use buffers=averaged")  # fmt: skip
                self.momentum[seg.group][seg.start : seg.stop] = m
            self.shared = [b[0].clone() for b in pop.buffers]  # the heads start from one point

    @torch.no_grad()
    def after_step(self, run: RunState) -> None:
        pop = run.population
        if self.shared is not None:
            self._share_buffers(run)
        if run.step % self.k == 0:
            pop.average_into_members(self.buffers == "averaged")

    def _share_buffers(self, run: RunState) -> None:
        pop = run.population
        h = pop.size
        order = torch.tensor(pop.member_numbers(), dtype=torch.float64)
        for flat, r, m in zip(pop.buffers, self.shared, self.momentum):
            keep = 1.0 - m
            own = flat.double() - keep * r.double()  # m s_i: head i's batch, weighted
            weights = keep.unsqueeze(0) ** (h - 1 - order.to(keep.device)).unsqueeze(1)
            total = pop.combine_rows(own, weights, "lookaround_shared_bn") + keep**h * r.double()
            r.copy_(total.to(r.dtype))
            flat.copy_(r.expand_as(flat))
        run.ledger.record("lookaround_shared_bn", pop.num_buffers, pop.buffers[0].element_size(), "all_reduce")

    def load_state_dict(self, run: RunState, state: dict) -> None:
        """The shared statistics are every head's (loaded before this): nothing of its own to save."""
        if self.shared is not None:
            for r, b in zip(self.shared, run.population.buffers):
                r.copy_(b[0])
