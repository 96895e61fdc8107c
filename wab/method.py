"""The method plugin API: a base class with four hooks, one run-state object, and a registry.

A method is one file ``methods/<name>.py`` defining a :class:`Method` subclass decorated with
``@register("<name>")`` and one config ``configs/method/<name>.yaml``. Methods that live in other
packages register through the entry-point group ``wab.methods``
(``[project.entry-points."wab.methods"] mymethod = "mypkg.mymethod:MyMethod"``).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from wab.data import DataSplits
from wab.errors import UserError, did_you_mean
from wab.evaluate import Evaluator
from wab.ledger import CommLedger
from wab.population import Population

HOOKS = ("setup", "after_step", "after_epoch", "finalize")
ENTRY_POINT_GROUP = "wab.methods"


@dataclass
class RunState:
    """What every hook receives.

    Counters: in ``after_step``, ``step`` is the number of optimizer steps done so far (>= 1) and
    ``epoch_step`` the number done in the current epoch (1..steps_per_epoch); ``epoch`` is the
    0-based index of the current epoch (in ``after_epoch``, of the epoch just finished).
    ``lr`` is the learning rate of the step just taken and ``lr0`` the base learning rate.
    """

    cfg: Any  # the run's whole resolved config
    method_cfg: dict
    population: Population
    optimizer: torch.optim.Optimizer
    data: DataSplits
    evaluator: Evaluator
    ledger: CommLedger
    rng: torch.Generator  # the method's own random stream, saved in checkpoints
    epochs: int
    steps_per_epoch: int
    lr0: float
    progress: bool = False  # show progress bars (trainer.progress)
    # what finalizers did, by finalizer name, merged into the run's method_report
    reports: dict = field(default_factory=dict)
    lr: float = 0.0
    step: int = 0
    epoch_step: int = 0
    epoch: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_of(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): ``lr_of(run.step)`` in
        ``after_step`` is the lr of the next step, the value a scheduler stepped after the
        optimizer reports (PAPA's code reads it there)."""
        from wab.optim import lr_at

        return lr_at(step, self.total_steps, self.steps_per_epoch, self.cfg["optim"])

    def bar(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
        """``iterable`` with a progress bar when the run shows progress (a long ``finalize``)."""
        return tqdm(iterable, desc=desc, total=total, leave=False, disable=None if self.progress else True)


class Method:
    """Base class of every averaging method. Hooks a method does not override cost nothing.

    Class attributes declare what the method needs instead of the trainer keeping special cases:
    ``needs_heldout`` (a non-empty held-out split), ``recalibrate_outputs`` (BatchNorm
    recalibration of the models ``finalize`` returns), ``min_members`` (the smallest population it
    makes sense on: 1 for a method that is a baseline on one model, e.g. a single model trained
    for N times the steps; 2 for one that works between members, whose ensemble, average and
    connectivity would be trivial on one), ``shared_data_order`` (every member takes the same
    batches in the same order, each with its own augmentation, instead of its own order).
    """

    name: ClassVar[str] = ""
    needs_heldout: ClassVar[bool] = False
    min_members: ClassVar[int] = 2
    shared_data_order: ClassVar[bool] = False  # every member sees the same batches (Lookaround's heads)
    min_members_reason: ClassVar[str] = ""  # why, in the error that refuses a smaller population
    recalibrate_outputs: ClassVar[bool] = True
    demo_overrides: ClassVar[tuple[str, ...]] = ()  # config overrides `wab demo` adds for this method
    demo_note: ClassVar[str] = ""  # why, printed by `wab demo`: its few hundred steps are not the paper's budget
    # A method without configs/method/<name>.yaml (a plugin of another package) lists its
    # hyper-parameters and defaults here, so that validation knows its keys (+method.<k>=v).
    hyperparameters: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: dict) -> None:
        self.cfg = dict(cfg)

    def setup(self, run: RunState) -> None:
        """Before the first step; also on a resume, before the method's saved state is loaded."""

    def after_step(self, run: RunState) -> None:
        """After every optimizer step of the population."""

    def after_epoch(self, run: RunState) -> None:
        """At the end of every epoch, before evaluation and checkpointing."""

    def finalize(self, run: RunState) -> dict[str, nn.Module]:
        """The models the method delivers, by name; the first is its final model."""
        return {}

    def member_augment(self, size: int, image_size: int) -> list[dict] | None:
        """Per-member augmentation overrides (member i gets entry i), or None for the config's."""
        return None

    def state_dict(self) -> dict:
        """What the method must carry over a checkpoint (tensors, numbers, strings, lists, dicts)."""
        return {}

    def report(self) -> dict:
        """What the method did, for the run's final.json (``method_report``): merges, repairs,
        the step its final model was chosen at... Numbers, strings, lists and dicts."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @classmethod
    def overridden_hooks(cls) -> set[str]:
        return {h for h in HOOKS if getattr(cls, h) is not getattr(Method, h)}


_REGISTRY: dict[str, type[Method]] = {}
_loaded = False


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to the registry; a duplicate name is an error."""

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) needs a subclass of wab.method.Method, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            other = _REGISTRY[name]
            raise ValueError(
                f"method name {name!r} is already registered by {other.__module__}.{other.__qualname__}; "
                f"cannot register {cls.__module__}.{cls.__qualname__} under it"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import wab.methods

    for info in pkgutil.iter_modules(wab.methods.__path__):
        importlib.import_module(f"wab.methods.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if _REGISTRY.get(ep.name) is not cls:
            register(ep.name)(cls)


_FINALIZERS: dict[str, Callable[[RunState], dict[str, nn.Module]]] = {}


def register_finalizer(name: str, needs_heldout: bool = False, check: Callable[[RunState], None] | None = None):
    """Decorator adding a function ``run -> {name: model}`` that any method can end with, through
    ``population.finalizers`` (e.g. the soups); a duplicate name is an error. ``needs_heldout``:
    the finalizer selects on the held-out split (checked before the run starts); ``check(run)``
    raises ValueError for a run it cannot finalize, and runs before anything else does (on the
    meta device, like a method's ``setup``)."""

    def deco(fn):
        if name in _FINALIZERS and _FINALIZERS[name] is not fn:
            raise ValueError(f"finalizer name {name!r} is already registered")
        fn.name = name
        fn.needs_heldout = needs_heldout
        fn.check = check
        _FINALIZERS[name] = fn
        return fn

    return deco


def get_finalizer(name: str) -> Callable[[RunState], dict[str, nn.Module]]:
    _load_all()
    if name not in _FINALIZERS:
        known = ", ".join(sorted(_FINALIZERS))
        raise UserError(f"unknown finalizer {name!r}{did_you_mean(name, _FINALIZERS)}; known finalizers: {known}")
    return _FINALIZERS[name]


def available_methods() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def heldout_selection(acc: float, size: int) -> dict[str, float | int]:
    """What a choice made on held-out data rests on, for ``method_report``: the held-out size,
    the chosen model's held-out accuracy and its binomial standard error sqrt(acc (1 - acc) / size)
    (a choice between models closer than about two standard errors is noise)."""
    return {"heldout_size": int(size), "heldout_acc": float(acc),
            "selection_se": math.sqrt(max(acc * (1.0 - acc), 0.0) / size) if size else float("nan")}  # fmt: skip


def one_member_methods() -> list[str]:
    """The methods that run on a population of one (``min_members`` 1)."""
    return [name for name in available_methods() if _REGISTRY[name].min_members <= 1]


def get_method(name: str) -> type[Method]:
    _load_all()
    if name not in _REGISTRY:
        raise UserError(
            f"unknown method {name!r}{did_you_mean(name, _REGISTRY)}; known methods: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]
