"""The delivered models of a run as plain files, usable without the trainer.

At the end of a run, ``<run>/models/`` receives one ``<name>.pt`` per delivered model (``avg_bn``,
the uniform average after BatchNorm recalibration, and every model the method's ``finalize``
returns: ``greedy_soup``, ``swa_0``, ``twa``...), each a plain ``state_dict`` that loads with
``torch.load(path, weights_only=True)``, and ``meta.json`` (the model config, input shape,
classes, normalisation and which model is the method's final one). :func:`load_model` rebuilds
one::

    from wab.run.saved_models import load_model, normalize
    model = load_model("results/runs/wash-1eb86831f9d4", "final").eval()
    logits = model(normalize("results/runs/wash-1eb86831f9d4", images_uint8))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from wab.errors import UserError
from wab.parts.models import model_factory
from wab.run.records import RunDir, atomic_torch_save, atomic_write_json

MODELS_DIR = "models"


def save_models(
    run_dir: RunDir, states: dict[str, dict[str, Tensor]], meta: dict | None, names: list[str] | None = None
) -> None:
    """Write each state_dict (on CPU, contiguous) into ``<run>/models/``, and with ``meta``
    meta.json listing ``names`` (every delivered model; default: those in ``states``). On several
    processes each writes the models it holds and the main one the list."""
    out = run_dir.path / MODELS_DIR
    for name, state in states.items():
        atomic_torch_save(out / f"{name}.pt", {k: v.detach().cpu().contiguous() for k, v in state.items()})
    if meta is not None:
        atomic_write_json(out / "meta.json", {**meta, "models": sorted(names if names is not None else states)})


def _meta(run: str | os.PathLike) -> dict:
    path = Path(run) / MODELS_DIR / "meta.json"
    if not path.exists():
        raise UserError(f"{path} not found: the run saved no models (not finished, or trainer.save_models=false)")
    return json.loads(path.read_text())


def load_model(run: str | os.PathLike, name: str = "final", device: str | torch.device = "cpu") -> nn.Module:
    """The delivered model ``name`` of a finished run (``final``: the method's final model) as a
    module in eval mode; it takes inputs normalised as in training (:func:`normalize`)."""
    meta = _meta(run)
    name = meta["final_model"] if name == "final" else name
    if name not in meta["models"]:
        raise UserError(f"run {Path(run).name} has no model {name!r}; it has {', '.join(meta['models'])}")
    cfg = dict(meta["model"])
    model = model_factory(cfg.pop("name"), meta["in_channels"], meta["image_size"], meta["num_classes"], **cfg)()
    state = torch.load(Path(run) / MODELS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def normalize(run: str | os.PathLike, images: Tensor) -> Tensor:
    """uint8 images [B, C, H, W] normalised as the run's training data was (x / 255 - mean) / std."""
    meta = _meta(run)
    mean = torch.tensor(meta["mean"], device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std
