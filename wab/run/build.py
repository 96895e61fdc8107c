"""Building a run from its spec: the data, the population, the method, the optimizer (with the
members' own recipes), each member's augmentation and random streams, the evaluator and the run
state every hook receives. On the meta device (``dry``) nothing is read or allocated: the
dataset is described by its shape alone, so validation can build a run to let the method's own
checks run. Imports the parts (data, augment, models, optim), the population and the method API.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wab.core.batched import BatchedMembers, batching_problem
from wab.core.distributed import LocalComm
from wab.core.evaluate import BNRecalibration, Evaluator
from wab.core.ledger import CommLedger
from wab.core.population import Population
from wab.errors import UserError
from wab.method import Method, RunState
from wab.parts.augment import Augment, Augmenter, Normalizer, member_entries
from wab.parts.data import DataSplits, describe_data, load_data
from wab.parts.device import resolve_device
from wab.parts.models import model_factory
from wab.parts.optim import RECIPE_KEYS, MemberRecipes, build_optimizer
from wab.run.spec import RunSpec

log = logging.getLogger("wab")


def member_seed(seed: int, i: int) -> int:
    """The seed of member ``i``'s initialisation (9_999: the method's own random stream)."""
    return seed * 10_000 + i


def auto_flag(value: Any, default: bool, name: str) -> bool:
    """``auto`` means ``default`` (what is faster on this device); else a boolean."""
    if value == "auto":
        return default
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be auto, true or false, got {value!r}")


@dataclass
class BuiltRun:
    """Every component of a run, built from its spec; this process's members only."""

    device: torch.device
    data: DataSplits
    steps_per_epoch: int
    population: Population
    method: Method
    hooks: set[str]
    optimizer: torch.optim.Optimizer
    recipes: MemberRecipes | None
    augment: list[Augment]  # this process's members' recipes of augmentation
    augmenters: list[Augmenter]
    rngs: list[np.random.Generator]  # each member's data order and augmentation
    order_rng: np.random.Generator | None  # one data order for every member (shared_data_order)
    evaluator: Evaluator
    ledger: CommLedger
    state: RunState
    autocast_dtype: torch.dtype | None
    batched: BatchedMembers | None  # the members' forward/backward as one computation (trainer.members)
    members_mode: dict  # what the record says of it: the mode used, and why it is not the one asked for


def _device(spec: RunSpec, dry: bool, group: LocalComm) -> torch.device:
    if dry:
        return torch.device("meta")
    device = resolve_device(spec.cfg.get("device", "auto"))
    if device.type == "cuda" and group.world > 1:
        return torch.device("cuda", torch.cuda.current_device())  # this process's GPU
    return device


def _data(spec: RunSpec, device: torch.device, dry: bool) -> DataSplits:
    dcfg = spec.cfg["data"]
    args = {"root": dcfg.get("root"), "heldout_fraction": dcfg.get("heldout_fraction", 0.02),
            "download": dcfg.get("download", False), "image_size": dcfg.get("image_size", 32),
            "train_subset": dcfg.get("train_subset")}  # fmt: skip
    if dry:
        return describe_data(dcfg["name"], **args)
    return load_data(dcfg["name"], heldout_seed=dcfg.get("heldout_seed", 0), device=device, **args)


def _population(spec: RunSpec, data: DataSplits, device: torch.device, ledger: CommLedger, group: LocalComm,
                dry: bool) -> Population:  # fmt: skip
    cfg, tcfg = spec.cfg, spec.cfg["trainer"]
    mcfg = dict(cfg["model"])
    build = model_factory(mcfg.pop("name"), data.in_channels, data.image_size, data.num_classes, **mcfg)
    same = cfg["population"].get("same_init")
    seeds = [member_seed(spec.seed, 0 if same else i) for i in range(spec.size)]
    # channels-last convolutions are faster on CUDA and, with oneDNN, on CPU (BENCHMARKS.md)
    channels_last = auto_flag(tcfg.get("channels_last", "auto"), device.type in ("cuda", "cpu"),
                              "trainer.channels_last")  # fmt: skip
    track_anchor = any(f.needs_anchor for f in spec.finalizers)  # a copy of one model, kept only when read
    population = Population(build, seeds, device, ledger, channels_last, group, track_anchor)
    if tcfg.get("compile", False) and not dry:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * spec.size)
        for member in population.members:
            member.compile()
    return population


