"""The population trainer: every method runs through this loop.

Per step: each member takes its own batch (its own permutation of the training set every epoch,
its own augmentation), the members' losses are summed and back-propagated once, one optimizer
steps the flat [N, P] tensor, then the method's ``after_step`` runs. A non-finite loss stops the
run with status ``diverged``. Checkpoints hold everything a resume needs, RNG states and the
epoch's data order included, so an interrupted run ends bit-identical (on CPU) to an
uninterrupted one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wab.augment import Augment, Augmenter, Batch, Normalizer, member_entries
from wab.checkpoint import MemberRows, join_state, new_shard_dir, remove_unreferenced, split_state, write_shards
from wab.data import DataSplits, describe_data, load_data
from wab.device import resolve_device, to_device
from wab.distributed import BACKENDS, LocalComm, merge_traffic
from wab.distributed import init as init_distributed
from wab.evaluate import Evaluator
from wab.lease import Lease, LeaseLost
from wab.ledger import CommLedger, measured_summary
from wab.loggers import RunLoggers, logger_problems
from wab.method import Method, RunState, get_finalizer, method_of, one_member_methods
from wab.models import model_factory
from wab.optim import RECIPE_KEYS, MemberRecipes, build_optimizer, lr_at
from wab.population import Population
from wab.records import RunDir, atomic_torch_save
from wab.saved_models import save_models

log = logging.getLogger("wab")

_STOP = threading.Event()


class Interrupted(Exception):
    """Training stopped at a step boundary after saving a checkpoint (preemption)."""


class Diverged(Exception):
    """A member's loss was NaN or infinite."""


def request_stop() -> None:
    """Ask the running trainer to checkpoint at the next step boundary and raise Interrupted."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether a stop was asked for and not yet honoured."""
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a stop request that arrived after the last step (e.g. during the final evaluation)."""
    _STOP.clear()


def _auto(value: Any, default: bool, name: str) -> bool:
    """``auto`` means ``default`` (what is faster on this device); else a boolean."""
    if value == "auto":
        return default
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be auto, true or false, got {value!r}")


def _console_loggers() -> list[logging.Logger]:
    """The loggers that print to the terminal: their lines go through tqdm so that they do not
    break a progress bar."""
    return [
        lg for lg in (logging.root, log)
        if any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in lg.handlers)
    ]  # fmt: skip


def member_seed(seed: int, i: int) -> int:
    return seed * 10_000 + i


def forward_backward(
    population: Population, batches: list[Batch], autocast_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Every member's forward and backward on its own batch, accumulating into the flat gradient.
    Each member's graph is back-propagated and freed before the next member's forward (faster on
    CPU than one backward of the summed losses, and a lower memory peak); with ``autocast_dtype``
    (bf16 on CUDA) the forward runs under autocast. Returns the summed loss, on the device."""
    total = torch.zeros((), device=population.device)
    for member, batch in zip(population.members, batches):
        with torch.autocast(
            population.device.type, dtype=autocast_dtype or torch.float32, enabled=bool(autocast_dtype)
        ):
            loss = batch.loss(member(batch.x))
        loss.backward()
        total += loss.detach()
    return total


def population_step(
    population: Population,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    check_finite: bool = False,
    autocast_dtype: torch.dtype | None = None,
    recipes: MemberRecipes | None = None,
) -> float:
    """One optimizer step of every member on its own batch (:func:`forward_backward`), as one
    optimizer step of the flat tensor (with ``recipes``, each member's own lr scale and weight
    decay). Returns the loss summed over every member of the population (read back from the
    device only when ``check_finite``; a non-finite loss, on any process, skips the step)."""
    population.zero_grad()
    total = forward_backward(population, batches, autocast_dtype)
    loss = 0.0
    if check_finite:
        with population.comm.counting("control"):
            loss = population.comm.all_reduce_sum(total.double().view(1), "loss_check").item()
    if np.isfinite(loss):
        lr = optimizer.param_groups[0]["lr"]
        if recipes is not None:
            recipes.before_step(lr)
        optimizer.step()
        if recipes is not None:
            recipes.after_step(lr)
    return loss


