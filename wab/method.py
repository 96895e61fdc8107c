"""The method plugin API: a base class with four hooks, one run-state object, and a registry;
with the per-member state types :class:`MemberRows` and :class:`MemberValues`, the one module a
plugin imports.

A method is one file ``methods/<name>.py`` defining a :class:`Method` subclass decorated with
``@register("<name>")`` and one config ``configs/method/<name>.yaml``. Methods that live in other
packages register through the entry-point group ``wab.methods``
(``[project.entry-points."wab.methods"] mymethod = "mypkg.mymethod:MyMethod"``).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions
from importlib.metadata import version as distribution_version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from wab.core.evaluate import Evaluator
from wab.core.ledger import CommLedger
from wab.core.member_rows import MemberRows, MemberValues  # noqa: F401  (part of the plugin API)
from wab.core.population import Population
from wab.errors import UserError, did_you_mean
from wab.parts.data import DataSplits

HOOKS = ("setup", "after_step", "after_epoch", "finalize")


@dataclass(frozen=True)
class Range:
    """The interval a numeric hyper-parameter must lie in (``low_open``/``high_open`` exclude an end)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if above and below:
            return None
        if math.isinf(self.high):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if math.isinf(self.low):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return f"must be in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    """The values a hyper-parameter may take."""

    choices: tuple

    def problem(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {self.choices}"


def declared_defaults(cls: type[Method]) -> dict[str, Any]:
    """A method's hyper-parameters with their defaults, as its config node declares them (its
    YAML in ``configs/method/``, or a plugin's own, :func:`plugin_config`)."""
    from wab import CONFIG_DIR

    path = CONFIG_DIR / "method" / f"{cls.name}.yaml"
    if path.exists():
        _, _, method = read_method_yaml(path)
    else:
        node, is_global = plugin_config(cls)
        method = node.get("method", {}) if is_global else node
    return {k: v for k, v in method.items() if k not in ("name", "_target_")}


def read_method_yaml(path: Path) -> tuple[dict[str, Any], bool, Any]:
    """A method's YAML: the whole node, whether it is a ``# @package _global_`` one, and its
    method part (the node itself, or its ``method`` key)."""
    text = path.read_text()
    is_global = text.lstrip().startswith("# @package _global_")
    node = yaml.safe_load(text) or {}
    return node, is_global, node.get("method", {}) if is_global else node


