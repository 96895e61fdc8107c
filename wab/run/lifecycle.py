"""Run one config end to end: its directory, its lease, its records, and its status.

``run`` never raises for a failing config: the error and traceback go to the run's own
``final.json`` with status ``failed`` (no ``done`` marker, so a relaunch retries it), and a
diverged run is recorded with status ``diverged`` (terminal, ``done`` written). It raises
:class:`~wab.run.lease.RunLeased` when another live process trains the run (nothing is written),
and lets a stop (``Interrupted``, after its checkpoint) or a ``KeyboardInterrupt`` through.
Check a config with :func:`wab.run.validate.validate` first: a bad value then leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from wab.core.distributed import LocalComm, launch_problems
from wab.core.distributed import init as init_distributed
from wab.parts.device import resolve_compute, using_threads
from wab.run.lease import Lease, LeaseLost, RunLeased
from wab.run.loop import Diverged, Interrupted, Trainer
from wab.run.provenance import provenance
from wab.run.recorder import final_record
from wab.run.records import RunDir, atomic_write_json, atomic_write_text, run_id
from wab.run.validate import InvalidConfig

log = logging.getLogger("wab")

def plain_config(cfg: dict | DictConfig) -> dict[str, Any]:
    """A plain dict with the device and CPU threads explicit (``auto`` resolved for this process,
    :func:`wab.parts.device.resolve_compute`): the config a run records and is named by."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return resolve_compute(cfg)  # type: ignore[arg-type]


def run_dir_for(cfg: dict | DictConfig) -> RunDir:
    cfg = plain_config(cfg)
    return RunDir(Path(cfg["out_dir"]) / run_id(cfg))


def process_group(cfg: dict[str, Any]) -> LocalComm:
    """This process's communicator: joins the process group of a distributed run. A launch
    that cannot work (torchrun without the distributed backend, more processes than members)
    is refused first, with nothing made."""
    pcfg = cfg["population"]
    backend = pcfg.get("backend", "local")
    if problems := launch_problems(backend, int(pcfg["size"])):
        raise InvalidConfig(problems)
    if backend == "distributed":
        return init_distributed(str(cfg.get("device", "auto")), float(pcfg.get("timeout_min", 5)))
    return LocalComm()


def run(cfg: dict | DictConfig, group: LocalComm | None = None) -> dict:
    """Train the run described by ``cfg`` (resuming it if it has a checkpoint) and return its
    final record; a run already done is returned as it is. In a distributed run every process
    calls this; the main process (rank 0) holds the lease and writes the records. ``group``:
    this process's communicator when the caller has made it (:func:`process_group`, once per run)."""
    cfg = plain_config(cfg)
    rd = run_dir_for(cfg)
    group = group or process_group(cfg)
    names = group.all_gather_objects(rd.path.name)
    if len(set(names)) > 1:  # e.g. trainer.threads=auto resolved differently: nothing made yet
        raise InvalidConfig([
            f"the processes of this run resolve different run ids ({', '.join(sorted(set(names)))}): their device "
            f"or CPU thread count differ; set device and trainer.threads (now {cfg['trainer']['threads']}) explicitly"
        ])  # fmt: skip
    main = group.rank == 0
    decision, lease, leased = "train", None, None
    if main:
        if _finished(rd):
            decision = "done"
        else:
            rd.path.mkdir(parents=True, exist_ok=True)
            try:
                lease = Lease(rd.path).acquire()
            except RunLeased as e:
                decision, leased = "leased", e
            else:
                if _finished(rd):  # finished by the process whose lease we just followed
                    decision = "done"
    decision = group.all_gather_objects(decision)[0]  # every process follows the main one
    try:
        if decision == "done":
            return rd.read_final() or {"status": "done"}
        if decision == "leased":
            if leased is not None:
                raise leased
            return {"status": "leased"}
        if main and not rd.config.exists():
            atomic_write_text(rd.config, yaml.safe_dump(cfg, sort_keys=False))
        with _run_log(rd) if main else contextlib.nullcontext():
            if main and rd.done.exists():  # finished, but its record is unreadable: write it again
                log.warning("%s: %s; writing it again from the run's last checkpoint", rd.path.name, rd.final_problem())
                rd.done.unlink()
            with using_threads(cfg["trainer"]["threads"]):
                return _train(cfg, rd, lease, group)
    finally:
        if lease is not None:
            lease.release()
            if rd.done.exists():  # a finished run keeps no empty .lease/
                lease.remove_empty_dir()


def _finished(rd: RunDir) -> bool:
    return rd.done.exists() and rd.final_problem() in (None, "no final.json")


