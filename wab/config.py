"""Composing run configs from the hydra config tree without the command line, and the defaults a
config is compared against (validation, report labels)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from wab import CONFIG_DIR


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved run config (a plain dict) for hydra-style overrides, e.g. ``["method=wash"]``.
    Inside a running hydra app (``wab train -m``), hydra is already set up on the same tree."""
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    return cfg


def method_override(name: str) -> str:
    """``method=<name>`` when the method has a config file, else ``method.name=<name>`` (a plugin)."""
    return f"method={name}" if (CONFIG_DIR / "method" / f"{name}.yaml").exists() else f"method.name={name}"


def group_options(group: str) -> list[str]:
    """The options of a config group (the YAML files in ``configs/<group>/``)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@functools.lru_cache(maxsize=256)
def _defaults(choices: tuple[str, ...]) -> dict[str, Any]:
    return compose_config(list(choices))


def default_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """wab's defaults for the same group choices as ``cfg`` (its dataset, model, optimizer and
    method): what ``cfg`` is compared against to say which settings were changed. Raises
    hydra's error when a choice has no config file."""
    choices = (
        f"data={cfg['data']['name']}",
        f"model={cfg['model']['name']}",
        f"optim={cfg['optim']['name']}",
        method_override(cfg["method"]["name"]),
    )
    return copy.deepcopy(_defaults(choices))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one dict with dotted keys (lists are values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def format_value(v: Any) -> str:
    """A config value as written in an override: true/false, null, [a,b], numbers as Python prints them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list | tuple):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)