def _optimizer(spec: RunSpec, population: Population, entries: list[dict],
               recipes: list[dict]) -> tuple[torch.optim.Optimizer, MemberRecipes | None]:  # fmt: skip
    """One optimizer over the flat rows; with per-member recipes (lr scale, weight decay: decided
    on every member, the same on every process) their decay is applied by :class:`MemberRecipes`."""
    ocfg = spec.cfg["optim"]
    if any(k in e for e in entries for k in RECIPE_KEYS):
        MemberRecipes.check(entries, ocfg["name"])
        optimizer = build_optimizer(population.params, {**ocfg, "weight_decay": 0.0})
        return optimizer, MemberRecipes(population.params, ocfg, recipes)
    return build_optimizer(population.params, ocfg), None


def build_run(spec: RunSpec, group: LocalComm, dry: bool = False) -> BuiltRun:
    """Every component of the run ``spec`` describes, for this process's members of ``group``."""
    cfg = spec.cfg
    device = _device(spec, dry, group)
    method = spec.method_cls(cfg["method"])
    data = _data(spec, device, dry)
    steps_per_epoch = spec.steps_per_epoch(data)
    autocast = auto_flag(cfg["trainer"].get("amp", "auto"), device.type == "cuda", "trainer.amp")
    ledger = CommLedger()
    population = _population(spec, data, device, ledger, group, dry)
    entries = method.member_augment(spec.size, data.image_size) or member_entries(
        cfg["population"].get("member_augment"), spec.size, spec.seed, data.image_size)  # fmt: skip
    local = population.local_indices  # the members this process trains
    mine = [dict(entries[i % len(entries)]) if entries else {} for i in local]
    recipes = [{k: e.pop(k) for k in RECIPE_KEYS if k in e} for e in mine]  # the rest is augmentation
    optimizer, member_recipes = _optimizer(spec, population, entries, recipes)
    normalize = Normalizer(data.mean, data.std, device, population.channels_last)
    base = Augment.from_dict(cfg["data"].get("augment"))
    augment = [base.merged(e) for e in mine]
    recal = None
    if cfg["trainer"].get("bn_recal", "clean") == "augmented":  # the run's augmentation, unmixed, in training batches
        unmixed = Augmenter(dataclasses.replace(base, mixup_alpha=0.0, cutmix_alpha=0.0), normalize)
        recal = BNRecalibration(unmixed, spec.batch_size, spec.seed)
    evaluator = Evaluator(data, normalize, spec.eval_batch_size, recal)
    state = RunState(
        cfg=cfg, method_cfg=method.cfg, population=population, optimizer=optimizer, data=data, evaluator=evaluator,
        ledger=ledger, rng=torch.Generator().manual_seed(member_seed(spec.seed, 9_999)), epochs=spec.epochs,
        steps_per_epoch=steps_per_epoch, lr0=float(cfg["optim"]["lr"]), progress=spec.progress and not dry,
    )  # fmt: skip
    batched, members_mode = _batched(spec, population, lambda: normalize(data.train.x[:2]), dry)
    return BuiltRun(
        device=device, data=data, steps_per_epoch=steps_per_epoch, population=population, method=method,
        hooks=spec.method_cls.overridden_hooks(), optimizer=optimizer, recipes=member_recipes, augment=augment,
        augmenters=[Augmenter(a, normalize) for a in augment],
        rngs=[np.random.default_rng([spec.seed, i]) for i in local],
        order_rng=np.random.default_rng([spec.seed, 10**6]) if spec.method_cls.shared_data_order else None,
        evaluator=evaluator, ledger=ledger, state=state, autocast_dtype=torch.bfloat16 if autocast else None,
        batched=batched, members_mode=members_mode,
    )  # fmt: skip


def _batched(spec: RunSpec, population: Population, sample: Callable[[], torch.Tensor],
             dry: bool) -> tuple[BatchedMembers | None, dict]:  # fmt: skip
    """The batched members when the run asks for them and the model allows it. A model vmap
    cannot batch is refused when ``trainer.members=batched`` was asked for by name; under
    ``auto`` the run falls back to the loop, and its record says why."""
    asked = spec.cfg["trainer"].get("members", "loop")
    if spec.members == "loop" or dry:  # a dry build (validation) never steps
        return None, {"mode": "loop", "asked": asked}
    problem = batching_problem(population, sample())
    if problem is None:
        return BatchedMembers(population), {"mode": "batched", "asked": asked}
    if asked == "batched":
        raise UserError(f"trainer.members=batched: this model's members cannot be batched ({problem}); "
                        f"use trainer.members=loop")  # fmt: skip
    log.warning("trainer.members=%s: running the members in a loop, as they cannot be batched (%s)", asked, problem)
    return None, {"mode": "loop", "asked": asked, "why": problem}