@contextlib.contextmanager
def _run_log(rd: RunDir) -> Iterator[None]:
    """The ``wab`` logger also writes to the run's train.log while it trains."""
    handler = logging.FileHandler(rd.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def _write_failed_alone(rd: RunDir, rank: int, world: int, record: dict[str, Any], main: bool, started: float) -> dict:
    """Write the record of a distributed run that failed on this process (made without a
    collective: the other processes may be inside one, or past it, and would never answer). This
    process then exits (non-zero), which ends the others: torchrun stops the rest of its workers
    (before the main one could write a word: so any failing process writes the record), srun
    (``--kill-on-bad-exit``) the rest of the job's tasks, and a collective waiting on a closed
    peer raises. A process other than the main one leaves its error for the main one's record,
    and a record written in this life (``started``) alone: the first error is the cause, the
    others its echo. No ``done`` is written: the run resumes from its last checkpoint."""
    if not main:
        atomic_write_text(rd.path / f"error.rank{rank}.txt", record["traceback"])
    errors = sorted(rd.path.glob("error.rank*.txt")) if main else []
    others = {p.stem.removeprefix("error."): p.read_text().strip().splitlines()[-1] for p in errors}
    record["error"] = f"on rank {rank} of {world}: {record['error']}" + "".join(
        f"; on {r}: {line}" for r, line in others.items()
    )
    if main or not (rd.final.exists() and rd.final.stat().st_mtime >= started):
        atomic_write_json(rd.final, record)
    for p in errors:
        p.unlink(missing_ok=True)
    return record


def _train(cfg: dict[str, Any], rd: RunDir, lease: Lease | None, group: LocalComm) -> dict:
    t0 = time.perf_counter()
    main = group.rank == 0
    trainer: Trainer | None = None
    outcome: dict[str, Any] = {"status": "done"}
    started = time.time()
    if main:  # the errors other processes left in an earlier life of a distributed run
        for p in rd.path.glob("error.rank*.txt"):
            p.unlink(missing_ok=True)
    group.load_traffic({})  # the run's traffic counts from here: the launch's decisions above are not the run's
    try:
        prov = provenance()
        log.info(
            "run %s starts (wab %s, commit %s%s, torch %s, %s)", rd.path.name, prov["wab_version"],
            (prov["git_commit"] or "unknown")[:12], " with uncommitted changes" if prov["git_dirty"] else "",
            torch.__version__, platform.node(),
        )  # fmt: skip
        trainer = Trainer(cfg, rd, group=group)
        metrics = trainer.fit(lease)
    except (Interrupted, KeyboardInterrupt) as e:
        log.info("run %s interrupted (%s); it resumes from its checkpoint when started again (the same wab train "
                 "command, or wab sweep for a sweep's run)", rd.path.name, type(e).__name__)  # fmt: skip
        if trainer is not None:  # flush what the external loggers hold; the next life opens them again
            trainer.loggers.close()
        raise
    except LeaseLost as e:
        log.error("%s", e)
        if trainer is not None:
            trainer.loggers.close()
        return {"status": "lost", "error": str(e)}
    except Diverged as e:
        log.warning("diverged: %s", e)
        outcome, metrics = {"status": "diverged", "error": str(e)}, {}
    except Exception as e:  # a crash is recorded in this run's directory and nowhere else
        log.exception("run failed")
        outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        metrics = {}
    alone = outcome["status"] == "failed" and trainer is not None and group.world > 1  # no collective now
    if trainer is not None:
        record = trainer.recorder.final(outcome, metrics, alone)
    else:  # failed before it was built
        base = {"run_id": rd.path.name, "method": cfg["method"]["name"], "seed": cfg["seed"]}
        record = final_record(cfg, outcome, base, wall=time.perf_counter() - t0)
    if alone:
        trainer.loggers.close()
        return _write_failed_alone(rd, group.rank, group.world, record, main, started)
    if not main:
        return record
    atomic_write_json(rd.final, record)
    if trainer is not None and trainer.loggers:
        trainer.loggers.log_final(record)
        trainer.loggers.close()
    if record["status"] in ("done", "diverged"):
        atomic_write_text(rd.done, "")
    _log_end(rd, record)
    return record


def _log_end(rd: RunDir, record: dict[str, Any]) -> None:
    m = record["metrics"]
    result = f"final model {m['final_model']} {m['final_acc']:.4f}" if m.get("final_acc") is not None else ""
    log.info(
        "run %s ended: %s after %d steps, %.1f s; %s",
        rd.path.name, record["status"], record["steps"], record["wall_time_s"], result or record.get("error", ""),
    )  # fmt: skip
    evaluation = (record.get("cost") or {}).get("eval_time_s")
    if evaluation and record["wall_time_s"] and evaluation > 0.5 * record["wall_time_s"]:
        log.info("evaluation took %.0f%% of the run: trainer.eval_every=0 evaluates at the end alone, "
                 "trainer.lmc_points=0 leaves out the final linear-mode-connectivity paths (docs/training.md)",
                 100 * evaluation / record["wall_time_s"])  # fmt: skip
