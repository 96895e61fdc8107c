"""Run one config end to end: its directory, its records, and its status.

``run`` never raises for a failing config: the error and traceback go to the run's own
``final.json`` with status ``failed`` (no ``done`` marker, so a relaunch retries it), and a
diverged run is recorded with status ``diverged`` (terminal, ``done`` written). Only a
preemption (``Interrupted``) propagates, after its checkpoint is saved.
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

import wab
from wab.records import RunDir, atomic_write_json, atomic_write_text, run_id
from wab.trainer import Diverged, Interrupted, Trainer

log = logging.getLogger("wab")

METRIC_KEYS = (
    "individual_mean", "individual_min", "individual_max", "ensemble_acc", "ensemble_prob_acc",
    "avg_acc", "avg_bn_acc", "final_acc", "nll", "ece", "disagreement", "distance_to_mean",
)  # fmt: skip


def plain_config(cfg: dict | DictConfig) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return cfg


def run_dir_for(cfg: dict | DictConfig) -> RunDir:
    cfg = plain_config(cfg)
    return RunDir(Path(cfg["out_dir"]) / run_id(cfg))


def run(cfg: dict | DictConfig) -> dict:
    """Train the run described by ``cfg`` (resuming it if it has a checkpoint) and return its
    final record; a run already done is returned as it is."""
    cfg = plain_config(cfg)
    rd = run_dir_for(cfg)
    if rd.done.exists():
        return rd.read_final() or {"status": "done"}
    rd.path.mkdir(parents=True, exist_ok=True)
    if not rd.config.exists():
        atomic_write_text(rd.config, yaml.safe_dump(cfg, sort_keys=False))
    handler = logging.FileHandler(rd.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    t0 = time.perf_counter()
    trainer: Trainer | None = None
    record: dict[str, Any] = {"status": "done"}
    try:
        log.info(
            "run %s starts (wab %s, torch %s, %s)", rd.path.name, wab.__version__, torch.__version__, platform.node()
        )
        trainer = Trainer(cfg, rd)
        metrics = trainer.fit()
    except Interrupted:
        raise
    except Diverged as e:
        log.warning("diverged: %s", e)
        record = {"status": "diverged", "error": str(e)}
        metrics = {}
    except Exception as e:  # a crash is recorded in this run's directory and nowhere else
        log.exception("run failed")
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        metrics = {}
    finally:
        log.removeHandler(handler)
        handler.close()
    base = (
        trainer.record_base()
        if trainer
        else {"run_id": rd.path.name, "method": cfg["method"]["name"], "seed": cfg["seed"]}
    )
    record = {
        "status": record["status"],
        **base,
        "config": cfg,
        "wall_time_s": trainer.wall_time() if trainer else time.perf_counter() - t0,
        "steps": trainer.state.step if trainer else 0,
        "epochs": trainer.state.epoch if trainer else 0,
        "metrics": {**dict.fromkeys(METRIC_KEYS), **metrics, "final": metrics.get("final", {})},
        "comm": trainer.comm() if trainer else {},
        **{k: v for k, v in record.items() if k != "status"},
        "wab_version": wab.__version__,
        "torch_version": torch.__version__,
    }
    atomic_write_json(rd.final, record)
    if record["status"] in ("done", "diverged"):
        atomic_write_text(rd.done, "")
    return record
