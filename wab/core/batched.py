"""Members batched into one computation: the forward and backward of every member a process
holds as one ``torch.func.vmap`` over their stacked rows of the flat tensors.

The population stores member i's parameters as row i of a flat [n, P] tensor, so each
parameter of all members together is one strided view [n, *shape] of that tensor: ``vmap`` of
``torch.func.functional_call`` over those views runs every member on its own batch with one
launch of each kernel instead of n. The gradient comes back as one [n, P] tensor and is added to
the flat gradient rows; BatchNorm's running statistics are updated on stacked copies of the flat
buffer rows and written back, member by member as the loop updates them. Integer buffers
(BatchNorm's ``num_batches_tracked``) are advanced in every member as in member 0.

The results equal the loop's to float tolerance (the batched kernels add in another order), not
bit for bit, so a run's id includes ``trainer.members`` whenever it is not ``loop``. Models whose
forward draws random numbers (dropout) or that ``vmap`` cannot transform are refused when the run
is built (:func:`batching_problem`), before any step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from wab.core.population import Population, Segment
from wab.parts.augment import Batch


def _stacked(seg: Segment, flat: Tensor) -> Tensor:
    """The tensor ``seg`` of every member at once, [n, *shape], as a view of the flat rows."""
    rows = flat[:, seg.start : seg.stop]
    if seg.channels_last:
        o, i, h, w = seg.shape
        return rows.view(len(flat), o, h, w, i).permute(0, 1, 4, 2, 3)
    return rows.view(len(flat), *seg.shape)


class BatchedMembers:
    """The forward and backward of a population's held members as one vmapped computation."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self.template = population.members[0]  # its structure; its own tensors are never read
        self._int_buffers = [
            [(n, b) for n, b in m.named_buffers() if not b.is_floating_point()] for m in population.members
        ]

        def one_member(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.template, (params, buffers), (x,), tie_weights=False, strict=False)

        self._forward = vmap(one_member, in_dims=(0, 0, 0), randomness="error")

    def _params(self) -> tuple[list[Tensor], dict[str, Tensor]]:
        pop = self.population
        leaves = [p.detach().requires_grad_(True) for p in pop.params]
        return leaves, {s.name: _stacked(s, leaves[s.group]) for s in pop.param_segments}

    def _buffers(self) -> dict[str, Tensor]:
        """Contiguous copies of the stacked buffers: vmap updates a batched running statistic in
        place only when it is contiguous (a strided view of the flat rows stays unchanged)."""
        pop = self.population
        return {s.name: _stacked(s, pop.buffers[s.group]).contiguous() for s in pop.buffer_segments}

    @torch.no_grad()
    def _write_buffers(self, buffers: dict[str, Tensor]) -> None:
        pop = self.population
        for s in pop.buffer_segments:
            _stacked(s, pop.buffers[s.group]).copy_(buffers[s.name])

    def logits(self, x: Tensor, autocast_dtype: torch.dtype | None = None) -> tuple[list[Tensor], Tensor]:
        """(the parameter leaves, every member's logits [n, B, classes]) for stacked inputs x [n, B, ...]."""
        leaves, params = self._params()
        before = [b.clone() for _, b in self._int_buffers[0]]  # on the device: reading them back would sync a GPU
        device = self.population.device
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=bool(autocast_dtype)):
            out = self._forward(params, buffers := self._buffers(), x)
        self._write_buffers(buffers)
        self._advance_int_buffers(before)
        return leaves, out

    def _advance_int_buffers(self, before: Sequence[Tensor]) -> None:
        """Member 0's integer buffers were advanced by the call (functional_call leaves the ones it
        is not given in place); every other member's advance by as much."""
        steps = [b - v for (_, b), v in zip(self._int_buffers[0], before)]
        with torch.no_grad():
            for named in self._int_buffers[1:]:
                for (_, b), k in zip(named, steps):
                    b.add_(k)

    def forward_backward(self, batches: list[Batch], autocast_dtype: torch.dtype | None = None) -> Tensor:
        """As :func:`wab.core.step.forward_backward`: each member's loss on its own batch, its
        gradient added into the flat gradient rows; returns the summed loss."""
        x = torch.stack([b.x for b in batches])
        leaves, logits = self.logits(x, autocast_dtype)
        losses = [b.loss(out) for b, out in zip(batches, logits)]
        total = torch.stack(losses).sum()
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        with torch.no_grad():
            for flat, g in zip(self.population.grads, grads):
                if g is not None:
                    flat.add_(g)
        return total.detach()


def batching_problem(population: Population, sample: Tensor) -> str | None:
    """Why the population's members cannot be batched (None when they can): one forward of two
    images of ``sample``'s shape per member, on copies of the buffers, in training mode.
    Random numbers in the forward (dropout), or an operation vmap does not support, are
    reasons."""
    if len(population.members) < 1:
        return "no members"
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in population.members):
        return "trainer.compile=true compiles each member's module; the batched mode calls the members functionally"
    batched = BatchedMembers(population)
    saved = [b.clone() for b in population.buffers]
    ints = [[b.clone() for _, b in named] for named in batched._int_buffers]
    n = len(population.members)
    x = sample[:1].expand(n, min(len(sample), 2), *sample.shape[1:]).contiguous()
    was = [m.training for m in population.members]
    try:
        population.train(True)
        batched.logits(x)
    except Exception as e:  # vmap's own errors are RuntimeErrors and ValueErrors of many kinds
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    finally:
        with torch.no_grad():
            for b, s in zip(population.buffers, saved):
                b.copy_(s)
            for named, copies in zip(batched._int_buffers, ints):
                for (_, b), c in zip(named, copies):
                    b.copy_(c)
        for m, t in zip(population.members, was):
            m.train(t)
    return None
