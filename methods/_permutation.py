"""Hidden-unit permutations of a network and Git Re-Basin's weight matching (Ainsworth et al.,
"Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023).

:func:`permutation_spec` derives, by tracing the model with ``torch.fx`` (shapes from one sample
input), which axes of which tensors each permutation acts on: every Linear or Conv2d output
starts a group of hidden units; BatchNorm, activations, pooling, dropout and a flatten of a
1 x 1 feature map carry it on; a residual ``add`` ties the groups of its inputs into one; the
network's output, channel padding (ResNet-20's option-A shortcuts) and anything tied to them stay
unpermuted. A model with an operation this does not understand is refused, naming it.

:func:`weight_matching` finds, for a model b, the permutation of every group that best matches a
reference model a (iterated linear assignment per group, ``scipy.optimize.linear_sum_assignment``,
until no group improves), and :func:`apply_permutation` applies it: a permuted network computes
the same function.
"""

from __future__ import annotations

import contextlib
import io
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

PASS_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.LeakyReLU)  # fmt: skip
PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.sigmoid, torch.tanh, torch.nn.functional.gelu,
                  torch.nn.functional.dropout, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                  torch.nn.functional.adaptive_avg_pool2d}  # fmt: skip
ADD_FUNCTIONS = {operator.add, torch.add}
FLATTEN_FUNCTIONS = {torch.flatten}


class NotPermutable(ValueError):
    """A model whose permutation structure cannot be derived."""


@dataclass
class PermutationSpec:
    """``axes[g]``: the (tensor name, axis) pairs permutation group g acts on; ``sizes[g]`` its units."""

    axes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)

    def of_tensor(self) -> dict[str, list[tuple[int, int]]]:
        """tensor name -> [(axis, group)]."""
        out: dict[str, list[tuple[int, int]]] = {}
        for g, pairs in self.axes.items():
            for name, axis in pairs:
                out.setdefault(name, []).append((axis, g))
        return out


