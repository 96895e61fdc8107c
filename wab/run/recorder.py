"""A run's records, built by what holds their data: the evaluation lines of ``metrics.jsonl``
(kept in memory and in the checkpoint, never read back from disk), the ``comm`` block (the
analytic ledger and the traffic the collectives measured), the run's clock, the external loggers
and ``final.json``'s record. The files themselves are written through :class:`wab.run.records.RunDir`.
Imports the run's parts; nothing of the command line or the analysis.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch

from wab.core.distributed import LocalComm, merge_traffic
from wab.core.ledger import measured_summary
from wab.method import method_origin
from wab.parts.cost import run_flops, time_to_target
from wab.parts.device import device_name, usable_cores
from wab.run.build import BuiltRun
from wab.run.loggers import RunLoggers
from wab.run.provenance import provenance
from wab.run.records import RunDir
from wab.run.spec import RunSpec

log = logging.getLogger("wab")

METRIC_KEYS = (
    "individual_mean", "individual_min", "individual_max", "ensemble_acc", "ensemble_prob_acc",
    "avg_acc", "avg_bn_acc", "final_acc", "nll", "ece", "disagreement", "distance_to_mean",
)  # fmt: skip
LINE_KEYS = ("step", "epoch", "wall_time_s", "train_time_s", "lr", "train_loss", "comm")  # beside the metrics


class Clock:
    """Wall time and evaluation time over every life of a run (a resume adds to the earlier ones'):
    training time is the wall time without evaluation (AlgoPerf's rule: the method's own
    finalize counts as training)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.wall_before = 0.0
        self.cpu_before = 0.0  # CPU time of earlier lives of the run
        self.eval_before = 0.0  # evaluation time of earlier lives of the run
        self.eval_time = 0.0  # evaluation time in this life
        self.loads: list[float] = []  # the machine's 1-minute load average, at the start and each evaluation

    def sample_load(self) -> None:
        """Note the machine's load now (1-minute load average; nothing where the OS has none)."""
        if hasattr(os, "getloadavg"):
            self.loads.append(os.getloadavg()[0])

    def cpu(self) -> float:
        """CPU seconds of this process (every thread) over every life of the run."""
        return self.cpu_before + time.process_time() - self.cpu0

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def eval_total(self) -> float:
        return self.eval_before + self.eval_time

    def train(self) -> float:
        return self.wall() - self.eval_total()

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall(), "eval_time_s": self.eval_total(), "cpu_time_s": self.cpu(),
                "load_averages": list(self.loads)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wall_before = state["wall_time_s"]
        self.eval_before = float(state.get("eval_time_s", 0.0))
        self.cpu_before = float(state.get("cpu_time_s", 0.0))
        self.loads = list(state.get("load_averages", [])) + self.loads


class Recorder:
    """The records of one run on one process; only the main process writes files."""

    def __init__(self, spec: RunSpec, built: BuiltRun, group: LocalComm, run_dir: RunDir | None) -> None:
        self.spec, self.built, self.group, self.dir = spec, built, group, run_dir
        self.is_main = group.rank == 0
        self.clock = Clock()
        self.lines: list[dict] = []  # every evaluation line so far, as written to metrics.jsonl
        self.process_counts = [group.world]  # every life's, when a resume changed it
        self.loggers = RunLoggers([])  # opened by open() on the process that writes the records
        self.finalizer_costs: dict[str, dict] = {}  # what each finalizer cost (Trainer._finalizers)

    def open(self) -> None:
        """Start the run's clock and, on the main process, its external loggers."""
        self.clock.t0, self.clock.cpu0 = time.perf_counter(), time.process_time()
        self.clock.sample_load()
        if self.is_main:
            self.loggers = RunLoggers(RunLoggers.names(self.spec.cfg), self.dir.path, self.dir.path.name, self.spec.cfg)

    def base(self) -> dict[str, Any]:
        c = self.spec.cfg
        return {"run_id": self.dir.path.name, "method": c["method"]["name"], "seed": c["seed"],
                "dataset": c["data"]["name"], "model": c["model"]["name"],
                "population_size": self.spec.size}  # fmt: skip

    def traffic(self) -> dict:
        """Every process's collective traffic so far, summed (a collective)."""
        if self.group.world == 1:
            return self.group.traffic
        with self.group.counting("control"):
            return merge_traffic(self.group.all_gather_objects(self.group.traffic, "traffic"))

    def comm(self) -> dict:
        """The ``comm`` block of the records: the analytic ledger and, when the run used several
        processes, what went through its collectives (a collective itself: every process calls it)."""
        pop, step = self.built.population, self.built.state.step
        out = {**self.built.ledger.summary(step), "model_elements": pop.num_params, "buffer_elements": pop.num_buffers}
        traffic = self.traffic()
        if traffic:
            out["measured"] = measured_summary(traffic, self.process_counts, pop.size, step, out["bytes_per_step"])
        return out

    def evaluation(self, metrics: dict, train_loss: float) -> None:
        """One evaluation's line (every process calls this: the ``comm`` block is a collective)."""
        s = self.built.state
        comm = self.comm()
        self.clock.sample_load()
        if not self.is_main:
            return
        line = {**self.base(), "step": s.step, "epoch": s.epoch + 1, "wall_time_s": self.clock.wall(),
                "train_time_s": self.clock.train(), "lr": s.lr, "train_loss": train_loss,
                **metrics, "comm": comm}  # fmt: skip
        self.dir.append_metrics(line)
        self.lines.append(json.loads(json.dumps(line, default=str)))  # as the file holds it
        self.loggers.log_epoch(line)

    def last_metrics(self) -> dict | None:
        """The metrics of the evaluation at the current step (a run resumed from its final
        checkpoint), or None."""
        lines = [r for r in self.lines if r["step"] == self.built.state.step]
        if not lines:
            return None
        skip = set(self.base()) | set(LINE_KEYS)
        return {k: v for k, v in lines[-1].items() if k not in skip}

    # ------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """What a resume needs (a collective: the traffic is summed over the processes)."""
        return {**self.clock.state_dict(), "traffic": self.traffic(), "process_counts": self.process_counts,
                "metric_lines": self.lines}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock.load_state_dict(state)
        if self.is_main:  # the run's traffic so far, summed over the processes it had (any number)
            self.group.load_traffic(state.get("traffic") or {})
        self.process_counts = sorted({*state.get("process_counts", []), self.group.world})
        epochs_done = self.built.state.epoch
        if "metric_lines" in state:
            self.lines = list(state["metric_lines"])
        else:  # a checkpoint of an earlier wab: the file's lines up to it
            self.lines = [r for r in self.dir.read_metrics() if r["epoch"] <= epochs_done]
        if self.is_main:  # the file as the checkpoint knows it: lines written after it are dropped
            self.dir.write_metrics(self.lines)

    def fresh_start(self) -> None:
        """No checkpoint to resume from: no evaluation line of an earlier attempt may stay."""
        if self.is_main:
            if self.dir.metrics.exists():
                log.warning("no readable checkpoint: starting over and clearing %s", self.dir.metrics)
            self.dir.write_metrics([])

    # ---------------------------------------------------------------------------------- final
    def cost(self, wall: float) -> dict[str, Any]:
        """Training FLOPs (measured, :mod:`wab.parts.cost`), training and evaluation time, and, with
        ``trainer.target_acc``, the cost of first reaching it."""
        cfg, steps = self.spec.cfg, self.built.state.step
        try:
            flops = run_flops(cfg, steps)
        except Exception as e:  # a model the flop counter cannot run on the meta device: the record is still written
            first = str(e).splitlines()[0][:160] if str(e) else ""
            log.warning("training FLOPs not counted (%s: %s)", type(e).__name__, first)
            flops = {"per_member_step": None, "per_step": None, "train": None}
        out: dict[str, Any] = {"flops_per_member_step": flops["per_member_step"], "flops_per_step": flops["per_step"],
                               "train_flops": flops["train"], "train_time_s": wall - self.clock.eval_total(),
                               "eval_time_s": self.clock.eval_total(), "cpu_time_s": self.clock.cpu(),
                               "load_average": float(np.mean(self.clock.loads)) if self.clock.loads else None,
                               "cores": usable_cores()}  # fmt: skip
        if self.finalizer_costs:
            out["finalizers"] = self.finalizer_costs
        target = cfg["trainer"].get("target_acc")
        if target is not None:
            out["target"] = {"metric": "final_acc", "value": float(target),
                             **time_to_target(self.lines, float(target), flops["per_step"])}  # fmt: skip
        return out

    def final(self, outcome: dict[str, Any], metrics: dict, alone: bool) -> dict[str, Any]:
        """``final.json``'s record: ``outcome`` (status, and error fields) with everything the run
        measured. ``alone``: a distributed run failed on this process, so no collective is made
        (the ``comm`` block and the method's report are left out)."""
        wall = self.clock.wall()
        s, method = self.built.state, self.built.method
        return final_record(
            self.spec.cfg, outcome, self.base(), wall=wall, steps=s.step, epochs=s.epoch, metrics=metrics,
            comm={} if alone else self.comm(), cost=self.cost(wall),
            method_report={} if alone else self.built.population.report_values({**method.report(s), **s.reports}),
            method_source=method_origin(type(method)), members=self.built.members_mode,
        )  # fmt: skip


def final_record(cfg: dict[str, Any], outcome: dict[str, Any], base: dict[str, Any], *, wall: float, steps: int = 0,
                 epochs: int = 0, metrics: dict | None = None, comm: dict | None = None, cost: dict | None = None,
                 method_report: dict | None = None, method_source: dict | None = None,
                 members: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """The record of ``final.json``, key by key in its documented order (docs/records.md); a run
    that failed before it was built has only ``outcome``, ``base`` and the provenance."""
    metrics = metrics or {}
    return {
        "status": outcome["status"],
        **base,
        "config": cfg,
        "wall_time_s": wall,
        "steps": steps,
        "epochs": epochs,
        "metrics": {**dict.fromkeys(METRIC_KEYS), **metrics, "final": metrics.get("final", {})},
        "comm": comm or {},
        "cost": cost or {},
        "method_report": method_report or {},
        "method_source": method_source,
        **{k: v for k, v in outcome.items() if k != "status"},
        **provenance(),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "device_name": device_name(cfg["device"]),
        "members": members or {},
    }