def _typed(value: Any, default: Any) -> Any:
    """``value`` as its declared default's type (a float setting given as an integer is a float)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


ENTRY_POINT_GROUP = "wab.methods"


@dataclass
class MergeInputs:
    """What a merging finalizer combines: the rows of the members this process holds, one
    [n_local, P] tensor per parameter group and one per buffer group (the population's layout),
    and the prefix of the names of the models made from them (``"rebasin+"`` once aligned)."""

    params: list[torch.Tensor]
    buffers: list[torch.Tensor]
    prefix: str = ""


def merge_inputs(run: RunState) -> MergeInputs:
    """The members a merging finalizer combines: aligned by an earlier finalizer in
    ``population.finalizers`` (``rebasin``), else the population's own."""
    pop = run.population
    return run.aligned if run.aligned is not None else MergeInputs(pop.params, pop.buffers)


def finalizer_settings(run: RunState, name: str) -> dict[str, Any]:
    """A finalizer's settings: ``finalizer.<name>`` of the run's config (empty when it has none)."""
    return dict((run.cfg.get("finalizer") or {}).get(name) or {})


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
    # the members the merging finalizers combine, when an earlier finalizer changed them (rebasin's
    # aligned members); None: the population's own (:func:`merge_inputs`)
    aligned: MergeInputs | None = None
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
        from wab.parts.optim import lr_at

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
    synchronizes: ClassVar[bool] = False  # sets every member to one state: an anchor for task-vector merges
    min_members_reason: ClassVar[str] = ""  # why, in the error that refuses a smaller population
    recalibrate_outputs: ClassVar[bool] = True
    demo_overrides: ClassVar[tuple[str, ...]] = ()  # config overrides `wab demo` adds for this method
    demo_note: ClassVar[str] = ""  # why, printed by `wab demo`: its few hundred steps are not the paper's budget
    # A method without configs/method/<name>.yaml (a plugin of another package) ships <name>.yaml
    # beside its module or lists its hyper-parameters and defaults here: either becomes its config
    # node (``method=<name>``), so its defaults are in every run's config and its id.
    hyperparameters: ClassVar[dict[str, Any]] = {}
    # What each hyper-parameter may be beyond its type, checked by wab before a run starts:
    # {"p": Range(0, 1), "schedule": OneOf(("linear", "constant"))}.
    constraints: ClassVar[dict[str, Range | OneOf]] = {}

    def __init__(self, cfg: dict) -> None:
        self.cfg = dict(cfg)
        defaults = declared_defaults(type(self)) if self.name else {}
        #: the hyper-parameters, each of its declared default's type: ``self.hp.p``
        self.hp = SimpleNamespace(**{k: _typed(self.cfg.get(k, d), d) for k, d in defaults.items()})

    @classmethod
    def hyperparameter_problems(cls, cfg: dict) -> list[str]:
        """Each hyper-parameter of ``cfg`` (a method config) outside its declared constraint."""
        defaults = declared_defaults(cls)
        out = []
        for key, constraint in cls.constraints.items():
            value = _typed(cfg.get(key, defaults.get(key)), defaults.get(key))
            if (problem := constraint.problem(value)) is not None:
                out.append(f"{cls.name} {key} {problem}, got {value!r}")
        return out

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

    def state_dict(self, run: RunState) -> dict:
        """What the method must carry over a checkpoint (tensors, numbers, strings, lists, dicts);
        per-member state as :class:`MemberRows` (tensors) or :class:`MemberValues` (Python values),
        one entry per member this process holds."""
        return {}

    def report(self, run: RunState) -> dict:
        """What the method did, for the run's final.json (``method_report``): merges, repairs,
        the step its final model was chosen at... Numbers, strings, lists and dicts; a
        :class:`MemberValues` becomes the list over every member of the population."""
        return {}

    def load_state_dict(self, run: RunState, state: dict) -> None:
        """Restore :meth:`state_dict`'s state; its ``MemberRows`` and ``MemberValues`` hold the
        entries of the members this process holds now (any number of processes)."""

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
        if not info.name.startswith("_"):  # _repair, _permutation: code some methods share
            importlib.import_module(f"wab.methods.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if _REGISTRY.get(ep.name) is not cls:
            register(ep.name)(cls)


_FINALIZERS: dict[str, Callable[[RunState], dict[str, nn.Module]]] = {}


def register_finalizer(
    name: str,
    needs_heldout: bool | Callable[[dict], bool] = False,
    check: Callable[[RunState], None] | None = None,
    needs_anchor: bool = False,
    combines_inputs: bool = False,
):
    """Decorator adding a function ``run -> {name: model}`` that any method can end with, through
    ``population.finalizers`` (e.g. the soups); a duplicate name is an error. ``needs_heldout``:
    the finalizer selects on the held-out split (or a function of its settings saying whether it
    does; checked before the run starts); ``needs_anchor``: it reads the population's anchor
    (the shared initialisation or the last synchronisation, refused before the run starts for a
    population that has neither); ``combines_inputs``: it merges :func:`merge_inputs` and names
    its model with their prefix (``rebasin+<name>`` after ``rebasin``), so it may be listed once
    before and once after ``rebasin``; ``check(run)`` raises ValueError for a run it cannot finalize,
    and runs before anything else does (on the meta device, like a method's ``setup``). Its
    settings are ``finalizer.<name>`` of the config (:func:`finalizer_settings`)."""

    def deco(fn):
        if name in _FINALIZERS and _FINALIZERS[name] is not fn:
            raise ValueError(f"finalizer name {name!r} is already registered")
        fn.name = name
        fn.needs_heldout = needs_heldout if callable(needs_heldout) else (lambda settings: needs_heldout)
        fn.needs_anchor = needs_anchor
        fn.combines_inputs = combines_inputs
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
    the chosen model's held-out accuracy and its binomial standard error (a choice between models
    closer than about two standard errors is noise). The standard error is Agresti and Coull's,
    sqrt(p (1 - p) / (n + 4)) with p = (acc n + 2) / (n + 4): about the plain sqrt(acc (1 - acc) / n)
    on a large split, and never 0 (a split of 29 images, all right, is not certainty: 0.042)."""
    if not size:
        return {"heldout_size": 0, "heldout_acc": float(acc), "selection_se": float("nan")}
    p = (acc * size + 2.0) / (size + 4.0)
    return {"heldout_size": int(size), "heldout_acc": float(acc),
            "selection_se": math.sqrt(p * (1.0 - p) / (size + 4.0))}  # fmt: skip


def one_member_methods() -> list[str]:
    """The methods that run on a population of one (``min_members`` 1)."""
    return [name for name in available_methods() if _REGISTRY[name].min_members <= 1]


def get_method(name: str, target: str | None = None) -> type[Method]:
    """The method registered as ``name``; with ``target`` (``"pkg.module:Class"``, the
    ``_target_`` of a method config) the class is imported first when no process has registered
    it yet (a sweep's job is a fresh process)."""
    _load_all()
    if name not in _REGISTRY and target:
        cls = import_target(target)
        if name not in _REGISTRY:
            register(name)(cls)
    if name not in _REGISTRY:
        raise UserError(
            f"unknown method {name!r}{did_you_mean(name, _REGISTRY)}; known methods: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def method_of(cfg: dict) -> type[Method]:
    """The class of a run config's ``method`` node (its ``name``, imported from its ``_target_``)."""
    return get_method(cfg["method"]["name"], cfg["method"].get("_target_"))


def import_target(target: str) -> type[Method]:
    """The :class:`Method` subclass ``"pkg.module:Class"`` names (``pkg.module.Class`` also works)."""
    module_name, sep, qualname = target.partition(":")
    if not sep:
        module_name, _, qualname = target.rpartition(".")
    if not module_name or not qualname:
        raise UserError(f"method target {target!r} must be written pkg.module:Class")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"method target {target!r}: cannot import {module_name!r} ({e})") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise UserError(f"method target {target!r}: module {module_name!r} has no {qualname!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise UserError(f"method target {target!r} is not a subclass of wab.method.Method")
    return obj


def target_of(cls: type[Method]) -> str:
    """``"pkg.module:Class"`` for a class, the inverse of :func:`import_target`."""
    return f"{cls.__module__}:{cls.__qualname__}"


def is_builtin(cls: type[Method]) -> bool:
    """A method of wab's own ``methods/`` folder (its config is in ``configs/method/``)."""
    return cls.__module__.startswith("wab.methods.")


def from_entry_point(name: str) -> bool:
    """Whether ``name`` is registered by an installed package's ``wab.methods`` entry point
    (found again in every fresh process, so its config needs no ``_target_``)."""
    return any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP))


def method_origin(cls: type[Method]) -> dict[str, str | None]:
    """Where a method's code comes from, for its records: its class (``pkg.module:Class``) and
    the installed distribution that ships the module with its version (None for a module that
    belongs to no installed distribution, e.g. a script)."""
    top = cls.__module__.split(".")[0]
    dists = packages_distributions().get(top) or []
    dist = "wab" if top == "wab" else (dists[0] if dists else None)
    version = None
    if dist is not None:
        try:
            version = distribution_version(dist)
        except PackageNotFoundError:
            version = None
    return {"class": target_of(cls), "distribution": dist, "version": version, "source_sha256": source_hash(cls)}


def source_hash(cls: type[Method]) -> str | None:
    """The SHA-256 of the file that defines a method (None when it has none, e.g. in a notebook):
    a run records it, so a later ``wab train`` of the same config can say the code changed since."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def plugin_config(cls: type[Method]) -> tuple[dict[str, Any], bool]:
    """The config node of a method that has no file in ``configs/method/`` (a plugin), and whether
    it is a ``# @package _global_`` node (which may also set ``optim``, ``population``... keys
    under its ``method`` key). The node is read from ``<name>.yaml`` beside the module that
    defines the class, when the plugin ships one, else made from the class's ``hyperparameters``.
    Its ``_target_`` lets a fresh process import the class unless an entry point registers it."""
    yaml_path = None
    module = sys.modules.get(cls.__module__)
    if module is not None and getattr(module, "__file__", None):
        candidate = Path(module.__file__).with_name(f"{cls.name}.yaml")
        yaml_path = candidate if candidate.exists() else None
    if yaml_path is not None:
        node, is_global, method = read_method_yaml(yaml_path)
        if not isinstance(method, dict) or method.get("name", cls.name) != cls.name:
            raise UserError(f"{yaml_path}: its method name must be {cls.name!r}")
    else:
        is_global, node = False, {"name": cls.name, **cls.hyperparameters}
        method = node
    method["name"] = cls.name
    if not from_entry_point(cls.name) and cls.__module__ != "__main__" and "<locals>" not in cls.__qualname__:
        method["_target_"] = target_of(cls)
    return node, is_global
