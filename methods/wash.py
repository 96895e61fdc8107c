"""WASH: Weight Averaging through SHuffling (Fournier et al., 2024, "WASH: Train your Ensemble with
Communication-Efficient Weight Shuffling, then Average").

After every optimizer step, each element j of each parameter tensor l is, independently with
probability p_l, replaced across members by a uniform random permutation of the members' values:
theta_i[j] <- theta_sigma(i)[j]. p_l decreases with depth: ``linear`` gives
p_l = p * (1 - l / (L - 1)) in parameter order; ``constant`` gives p_l = p. A shuffle leaves the
population mean unchanged and in expectation equals PAPA's pull with alpha = 1 - p_l, at about
1/(10p) times less communication: sum_l p_l D_l (N - 1) / N elements per member per step.

Implementation: per layer the number of shuffled elements is drawn from Binomial(D_l, p_l), then
that many distinct positions, so the cost grows with the number of shuffled elements, not with
the model size. The random stream is the run's method RNG (shared by all workers in a
distributed setting, so no indices need to travel).

Choices the paper leaves open (unverified; config options, recorded in every run's config): the
base p (default 0.01); what p means (``convention``): ``selected`` (default) makes p_l the
probability that a position is selected, so (N - 1) / N of a selected position's values change
owner, while ``changed`` makes p_l the fraction of values that change owner (selection
probability p_l / (1 - 1/N), as a known re-implementation reads the paper); whether p follows the
learning rate (``lr_scaled``: p_l * lr_t / lr_0 after the step taken with lr_t; off by default,
it removes the collapse of the members near the end of a schedule that a measured run showed);
and whether BatchNorm buffers are shuffled (``shuffle_buffers``, default off as in known
implementations).
"""

from __future__ import annotations

import torch

from wab.core.population import Population, Segment
from wab.method import Method, OneOf, Range, RunState, register
from wab.parts.device import to_device

SCHEDULES = ("linear", "constant")
CONVENTIONS = ("selected", "changed")


def layer_probabilities(p: float, num_layers: int, schedule: str) -> torch.Tensor:
    """p_l for l = 0..L-1: ``linear`` decays from p to 0 in parameter order; ``constant`` is p."""
    if schedule not in SCHEDULES:
        raise ValueError(f"wash schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"wash p must be in [0, 1], got {p}")
    if schedule == "constant" or num_layers == 1:
        return torch.full((num_layers,), float(p), dtype=torch.float64)
    return p * (1.0 - torch.arange(num_layers, dtype=torch.float64) / (num_layers - 1))


def selection_probabilities(p: float, num_layers: int, schedule: str, convention: str, n: int) -> torch.Tensor:
    """The probability that each layer's positions are selected for a shuffle. ``selected``: p_l
    itself (a selected position's N values are permuted uniformly, so (N - 1) / N of them change
    owner on average); ``changed``: p_l is the fraction of values that change owner, so a
    position is selected with p_l / (1 - 1/N) (capped at 1), as a known re-implementation does."""
    probs = layer_probabilities(p, num_layers, schedule)
    if convention == "changed" and n > 1:
        probs = (probs / (1.0 - 1.0 / n)).clamp(max=1.0)
    return probs


def sample_positions(segments: list[Segment], probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each segment's elements selected independently with probability p_l, as flat columns.

    Draws k_l ~ Binomial(D_l, p_l) and then k_l distinct positions in each segment: i.i.d.
    uniform draws with duplicates removed, topped up until each segment has k_l distinct ones
    (the first k_l distinct values of an i.i.d. stream are a uniform k_l-subset). Cost O(sum k_l).
    """
    sizes = torch.tensor([s.numel for s in segments], dtype=torch.float64)
    starts = torch.tensor([s.start for s in segments])
    want = torch.binomial(sizes, probs, generator=gen).long()
    chosen = torch.empty(0, dtype=torch.long)
    have = torch.zeros(len(segments), dtype=torch.long)
    deficit = want
    while int(deficit.sum()) > 0:
        seg = torch.repeat_interleave(torch.arange(len(segments)), deficit)
        draws = starts[seg] + (torch.rand(len(seg), generator=gen, dtype=torch.float64) * sizes[seg]).long()
        chosen = torch.cat([chosen, draws]).unique()
        have = torch.bucketize(chosen, starts, right=True).sub_(1).bincount(minlength=len(segments))
        deficit = want - have
    return chosen


def random_permutations(k: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """k independent uniform permutations of n members, [k, n]."""
    return torch.rand(k, n, generator=gen).argsort(1)


@register("wash")
class Wash(Method):
    """WASH: shuffle a few parameter elements across members after every step."""

    constraints = {"p": Range(0, 1), "schedule": OneOf(SCHEDULES), "convention": OneOf(CONVENTIONS)}

    move_optimizer_state = False
    demo_overrides = ("method.p=0.05", "method.lr_scaled=true")
    demo_note = (
        "p=0.05, scaled by lr_t/lr_0: at the default p=0.01 the demo's 350 steps do not hold independently "
        "initialised members in one basin, and unscaled shuffles collapse the members as the lr reaches 0 (84% "
        "members, an average 11 points under the ensemble); results/reference shows the default at 3,672 steps"
    )

    def setup(self, run: RunState) -> None:
        self.p, schedule, self.convention = self.hp.p, self.hp.schedule, self.hp.convention
        self.lr_scaled = self.hp.lr_scaled
        pop = run.population
        self.param_probs = selection_probabilities(self.p, len(pop.param_segments), schedule, self.convention, pop.size)
        self.shuffle_buffers = self.hp.shuffle_buffers
        if self.shuffle_buffers and pop.buffer_segments:
            self.buffer_probs = selection_probabilities(
                self.p, len(pop.buffer_segments), schedule, self.convention, pop.size
            )

    def after_step(self, run: RunState) -> None:
        opt = run.optimizer if self.move_optimizer_state else None
        scale = run.lr / run.lr0 if self.lr_scaled else 1.0
        self.shuffle(run.population, run.rng, opt, scale)

    def shuffle(self, pop: Population, gen: torch.Generator, optimizer=None, scale: float = 1.0) -> None:
        """One shuffle, each selection probability multiplied by ``scale`` (``lr_scaled``)."""
        kinds = [(pop.param_segments, self.param_probs, False)]
        if self.shuffle_buffers and pop.buffer_segments:
            kinds.append((pop.buffer_segments, self.buffer_probs, True))
        for segments, probs, buffers in kinds:
            probs = probs * scale if scale != 1.0 else probs
            groups = sorted({s.group for s in segments})
            for g in groups:
                idx = [i for i, s in enumerate(segments) if s.group == g]
                cols = sample_positions([segments[i] for i in idx], probs[idx], gen)
                perms = random_permutations(len(cols), pop.size, gen)
                pop.permute_elements(g, to_device(cols, pop.device), perms, buffers=buffers, optimizer=optimizer)
