"""Run directories and their records, written atomically.

A run directory is named by a hash of its resolved config, never by launch order, and holds
``config.yaml``, ``metrics.jsonl``, ``final.json``, ``checkpoint.pt``, ``train.log`` and a
``done`` marker written last. The state of a run is read from the filesystem alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from wab.parts.device import compute_identity
from wab.parts.files import atomic_write

# Config keys that do not change a run's results, so they stay out of its identity.
NOT_HASHED = (
    ("out_dir",),
    ("device",),  # its type enters as "compute" (wab.parts.device.compute_identity), with the CPU threads
    ("data", "root"),
    ("data", "download"),
    ("population", "backend"),
    ("population", "timeout_min"),
    ("trainer", "progress"),
    ("trainer", "save_models"),
    ("trainer", "lmc_points"),
    ("trainer", "checkpoint_every"),
    ("trainer", "eval_batch_size"),
    ("trainer", "loggers"),
    ("trainer", "target_acc"),
    ("trainer", "threads"),
    ("trainer", "members"),  # enters as "compute" when the members are batched (resolve_members)
)

# Keys that change how results round (another kernel), hashed only when they differ from their
# default, so that runs at the defaults keep their ids.
HASHED_UNLESS_DEFAULT = {
    ("optim", "fused"): True,
    ("optim", "clip_norm"): 0.0,  # gradient clipping, added after runs without it had their ids
    ("trainer", "compile"): False,
    ("trainer", "bn_recal"): "clean",  # recalibration on augmented batches, added after runs on clean images
}


def hashed_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of a resolved config (a plain dict) without the keys in NOT_HASHED: what makes a run.
    Where the device or thread count changes how results round, ``compute`` says which."""
    compute = compute_identity(cfg)
    cfg = json.loads(json.dumps(cfg, default=str))
    _keep_requested_finalizers(cfg)
    defaults = [path for path, value in HASHED_UNLESS_DEFAULT.items() if _get(cfg, path) in (value, None)]
    for path in (*NOT_HASHED, *defaults):
        node = cfg
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return {**cfg, "compute": compute} if compute else cfg


def _keep_requested_finalizers(cfg: dict[str, Any]) -> None:
    """Only the settings of the finalizers a run requests (``population.finalizers``) make it,
    with those of the finalizer a requested one combines with (DARE's ``combine``): the others'
    (``finalizer.<name>``) leave its id, so a run without them keeps its id when their settings
    or defaults change."""
    settings = cfg.pop("finalizer", None) or {}
    requested = set((cfg.get("population") or {}).get("finalizers") or [])
    requested |= {(settings.get(n) or {}).get("combine") for n in requested} - {None}
    node = {k: v for k, v in settings.items() if k in requested}
    if node:
        cfg["finalizer"] = node


def _get(cfg: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = cfg
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def config_hash(cfg: dict[str, Any]) -> str:
    """A stable hash of a resolved config, ignoring the keys in NOT_HASHED."""
    blob = json.dumps(hashed_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def setting_id(cfg: dict[str, Any]) -> str:
    """The hash of a config without its seed: the runs of one setting (one table row) share it."""
    return config_hash({k: v for k, v in cfg.items() if k != "seed"})


def run_id(cfg: dict[str, Any]) -> str:
    return f"{cfg['method']['name']}-{config_hash(cfg)}"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(path: Path, obj: Any, keep: Path | None = None) -> None:
    """Save ``obj`` to ``path`` atomically; with ``keep``, the file it replaces is kept there
    (renamed only once the new one is complete), to fall back to if the new one is ever damaged."""
    if keep is None:
        atomic_write(path, lambda fh: torch.save(obj, fh))
        return
    atomic_write(path, lambda fh: torch.save(obj, fh), before_replace=lambda: path.exists() and os.replace(path, keep))


class RunDir:
    """The files of one run."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    final = property(lambda self: self.path / "final.json")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint = property(lambda self: self.path / "checkpoint.prev.pt")
    log = property(lambda self: self.path / "train.log")
    done = property(lambda self: self.path / "done")

    def read_final(self) -> dict | None:
        """The run's record, or None when there is none or it cannot be read (:meth:`final_problem`)."""
        return self._load_final()[0]

    def final_problem(self) -> str | None:
        """Why final.json cannot be read as a record (missing, not UTF-8, not JSON, not an object), or None."""
        return self._load_final()[1]

    def _load_final(self) -> tuple[dict | None, str | None]:
        """(the record, None) or (None, why it cannot be read), from one read of final.json."""
        try:
            record = json.loads(self.final.read_text())
        except FileNotFoundError:
            return None, "no final.json"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return None, f"unreadable final.json ({type(e).__name__}: {str(e)[:80]})"
        if not isinstance(record, dict) or "status" not in record:
            return None, f"final.json is a {type(record).__name__} without a status, not a run record"
        return record, None

    def state(self) -> str:
        """done | diverged | failed | corrupt | incomplete | not launched, from the files alone
        (a live lease or a queued job are :mod:`wab.launch.status`'s to add)."""
        if not self.path.exists():
            return "not launched"
        final, problem = self._load_final()
        if problem and problem != "no final.json":
            return "corrupt"
        if self.done.exists():
            return "diverged" if final and final.get("status") == "diverged" else "done"
        if final and final.get("status") == "failed":
            return "failed"
        return "incomplete"

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        """The evaluation lines; a line cut short by a crash, or unreadable, is skipped."""
        try:
            text = self.metrics.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and "step" in record:
                out.append(record)
        return out

    def write_metrics(self, lines: list[dict]) -> None:
        """``metrics.jsonl`` made of exactly ``lines`` (a resume's, from its checkpoint)."""
        atomic_write_text(self.metrics, "".join(json.dumps(r, default=str) + "\n" for r in lines))


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run directory (one holding config.yaml) below root, in a stable order; symbolic
    links to directories are followed (a folder of links to runs gathered from elsewhere), each
    real directory once. Hidden directories (``.submitit``...) are not searched."""
    found, seen = [], set()
    for here, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # reached again through a link: searched already
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "config.yaml" in files:
            found.append(Path(here))
    return sorted(found)
