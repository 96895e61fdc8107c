"""The population: N members of one architecture stored as one flat [N, P] tensor per dtype.

Each member is an ordinary ``nn.Module`` whose parameters are views into its row of the flat
tensor and whose gradients are views into one flat [N, P] gradient tensor, so one optimizer over
the flat tensor steps every member at once. Floating buffers (BatchNorm running statistics) live
in a flat [N, B] tensor the same way. Every collective operation (mean, average into members,
lerp toward the mean, mixing, permuting elements across members) is a method here and records
what one member would send in the communication ledger, so a later backend that spreads members
over ``torch.distributed`` ranks can implement the same calls and methods never change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wab.device import to_device
from wab.ledger import CommLedger

_MEAN_CHUNK = 1 << 16


@dataclass(frozen=True)
class Segment:
    """One parameter (or buffer) tensor of a member: where it lives in its flat group."""

    name: str
    group: int
    start: int
    numel: int
    shape: tuple[int, ...]
    channels_last: bool = False  # a 4-D weight stored in channels-last order (CUDA speed)

    @property
    def stop(self) -> int:
        return self.start + self.numel

    def view(self, flat: Tensor) -> Tensor:
        """This tensor as a view of its slice ``flat`` (1-D, numel elements) of a flat row."""
        if self.channels_last:
            o, i, h, w = self.shape
            return flat.view(o, h, w, i).permute(0, 3, 1, 2)
        return flat.view(self.shape)


def order_invariant_mean(x: Tensor) -> Tensor:
    """Mean over dim 0 that does not depend on the order of the rows.

    The rows are summed in float64, where the partial sums of a few float32 values are exact
    (whenever the values of one column lie within 2^26 of each other in magnitude), so permuting
    values across members leaves the result bit-identical. On CPU the sum runs in column chunks
    that stay in cache (as fast as ``x.mean(0)``); on CUDA in one float64 reduction.
    """
    n = x.shape[0]
    if x.device.type != "cpu":
        return (x.sum(0, dtype=torch.float64) / n).to(x.dtype)
    out = torch.empty(x.shape[1:], dtype=x.dtype, device=x.device)
    for a in range(0, x.shape[1], _MEAN_CHUNK):
        block = x[:, a : a + _MEAN_CHUNK]
        acc = block[0].double()
        for i in range(1, n):
            acc.add_(block[i])
        out[a : a + _MEAN_CHUNK] = acc.div_(n)
    return out


def _flatten_into(
    tensors: Sequence[tuple[str, Tensor]], channels_last: bool = False
) -> tuple[list[Segment], list[torch.dtype], list[int]]:
    """Lay out named tensors in groups by dtype, in their order of appearance."""
    dtypes: list[torch.dtype] = []
    sizes: list[int] = []
    segments = []
    for name, t in tensors:
        if t.dtype not in dtypes:
            dtypes.append(t.dtype)
            sizes.append(0)
        g = dtypes.index(t.dtype)
        segments.append(Segment(name, g, sizes[g], t.numel(), tuple(t.shape), channels_last and t.dim() == 4))
        sizes[g] += t.numel()
    return segments, dtypes, sizes


class Population:
    """N members of one architecture, each initialised from its own seed."""

    def __init__(
        self,
        build_member: Callable[[], nn.Module],
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        ledger: CommLedger | None = None,
        channels_last: bool = False,
    ) -> None:
        """``channels_last`` stores 4-D (convolution) weights in channels-last order, the layout
        fast convolutions on CUDA want; the flat tensors and every operation are unchanged."""
        if len(seeds) < 1:
            raise ValueError(f"population size must be >= 1, got {len(seeds)} seeds")
        self.build_member = build_member
        self.device = torch.device(device)
        self.ledger = ledger if ledger is not None else CommLedger()
        self.members: list[nn.Module] = []
        meta = self.device.type == "meta"  # a dry build (validation): no initialisation, no memory
        for seed in seeds:
            torch.manual_seed(seed)
            with torch.device("meta") if meta else contextlib.nullcontext():
                self.members.append(build_member().to(self.device))
        n = len(self.members)

        first = self.members[0]
        self.channels_last = channels_last
        self.param_segments, pdtypes, psizes = _flatten_into(list(first.named_parameters()), channels_last)
        float_buffers = [(k, b) for k, b in first.named_buffers() if b.is_floating_point()]
        self.buffer_segments, bdtypes, bsizes = _flatten_into(float_buffers)
        self.params = [torch.empty(n, s, dtype=d, device=self.device) for d, s in zip(pdtypes, psizes)]
        self.grads = [torch.zeros_like(p) for p in self.params]
        for flat, grad in zip(self.params, self.grads):
            flat.grad = grad
        self.buffers = [torch.empty(n, s, dtype=d, device=self.device) for d, s in zip(bdtypes, bsizes)]

        for i, member in enumerate(self.members):
            named = dict(member.named_parameters())
            for seg in self.param_segments:
                p = named[seg.name]
                view = seg.view(self.params[seg.group][i, seg.start : seg.stop])
                view.copy_(p.detach())
                p.data = view
                p.grad = seg.view(self.grads[seg.group][i, seg.start : seg.stop])
            for seg in self.buffer_segments:
                owner, _, attr = seg.name.rpartition(".")
                module = member.get_submodule(owner)
                view = seg.view(self.buffers[seg.group][i, seg.start : seg.stop])
                view.copy_(module._buffers[attr])
                module._buffers[attr] = view

    # ----------------------------------------------------------------------------------- sizes
    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def num_params(self) -> int:
        """D: trainable elements per member."""
        return sum(p.shape[1] for p in self.params)

    @property
    def num_buffers(self) -> int:
        """B: floating buffer elements per member (BatchNorm running statistics)."""
        return sum(b.shape[1] for b in self.buffers)

    def _exchange_size(self, include_buffers: bool) -> tuple[int, int]:
        tensors = self.params + (self.buffers if include_buffers else [])
        elements = sum(t.shape[1] for t in tensors)
        nbytes = sum(t.shape[1] * t.element_size() for t in tensors)
        return elements, nbytes

    def _record(self, op: str, include_buffers: bool, times: float = 1.0) -> None:
        elements, nbytes = self._exchange_size(include_buffers)
        if elements:
            self.ledger.record(op, elements * times, round(nbytes / elements))

    # ------------------------------------------------------------------------------ training
    def zero_grad(self) -> None:
        for g in self.grads:
            g.zero_()

    def train(self, mode: bool = True) -> None:
        for m in self.members:
            m.train(mode)

    # --------------------------------------------------------------------------- collectives
    def mean(self, include_buffers: bool = True, record: bool = True) -> tuple[list[Tensor], list[Tensor]]:
        """The uniform average of the members: (params per group, buffers per group).

        ``record=False`` is for evaluation, which is not part of a method's communication.
        """
        params = [order_invariant_mean(p) for p in self.params]
        buffers = [order_invariant_mean(b) for b in self.buffers] if include_buffers else []
        if record:
            self._record("mean", include_buffers)
        return params, buffers

    @torch.no_grad()
    def average_into_members(self, include_buffers: bool = True) -> None:
        """Set every member to the uniform average (PAPA-all, DART)."""
        params, buffers = self.mean(include_buffers, record=False)
        for flat, m in zip(self.params + self.buffers, params + buffers):
            flat.copy_(m.expand_as(flat))
        self._record("average_into_members", include_buffers)

    @torch.no_grad()
    def lerp_toward_mean(self, weight: float, include_buffers: bool = True) -> None:
        """theta_i <- theta_i + weight * (mean - theta_i) for every member (PAPA's pull)."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"lerp weight must be in [0, 1], got {weight}")
        params, buffers = self.mean(include_buffers, record=False)
        for flat, m in zip(self.params + self.buffers, params + buffers):
            flat.lerp_(m.expand_as(flat), weight)
        self._record("lerp_toward_mean", include_buffers)

    @torch.no_grad()
    def mix(self, weights: Tensor, include_buffers: bool = True, op: str = "mix") -> None:
        """theta <- W theta: member i becomes sum_j W[i, j] theta_j (e.g. PAPA-2's pair midpoints)."""
        n = self.size
        if tuple(weights.shape) != (n, n):
            raise ValueError(f"mixing matrix must be {n}x{n}, got shape {tuple(weights.shape)}")
        for flat in self.params + (self.buffers if include_buffers else []):
            flat.copy_(weights.to(flat) @ flat)
        self._record(op, include_buffers)

    def optimizer_state_rows(self, optimizer: torch.optim.Optimizer, group: int) -> list[Tensor]:
        """The optimizer's per-element state for one flat parameter group (momentum, Adam moments)."""
        flat = self.params[group]
        state = optimizer.state.get(flat, {})
        return [v for _, v in sorted(state.items()) if torch.is_tensor(v) and v.shape == flat.shape]

    @torch.no_grad()
    def permute_elements(
        self,
        group: int,
        columns: Tensor,
        perms: Tensor,
        buffers: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Permute selected elements across members: theta_i[c_k] <- theta_{perms[k, i]}[c_k].

        ``columns`` [K] indexes the flat group (params, or buffers when ``buffers``); ``perms``
        [K, N] holds one permutation of the members per column. With ``optimizer`` the same
        permutation moves each element's optimizer state (WASH+Opt). The cost is proportional
        to K, not to the model size. The ledger counts the values that change owner, divided by
        N: what one member sends on average.
        """
        if columns.numel() == 0:
            return
        targets = [self.buffers[group] if buffers else self.params[group]]
        if optimizer is not None and not buffers:
            targets += self.optimizer_state_rows(optimizer, group)
        src = to_device(perms.t(), self.device)
        for t in targets:
            t[:, columns] = t[:, columns].gather(0, src)
        identity = torch.arange(self.size, device=perms.device)
        moved = (perms != identity).sum().item() / self.size
        op = "permute_buffers" if buffers else "permute_elements"
        self.ledger.record(op, moved * len(targets), targets[0].element_size())

    # ------------------------------------------------------------------------- one member
    def member_state(self, i: int) -> tuple[list[Tensor], list[Tensor]]:
        """A copy of member i's (params per group, buffers per group)."""
        return [p[i].clone() for p in self.params], [b[i].clone() for b in self.buffers]

    @torch.no_grad()
    def load_member(self, i: int, params: Sequence[Tensor], buffers: Sequence[Tensor] | None = None) -> None:
        for flat, v in zip(self.params, params):
            flat[i].copy_(v)
        for flat, v in zip(self.buffers, buffers or []):
            flat[i].copy_(v)

    @torch.no_grad()
    def model_from(self, params: Sequence[Tensor], buffers: Sequence[Tensor] | None = None) -> nn.Module:
        """A standalone module (own storage) holding the given flat params and buffers."""
        model = self.build_member().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        named_p = dict(model.named_parameters())
        for seg in self.param_segments:
            named_p[seg.name].copy_(seg.view(params[seg.group][seg.start : seg.stop]))
        if buffers:
            named_b = dict(model.named_buffers())
            for seg in self.buffer_segments:
                named_b[seg.name].copy_(seg.view(buffers[seg.group][seg.start : seg.stop]))
        return model

    @torch.no_grad()
    def state_of(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """The flat (params per group, buffers per group) of a standalone module of this
        architecture (the inverse of :meth:`model_from`)."""
        params = [torch.empty(p.shape[1], dtype=p.dtype, device=self.device) for p in self.params]
        buffers = [torch.empty(b.shape[1], dtype=b.dtype, device=self.device) for b in self.buffers]
        named_p, named_b = dict(model.named_parameters()), dict(model.named_buffers())
        for segments, flat, named in ((self.param_segments, params, named_p), (self.buffer_segments, buffers, named_b)):
            for seg in segments:
                seg.view(flat[seg.group][seg.start : seg.stop]).copy_(named[seg.name])
        return params, buffers

    def average_model(self) -> nn.Module:
        """The uniform average (buffers averaged) as a standalone module; not counted as traffic."""
        return self.model_from(*self.mean(include_buffers=True, record=False))

    @torch.no_grad()
    def distance_to_mean(self) -> float:
        """Mean over members of the L2 distance of their parameters to the population mean."""
        means, _ = self.mean(include_buffers=False, record=False)
        sq = sum(((p - m) ** 2).sum(1, dtype=torch.float64) for p, m in zip(self.params, means))
        return float(sq.sqrt().mean())

    # --------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        other = [{k: b.clone() for k, b in m.named_buffers() if not b.is_floating_point()} for m in self.members]
        return {"params": self.params, "buffers": self.buffers, "other_buffers": other}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for flat, v in zip(self.params + self.buffers, state["params"] + state["buffers"]):
            flat.copy_(v)
        for member, other in zip(self.members, state["other_buffers"]):
            named = dict(member.named_buffers())
            for k, v in other.items():
                named[k].copy_(v)