class _Groups:
    """Union-find over groups of hidden units; a fixed group is never permuted (the identity)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.fixed: set[int] = set()

    def new(self, size: int) -> int:
        g = len(self.parent)
        self.parent[g], self.size[g] = g, size
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            g = self.parent[g]
        return g

    def fix(self, g: int | None) -> None:
        if g is not None:
            self.fixed.add(self.find(g))

    def union(self, a: int | None, b: int | None) -> int | None:
        """One group for both (a residual add); with an unpermuted side (None) the group is fixed."""
        if a is None or b is None:
            self.fix(a if b is None else b)
            return a if b is None else b
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise NotPermutable(f"a residual add joins {self.size[ra]} and {self.size[rb]} channels")
        self.parent[rb] = ra
        if rb in self.fixed:
            self.fixed.add(ra)
        return ra

    def is_fixed(self, g: int) -> bool:
        return self.find(g) in self.fixed


def _trace(model: nn.Module, example: Tensor) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow, unsupported Python
        raise NotPermutable(f"{type(model).__name__} cannot be traced with torch.fx ({type(e).__name__}: {e})") from e
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback it raises
            ShapeProp(gm).propagate(example)
    except Exception as e:  # e.g. an input size the model asserts against
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotPermutable(f"{type(model).__name__} fails on a {tuple(example.shape)} input ({first[:160]})") from e
    return gm


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def permutation_spec(model: nn.Module, example: Tensor) -> PermutationSpec:
    """The permutation groups of ``model`` (traced on ``example``, one input batch)."""
    model = model.eval()
    gm = _trace(model, example)
    groups = _Groups()
    uses: list[tuple[str, int, int]] = []  # (tensor, axis, group)
    out_group: dict[str, int | None] = {}  # node name -> the group of its channel axis (None: unpermuted)
    modules = dict(gm.named_modules())

    def channel(node) -> int | None:
        return out_group.get(node.name) if isinstance(node, fx.Node) else None

    for node in gm.graph.nodes:
        first = node.args[0] if node.args else None
        if node.op == "placeholder":
            out_group[node.name] = None
        elif node.op == "output":  # the network's outputs keep their order
            for arg in _flat_nodes(node.args):
                groups.fix(channel(arg))
        elif node.op == "call_module":
            mod = modules[node.target]
            g_in = channel(first)
            if isinstance(mod, nn.Linear | nn.Conv2d):
                if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                    raise NotPermutable(f"grouped convolution {node.target} is not supported")
                g_out = groups.new(mod.weight.shape[0])
                uses.append((f"{node.target}.weight", 0, g_out))
                if g_in is not None:
                    uses.append((f"{node.target}.weight", 1, g_in))
                if mod.bias is not None:
                    uses.append((f"{node.target}.bias", 0, g_out))
                out_group[node.name] = g_out
            elif isinstance(mod, _BatchNorm):
                if g_in is not None:
                    for t in ("weight", "bias", "running_mean", "running_var"):
                        if getattr(mod, t, None) is not None:
                            uses.append((f"{node.target}.{t}", 0, g_in))
                out_group[node.name] = g_in
            elif isinstance(mod, PASS_MODULES):
                out_group[node.name] = g_in
            elif isinstance(mod, nn.Flatten):
                out_group[node.name] = _flatten(node, first, g_in)
            elif isinstance(mod, nn.Sequential):
                raise NotPermutable(f"module {node.target} was not traced through")
            else:
                if any(True for _ in mod.parameters(recurse=False)):
                    raise NotPermutable(f"layer {node.target} ({type(mod).__name__}) has no known permutation rule")
                raise NotPermutable(f"operation {node.target} ({type(mod).__name__}) has no known permutation rule")
        elif node.op == "call_function" or node.op == "call_method":
            target = node.target
            if target in ADD_FUNCTIONS or target in ("add", "add_"):
                ins = [a for a in node.args if isinstance(a, fx.Node)]
                g = channel(ins[0])
                for other in ins[1:]:
                    g = groups.union(g, channel(other))
                out_group[node.name] = g
            elif target in PASS_FUNCTIONS or target in ("relu", "relu_", "contiguous", "clone"):
                out_group[node.name] = channel(first)
            elif target in FLATTEN_FUNCTIONS or target in ("flatten", "view", "reshape"):
                out_group[node.name] = _flatten(node, first, channel(first))
            elif target is torch.nn.functional.pad:
                g = channel(first)
                if g is not None:
                    pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
                    if len(pads) >= 6 and any(pads[4:6]):  # channels padded: the stream stays as it is
                        groups.fix(g)
                        g = None
                out_group[node.name] = g
            elif target is operator.getitem:
                index = node.args[1]
                keeps = isinstance(index, tuple) and len(index) >= 2 and index[1] == slice(None)
                if channel(first) is not None and not keeps:
                    raise NotPermutable(f"indexing {node.name} selects channels")
                out_group[node.name] = channel(first)
            else:
                raise NotPermutable(f"operation {node.name} ({getattr(target, '__name__', target)}) has no known "
                                    "permutation rule")  # fmt: skip
        else:  # get_attr
            out_group[node.name] = None
    spec = PermutationSpec()
    for tensor, axis, g in uses:
        root = groups.find(g)
        if groups.is_fixed(root):
            continue
        spec.axes.setdefault(root, []).append((tensor, axis))
        spec.sizes[root] = groups.size[root]
    return spec


def _flat_nodes(args) -> list:
    out: list = []
    if isinstance(args, fx.Node):
        return [args]
    if isinstance(args, list | tuple):
        for a in args:
            out += _flat_nodes(a)
    elif isinstance(args, dict):
        for a in args.values():
            out += _flat_nodes(a)
    return out


def _flatten(node, source, g: int | None) -> int | None:
    """A flatten keeps the channel group only when nothing but channels remains per sample."""
    if g is None:
        return None
    shape = _shape(source)
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == 1:
        return g
    if shape is not None and len(shape) == 2:
        return g
    raise NotPermutable(f"{node.name} flattens a {shape} feature map: its units are channel x position blocks")


# ---------------------------------------------------------------------------------- matching
def _permuted(t: Tensor, axes: Sequence[tuple[int, int]], perms: dict[int, Tensor], skip: int | None = None) -> Tensor:
    for axis, g in axes:
        if axis != skip:
            t = t.index_select(axis, perms[g])
    return t


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def weight_matching(
    spec: PermutationSpec,
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    max_iter: int = 100,
    seed: int = 0,
) -> dict[int, Tensor]:
    """The permutation of every group of b that matches a best: maximise sum over the spec's
    tensors of <W_a, P W_b> (Ainsworth et al., Algorithm 1), one group at a time in a random
    order, until a sweep improves no group. ``a`` and ``b`` are state_dicts; as in the authors'
    code only parameters enter the cost (their weight matching runs on ``params``, the BatchNorm
    statistics being recomputed after the merge), never the running statistics."""
    by_tensor = spec.of_tensor()
    perms = {g: torch.arange(n, device=next(iter(a.values())).device) for g, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    groups = list(spec.sizes)
    for _ in range(max_iter):
        improved = False
        for g in rng.permutation(groups):
            g = int(g)
            n = spec.sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in spec.axes[g]:
                if name.rpartition(".")[2] in BN_BUFFERS or name not in a:
                    continue
                wa = a[name].double().movedim(axis, 0).reshape(n, -1)
                wb = _permuted(b[name], by_tensor[name], perms, skip=axis).double().movedim(axis, 0).reshape(n, -1)
                cost += (wa @ wb.t()).cpu()
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, device=perms[g].device)
            old_score = cost[torch.arange(n), perms[g].cpu()].sum()
            new_score = cost[torch.as_tensor(rows), torch.as_tensor(cols)].sum()
            if new_score > old_score + 1e-12 * max(1.0, abs(float(old_score))):
                perms[g] = new
                improved = True
        if not improved:
            break
    return perms


def apply_permutation(spec: PermutationSpec, state: dict[str, Tensor], perms: dict[int, Tensor]) -> dict[str, Tensor]:
    """``state`` (a state_dict) with every group's units reordered by its permutation."""
    by_tensor = spec.of_tensor()
    return {k: _permuted(v, by_tensor[k], perms) if k in by_tensor else v for k, v in state.items()}
