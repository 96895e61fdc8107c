"""PAPA-2 (Jolicoeur-Martineau et al., TMLR 2024): every K epochs, N distinct pairs of members are
drawn at random and member j becomes the midpoint of pair j (weights and buffers).

Deliberate difference from the released code, which always draws from the first N pairs in
lexicographic order: here the N pairs are drawn uniformly among all N(N-1)/2 (needs N >= 3).
Merge epochs as in PAPA-all. Communication (D + B) / (K S) per member per step.
"""

import itertools

import torch

from wab.method import RunState, register
from wab.methods.papa_all import PapaAll


def pair_mixing_matrix(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, n] matrix whose row j averages the two members of the j-th of n random distinct pairs."""
    pairs = list(itertools.combinations(range(n), 2))
    if len(pairs) < n:
        raise ValueError(f"papa_2 needs a population of at least 3 members (n distinct pairs), got {n}")
    chosen = torch.randperm(len(pairs), generator=gen)[:n]
    w = torch.zeros(n, n, dtype=torch.float64)
    for j, c in enumerate(chosen.tolist()):
        a, b = pairs[c]
        w[j, a] += 0.5
        w[j, b] += 0.5
    return w


@register("papa_2")
class Papa2(PapaAll):
    """PAPA-2: every K epochs each member becomes the midpoint of a random pair."""

    def merge(self, run: RunState) -> None:
        w = pair_mixing_matrix(run.population.size, run.rng)
        run.population.mix(w, include_buffers=bool(self.cfg.get("include_buffers", True)), op="pair_average")
