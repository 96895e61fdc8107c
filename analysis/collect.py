"""Collect run records (final.json, metrics.jsonl) under a directory into pandas DataFrames.

Nothing is dropped silently: a run directory that cannot be read, or has not finished, is
returned in ``skipped`` with the reason. Runs are grouped into one table row per *setting*: the
whole resolved config except the seed and the keys that do not change results (``NOT_HASHED``),
so two runs that differ in anything else (epochs, lr, a method hyper-parameter) are never
averaged together. Each row is labelled with what sets it apart (see :func:`label_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from wab.parts.cost import run_flops
from wab.run.config import default_config, flatten, format_value
from wab.run.records import RunDir, find_runs, hashed_config, setting_id

GROUP = ["dataset", "model", "population_size"]  # one table per group
_MISSING = "<missing>"


def setting_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flattened config that defines a run's table row: without the seed and NOT_HASHED keys."""
    return {k: v for k, v in flatten(hashed_config(cfg)).items() if k != "seed"}


def _val(d: dict[str, Any], key: str) -> str:
    return json.dumps(d.get(key, _MISSING), sort_keys=True, default=str)


def _defaults_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The defaults a run's settings are compared with; for the finalizers it requests, their
    settings' defaults (which a config without them does not hash)."""
    try:
        defaults = default_config(cfg)
    except Exception:  # a plugin or dataset without a config file: every setting counts as changed
        return {}
    out = setting_of(defaults)
    finalizers = (cfg.get("population") or {}).get("finalizers")
    if finalizers:
        defaults["population"]["finalizers"] = finalizers
        out.update({k: v for k, v in setting_of(defaults).items() if k.startswith("finalizer.")})
    return out


