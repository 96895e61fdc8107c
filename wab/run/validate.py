"""Checking a run config before anything runs: every key known (a schema built from configs/),
every value of the right type, the method, dataset, model, optimizer and schedule known, the data
present, the held-out split there when the method needs one, the device available, and the whole
run built once on the meta device (no image read, no memory allocated) so that the method's own
checks run too. ``wab train`` checks before it creates a run directory; ``wab sweep`` checks every
point of the grid and submits nothing when one is bad.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException

from wab.errors import UserError, did_you_mean, directory_problem
from wab.method import available_methods
from wab.run.config import compose_config, default_config, flatten, format_value, group_options

GROUPS = ("data", "model", "optim", "method")
FRACTIONAL_OK = ("optim.warmup_epochs",)  # integer defaults that also take fractions


class InvalidConfig(UserError):
    """A config with one or more problems, each a line that names the bad value and what is allowed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# ------------------------------------------------------------------------------------ composing
def compose_checked(overrides: Sequence[str]) -> dict[str, Any]:
    """:func:`compose_config`, with hydra's errors turned into one clear line each
    (:class:`InvalidConfig`): an unknown key or option gets a "did you mean"."""
    try:
        return compose_config(overrides)
    except OverrideParseException as e:
        raise InvalidConfig([" ".join(str(e).splitlines()[:2])]) from None
    except MissingConfigException as e:
        m = re.search(r"Could not find '([^/']+)/([^']*)'", str(e))
        if not m:
            raise InvalidConfig([str(e).splitlines()[0]]) from None
        group, value = m.groups()
        known = available_methods() if group == "method" else group_options(group)  # plugins included
        raise InvalidConfig(
            [f"unknown {group} {value!r}{did_you_mean(value, known)}; known: {', '.join(known)}"]
        ) from None
    except ConfigCompositionException as e:
        m = re.search(r"Could not override '([^']+)'", str(e))
        if not m:
            raise InvalidConfig([str(e).splitlines()[0]]) from None
        key = m.group(1)
        choices = [o for o in overrides if o.split("=", 1)[0] in GROUPS or o.split("=", 1)[0] == "trainer"]
        try:
            known = flatten(compose_config(choices))
        except HydraException:
            known = flatten(compose_config())
        raise InvalidConfig([f"unknown key {key}{did_you_mean(key, known)}"]) from None
    except HydraException as e:
        raise InvalidConfig([str(e).splitlines()[0]]) from None


# ------------------------------------------------------------------------------------- schema
def _kind(default: Any, key: str) -> tuple[str, Any] | None:
    """(what is allowed, a predicate) for values replacing ``default``; None: anything."""
    if default is None:
        return None
    if key == "population.member_augment":
        return "a list of overrides or a named population", lambda v: isinstance(v, list | str)
    if key == "trainer.threads":
        return "auto or a number of threads >= 1", lambda v: v == "auto" or (type(v) is int and v >= 1)
    if default == "auto" and key != "device":
        return "auto, true or false", lambda v: v == "auto" or isinstance(v, bool)
    if isinstance(default, bool):
        return "true or false", lambda v: isinstance(v, bool)
    if isinstance(default, int) and key not in FRACTIONAL_OK:
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, int | float):
        return "a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    if isinstance(default, str):
        return "a string", lambda v: isinstance(v, str)
    if isinstance(default, list):
        return "a list", lambda v: isinstance(v, list)
    if isinstance(default, dict):
        return "a mapping", lambda v: isinstance(v, dict)
    return None


def schema_problems(cfg: dict[str, Any]) -> list[str]:
    """Unknown group options, unknown or missing keys and values of the wrong type."""
    from wab.method import method_of

    problems = []
    if isinstance(cfg.get("method"), dict) and cfg["method"].get("_target_"):
        try:  # a plugin named by its class: registered in this process once imported
            method_of(cfg)
        except UserError as e:
            return [str(e)]
    for group in GROUPS:
        node = cfg.get(group)
        name = node.get("name") if isinstance(node, dict) else None
        known = available_methods() if group == "method" else group_options(group)
        if name not in known:
            problems.append(f"unknown {group} {name!r}{did_you_mean(str(name), known)}; known: {', '.join(known)}")
    if problems:
        return problems
    schema = flatten(default_config(cfg))  # every method has a config node, a plugin's included
    given = flatten(cfg)
    for key, value in given.items():
        if key not in schema:
            problems.append(f"unknown key {key}{did_you_mean(key, schema)}")
            continue
        kind = None if key.startswith("finalizer.") else _kind(schema[key], key)  # each finalizer checks its own
        if kind and not kind[1](value):
            problems.append(f"{key}={format_value(value)} must be {kind[0]} (default {format_value(schema[key])})")
    missing = [k for k in schema if k not in given]
    method_missing = [k.removeprefix("method.") for k in missing if k.startswith("method.")]
    if method_missing:
        name = cfg["method"]["name"]
        problems.append(
            f"method {name!r} lacks its settings {', '.join(method_missing)}: method.name={name} keeps another "
            f"method's config; select it with method={name}"
        )
    problems += [f"missing key {k} (default {format_value(schema[k])})" for k in missing if not k.startswith("method.")]
    return problems


# --------------------------------------------------------------------------------------- all
def device_problems(cfg: dict[str, Any], gpus: int | None) -> list[str]:
    """The device must exist where the run will run: here (``gpus=None``), or on a cluster node
    with ``gpus`` GPUs."""
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        return [f"device={device} is not a device; allowed: auto, cpu, cuda, cuda:<index>"]
    if not device.startswith("cuda"):
        return []
    if gpus is None and not torch.cuda.is_available():
        return [f"device={device} but CUDA is not available here; use device=auto or device=cpu"]
    if gpus is not None and gpus < 1:
        return [f"device={device} but the jobs ask for no GPU; set resources.gpus_per_node >= 1 or use device=auto"]
    return []


def check_config(cfg: dict[str, Any], gpus: int | None = None) -> list[str]:
    """Every problem of a resolved config (empty when it can run). ``gpus``: the GPUs per job on
    a cluster; None checks this machine's devices."""
    problems = schema_problems(cfg)
    if problems:  # a build from a malformed config would only fail in a less clear way
        return problems
    problems = device_problems(cfg, gpus)
    if problem := directory_problem(cfg["out_dir"], "out_dir"):
        problems.append(problem)
    from wab.run.loop import Trainer
    from wab.run.spec import SpecProblems

    try:
        Trainer(cfg, dry=True).check()
    except SpecProblems as e:  # every bad value of the config, one problem each
        problems.extend(e.problems)
    except (UserError, ValueError) as e:  # messages written for users
        problems.append(str(e))
    except (TypeError, KeyError, RuntimeError, NotImplementedError) as e:
        problems.append(f"{type(e).__name__}: {e}")
    return problems


def validate(cfg: dict[str, Any], gpus: int | None = None) -> None:
    """Raise :class:`InvalidConfig` listing every problem of ``cfg``."""
    problems = check_config(cfg, gpus)
    if problems:
        raise InvalidConfig(problems)
