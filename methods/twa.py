"""TWA: Trainable Weight Averaging (Li et al., ICLR 2023; journal version 2025).

Learns the averaging coefficients of K candidate weight vectors instead of fixing them. The
candidates are the N final members (``candidates: members``), per-epoch snapshots of every
member from ``snapshot_start`` on (``snapshots``), or both.

- ``variant: t`` (ICLR, TWA-t): start from the uniform mean; train on the training split with
  projected SGD, the gradient g replaced by its projection onto the candidates' span, momentum
  0.9, weight decay 1e-5, lr 2 (a projected step) times 0.1 at the authors' epochs
  [int(0.5 E), int(0.75 E + 0.9)] (5 and 8 of 10). The authors Gram-Schmidt the K flattened
  candidates C into an orthonormal P and project by P^T (P g); here the same projector is
  C^T G^+ (C g) with G = C C^T, which needs no process to hold more than its own candidates.
- ``variant: v`` (journal, TWA-v): centre the candidates on their mean, split them into blocks
  (one per parameter tensor) and L2-normalise each block; coefficients X (K x blocks) start at 0,
  which is exactly the uniform average; train X on the held-out split with AdamW lr 1e-3,
  cosine with 20% warm-up.

Either way the buffers of the result are the members' mean and are recalibrated before the test
evaluation. Not implemented: the journal's optional low-bit basis. Communication: the ledger
counts the paper's gather of the candidates once at the end (D per candidate of a member,
``twa_gather``). On several processes each keeps its members' candidates: the main process
computes each step's gradient and sends it (:meth:`Population.computed_once`); each process
adds its candidates' part to the step (:meth:`Population.combine_rows`, the same bits on any
number of processes), so per-process memory stays that of its own candidates (what moves is in
the record's ``comm.measured``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from wab.core.population import Population
from wab.method import MemberRows, Method, OneOf, Range, RunState, heldout_selection, register

VARIANTS = ("t", "v")
CANDIDATES = ("members", "snapshots", "both")


class FlatModel:
    """A module evaluated with its parameters taken from one flat vector (single dtype)."""

    def __init__(self, pop: Population, buffers: list[Tensor]) -> None:
        if len(pop.params) != 1:
            raise ValueError("twa supports models whose parameters share one dtype")
        self.module = pop.model_from(pop.mean(include_buffers=False, record=False)[0], buffers)
        self.segments = pop.param_segments

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        params = {s.name: s.view(theta[s.start : s.stop]) for s in self.segments}
        return functional_call(self.module, params, (x,))

    def to_module(self, theta: Tensor) -> nn.Module:
        with torch.no_grad():
            for s, p in zip(self.segments, self.module.parameters()):
                p.copy_(s.view(theta[s.start : s.stop]))
        return self.module


def pseudo_inverse(gram: Tensor) -> Tensor:
    """G^+ of a symmetric positive semi-definite Gram matrix (eigenvalues below K eps of the
    largest count as 0: candidates that repeat another, e.g. a final member and its last
    snapshot, add no direction)."""
    values, vectors = torch.linalg.eigh(gram)
    keep = values > values.max() * len(values) * torch.finfo(values.dtype).eps
    inverse = torch.where(keep, 1 / values.where(keep, torch.ones_like(values)), torch.zeros_like(values))
    return (vectors * inverse) @ vectors.t()


def block_basis(candidates: Tensor, mean: Tensor, block_of: Tensor, num_blocks: int) -> Tensor:
    """Centred candidates with each block (parameter tensor) L2-normalised per candidate."""
    centred = candidates - mean
    norms = torch.zeros(len(candidates), num_blocks, dtype=torch.float64, device=candidates.device)
    norms.index_add_(1, block_of, centred.double().square())
    return centred / norms.sqrt().clamp_min(1e-12).to(centred.dtype)[:, block_of]


def twa_t_milestones(epochs: int) -> list[int]:
    """The epochs at which TWA-t's lr drops x0.1, as in the authors' code: [int(0.5 E), int(0.75 E + 0.9)]."""
    return [int(0.5 * epochs), int(0.75 * epochs + 0.9)]


def twa_t_lr(lr0: float, epoch: int, epochs: int) -> float:
    """The lr of 0-based TWA-t epoch ``epoch`` (a MultiStepLR stepped per epoch, gamma 0.1)."""
    return lr0 * 0.1 ** sum(epoch >= m for m in twa_t_milestones(epochs))


def fitted_weights(pop: Population, cands: Tensor, theta: Tensor, gram: Tensor) -> dict:
    """What the fit did, for ``method_report.fit``: the effective weight of each candidate (the
    least-squares coefficients of theta on the candidates, G^+ C theta: exact for TWA-t, whose
    theta stays in their span), their L1 distance from uniform, and how far theta moved from the
    candidates' mean as a fraction of the candidates' mean distance from it (0: the uniform
    average; 1: as far as a candidate). Candidates in member order, each member's r together;
    ``gram``: their [K, K] dot products (:meth:`Population.gram`)."""
    k = len(gram)
    dots = pop.all_rows(torch.stack([torch.dot(c.double(), theta.double()) for c in cands]), "twa_dots")
    weights = pseudo_inverse(gram) @ dots
    uniform = torch.full((k,), 1 / k, dtype=torch.float64)
    # squared distances from the mean m = C^T u: |c_i - m|^2 = G_ii - 2 (G u)_i + u^T G u, |theta - m|^2 likewise
    gu, ugu = gram @ uniform, uniform @ gram @ uniform
    spread = (torch.diagonal(gram) - 2 * gu + ugu).clamp_min(0).sqrt().mean()
    moved = (theta.double().square().sum() - 2 * dots @ uniform + ugu).clamp_min(0).sqrt()
    return {
        "weights": [round(float(w), 6) for w in weights],
        "distance_from_uniform": float((weights - uniform).abs().sum()),
        "moved_from_mean": float(moved / spread) if spread > 0 else 0.0,
    }


@register("twa")
class Twa(Method):
    """TWA: learn the coefficients that average the candidates."""

    min_members = 1  # on one model, from its trajectory's snapshots (candidates=snapshots)
    constraints = {"variant": OneOf(VARIANTS), "candidates": OneOf(CANDIDATES), "snapshot_start": Range(0, 1)}

    def setup(self, run: RunState) -> None:
        self.variant, self.source = self.hp.variant, self.hp.candidates
        if self.variant == "v" and len(run.data.heldout) == 0:
            raise ValueError("twa variant v trains on the held-out split: set data.heldout_fraction > 0")
        if self.source == "members" and run.population.size < 2:
            raise ValueError("twa candidates=members needs population.size >= 2; on one model use candidates=snapshots")
        self.selection: dict = {}
        self.fit: dict = {}
        self.snapshot_start = math.ceil(self.hp.snapshot_start * run.epochs)
        self.snapshots: list[Tensor] = []

    def after_epoch(self, run: RunState) -> None:
        if self.source != "members" and run.epoch + 1 >= self.snapshot_start:  # each process, its members'
            self.snapshots.append(run.population.params[0].detach().clone())

    def candidates(self, run: RunState) -> Tensor:
        """This process's candidates [r n_local, D], each member's r together: its final weights,
        then its snapshots in epoch order."""
        pop = run.population
        parts = [pop.params[0]] if self.source != "snapshots" or not self.snapshots else []
        parts += self.snapshots if self.source != "members" else []
        return torch.stack(parts, 1).reshape(-1, pop.params[0].shape[1])

    def _batches(self, run: RunState, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Full batches of a split in a fresh random order (at least one batch)."""
        data = getattr(run.data, split)
        batch_size = min(batch_size, len(data))
        order = torch.randperm(len(data), generator=run.rng).to(data.y.device)
        for a in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[a : a + batch_size]
            yield run.evaluator.normalize(data.x[idx]), data.y[idx]

    def finalize(self, run: RunState) -> dict:
        pop = run.population
        cands = self.candidates(run)
        per_member = len(cands) // len(pop.members)
        run.ledger.record("twa_gather", per_member * pop.num_params, pop.params[0].element_size(), "all_gather")
        fm = FlatModel(pop, pop.mean(include_buffers=True, record=False)[1])
        fm.module.train()
        gram = pop.gram(cands, "twa_gram")  # [K, K]: TWA-t's projector, and the fit's weights
        theta = self.train_t(run, fm, cands, gram) if self.variant == "t" else self.train_v(run, fm, cands)
        self.fit = fitted_weights(pop, cands, theta, gram)
        model = fm.to_module(theta)
        if self.variant == "v":  # fitted on the held-out split: say what that split can tell apart
            self.selection = heldout_selection(run.evaluator.accuracy(model, "heldout"), len(run.data.heldout))
        return {"twa": model}

    def report(self, run: RunState) -> dict:
        return {"candidates": self.source, "variant": self.variant, **({"selection": self.selection}
                                                                       if self.selection else {}),
                **({"fit": self.fit} if self.fit else {})}  # fmt: skip

    def _gradient(self, run: RunState, fm: FlatModel, theta: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss gradient at theta on a batch, computed once for every process."""

        def gradient() -> Tensor:
            leaf = theta.detach().requires_grad_(True)
            return torch.autograd.grad(F.cross_entropy(fm(leaf, batch[0]), batch[1]), leaf)[0]

        return run.population.computed_once(gradient, theta, "twa_gradient")

    def train_t(self, run: RunState, fm: FlatModel, cands: Tensor, gram: Tensor) -> Tensor:
        c, pop = self.hp, run.population
        inverse = pseudo_inverse(gram)  # the projector is C^T G^+ C
        theta = pop.combine_rows(cands, torch.full((len(cands),), 1 / len(inverse)), "twa_step").to(cands.dtype)
        buf = torch.zeros_like(theta)
        epochs, bs = c.epochs, c.batch_size
        lr0, wd, mom = c.lr, c.weight_decay, c.momentum
        for epoch in run.bar(range(epochs), "TWA-t epochs"):
            lr = twa_t_lr(lr0, epoch, epochs)
            for batch in self._batches(run, "train", bs):
                g = (self._gradient(run, fm, theta, batch) + wd * theta).double()
                dots = pop.all_rows(torch.stack([torch.dot(k.double(), g) for k in cands]), "twa_dots")
                mine = pop.held_rows(inverse @ dots)
                g = pop.combine_rows(cands, mine, "twa_step").to(theta.dtype)
                buf.mul_(mom).add_(g)
                theta.sub_(buf, alpha=lr)
        return theta

    def train_v(self, run: RunState, fm: FlatModel, cands: Tensor) -> Tensor:
        c, pop = self.hp, run.population
        segments = pop.param_segments
        total_rows = len(cands) * pop.size // len(pop.members)
        mean = pop.combine_rows(cands, torch.full((len(cands),), 1 / total_rows), "twa_step").to(cands.dtype)
        block_of = torch.cat([torch.full((s.numel,), i, dtype=torch.long) for i, s in enumerate(segments)])
        block_of = block_of.to(mean.device)
        basis = block_basis(cands, mean, block_of, len(segments))
        coeffs = torch.zeros(total_rows, len(segments), device=mean.device, requires_grad=True)
        opt = torch.optim.AdamW([coeffs], lr=c.lr_v, weight_decay=c.weight_decay_v)
        epochs, bs = c.epochs, min(c.batch_size, len(run.data.heldout))
        total = epochs * max(1, len(run.data.heldout) // bs)
        warm = max(1, int(0.2 * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))),
        )

        def weights() -> Tensor:  # theta = mean + sum_k X[k, block(j)] * basis[k, j]
            mine = pop.held_rows(coeffs.detach())[:, block_of]  # the coefficients of this process's candidates
            return mean + pop.combine_rows(basis, mine, "twa_step").to(mean.dtype)

        theta = weights()
        for _ in run.bar(range(epochs), "TWA-v epochs"):
            for batch in self._batches(run, "heldout", bs):
                g = self._gradient(run, fm, theta, batch).double()  # dL/dX[k, b] = <g, basis[k]> over block b
                local = torch.stack([torch.stack([torch.dot(g[s.start : s.stop], k[s.start : s.stop].double())
                                                  for s in segments]) for k in basis])  # fmt: skip
                coeffs.grad = pop.all_rows(local, "twa_dots").to(coeffs.dtype)
                opt.step()
                sched.step()
                theta = weights()
        return theta

    def state_dict(self, run: RunState) -> dict:
        return {"snapshots": [MemberRows(s) for s in self.snapshots]}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        self.snapshots = [s.rows.clone() for s in state["snapshots"]]
