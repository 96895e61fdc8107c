"""Composing run configs from the hydra config tree without the command line, and the defaults a
config is compared against (validation, report labels)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from wab import CONFIG_DIR
from wab.errors import UserError


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved run config (a plain dict) for hydra-style overrides, e.g. ``["method=wash"]``.
    Inside a running hydra app (``wab train -m``), hydra is already set up on the same tree.
    A plugin method is selected like a built-in one, by its name or as ``method=pkg.module:Class``
    (:func:`method_overrides`)."""
    overrides = method_overrides(overrides)
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    return cfg


def method_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with ``method=pkg.module:Class`` replaced by ``method=<its name>`` (the class
    is imported and registered: under its ``@register`` name, else its class name in lower case),
    after every registered plugin method's config node is put in hydra's config store
    (:func:`store_plugin_configs`)."""
    from wab.method import available_methods, get_method, import_target, register

    out = []
    for o in overrides:
        key, sep, values = o.partition("=")
        if key == "method" and sep and ":" in values:  # one value, or a multirun's comma-separated ones
            names = []
            for value in values.split(","):
                if ":" not in value:
                    names.append(value)
                    continue
                cls = import_target(value)
                name = cls.name or cls.__name__.lower()
                if name not in available_methods() or get_method(name) is not cls:
                    try:
                        register(name)(cls)
                    except ValueError as e:  # the name is another class's
                        raise UserError(f"method={value}: {e}") from None
                names.append(name)
            o = f"method={','.join(names)}"
        out.append(o)
    store_plugin_configs()
    return out


def store_plugin_configs() -> None:
    """Every registered method without a file in ``configs/method/`` becomes the option
    ``method=<name>`` of hydra's config group (:func:`wab.method.plugin_config`)."""
    from wab.method import available_methods, get_method, plugin_config

    store = ConfigStore.instance()
    for name in available_methods():
        if not (CONFIG_DIR / "method" / f"{name}.yaml").exists():
            node, is_global = plugin_config(get_method(name))
            store.store(group="method", name=name, node=node, package="_global_" if is_global else "method")


def method_override(name: str) -> str:
    """The override that selects a registered method, built-in or plugin."""
    return f"method={name}"


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
