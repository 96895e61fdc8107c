"""The run spec: a resolved run config read once into typed fields, with every check of its
values in this one place (:meth:`RunSpec.from_config` for the config alone,
:meth:`RunSpec.steps_per_epoch` for what needs the dataset's size). Building a spec reads no data
and allocates nothing, so validation (:func:`wab.run.validate.check_config`) and a real start make
the same checks. Imports the method registry, the logger names and the distributed backends'
names; builds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wab.core.distributed import BACKENDS
from wab.errors import UserError
from wab.method import Method, available_methods, get_finalizer, get_method, method_of, one_member_methods
from wab.parts.data import DataSplits
from wab.parts.device import resolve_members
from wab.run.loggers import RunLoggers, logger_problems

# trainer keys that are counts, with their smallest allowed value
BN_RECAL = ("clean", "augmented")  # trainer.bn_recal: the images BatchNorm is recalibrated on
_COUNTS = (("batch_size", 1), ("eval_batch_size", 1), ("eval_every", 0), ("checkpoint_every", 1), ("lmc_points", 0))


@dataclass(frozen=True)
class RunSpec:
    """What one run is: its config (``cfg``, the plain dict it is named by) and the values the
    run's components are built from, checked."""

    cfg: dict[str, Any]
    method_cls: type[Method]
    finalizers: tuple[Callable, ...]
    backend: str
    timeout_min: float
    size: int
    seed: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    eval_every: int
    checkpoint_every: int
    lmc_points: int
    save_models: bool
    progress: bool
    members: str  # "loop" or "batched": trainer.members resolved for the run's device

    @property
    def distributed(self) -> bool:
        return self.backend == "distributed"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RunSpec:
        """The spec of ``cfg``; raises :class:`SpecProblems` (a ValueError) naming every bad value
        and what is allowed (a check that needs a value found bad is left out)."""
        tcfg, pcfg = cfg["trainer"], cfg["population"]
        problems: list[str] = []

        def check(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except (ValueError, UserError) as e:  # messages written for users
                problems.extend(e.problems if isinstance(e, SpecProblems) else [str(e)])
                return None

        backend = pcfg.get("backend", "local")
        if backend not in BACKENDS:
            problems.append(f"population.backend must be one of {BACKENDS}, got {backend!r}")
        timeout = pcfg.get("timeout_min", 5)
        if not (isinstance(timeout, int | float) and timeout > 0):
            problems.append(f"population.timeout_min={timeout} must be a number of minutes > 0, e.g. 5")
        method_cls = check(lambda: method_of(cfg))
        finalizers: tuple[Callable, ...] = ()
        if method_cls is not None:
            problems.extend(method_cls.hyperparameter_problems(cfg["method"]))
            finalizers = check(lambda: _finalizers(cfg, method_cls)) or ()
        size = int(pcfg["size"])
        check(lambda: _check_size(size, method_cls))
        target = tcfg.get("target_acc")
        if target is not None and not (isinstance(target, int | float) and 0 < target <= 1):
            problems.append(f"trainer.target_acc={target} must be an accuracy as a fraction in (0, 1], e.g. 0.85")
        problems.extend(logger_problems(RunLoggers.names(cfg)))
        for key, low in _COUNTS:
            value = tcfg.get(key, low)
            if not isinstance(value, int) or value < low:
                problems.append(f"trainer.{key}={value} must be an integer >= {low}")
        if tcfg.get("bn_recal", "clean") not in BN_RECAL:
            problems.append(f"trainer.bn_recal={tcfg.get('bn_recal')!r} must be one of {', '.join(BN_RECAL)}")
        if tcfg.get("lmc_points") == 1:
            problems.append("trainer.lmc_points=1: a path needs its two ends; use 0 (off) or >= 2")
        if not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
            problems.append(f"seed={cfg['seed']} must be an integer >= 0")
        members = check(lambda: resolve_members(tcfg.get("members", "loop"), str(cfg.get("device", "auto"))))
        if members == "batched" and tcfg.get("compile", False):
            problems.append("trainer.compile=true compiles each member's module, which trainer.members=batched does "
                            "not call (it calls one vmapped function): use one of them")  # fmt: skip
        epochs = int(tcfg["epochs"])
        if epochs < 1:
            problems.append(f"trainer.epochs must be >= 1, got {epochs}")
        if problems:
            raise SpecProblems(problems)
        return cls(
            cfg=cfg, method_cls=method_cls, finalizers=finalizers, backend=backend, timeout_min=float(timeout),
            size=size, seed=int(cfg["seed"]), epochs=epochs, batch_size=int(tcfg["batch_size"]),
            eval_batch_size=int(tcfg.get("eval_batch_size", 1000)), eval_every=int(tcfg.get("eval_every", 1)),
            checkpoint_every=max(int(tcfg.get("checkpoint_every", 1)), 1), lmc_points=int(tcfg.get("lmc_points", 5)),
            save_models=bool(tcfg.get("save_models", True)), progress=bool(tcfg.get("progress", True)),
            members=members,
        )  # fmt: skip

    def steps_per_epoch(self, data: DataSplits) -> int:
        """The optimizer steps of an epoch on ``data``; raises ValueError when the run cannot
        train on it (a batch larger than the training set, no held-out split for a method or
        finalizer that selects on it)."""
        needs = [self.method_cls.name] if self.method_cls.needs_heldout else []
        fcfg = self.cfg.get("finalizer") or {}
        needs += [f.name for f in self.finalizers if f.needs_heldout(dict(fcfg.get(f.name) or {}))]
        if needs and len(data.heldout) == 0:
            verb = "needs" if len(needs) == 1 else "need"
            raise ValueError(f"{' and '.join(needs)} {verb} a held-out split: set data.heldout_fraction > 0")
        steps = len(data.train) // self.batch_size
        if steps < 1:
            raise ValueError(f"trainer.batch_size={self.batch_size} exceeds the {len(data.train)} training images")
        return steps


class SpecProblems(ValueError):
    """Every problem of a run config that :meth:`RunSpec.from_config` found, one per entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _check_size(size: int, method_cls: type[Method] | None) -> None:
    if size < 1:
        raise ValueError(f"population.size must be >= 1, got {size}")
    if method_cls is not None and size < method_cls.min_members:
        raise ValueError(
            f"population.size={size}: {method_cls.name} needs at least {method_cls.min_members} members "
            f"({method_cls.min_members_reason or 'it works between members'}); population.size=1 is for the "
            f"methods that make sense on one model: {', '.join(one_member_methods())}"
        )


def _finalizers(cfg: dict, method_cls: type[Method]) -> tuple[Callable, ...]:
    """The finalizers ``population.finalizers`` names, each once; one that reads the anchor
    refused for a population that never shares a state (neither ``population.same_init`` nor a
    method that synchronizes its members)."""
    names = list(cfg["population"].get("finalizers") or [])
    finalizers = tuple(get_finalizer(name) for name in names)
    # a merge of merge_inputs may come once as trained and once after rebasin (its model rebasin+<name>);
    # any other finalizer makes one model of one name, so a second would overwrite the first
    models = [("rebasin+" if f.combines_inputs and "rebasin" in names[:i] else "") + f.name
              for i, f in enumerate(finalizers)]  # fmt: skip
    if repeated := sorted({m for m in models if models.count(m) > 1}):
        raise ValueError(f"population.finalizers would make {', '.join(repeated)} more than once: list a finalizer "
                         f"once (a merge may also come once after rebasin)")  # fmt: skip
    anchored = bool(cfg["population"].get("same_init")) or method_cls.synchronizes
    if not anchored and (needing := [f.name for f in finalizers if f.needs_anchor]):
        syncing = ", ".join(sorted(n for n in available_methods() if get_method(n).synchronizes))
        one = len(needing) == 1
        raise ValueError(
            f"{'finalizer' if one else 'finalizers'} {', '.join(needing)} {'merges' if one else 'merge'} task vectors "
            f"from an anchor, and method {method_cls.name} with "
            f"population.same_init=false never gives its members one state: set population.same_init=true (the "
            f"shared initialisation is the anchor) or use a method that synchronizes its members ({syncing})"
        )
    return finalizers
