"""Composing run configs from the hydra config tree without the command line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wab import CONFIG_DIR


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved run config (a plain dict) for hydra-style overrides, e.g. ``["method=wash"]``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    return cfg


def method_override(name: str) -> str:
    """``method=<name>`` when the method has a config file, else ``method.name=<name>`` (a plugin)."""
    return f"method={name}" if (CONFIG_DIR / "method" / f"{name}.yaml").exists() else f"method.name={name}"
