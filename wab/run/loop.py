"""The training loop every method runs through, and only the loop: steps, hooks, the evaluation
and checkpoint cadence, stop and lease checks. What it runs is built elsewhere (the spec,
:mod:`wab.run.spec`; the components, :mod:`wab.run.build`), and what it keeps is written elsewhere
(:mod:`wab.run.checkpointing`, :mod:`wab.run.recorder`).

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
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wab.core.distributed import LocalComm
from wab.core.step import population_step
from wab.parts.device import to_device
from wab.parts.optim import lr_at
from wab.run.build import BuiltRun, build_run
from wab.run.checkpointing import Checkpointer
from wab.run.lease import Lease, LeaseLost
from wab.run.recorder import Recorder
from wab.run.records import RunDir
from wab.run.saved_models import save_models
from wab.run.spec import RunSpec

log = logging.getLogger("wab")

_STOP = threading.Event()

#: without a terminal (nohup, SLURM) the progress bar is off: a progress line is logged this often
PROGRESS_LINE_EVERY_S = 60.0


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


def _console_loggers() -> list[logging.Logger]:
    """The loggers that print to the terminal: their lines go through tqdm so that they do not
    break a progress bar."""
    return [
        lg for lg in (logging.root, log)
        if any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in lg.handlers)
    ]  # fmt: skip


class _ProgressLines:
    """Progress as log lines, every :data:`PROGRESS_LINE_EVERY_S` seconds, when no terminal shows
    the bar (its lines reach ``train.log`` and a SLURM job's output)."""

    def __init__(self, step: int, total: int) -> None:
        self.total, self.start_step = total, step
        self.start = self.last = time.perf_counter()

    def maybe_log(self, step: int, epoch: int, epochs: int, loss: float, lr: float) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_LINE_EVERY_S:
            return
        self.last = now
        rate = (step - self.start_step) / max(now - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        log.info("step %d/%d (%.0f%%), epoch %d/%d, loss %.3f, lr %.3g, %.2f steps/s, about %.0f min left",
                 step, self.total, 100 * step / self.total, epoch + 1, epochs, loss, lr, rate, eta / 60)  # fmt: skip


class Trainer:
    """Trains one population run: its spec (``cfg``, a resolved config, checked), its components
    built for this process's members of ``group`` (one process group per run, made by the
    caller; this process alone when None), its checkpointer and its recorder. The built
    components are the trainer's attributes (``trainer.population``, ``trainer.method``...)."""

    def __init__(self, cfg: dict[str, Any], run_dir: RunDir | None = None, dry: bool = False,
                 group: LocalComm | None = None) -> None:  # fmt: skip
        """``dry`` builds everything on the meta device from the dataset's shape alone (no image is
        read, no memory allocated): :meth:`check` then runs every check a real start would."""
        self.cfg, self.dir, self.dry = cfg, run_dir, dry
        self.spec = RunSpec.from_config(cfg)
        self.group = group or LocalComm()
        self.is_main = self.group.rank == 0  # the process that writes the run's records
        self.built: BuiltRun = build_run(self.spec, self.group, dry)
        self.recorder = Recorder(self.spec, self.built, self.group, run_dir)
        self.checkpointer = Checkpointer(run_dir, self.built, self.recorder, self.group) if run_dir else None
        self.perms: list[torch.Tensor] | None = None  # this epoch's data order of each member held here
        self.epoch_losses: list[float] = []
        self.lease: Lease | None = None

    def __getattr__(self, name: str) -> Any:  # the built components: trainer.population, trainer.method...
        built = self.__dict__.get("built")
        if built is None or not hasattr(built, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(built, name)

    @property
    def loggers(self):
        return self.recorder.loggers

    def check(self) -> None:
        """What a first step would check beyond the build: the lr schedule and the method's own
        ``setup`` (on a dry trainer, on meta tensors), and each finalizer's check."""
        lr_at(0, self.state.total_steps, self.steps_per_epoch, self.cfg["optim"])
        if "setup" in self.hooks:
            self.method.setup(self.state)
        for fn in self.spec.finalizers:
            if fn.check is not None:
                fn.check(self.state)

    def save_checkpoint(self) -> None:
        self._check_lease()
        with self.group.counting("checkpoint"):
            self.checkpointer.save(self.perms, self.epoch_losses)

    # ------------------------------------------------------------------------------ training
    def train_step(self, k: int) -> float:
        """One optimizer step of every member on batch k of its epoch order; returns the mean loss."""
        s, pop, data, bs = self.state, self.population, self.data.train, self.spec.batch_size
        s.lr = lr_at(s.step, s.total_steps, self.steps_per_epoch, self.cfg["optim"])
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr
        batches = []
        for i in range(len(pop.members)):
            idx = self.perms[i][k * bs : (k + 1) * bs]
            batches.append(self.augmenters[i](data.x[idx], data.y[idx], self.rngs[i]))
        loss = population_step(pop, self.optimizer, batches, True, self.autocast_dtype, self.recipes,
                               float(self.cfg["optim"].get("clip_norm", 0.0)), self.batched) / pop.size  # fmt: skip
        if not np.isfinite(loss):
            raise Diverged(f"non-finite loss {loss} at step {s.step + 1}")
        s.step += 1
        s.epoch_step = k + 1
        if "after_step" in self.hooks:
            self.method.after_step(s)
        return loss

    def evaluate(self, final: bool) -> dict:
        """One evaluation (:class:`~wab.core.evaluate.Evaluator`); the final one also runs the method's
        ``finalize`` and the finalizers, and saves the delivered models (``trainer.save_models``)."""
        finals, recalibrate = {}, set()
        if final:
            if "finalize" in self.hooks:
                log.info("finalizing: %s", self.method.name)
                finals.update(self.method.finalize(self.state))
            if self.method.recalibrate_outputs:
                recalibrate |= set(finals)
            merged = self._finalizers()
            recalibrate |= set(merged)  # a finalizer's model is recalibrated whatever the method's own
            finals.update(merged)
        t_eval = time.perf_counter()  # what follows is evaluation; finalizing counts as training
        states: dict[str, dict] | None = {} if final and self.spec.save_models else None
        with self.group.counting("eval"):
            metrics = self.evaluator.evaluate(
                self.population, finals, recalibrate, progress=self.state.progress, keep=states,
                diagnose=final, lmc_points=self.spec.lmc_points,
            )  # fmt: skip
        if states is not None:  # each process writes the models it holds; the main one their list
            names = ["avg_bn", *finals]
            save_models(self.dir, states, self.model_meta(metrics["final_model"]) if self.is_main else None, names)
        self.population.train()
        self.recorder.clock.eval_time += time.perf_counter() - t_eval
        return metrics

    def _finalizers(self) -> dict:
        """Each finalizer's models, in order; what each cost goes to final.json's ``cost.finalizers``
        (by the names of the models it made, or its own when it made none): the matrix-product and
        convolution FLOPs it ran on every process together (torch's FlopCounterMode) and its time."""
        finals, costs = {}, {}
        for fn in self.spec.finalizers:
            log.info("finalizer %s", fn.name)
            start = time.perf_counter()
            with FlopCounterMode(display=False) as counter:
                models = fn(self.state)
            mine = (int(counter.get_total_flops()), time.perf_counter() - start)
            every = self.group.all_gather_objects([mine], "finalizer_cost")
            costs[", ".join(models) or fn.name] = {"flops": sum(part[0][0] for part in every),
                                                  "time_s": round(max(part[0][1] for part in every), 3)}  # fmt: skip
            finals.update(models)
        self.recorder.finalizer_costs = costs
        return finals

    def model_meta(self, final_model: str) -> dict:
        """What :func:`wab.run.saved_models.load_model` needs to rebuild a delivered model."""
        d = self.data
        return {"final_model": final_model, "model": self.cfg["model"], "in_channels": d.in_channels,
                "image_size": d.image_size, "num_classes": d.num_classes, "mean": d.mean, "std": d.std}  # fmt: skip

    def _log_start(self) -> None:
        s, pop = self.state, self.population
        layout = (f"channels_last={pop.channels_last}, bf16 autocast={self.autocast_dtype is not None}, "
                  f"members {self.members_mode['mode']}")  # fmt: skip
        log.info(
            "device %s (%s); %d members x %s parameters (+%s buffer elements); %d steps per epoch x %d epochs, "
            "batch %d; starting at step %d of %d",
            self.device, layout, pop.size, f"{pop.num_params:,}", f"{pop.num_buffers:,}", self.steps_per_epoch,
            self.spec.epochs, self.spec.batch_size, s.step, s.total_steps,
        )  # fmt: skip

    def _check_lease(self) -> None:
        if self.lease is not None and (self.lease.lost or not self.lease.held()):
            raise LeaseLost(f"run {self.dir.path.name} was taken over by another process; stopping without writing")

    def _start(self) -> None:
        """The method's ``setup``, then the newest readable checkpoint, if any, restored."""
        if "setup" in self.hooks:
            self.method.setup(self.state)
        ckpt = self.checkpointer.read()
        if ckpt is not None:
            self.perms, self.epoch_losses = self.checkpointer.load(ckpt)
            del ckpt  # the rows are copied into the members and the optimizer: nothing keeps it alive
        else:
            self.recorder.fresh_start()

    def _new_epoch(self) -> None:
        """Each member's data order for the epoch (one shared order when the method asks for it)."""
        n = len(self.data.train)
        if self.order_rng is not None:
            self.perms = [to_device(self.order_rng.permutation(n), self.device)] * len(self.rngs)
        else:
            self.perms = [to_device(r.permutation(n), self.device) for r in self.rngs]
        self.epoch_losses = []

    def _stop_if_asked(self) -> None:
        """Honour a stop (checkpoint, then :class:`Interrupted`) or a lost lease, on every process."""
        stop, lost = self.group.any_of(_STOP.is_set(), self.lease is not None and self.lease.lost)
        if lost:
            raise LeaseLost(f"run {self.dir.path.name} was taken over by another process; stopping")
        if stop:
            _STOP.clear()
            self.save_checkpoint()
            log.info("stop requested: checkpoint saved at step %d (epoch %d)", self.state.step, self.state.epoch)
            raise Interrupted(f"stopped at step {self.state.step} after saving a checkpoint")

    def _end_epoch(self) -> dict:
        """``after_epoch``, the evaluation when it is due (the last one with the final models) and
        the epoch's checkpoint; returns the evaluation's metrics (empty when none was due)."""
        s, spec = self.state, self.spec
        last = s.epoch == spec.epochs - 1
        if last:  # the final evaluation can be long: an interruption resumes right here
            self.save_checkpoint()
        if "after_epoch" in self.hooks:
            self.method.after_epoch(s)
        metrics: dict = {}
        if last or (spec.eval_every and (s.epoch + 1) % spec.eval_every == 0):
            metrics = self.evaluate(final=last)
            self.recorder.evaluation(metrics, float(np.mean(self.epoch_losses)))
            log.info(
                "epoch %d/%d  individual %.4f  ensemble %.4f  avg %.4f  avg_bn %.4f",
                s.epoch + 1, spec.epochs, metrics["individual_mean"], metrics["ensemble_acc"],
                metrics["avg_acc"] or 0.0, metrics["avg_bn_acc"] or 0.0,
            )  # fmt: skip
        s.epoch += 1
        s.epoch_step = 0
        if s.epoch < spec.epochs and s.epoch % spec.checkpoint_every == 0:
            self.save_checkpoint()
        return metrics

    def fit(self, lease: Lease | None = None) -> dict:
        """Train to the end (resuming from a checkpoint if there is one); returns final metrics.
        With ``lease``, training stops (:class:`LeaseLost`) as soon as another process takes the run."""
        self.lease = lease
        self.dir.path.mkdir(parents=True, exist_ok=True)
        self.recorder.open()
        self._start()
        self._log_start()
        self.population.train()
        s, metrics = self.state, {}
        bar = tqdm(total=s.total_steps, initial=s.step, desc=self.dir.path.name, dynamic_ncols=True, leave=False,
                   disable=None if self.state.progress else True)  # fmt: skip
        lines = _ProgressLines(s.step, s.total_steps) if bar.disable and self.state.progress else None
        with bar, logging_redirect_tqdm(loggers=_console_loggers()):
            while s.epoch < self.spec.epochs:
                if s.epoch_step == 0:
                    self._new_epoch()
                for k in range(s.epoch_step, self.steps_per_epoch):
                    self.epoch_losses.append(self.train_step(k))
                    bar.update(1)
                    if s.step % 10 == 0:
                        bar.set_postfix(epoch=s.epoch, loss=f"{self.epoch_losses[-1]:.3f}", lr=f"{s.lr:.3g}")
                    if lines is not None:
                        lines.maybe_log(s.step, s.epoch, self.spec.epochs, self.epoch_losses[-1], s.lr)
                    self._stop_if_asked()
                metrics = self._end_epoch() or metrics
        if not metrics:  # resumed from the final checkpoint: its last evaluation is in the records
            metrics = self.recorder.last_metrics() or self.evaluate(final=True)
        self.save_checkpoint()
        return metrics
