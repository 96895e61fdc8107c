"""External experiment loggers (``trainer.loggers``): TensorBoard, Weights & Biases and MLflow.

Each receives the same numbers as ``metrics.jsonl`` (every scalar of an evaluation line, at its
step) and the final record (its scalars, and the whole ``final.json`` as a text or artifact).
The run's own records stay the source of truth; a logger is a view for the tools researchers
already use. Only the main process of a run logs. Install them with ``pip install -e '.[loggers]'``.

- ``tensorboard``: event files in ``<run>/tensorboard/``.
- ``wandb``: offline unless ``WANDB_MODE`` says otherwise (no network, no login prompt in a job);
  files in ``<run>/wandb/`` (``wandb sync`` uploads them later).
- ``mlflow``: the tracking URI in ``MLFLOW_TRACKING_URI``, else a local file store
  ``<out_dir>/mlruns`` (MLflow 3 wants ``MLFLOW_ALLOW_FILE_STORE=true`` for it, which wab sets);
  experiment ``wab``, run name = run id.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from wab.run.config import flatten

LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module it needs


def logger_problems(names: list[str]) -> list[str]:
    """Unknown logger names and loggers whose package is not installed (checked before a run)."""
    from wab.errors import did_you_mean

    problems = []
    for name in names:
        if name not in LOGGERS:
            problems.append(
                f"trainer.loggers: unknown logger {name!r}{did_you_mean(str(name), LOGGERS)}; "
                f"known: {', '.join(LOGGERS)}"
            )
        elif importlib.util.find_spec(LOGGERS[name]) is None:
            problems.append(
                f"trainer.loggers: {name} is not installed; install the loggers with pip install -e '.[loggers]'"
            )
    return problems


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """Every finite number of a record, by its dotted key (lists and strings left out)."""
    out = {}
    for k, v in flatten(record).items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (float("inf"), float("-inf")):
            continue
        out[prefix + k] = float(v)
    return out


_IDENTITY = ("run_id", "method", "seed", "dataset", "model", "population_size", "step", "epoch")


class _TensorBoard:
    def __init__(self, run_dir: Path, run_id: str, cfg: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(cfg, indent=1) + "\n```")

    def epoch(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k.replace(".", "/"), v, step)

    def final(self, step: int, values: dict[str, float], record: dict) -> None:
        self.epoch(step, values)
        self.writer.add_text("final.json", "```\n" + json.dumps(record, indent=1, default=str) + "\n```", step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, run_id: str, cfg: dict) -> None:
        import wandb

        self.wandb = wandb
        os.environ.setdefault("WANDB_SILENT", "true")  # wab's log says where things are; wandb's banner would not
        mode = os.environ.get("WANDB_MODE", "offline")
        project = os.environ.get("WANDB_PROJECT", "wab")
        self.run = wandb.init(
            project=project, name=run_id, dir=str(run_dir), mode=mode, config=cfg, reinit="create_new"
        )

    def epoch(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def final(self, step: int, values: dict[str, float], record: dict) -> None:
        self.run.summary.update(values)
        self.run.summary["final_json"] = json.dumps(record, default=str)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, run_dir: Path, run_id: str, cfg: dict) -> None:
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.parent / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its file store only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("wab")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("wab")
        self.run_id = self.client.create_run(exp_id, run_name=run_id).info.run_id
        for k, v in list(flatten(cfg).items())[:500]:
            self.client.log_param(self.run_id, k, str(v)[:500])

    def epoch(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * time.time())
        metrics = [Metric(k.replace("[", "_").replace("]", "_"), v, stamp, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def final(self, step: int, values: dict[str, float], record: dict) -> None:
        self.epoch(step, values)
        self.client.log_dict(self.run_id, json.loads(json.dumps(record, default=str)), "final.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_CLASSES = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


def _drop(name: str, error: Exception) -> None:
    reason = str(error).splitlines()[0][:160] if str(error) else ""
    logging.getLogger("wab").warning(
        "logger %s stopped (%s: %s); the run goes on without it", name, type(error).__name__, reason
    )


class RunLoggers:
    """The loggers of one run (none on a process that does not write the run's records). A
    logger that fails (a full disk, an unreachable tracking server) is dropped with a warning in
    the run's log: it never stops the run, whose own records stay complete."""

    def __init__(
        self, names: list[str], run_dir: Path | None = None, run_id: str = "", cfg: dict | None = None
    ) -> None:
        self.loggers = []
        for n in names if run_dir else []:
            try:
                self.loggers.append(_CLASSES[n](Path(run_dir), run_id, cfg or {}))
            except Exception as e:
                _drop(n, e)

    def _each(self, call: str, *args) -> None:
        for lg in list(self.loggers):
            try:
                getattr(lg, call)(*args)
            except Exception as e:
                self.loggers.remove(lg)
                _drop(type(lg).__name__.strip("_").lower(), e)

    def log_epoch(self, line: dict) -> None:
        """One evaluation line of metrics.jsonl, at its step."""
        self._each("epoch", int(line["step"]), scalars({k: v for k, v in line.items() if k not in _IDENTITY}))

    def log_final(self, record: dict) -> None:
        """The run's final record: its scalars under ``final.``, and the record itself."""
        body = {k: v for k, v in record.items() if k not in (*_IDENTITY, "config", "traceback")}
        self._each("final", int(record.get("steps") or 0), scalars(body, "final."), record)

    def close(self) -> None:
        self._each("close")
        self.loggers = []

    def __bool__(self) -> bool:
        return bool(self.loggers)

    @staticmethod
    def names(cfg: dict[str, Any]) -> list[str]:
        return [str(n) for n in cfg["trainer"].get("loggers") or []]