class Trainer:
    """Trains one population run described by a resolved config (a plain dict)."""

    def __init__(self, cfg: dict[str, Any], run_dir: RunDir | None = None, dry: bool = False) -> None:
        """``dry`` builds everything on the meta device from the dataset's shape alone (no image is
        read, no memory allocated): :meth:`check` then runs every check a real start would."""
        self.cfg = cfg
        self.dir = run_dir
        self.dry = dry
        tcfg, pcfg, dcfg = cfg["trainer"], cfg["population"], cfg["data"]
        backend = pcfg.get("backend", "local")
        if backend not in BACKENDS:
            raise ValueError(f"population.backend must be one of {BACKENDS}, got {backend!r}")
        timeout = pcfg.get("timeout_min", 5)
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"population.timeout_min={timeout} must be a number of minutes > 0, e.g. 5")
        distributed = backend == "distributed" and not dry
        self.group = init_distributed(cfg.get("device", "auto"), float(timeout)) if distributed else LocalComm()
        self.is_main = self.group.rank == 0  # the process that writes the run's records
        self.process_counts = [self.group.world]  # every life's, when a resume changed it
        self.latest_shards = ""  # the shard directory checkpoint.pt names
        self.device = torch.device("meta") if dry else resolve_device(cfg.get("device", "auto"))
        if self.device.type == "cuda" and distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU
        method_cls = method_of(cfg)
        self.method: Method = method_cls(cfg["method"])
        self.hooks = method_cls.overridden_hooks()
        self.finalizers = [get_finalizer(name) for name in cfg["population"].get("finalizers") or []]
        size = int(pcfg["size"])
        if size < 1:
            raise ValueError(f"population.size must be >= 1, got {size}")
        if size < method_cls.min_members:
            raise ValueError(
                f"population.size={size}: {method_cls.name} needs at least {method_cls.min_members} members "
                f"({method_cls.min_members_reason or 'it works between members'}); population.size=1 is for the "
                f"methods that make sense on one model: {', '.join(one_member_methods())}"
            )

        data_args = {
            "root": dcfg.get("root"),
            "heldout_fraction": dcfg.get("heldout_fraction", 0.02),
            "download": dcfg.get("download", False),
            "image_size": dcfg.get("image_size", 32),
            "train_subset": dcfg.get("train_subset"),
        }
        self.data: DataSplits = (
            describe_data(dcfg["name"], **data_args)
            if dry
            else load_data(dcfg["name"], heldout_seed=dcfg.get("heldout_seed", 0), device=self.device, **data_args)
        )
        needs = [method_cls.name] if method_cls.needs_heldout else []
        needs += [f.name for f in self.finalizers if f.needs_heldout]
        if needs and len(self.data.heldout) == 0:
            verb = "needs" if len(needs) == 1 else "need"
            raise ValueError(f"{' and '.join(needs)} {verb} a held-out split: set data.heldout_fraction > 0")
        self.progress = bool(tcfg.get("progress", True)) and not dry
        target = tcfg.get("target_acc")
        if target is not None and not (isinstance(target, int | float) and 0 < target <= 1):
            raise ValueError(f"trainer.target_acc={target} must be an accuracy as a fraction in (0, 1], e.g. 0.85")
        problems = logger_problems(RunLoggers.names(cfg))
        if problems:
            raise ValueError("; ".join(problems))
        self.loggers = RunLoggers([])  # opened by fit() on the process that writes the records
        self.batch_size = int(tcfg["batch_size"])
        for key, low in (("batch_size", 1), ("eval_batch_size", 1), ("eval_every", 0), ("checkpoint_every", 1),
                         ("lmc_points", 0)):  # fmt: skip
            value = tcfg.get(key, low)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"trainer.{key}={value} must be an integer >= {low}")
        if tcfg.get("lmc_points") == 1:
            raise ValueError("trainer.lmc_points=1: a path needs its two ends; use 0 (off) or >= 2")
        self.steps_per_epoch = len(self.data.train) // self.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"trainer.batch_size={self.batch_size} exceeds the {len(self.data.train)} training images")
        self.epochs = int(tcfg["epochs"])
        if self.epochs < 1:
            raise ValueError(f"trainer.epochs must be >= 1, got {self.epochs}")

        mcfg = dict(cfg["model"])
        build = model_factory(
            mcfg.pop("name"), self.data.in_channels, self.data.image_size, self.data.num_classes, **mcfg
        )
        seed = int(cfg["seed"])
        seeds = [member_seed(seed, 0 if pcfg.get("same_init") else i) for i in range(size)]
        cuda = self.device.type == "cuda"
        # channels-last convolutions are faster on CUDA and, with oneDNN, on CPU (BENCHMARKS.md)
        channels_last = _auto(tcfg.get("channels_last", "auto"), self.device.type in ("cuda", "cpu"),
                              "trainer.channels_last")  # fmt: skip
        amp = _auto(tcfg.get("amp", "auto"), cuda, "trainer.amp")
        self.autocast_dtype = torch.bfloat16 if amp else None
        self.ledger = CommLedger()
        self.population = Population(build, seeds, self.device, self.ledger, channels_last, self.group)
        if tcfg.get("compile", False) and not dry:
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * size)
            for member in self.population.members:
                member.compile()
        entries = self.method.member_augment(size, self.data.image_size) or member_entries(
            pcfg.get("member_augment"), size, seed, self.data.image_size)  # fmt: skip
        local = self.population.local_indices  # the members this process trains
        mine = [dict(entries[i % len(entries)]) if entries else {} for i in local]
        recipes = [{k: e.pop(k) for k in RECIPE_KEYS if k in e} for e in mine]  # the rest is augmentation
        self.recipes = None
        if any(k in e for e in entries for k in RECIPE_KEYS):  # decided on every member, the same on every process
            MemberRecipes.check(entries, cfg["optim"]["name"])
            self.optimizer = build_optimizer(self.population.params, {**cfg["optim"], "weight_decay": 0.0})
            self.recipes = MemberRecipes(self.population.params, cfg["optim"], recipes)
        else:
            self.optimizer = build_optimizer(self.population.params, cfg["optim"])

        normalize = Normalizer(self.data.mean, self.data.std, self.device, channels_last)
        base = Augment.from_dict(dcfg.get("augment"))
        self.augment = [base.merged(e) for e in mine]
        self.augmenters = [Augmenter(a, normalize) for a in self.augment]
        self.rngs = [np.random.default_rng([seed, i]) for i in local]
        # one data order for every member (on every process) when the method asks for it
        self.order_rng = np.random.default_rng([seed, 10**6]) if method_cls.shared_data_order else None
        self.perms: list[torch.Tensor] | None = None
        self.evaluator = Evaluator(self.data, normalize, int(tcfg.get("eval_batch_size", 1000)))
        self.state = RunState(
            cfg=cfg,
            method_cfg=self.method.cfg,
            population=self.population,
            optimizer=self.optimizer,
            data=self.data,
            evaluator=self.evaluator,
            ledger=self.ledger,
            rng=torch.Generator().manual_seed(member_seed(seed, 9_999)),
            epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
            lr0=float(cfg["optim"]["lr"]),
            progress=self.progress,
        )
        self.wall_before = 0.0
        self.eval_before = 0.0  # evaluation time of earlier lives of the run (resumes)
        self.eval_time = 0.0  # evaluation time in this process
        self.epoch_losses: list[float] = []
        self.lease: Lease | None = None

    def check(self) -> None:
        """What a first step would check beyond the constructor: the lr schedule and the method's
        own ``setup`` (on a dry trainer, on meta tensors)."""
        lr_at(0, self.state.total_steps, self.steps_per_epoch, self.cfg["optim"])
        if "setup" in self.hooks:
            self.method.setup(self.state)
        for fn in self.finalizers:
            if fn.check is not None:
                fn.check(self.state)

    # ------------------------------------------------------------------------------ records
    def record_base(self) -> dict:
        c = self.cfg
        return {
            "run_id": self.dir.path.name,
            "method": c["method"]["name"],
            "seed": c["seed"],
            "dataset": c["data"]["name"],
            "model": c["model"]["name"],
            "population_size": self.population.size,
        }

    def comm(self) -> dict:
        """The ``comm`` block of the records: the analytic ledger and, when the run used several
        processes, what went through its collectives (a collective itself: every process calls it)."""
        out = {
            **self.ledger.summary(self.state.step),
            "model_elements": self.population.num_params,
            "buffer_elements": self.population.num_buffers,
        }
        traffic = self.traffic()
        if traffic:
            out["measured"] = measured_summary(traffic, self.process_counts, self.population.size,
                                               self.state.step, out["bytes_per_step"])  # fmt: skip
        return out

    def traffic(self) -> dict:
        """Every process's collective traffic so far, summed (a collective)."""
        if self.group.world == 1:
            return self.group.traffic
        with self.group.counting("control"):
            return merge_traffic(self.group.all_gather_objects(self.group.traffic, "traffic"))

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def eval_time_total(self) -> float:
        return self.eval_before + self.eval_time

    def train_time(self) -> float:
        """Wall time without evaluation (AlgoPerf's rule: the method's own finalize counts as training)."""
        return self.wall_time() - self.eval_time_total()

    # --------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> None:
        """Every process gathers its members' state; the main process writes the checkpoint."""
        self._check_lease()
        with self.group.counting("checkpoint"):
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        s = self.state
        pop = self.population
        name = new_shard_dir(self.dir.path, s.step).name if self.is_main else None
        name = self.group.all_gather_objects(name, "checkpoint_name")[0]  # the main process's
        per_member = {
            "population": pop.state_dict(),
            "optimizer": pop.optimizer_state_dict(self.optimizer),
            "method": self.method.state_dict(),
            "perms": MemberRows(torch.stack(self.perms)) if self.perms is not None else None,
        }
        skeleton, tensors = split_state(per_member, pop.local_indices)
        write_shards(tensors, self.dir.path / name, self.group.world)  # each process its own members' rows
        ckpt = {
            "step": s.step,
            "epoch": s.epoch,
            "epoch_step": s.epoch_step,
            "lr": s.lr,
            "wall_time_s": self.wall_time(),
            "eval_time_s": self.eval_time_total(),
            "epoch_losses": self.epoch_losses,
            "shards": name,
            "state": skeleton,
            "ledger": self.ledger.state_dict(),
            "member_rngs": pop.all_members([r.bit_generator.state for r in self.rngs]),
            "order_rng": self.order_rng.bit_generator.state if self.order_rng is not None else None,
            "traffic": self.traffic(),
            "process_counts": self.process_counts,
            "method_rng": s.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }
        if self.is_main:  # the commit point: the shards are complete once every process has written
            atomic_torch_save(self.dir.checkpoint, ckpt, keep=self.dir.previous_checkpoint)
            remove_unreferenced(self.dir.path, [name, self.latest_shards])  # those of the new and the kept one
        self.latest_shards = name

    def _read_checkpoint(self) -> dict | None:
        """The newest checkpoint every process can read (the previous one when the latest, or one
        of its shards, is damaged), with this process's members' rows; or None."""
        for path in (self.dir.checkpoint, self.dir.previous_checkpoint):
            if not self.group.any_of(path.exists())[0]:
                continue
            ckpt, problem = None, ""
            try:
                ckpt = torch.load(path, map_location=self.device, weights_only=True)
                if "shards" not in ckpt:
                    raise ValueError("written by a wab before checkpoints were sharded by member")
                ckpt["state"] = join_state(ckpt["state"], self.dir.path / ckpt["shards"],
                                           self.population.local_indices, self.device)  # fmt: skip
            except Exception as e:  # truncated, a shard missing or damaged, or not a checkpoint at all
                ckpt, problem = None, f"{type(e).__name__}: {str(e)[:160]}"
            if self.group.any_of(ckpt is None)[0]:  # every process falls back together
                log.warning("checkpoint %s is unreadable%s; trying an older one", path,
                            f" ({problem})" if problem else " on another process")  # fmt: skip
                continue
            self.checkpoint_path = path
            # checkpoint.pt's shards, which it keeps once it becomes the previous checkpoint
            self.latest_shards = ckpt["shards"] if path == self.dir.checkpoint else ""
            return ckpt
        return None

    def load_checkpoint(self, ckpt: dict) -> None:
        s = self.state
        s.step, s.epoch, s.epoch_step, s.lr = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt["lr"]
        self.wall_before = ckpt["wall_time_s"]
        self.eval_before = float(ckpt.get("eval_time_s", 0.0))
        self.epoch_losses = list(ckpt["epoch_losses"])
        pop = self.population
        lo, hi = pop.local_indices.start, pop.local_indices.stop
        state = ckpt["state"]
        pop.load_state_dict(state["population"])
        pop.load_optimizer_state_dict(self.optimizer, state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.ledger.load_state_dict(ckpt["ledger"])
        for rng, st in zip(self.rngs, ckpt["member_rngs"][lo:hi]):
            rng.bit_generator.state = st
        if self.order_rng is not None:
            self.order_rng.bit_generator.state = ckpt["order_rng"]
        self.perms = list(state["perms"].rows) if state["perms"] is not None else None
        if self.is_main:  # the run's traffic so far, summed over the processes it had (any number)
            self.group.load_traffic(ckpt.get("traffic") or {})
        self.process_counts = sorted({*ckpt.get("process_counts", []), self.group.world})
        s.rng.set_state(ckpt["method_rng"].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["cuda_rng"]])
        if self.is_main:
            self.dir.truncate_metrics_after(s.epoch)
        log.info("resumed from %s at step %d (epoch %d)", self.checkpoint_path, s.step, s.epoch)

    # ------------------------------------------------------------------------------ training
    def train_step(self, k: int) -> float:
        """One optimizer step of every member on batch k of its epoch order; returns the mean loss."""
        s, pop, data = self.state, self.population, self.data.train
        s.lr = lr_at(s.step, s.total_steps, self.steps_per_epoch, self.cfg["optim"])
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr
        batches = []
        for i in range(len(pop.members)):
            idx = self.perms[i][k * self.batch_size : (k + 1) * self.batch_size]
            batches.append(self.augmenters[i](data.x[idx], data.y[idx], self.rngs[i]))
        loss = population_step(pop, self.optimizer, batches, True, self.autocast_dtype, self.recipes) / pop.size
        if not np.isfinite(loss):
            raise Diverged(f"non-finite loss {loss} at step {s.step + 1}")
        s.step += 1
        s.epoch_step = k + 1
        if "after_step" in self.hooks:
            self.method.after_step(s)
        return loss

    def evaluate(self, final: bool) -> dict:
        """One evaluation (:class:`Evaluator`); the final one also runs the method's ``finalize``
        and the finalizers, and saves the delivered models (``trainer.save_models``)."""
        finals = {}
        if final:
            if "finalize" in self.hooks:
                log.info("finalizing: %s", self.method.name)
                finals.update(self.method.finalize(self.state))
            for fn in self.finalizers:
                finals.update(fn(self.state))
        t_eval = time.perf_counter()  # what follows is evaluation; finalizing counts as training
        states: dict[str, dict] | None = {} if final and self.cfg["trainer"].get("save_models", True) else None
        with self.group.counting("eval"):
            metrics = self.evaluator.evaluate(
                self.population, finals, self.method.recalibrate_outputs, progress=self.progress, keep=states,
                diagnose=final, lmc_points=int(self.cfg["trainer"].get("lmc_points", 5)),
            )  # fmt: skip
        if states is not None:  # each process writes the models it holds; the main one their list
            names = ["avg_bn", *finals]
            save_models(self.dir, states, self.model_meta(metrics["final_model"]) if self.is_main else None, names)
        self.population.train()
        self.eval_time += time.perf_counter() - t_eval
        return metrics

    def model_meta(self, final_model: str) -> dict:
        """What :func:`wab.saved_models.load_model` needs to rebuild a delivered model."""
        d = self.data
        return {"final_model": final_model, "model": self.cfg["model"], "in_channels": d.in_channels,
                "image_size": d.image_size, "num_classes": d.num_classes, "mean": d.mean, "std": d.std}  # fmt: skip

    def _log_start(self) -> None:
        s, pop = self.state, self.population
        layout = ", ".join(
            [f"channels_last={self.population.channels_last}", f"bf16 autocast={self.autocast_dtype is not None}"]
        )
        log.info(
            "device %s (%s); %d members x %s parameters (+%s buffer elements); %d steps per epoch x %d epochs, "
            "batch %d; starting at step %d of %d",
            self.device, layout, pop.size, f"{pop.num_params:,}", f"{pop.num_buffers:,}", self.steps_per_epoch,
            self.epochs, self.batch_size, s.step, s.total_steps,
        )  # fmt: skip

    def _check_lease(self) -> None:
        if self.lease is not None and (self.lease.lost or not self.lease.held()):
            raise LeaseLost(f"run {self.dir.path.name} was taken over by another process; stopping without writing")

    def fit(self, lease: Lease | None = None) -> dict:
        """Train to the end (resuming from a checkpoint if there is one); returns final metrics.
        With ``lease``, training stops (:class:`LeaseLost`) as soon as another process takes the run."""
        self.t0 = time.perf_counter()
        self.lease = lease
        self.dir.path.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            self.loggers = RunLoggers(RunLoggers.names(self.cfg), self.dir.path, self.dir.path.name, self.cfg)
        s, tcfg = self.state, self.cfg["trainer"]
        if "setup" in self.hooks:
            self.method.setup(s)
        ckpt = self._read_checkpoint()
        if ckpt is not None:
            self.load_checkpoint(ckpt)
            del ckpt  # the rows are copied into the members and the optimizer: nothing keeps it alive
        else:  # a fresh start: no evaluation line of an earlier attempt may stay
            if self.is_main:
                if self.dir.metrics.exists():
                    log.warning("no readable checkpoint: starting over and clearing %s", self.dir.metrics)
                self.dir.truncate_metrics_after(0)
        self._log_start()
        self.population.train()
        eval_every = int(tcfg.get("eval_every", 1))
        ckpt_every = max(int(tcfg.get("checkpoint_every", 1)), 1)
        metrics: dict = {}
        bar = tqdm(total=s.total_steps, initial=s.step, desc=self.dir.path.name, dynamic_ncols=True, leave=False,
                   disable=None if self.progress else True)  # fmt: skip
        with bar, logging_redirect_tqdm(loggers=_console_loggers()):
            while s.epoch < self.epochs:
                if s.epoch_step == 0:
                    n = len(self.data.train)
                    if self.order_rng is not None:
                        self.perms = [to_device(self.order_rng.permutation(n), self.device)] * len(self.rngs)
                    else:
                        self.perms = [to_device(r.permutation(n), self.device) for r in self.rngs]
                    self.epoch_losses = []
                for k in range(s.epoch_step, self.steps_per_epoch):
                    self.epoch_losses.append(self.train_step(k))
                    bar.update(1)
                    if s.step % 10 == 0:
                        bar.set_postfix(epoch=s.epoch, loss=f"{self.epoch_losses[-1]:.3f}", lr=f"{s.lr:.3g}")
                    stop, lost = self.group.any_of(_STOP.is_set(), self.lease is not None and self.lease.lost)
                    if lost:
                        raise LeaseLost(f"run {self.dir.path.name} was taken over by another process; stopping")
                    if stop:
                        _STOP.clear()
                        self.save_checkpoint()
                        log.info("stop requested: checkpoint saved at step %d (epoch %d)", s.step, s.epoch)
                        raise Interrupted(f"stopped at step {s.step} after saving a checkpoint")
                last = s.epoch == self.epochs - 1
                if last:  # the final evaluation can be long: an interruption resumes right here
                    self.save_checkpoint()
                if "after_epoch" in self.hooks:
                    self.method.after_epoch(s)
                if last or (eval_every and (s.epoch + 1) % eval_every == 0):
                    metrics = self.evaluate(final=last)
                    comm = self.comm()
                    if self.is_main:
                        line = {
                            **self.record_base(),
                            "step": s.step,
                            "epoch": s.epoch + 1,
                            "wall_time_s": self.wall_time(),
                            "train_time_s": self.train_time(),
                            "lr": s.lr,
                            "train_loss": float(np.mean(self.epoch_losses)),
                            **metrics,
                            "comm": comm,
                        }
                        self.dir.append_metrics(line)
                        self.loggers.log_epoch(line)
                    log.info(
                        "epoch %d/%d  individual %.4f  ensemble %.4f  avg %.4f  avg_bn %.4f",
                        s.epoch + 1, self.epochs, metrics["individual_mean"], metrics["ensemble_acc"],
                        metrics["avg_acc"] or 0.0, metrics["avg_bn_acc"] or 0.0,
                    )  # fmt: skip
                s.epoch += 1
                s.epoch_step = 0
                if s.epoch < self.epochs and s.epoch % ckpt_every == 0:
                    self.save_checkpoint()
        if not metrics:  # resumed from the final checkpoint: the last evaluation is on disk
            metrics = self.last_evaluation()
        self.save_checkpoint()
        return metrics

    def last_evaluation(self) -> dict:
        lines = [r for r in self.dir.read_metrics() if r["step"] == self.state.step]
        if not lines:
            return self.evaluate(final=True)
        skip = set(self.record_base()) | {"step", "epoch", "wall_time_s", "train_time_s", "lr", "train_loss", "comm"}
        return {k: v for k, v in lines[-1].items() if k not in skip}
