"""PAPA-2 (Jolicoeur-Martineau et al., TMLR 2024): every K epochs, N distinct pairs of members are
drawn at random and member j becomes the midpoint of pair j (weights and buffers), then REPAIR
as in PAPA-all when ``repair`` is on.

Deliberate difference from the released code, which always draws from the first N pairs in
lexicographic order: here the N pairs are drawn uniformly among all N(N-1)/2 (N >= 3). With
N = 2 there is one pair, and both members become its midpoint, as in the authors' code. Merge
epochs as in PAPA-all. Communication (D + B) / (K S) per member per step.
"""

import itertools

import torch

from wab.method import RunState, register
from wab.methods.papa_all import PapaAll


def pair_mixing_matrix(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, n] matrix whose row j averages the two members of the j-th of n random distinct pairs
    (with n = 2, both rows average the one pair)."""
    pairs = list(itertools.combinations(range(n), 2))
    if n < 2:
        raise ValueError(f"papa_2 needs a population of at least 2 members, got {n}")
    chosen = torch.randperm(len(pairs), generator=gen)[:n].tolist() if len(pairs) >= n else [0] * n
    w = torch.zeros(n, n, dtype=torch.float64)
    for j, c in enumerate(chosen):
        a, b = pairs[c]
        w[j, a] += 0.5
        w[j, b] += 0.5
    return w


@register("papa_2")
class Papa2(PapaAll):
    """PAPA-2: every K epochs each member becomes the midpoint of a random pair."""

    op = "pair_average"

    def mixing(self, run: RunState) -> torch.Tensor:
        return pair_mixing_matrix(run.population.size, run.rng)
