"""The population: N members of one architecture stored as one flat [N, P] tensor per dtype.

Each member is an ordinary ``nn.Module`` whose parameters are views into its row of the flat
tensor and whose gradients are views into one flat [N, P] gradient tensor, so one optimizer over
the flat tensor steps every member at once. Floating buffers (BatchNorm running statistics) live
in a flat [N, B] tensor the same way. Every collective operation (mean, average into members,
lerp toward the mean, mixing, permuting elements across members) is a method here and records
what one member would send in the communication ledger.

With a distributed communicator (``population.backend=distributed``, :mod:`wab.core.distributed`)
each process holds a contiguous slice of the members (:func:`member_slice`) in the same flat
[n_local, P] layout, and the same calls are collectives: the mean is a float64 all-reduce, a
shuffle all-gathers only the selected values, a mix all-gathers the rows, one member's state is
broadcast from the process that holds it. This module is the only place that knows where members
live; methods call the same operations in both backends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wab.core.distributed import LocalComm
from wab.core.ledger import CommLedger
from wab.core.member_rows import MemberRows, gather_values, held_values, join_state, reported, split_state
from wab.parts.device import to_device

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


@dataclass
class Held:
    """A final model of one member, built and evaluated by the process that holds the member
    (``model`` is None on the others): the entries of :meth:`Population.member_models`."""

    owner: int
    model: nn.Module | None


def row_sum64(x: Tensor) -> Tensor:
    """The float64 sum of the rows of x, in row order.

    The partial sums of a few float32 values are exact in float64 (whenever the values of one
    column lie within 2^26 of each other in magnitude), so the result does not depend on the
    order of the rows, nor on how they are split among processes before an all-reduce. On CPU
    the sum runs in column chunks that stay in cache; on CUDA in one reduction.
    """
    if x.device.type != "cpu":
        return x.sum(0, dtype=torch.float64)
    out = torch.empty(x.shape[1:], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[1], _MEAN_CHUNK):
        block = x[:, a : a + _MEAN_CHUNK]
        acc = block[0].double() if len(block) else torch.zeros(block.shape[1:], dtype=torch.float64)
        for i in range(1, len(block)):
            acc.add_(block[i])
        out[a : a + _MEAN_CHUNK] = acc
    return out


def member_slice(n: int, rank: int, world: int) -> range:
    """The members process ``rank`` of ``world`` holds: a contiguous slice, the first n % world
    processes holding one more."""
    if world > n:
        raise ValueError(f"population.size={n} is smaller than the {world} processes: each must hold a member")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


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
        comm: LocalComm | None = None,
        track_anchor: bool = False,
    ) -> None:
        """``seeds``: one per member of the whole population. ``channels_last`` stores 4-D
        (convolution) weights in channels-last order, the layout fast convolutions on CUDA want;
        the flat tensors and every operation are unchanged. ``comm`` (default: this process
        alone) decides which members this process holds. ``track_anchor`` keeps a copy of the
        last state every member shared (:attr:`anchor`), for the task-vector merges."""
        if len(seeds) < 1:
            raise ValueError(f"population size must be >= 1, got {len(seeds)} seeds")
        self.build_member = build_member
        self.device = torch.device(device)
        self.ledger = ledger if ledger is not None else CommLedger()
        self.comm = comm if comm is not None else LocalComm()
        self._size = len(seeds)
        self.local_indices = member_slice(self._size, self.comm.rank, self.comm.world)
        self._counts = [len(member_slice(self._size, r, self.comm.world)) for r in range(self.comm.world)]
        self.members: list[nn.Module] = []  # this process's members, global indices local_indices
        meta = self.device.type == "meta"  # a dry build (validation): no initialisation, no memory
        for seed in [seeds[i] for i in self.local_indices]:
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
        #: the last state every member shared, (params, buffers) per group, the same on every
        #: process: the shared initialisation (one seed for all), then the state after each
        #: operation that sets every member to one state. None when untracked or never shared.
        self.anchor: tuple[list[Tensor], list[Tensor]] | None = None
        #: where the anchor comes from: "initialisation", or "synchronisation <k>" (the k-th)
        self.anchor_source: str | None = None
        self.track_anchor = track_anchor
        self._syncs = 0
        if track_anchor and len(set(seeds)) == 1 and not meta:
            self.anchor = ([p[0].clone() for p in self.params], [b[0].clone() for b in self.buffers])
            self.anchor_source = "initialisation"

    # ----------------------------------------------------------------------------------- sizes
    @property
    def size(self) -> int:
        """N: members of the whole population (``len(members)`` are held here)."""
        return self._size

    def owner(self, i: int) -> int:
        """The rank that holds member i."""
        return next(r for r in range(self.comm.world) if i in member_slice(self._size, r, self.comm.world))

    def _row_counts(self, local: Tensor) -> list[int]:
        """Rows per process of a tensor holding the same number of rows for each local member."""
        per, left = divmod(len(local), len(self.members))
        if left or not per:
            raise ValueError(f"{len(local)} rows for {len(self.members)} local members: give each the same number")
        return [c * per for c in self._counts]

    def all_rows(self, local: Tensor, op: str = "") -> Tensor:
        """A tensor with r rows per local member (each member's together), as the rows of every
        member [r N, ...] in member order."""
        return self.comm.all_gather_rows(local, self._row_counts(local), op)

    @torch.no_grad()
    def combine_rows(self, local: Tensor, weights: Tensor, op: str = "") -> Tensor:
        """sum_k weights[k] * rows[k] over the rows of every member ([r n_local, ...] here, each
        member's r rows together; ``weights`` one scalar or one row per row), in float64, added
        one row at a time in member order: the same bits on any number of processes. Each
        process adds its rows to the running sum the previous one sends it; the last sends the
        total to all (``op`` names the passes, ``op_total`` the last send). No process holds
        more than its own rows."""
        self._row_counts(local)
        comm = self.comm
        total = torch.zeros(local.shape[1:], dtype=torch.float64, device=local.device)
        if comm.rank > 0:
            comm.exchange([], [(total, comm.rank - 1)], op)
        for row, w in zip(local, weights):
            total += row.double() * w.double()
        if comm.rank < comm.world - 1:
            comm.exchange([(total, comm.rank + 1)], [], op)
        return comm.broadcast(total, comm.world - 1, f"{op}_total")

    def computed_once(self, compute: Callable[[], Tensor], like: Tensor, op: str = "") -> Tensor:
        """``compute()`` (a tensor shaped like ``like``) done by the main process alone and sent to
        every process: work that is the same whichever members a process holds (one model's
        gradient), done once."""
        out = compute() if self.comm.rank == 0 else torch.empty_like(like)
        return self.comm.broadcast(out.contiguous(), 0, op)

    @torch.no_grad()
    def gram(self, local: Tensor, op: str = "") -> Tensor:
        """[K, K] float64 dot products of every pair of the rows of every member (``local`` as in
        :meth:`combine_rows`; K rows in all, in member order), on every process. Each process's
        rows go to the others in turn, so none holds more than its own rows and one other
        process's (``op_rows``); each dot is computed alone, the same bits on any number of
        processes."""
        counts = self._row_counts(local)
        starts = [sum(counts[:r]) for r in range(len(counts))]
        comm, flat = self.comm, local.reshape(len(local), -1)
        out = torch.zeros(sum(counts), sum(counts), dtype=torch.float64, device=local.device)
        for src in range(comm.world):
            block = flat if comm.rank == src else flat.new_empty((counts[src], flat.shape[1]))
            block = comm.broadcast(block.contiguous(), src, f"{op}_rows")
            for i, row in enumerate(flat):
                row = row.double()
                for j, other in enumerate(block):  # one row in float64 at a time: no float64 copy of a block
                    out[starts[comm.rank] + i, starts[src] + j] = torch.dot(row, other.double())
        return comm.all_reduce_sum(out, op)  # each entry was set by one process: exact

    def all_members(self, values: list) -> list:
        """A list with one entry per local member, as the list over every member."""
        return [v for part in self.comm.all_gather_objects(list(values)) for v in part]

    def member_numbers(self) -> list[int]:
        """The numbers (0..N-1) of the members this process holds, in the order of ``members``:
        a member's identity (its seed, member 0 as a reference), not where it lives."""
        return list(self.local_indices)

    def held(self, values: Sequence) -> list:
        """The entries of the members this process holds, from a list over every member."""
        return [values[i] for i in self.local_indices]

    def held_rows(self, t: Tensor) -> Tensor:
        """The rows of the members this process holds, from a tensor with the same number of rows
        for every member of the population, member after member (e.g. one per candidate)."""
        per_member, rest = divmod(len(t), self.size)
        if rest:  # rows that cannot be split evenly would be assigned to the wrong members
            raise ValueError(f"held_rows: {len(t)} rows are not the same number for each of the {self.size} members")
        return t[self.local_indices.start * per_member : self.local_indices.stop * per_member]

    def shard_state(self, state: Any) -> tuple[Any, dict[str, Tensor]]:
        """A state to checkpoint split into its skeleton (the same on every process: every
        :class:`MemberValues` gathered over all members, a collective) and the rows of this
        process's members (every :class:`MemberRows`), :func:`wab.core.member_rows.split_state`."""
        return split_state(gather_values(state, self.all_members), self.local_indices)

    def unshard_state(self, skeleton: Any, directory: Path) -> Any:
        """:meth:`shard_state`'s inverse for the members this process holds now (any number of processes)."""
        return held_values(join_state(skeleton, directory, self.local_indices, self.device), self.local_indices)

    def report_values(self, report: Any) -> Any:
        """A method's report with every :class:`MemberValues` as the list over every member (a collective)."""
        return reported(report, self.all_members)

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

    def _record(self, op: str, include_buffers: bool, times: float = 1.0, pattern: str = "all_reduce") -> None:
        elements, nbytes = self._exchange_size(include_buffers)
        if elements:
            self.ledger.record(op, elements * times, round(nbytes / elements), pattern)

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
        op = "mean" if record else ""
        params = [self.mean_rows(p, op) for p in self.params]
        buffers = [self.mean_rows(b, op) for b in self.buffers] if include_buffers else []
        if record:
            self._record("mean", include_buffers)
        return params, buffers

    def mean_rows(self, local: Tensor, op: str = "") -> Tensor:
        """The mean over every member of per-member values ([n_local, ...] rows on this process):
        exact float64 sums, the same on any number of processes. ``op`` names the collective in
        the measured traffic (the ledger records a method's operations itself)."""
        return (self.sum_rows(local, op) / self._size).to(local.dtype)

    def sum_rows(self, local: Tensor, op: str = "") -> Tensor:
        """The float64 sum over every member of per-member values ([n_local, ...] rows here), as
        :meth:`mean_rows` computes it: the same on any number of processes."""
        return self.comm.all_reduce_sum(row_sum64(local.reshape(len(local), -1)), op).view(local.shape[1:])

    @torch.no_grad()
    def average_into_members(self, include_buffers: bool = True) -> None:
        """Set every member to the uniform average (PAPA-all, DART)."""
        params = [self.mean_rows(p, "average_into_members") for p in self.params]
        buffers = [self.mean_rows(b, "average_into_members") for b in self.buffers] if include_buffers else []
        for flat, m in zip(self.params + self.buffers, params + buffers):
            flat.copy_(m.expand_as(flat))
        self._record("average_into_members", include_buffers)
        self._shared()

    @torch.no_grad()
    def lerp_toward_mean(self, weight: float, include_buffers: bool = True) -> None:
        """theta_i <- theta_i + weight * (mean - theta_i) for every member (PAPA's pull)."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"lerp weight must be in [0, 1], got {weight}")
        params = [self.mean_rows(p, "lerp_toward_mean") for p in self.params]
        buffers = [self.mean_rows(b, "lerp_toward_mean") for b in self.buffers] if include_buffers else []
        for flat, m in zip(self.params + self.buffers, params + buffers):
            flat.lerp_(m.expand_as(flat), weight)
        self._record("lerp_toward_mean", include_buffers)

    @torch.no_grad()
    def mix(self, weights: Tensor, include_buffers: bool = True, op: str = "mix", peers: float | None = None) -> None:
        """theta <- W theta: member i becomes sum_j W[i, j] theta_j (e.g. PAPA-2's pair midpoints,
        gossip). Each process receives only the rows its members mix from. The ledger counts an
        all-gather, or with ``peers`` a neighbour exchange in which each member sends its state to
        ``peers`` members on average (gossip's degree)."""
        n = self.size
        if tuple(weights.shape) != (n, n):
            raise ValueError(f"mixing matrix must be {n}x{n}, got shape {tuple(weights.shape)}")
        w = weights.double().tolist()
        needs = self._rows_needed(w)
        for flat in self.params + (self.buffers if include_buffers else []):
            rows = self._fetch_rows(flat, needs, op)  # the other members' rows this process mixes from
            out = torch.zeros(flat.shape, dtype=torch.float64, device=flat.device)
            for k, i in enumerate(self.local_indices):  # float64, members in order: the same in any backend
                for j in range(n):
                    if w[i][j]:
                        row = flat[self._local(j)] if j in self.local_indices else rows[j]
                        out[k].add_(row.double(), alpha=w[i][j])
            flat.copy_(out.to(flat.dtype))
        if peers is None:
            self._record(op, include_buffers, pattern="all_gather")
        elif peers > 0:
            self._record(op, include_buffers, times=peers, pattern="neighbour")

    def _rows_needed(self, w: list[list[float]]) -> list[list[int]]:
        """Per process, the members held elsewhere whose rows its members mix from."""
        needs = []
        for r in range(self.comm.world):
            mine = member_slice(self._size, r, self.comm.world)
            needs.append(sorted({j for i in mine for j in range(self._size) if w[i][j] and j not in mine}))
        return needs

    def _fetch_rows(self, flat: Tensor, needs: list[list[int]], op: str) -> dict[int, Tensor]:
        """The rows of ``flat`` this process needs (``needs[rank]``), each sent by its holder
        alone to the processes that need it: a pair average moves one row, not N."""
        sends, recvs, rows = [], [], {}
        for r, wanted in enumerate(needs):
            for j in wanted:
                src = self.owner(j)
                if src == self.comm.rank:
                    sends.append((flat[self._local(j)], r))
                elif r == self.comm.rank:
                    rows[j] = torch.empty_like(flat[0])
                    recvs.append((rows[j], src))
        self.comm.exchange(sends, recvs, op)
        return rows

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
        lo, hi = self.local_indices.start, self.local_indices.stop
        op = "permute_buffers" if buffers else "permute_elements"
        for t in targets:  # only the selected values travel
            t[:, columns] = self.all_rows(t[:, columns], op).gather(0, src)[lo:hi]
        identity = torch.arange(self.size, device=perms.device)
        moved = (perms != identity).sum().item() / self.size
        self.ledger.record(op, moved * len(targets), targets[0].element_size(), "all_gather")

    @torch.no_grad()
    def average_elements(self, group: int, columns: Tensor, buffers: bool = False) -> None:
        """Replace the selected elements of every member by the members' mean there (SPARTA):
        an all-reduce of the selected values only (K per member), exact float64 partial sums as
        :meth:`mean`, so it is the same on any number of processes."""
        if columns.numel() == 0:
            return
        flat = self.buffers[group] if buffers else self.params[group]
        op = "average_buffer_elements" if buffers else "average_elements"
        total = self.comm.all_reduce_sum(row_sum64(flat[:, columns]), op)
        flat[:, columns] = (total / self._size).to(flat.dtype).expand(len(flat), -1)
        self.ledger.record(op, columns.numel(), flat.element_size(), "all_reduce")

    # ------------------------------------------------------------------------- one member
    def _local(self, i: int) -> int | None:
        return i - self.local_indices.start if i in self.local_indices else None

    def member_state(self, i: int) -> tuple[list[Tensor], list[Tensor]]:
        """A copy of member i's (params per group, buffers per group), on every process (sent
        from the process that holds it)."""
        k, src = self._local(i), self.owner(i)
        out = []
        for flats in (self.params, self.buffers):
            rows = [f[k].clone() if k is not None else torch.empty_like(f[0]) for f in flats]
            out.append([self.comm.broadcast(r, src) for r in rows])
        return out[0], out[1]

    def member_row(self, local: Tensor, i: int, op: str = "") -> Tensor:
        """Member i's row of a per-member tensor ([n_local, ...] rows here, one per member held),
        on every process (sent by the process that holds it)."""
        k = self._local(i)
        row = local[k].clone() if k is not None else torch.empty_like(local[0])
        return self.comm.broadcast(row, self.owner(i), op)

    def local_states(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """Copies of the (params, buffers) of the members this process holds, in member order
        (work on each member that needs no communication)."""
        return [([p[k].clone() for p in self.params], [b[k].clone() for b in self.buffers]) for k in
                range(len(self.members))]  # fmt: skip

    @torch.no_grad()
    def load_held(self, k: int, params: Sequence[Tensor], buffers: Sequence[Tensor] | None = None) -> None:
        """Set the k-th member this process holds (``members[k]``, row k of the flat tensors)."""
        for flat, v in zip(self.params, params):
            flat[k].copy_(v)
        for flat, v in zip(self.buffers, buffers or []):
            flat[k].copy_(v)

    @torch.no_grad()
    def load_all(self, params: Sequence[Tensor], buffers: Sequence[Tensor] | None = None) -> None:
        """Set every member to the same state, which every process already holds (DiLoCo's
        global model after its outer step): no communication."""
        for flat, v in zip(self.params, params):
            flat.copy_(v.expand_as(flat))
        for flat, v in zip(self.buffers, buffers or []):
            flat.copy_(v.expand_as(flat))
        self._shared()

    @torch.no_grad()
    def copy_member_to_all(self, i: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Every member becomes a copy of member i, with its optimizer state when given (DART's
        shared warm-up)."""
        params, buffers = self.member_state(i)
        for flat, v in zip(self.params + self.buffers, params + buffers):
            flat.copy_(v.expand_as(flat))
        if optimizer is not None:
            k, src = self._local(i), self.owner(i)
            for g in range(len(self.params)):
                for state in self.optimizer_state_rows(optimizer, g):
                    row = state[k].clone() if k is not None else torch.empty_like(state[0])
                    state.copy_(self.comm.broadcast(row, src).expand_as(state))
        self._shared()

    def _shared(self) -> None:
        """Every member now holds one state (weights; buffers unless a method kept its own): it
        becomes the anchor, when tracked. Every process holds a member, so row 0 is the state."""
        self._syncs += 1
        if self.track_anchor:
            self.anchor = ([p[0].clone() for p in self.params], [b[0].clone() for b in self.buffers])
            self.anchor_source = f"synchronisation {self._syncs}"

    def member_models(self, prefix: str, build: Callable[[int], nn.Module]) -> dict[str, Held]:
        """One final model per member, ``<prefix>_<i>`` for every member i of the population, each
        built by ``build(k)`` (k: its index among this process's members) on the process that
        holds it, which also evaluates and saves it: no process holds N models."""
        out = {}
        for i in range(self._size):
            k = self._local(i)
            out[f"{prefix}_{i}"] = Held(self.owner(i), build(k) if k is not None else None)
        return out

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
        return float(self.all_rows(sq.sqrt()).mean())

    # --------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """This process's members' state, as :class:`~wab.core.member_rows.MemberRows` (a checkpoint
        stores them per member: no process gathers another's)."""
        named = [dict(m.named_buffers()) for m in self.members]
        other = [k for k, b in named[0].items() if not b.is_floating_point()]
        out = {
            "params": [MemberRows(p) for p in self.params],
            "buffers": [MemberRows(b) for b in self.buffers],
            "other_buffers": {k: MemberRows(torch.stack([n[k] for n in named])) for k in other},
        }
        if self.track_anchor:  # the same on every process: kept whole
            out["anchor"] = {"state": self.anchor, "source": self.anchor_source, "syncs": self._syncs}
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Load the state of this process's members (:meth:`state_dict`, read on any number of processes)."""
        for flat, v in zip(self.params + self.buffers, state["params"] + state["buffers"]):
            flat.copy_(v.rows)
        for k, v in state["other_buffers"].items():
            for member, row in zip(self.members, v.rows):
                dict(member.named_buffers())[k].copy_(row)
        if self.track_anchor and "anchor" in state:
            anchor = state["anchor"]
            self.anchor = None if anchor["state"] is None else tuple(
                [t.to(self.device) for t in part] for part in anchor["state"])  # fmt: skip
            self.anchor_source, self._syncs = anchor["source"], int(anchor["syncs"])

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state, its per-member rows (momentum, Adam moments) as MemberRows."""
        sd = optimizer.state_dict()
        n_local = len(self.members)
        sd["state"] = {
            k: {key: MemberRows(v) if torch.is_tensor(v) and v.dim() == 2 and v.shape[0] == n_local else v
                for key, v in st.items()}
            for k, st in sd["state"].items()
        }  # fmt: skip
        return sd

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, sd: dict) -> None:
        """Load an optimizer state saved by :meth:`optimizer_state_dict` (the rows of this process's members)."""
        sd["state"] = {k: {key: v.rows if isinstance(v, MemberRows) else v for key, v in st.items()}
                       for k, st in sd["state"].items()}  # fmt: skip
        optimizer.load_state_dict(sd)