def label_settings(settings: list[dict[str, Any]], defaults: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Row labels for the settings of one table, and the changed settings every row shares.

    A row is labelled ``method (k=v, ...)`` with each method hyper-parameter it changes from the
    method's defaults (e.g. ``papa (alpha=0.9)``) and each other key whose value differs between
    rows and from that row's defaults (e.g. ``epochs=3``). Keys changed from the defaults but
    equal in every row are returned as ``shared`` (for the table's caption) instead. Labels are
    unique within the table: rows that would collide also get the keys that set them apart
    (``–`` where a row's config lacks the key, e.g. one written by an older wab).
    """
    keys: list[str] = []
    for s in settings:
        keys += [k for k in s if k not in keys and k != "method.name"]
    keys.sort(key=lambda k: not k.startswith("method."))  # stable: method keys first, config order
    varying = {k for k in keys if len({_val(s, k) for s in settings}) > 1}
    changed = [
        _in_config_order(
            [k for k in keys if k in s and _val(s, k) != _val(d, k) and (k.startswith("method.") or k in varying)], d
        )
        for s, d in zip(settings, defaults)
    ]
    labels = _labels(settings, changed)
    for lab in {lab for lab in labels if labels.count(lab) > 1}:  # add what sets the colliding rows apart
        rows = [i for i, other in enumerate(labels) if other == lab]
        apart = [k for k in keys if len({_val(settings[i], k) for i in rows}) > 1]
        for i in rows:
            changed[i] = changed[i] + [k for k in apart if k not in changed[i]]
    labels = _labels(settings, changed)
    shared = {
        k: settings[0][k]
        for k in keys
        if k not in varying
        and not k.startswith("method.")
        and k in settings[0]
        and any(_val(s, k) != _val(d, k) for s, d in zip(settings, defaults))
    }
    return labels, shared


def _in_config_order(keys: list[str], defaults: dict[str, Any]) -> list[str]:
    """Method keys first, each group in the order of the row's own config (its method's YAML), so
    that a row's label does not depend on which other rows share its table."""
    order = list(defaults)
    return sorted(keys, key=lambda k: (not k.startswith("method."), order.index(k) if k in order else len(order)))


def _labels(settings: list[dict[str, Any]], changed: list[list[str]]) -> list[str]:
    shown = {k for c in changed for k in c}
    short = {k: k.rsplit(".", 1)[-1] for k in shown}
    clash = {n for n in short.values() if list(short.values()).count(n) > 1}
    names = {k: (k.removeprefix("method.") if short[k] in clash else short[k]) for k in shown}
    out = []
    for s, c in zip(settings, changed):
        method = str(s.get("method.name", "?"))
        parts = [f"{names[k]}={format_value(s[k]) if k in s else '–'}" for k in c]
        out.append(f"{method} ({', '.join(parts)})" if parts else method)
    return out


def collect_runs(root: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per run with a final.json (flattened; the config under ``config.*``), plus
    (run dir, reason) for each run skipped. Adds ``setting_id`` (hash of the config without the
    seed), ``variant`` (the row label, unique within its table) and ``shared_settings``."""
    rows, skipped, seen = [], [], {}
    for run_dir in find_runs(root):
        rd = RunDir(run_dir)
        if not rd.final.exists():
            skipped.append((str(run_dir), f"no final.json ({rd.state()})"))
            continue
        try:
            rec = json.loads(rd.final.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append((str(run_dir), f"unreadable final.json: {e}"))
            continue
        if not isinstance(rec, dict) or "status" not in rec or "method" not in rec:
            skipped.append((str(run_dir), "final.json lacks status or method"))
            continue
        rec = dict(rec)
        cfg = rec.pop("config", {}) or {}
        rid = rec.get("run_id") or run_dir.name
        if rid in seen:  # the same run copied into two places would count its seed twice
            skipped.append((str(run_dir), f"duplicate of {seen[rid]} (same run id); counted once"))
            continue
        seen[rid] = str(run_dir)
        row = flatten(rec)
        row.update(member_baselines(rec))
        row.update(flatten(cfg, "config."))
        row["run_dir"] = str(run_dir)
        row["setting_id"] = setting_id(cfg)
        row["setting"] = json.dumps(setting_of(cfg), sort_keys=True, default=str)
        row["_config"] = cfg
        if "cost.train_flops" not in row and rec.get("status") == "done":
            row.update(_measured_flops(cfg, rec.get("steps")))
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        _add_labels(df)
        df = df.drop(columns="_config")
    return df, skipped


def member_baselines(rec: dict[str, Any]) -> dict[str, float]:
    """The accuracies of the single members a method's final model is judged against, as its
    paper does (each after BN recalibration where the record has it, like the final model):
    ``own_member_acc``, the last iterate of the member whose average is delivered (EMA's, LAWA's,
    SWA's ``<name>_<i>``); ``heldout_best_member_acc``, the member the greedy soup starts from,
    the best one on the held-out split."""
    metrics = rec.get("metrics") or {}
    members = metrics.get("members_recal") or metrics.get("individual")
    if not isinstance(members, list) or not members:
        return {}
    out = {}
    head, _, index = str(metrics.get("final_model", "")).rpartition("_")
    if head and index.isdigit() and int(index) < len(members):
        out["metrics.own_member_acc"] = members[int(index)]
    ingredients = ((rec.get("method_report") or {}).get("greedy_soup") or {}).get("ingredients")
    if ingredients and int(ingredients[0]) < len(members):
        out["metrics.heldout_best_member_acc"] = members[int(ingredients[0])]
    return out


def _measured_flops(cfg: dict[str, Any], steps: Any) -> dict[str, Any]:
    """A record written before wab counted FLOPs: the same count from its config (the model and
    the data shape), or nothing when the model cannot be built here."""
    try:
        flops = run_flops(cfg, int(steps))
    except Exception:  # an unknown model or dataset: the FLOPs stay unknown
        return {}
    return {"cost.flops_per_member_step": flops["per_member_step"], "cost.flops_per_step": flops["per_step"],
            "cost.train_flops": flops["train"]}  # fmt: skip


def _add_labels(df: pd.DataFrame) -> None:
    """``variant`` and ``shared_settings`` per table, from the runs that finished (a failed run
    must not change the labels of the table); other runs are labelled by their method alone."""
    df["variant"] = df["method"].astype(str)
    df["shared_settings"] = ""
    done = df[df["status"] == "done"]
    for _, group in done.groupby(GROUP, sort=False):
        firsts = group.drop_duplicates("setting_id")
        settings = [json.loads(s) for s in firsts["setting"]]
        labels, shared = label_settings(settings, [_defaults_of(c) for c in firsts["_config"]])
        label_of = dict(zip(firsts["setting_id"], labels))
        df.loc[group.index, "variant"] = group["setting_id"].map(label_of)
        df.loc[group.index, "shared_settings"] = ", ".join(f"{k}={format_value(v)}" for k, v in shared.items())


def collect_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Every evaluation line (metrics.jsonl) of the collected runs, with their variant."""
    frames = []
    for _, run in df.iterrows():
        lines = RunDir(run["run_dir"]).read_metrics()
        if lines:
            curve = pd.DataFrame([flatten(line) for line in lines])
            curve["variant"] = run["variant"]
            curve["method"] = run["method"]
            curve["run_dir"] = run["run_dir"]
            frames.append(curve)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
