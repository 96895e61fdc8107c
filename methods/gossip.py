"""Gossip / decentralised SGD (Lian et al., "Can Decentralized Algorithms Outperform Centralized
Algorithms?", NeurIPS 2017): after every step each member averages with its neighbours in a
topology, theta_i <- sum_j W_ij theta_j, with a symmetric doubly stochastic mixing matrix W built
once per step: ``ring`` (self and the two neighbours, 1/3 each), ``torus`` (a wrap-around r x c
grid, r the largest divisor of N up to sqrt(N): self and up to 4 neighbours, equal weights; a
prime N gives the ring) and ``random_peer`` (a random perfect matching drawn from the shared
method stream each step: each pair averages, with an odd N one member waits). The mean is
preserved exactly (W is doubly stochastic). Buffers are mixed too (``include_buffers``).

Communication: neighbour exchanges, not an all-reduce: each member sends its D (+ B) elements
to each of its distinct neighbours per step (ring 2, torus up to 4, random peer 1).
"""

from __future__ import annotations

import math

import torch

from wab.method import Method, OneOf, RunState, register

TOPOLOGIES = ("ring", "torus", "random_peer")


def grid_shape(n: int) -> tuple[int, int]:
    """(r, c), r x c = n, r the largest divisor of n not above sqrt(n)."""
    r = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return r, n // r


def neighbours(topology: str, n: int) -> list[set[int]]:
    """Each member's distinct neighbours (itself excluded) in a fixed topology."""
    if topology == "ring":
        return [{(i - 1) % n, (i + 1) % n} - {i} for i in range(n)]
    r, c = grid_shape(n)
    out = []
    for i in range(n):
        y, x = divmod(i, c)
        out.append({((y - 1) % r) * c + x, ((y + 1) % r) * c + x, y * c + (x - 1) % c, y * c + (x + 1) % c} - {i})
    return out


def mixing_matrix(topology: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """The [n, n] doubly stochastic W of one step."""
    w = torch.zeros(n, n, dtype=torch.float64)
    if topology == "random_peer":
        order = torch.randperm(n, generator=gen).tolist()
        for a, b in zip(order[0::2], order[1::2]):
            w[a, a] = w[a, b] = w[b, a] = w[b, b] = 0.5
        if n % 2:
            w[order[-1], order[-1]] = 1.0
        return w
    for i, peers in enumerate(neighbours(topology, n)):
        for j in (i, *peers):
            w[i, j] = 1.0 / (len(peers) + 1)
    return w


@register("gossip")
class Gossip(Method):
    """Gossip: every member averages with its neighbours after every step."""

    constraints = {"topology": OneOf(TOPOLOGIES)}

    def setup(self, run: RunState) -> None:
        self.topology, self.include_buffers = self.hp.topology, self.hp.include_buffers
        n = run.population.size
        if self.topology != "random_peer":
            self.w = mixing_matrix(self.topology, n, run.rng)
            self.peers = sum(len(p) for p in neighbours(self.topology, n)) / n
        else:
            self.peers = (n - n % 2) / n  # members in a pair send once; an odd one out waits

    def after_step(self, run: RunState) -> None:
        w = mixing_matrix(self.topology, run.population.size, run.rng) if self.topology == "random_peer" else self.w
        run.population.mix(w, self.include_buffers, op=f"gossip_{self.topology}", peers=self.peers)
