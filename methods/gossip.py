"""Gossip / decentralised SGD (Lian et al., "Can Decentralized Algorithms Outperform Centralized
Algorithms?", NeurIPS 2017): every step each member averages with its neighbours in a topology,
theta_i <- sum_j W_ij theta_j, in one of two orders (``order``):

- ``lian`` (default, the paper's Algorithm 1, D-PSGD): x' = W x - lr g(x), the gradient taken at
  the point before mixing and added after it. The step's update u = (x - lr g(x)) - x (the
  optimizer's, momentum and weight decay included) is added to the mixed pre-step point.
- ``adapt_then_combine``: x' = W (x - lr g(x)), step first and then mix (the order of ChocoSGD's
  exact-communication baseline, Koloskova et al., ICML 2019, and of the diffusion strategies).

The mixing matrix W is symmetric and doubly stochastic, built once per step: ``ring`` (self and
the two neighbours, 1/3 each), ``torus`` (a wrap-around r x c grid, r the largest divisor of N up
to sqrt(N): self and up to 4 neighbours, equal weights; a prime N gives the ring) and
``random_peer`` (a random perfect matching drawn from the shared method stream each step: each
pair averages, with an odd N one member waits). The mean is preserved exactly (W is doubly
stochastic) in either order. Buffers are mixed too (``include_buffers``; the optimizer does not
touch them, so both orders mix them after the step).

Communication: neighbour exchanges, not an all-reduce: each member sends its D (+ B) elements
to each of its distinct neighbours per step (ring 2, torus up to 4, random peer 1).
"""

from __future__ import annotations

import math

import torch

from wab.method import Method, OneOf, RunState, register

TOPOLOGIES = ("ring", "torus", "random_peer")
ORDERS = ("lian", "adapt_then_combine")


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

    constraints = {"topology": OneOf(TOPOLOGIES), "order": OneOf(ORDERS)}

    def setup(self, run: RunState) -> None:
        self.topology, self.include_buffers, self.order = self.hp.topology, self.hp.include_buffers, self.hp.order
        # lian: the members' weights before the step (what the last mix left), for W x + u
        self.before = [p.detach().clone() for p in run.population.params] if self.order == "lian" else None
        n = run.population.size
        if self.topology != "random_peer":
            self.w = mixing_matrix(self.topology, n, run.rng)
            self.peers = sum(len(p) for p in neighbours(self.topology, n)) / n
        else:
            self.peers = (n - n % 2) / n  # members in a pair send once; an odd one out waits

    @torch.no_grad()
    def after_step(self, run: RunState) -> None:
        pop = run.population
        w = mixing_matrix(self.topology, pop.size, run.rng) if self.topology == "random_peer" else self.w
        if self.before is None:
            pop.mix(w, self.include_buffers, op=f"gossip_{self.topology}", peers=self.peers)
            return
        updates = [p - b for p, b in zip(pop.params, self.before)]  # u = x_after_step - x
        for p, b in zip(pop.params, self.before):
            p.copy_(b)
        pop.mix(w, self.include_buffers, op=f"gossip_{self.topology}", peers=self.peers)  # W x
        for p, u, b in zip(pop.params, updates, self.before):
            p.add_(u)
            b.copy_(p)

    def load_state_dict(self, run: RunState, state: dict) -> None:
        """Between steps the members hold what the last mix left, so a resumed run's weights (loaded
        before this) are the pre-step point: nothing of its own to save."""
        if self.before is not None:
            for b, p in zip(self.before, run.population.params):
                b.copy_(p)
