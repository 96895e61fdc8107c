"""Collect run records (final.json, metrics.jsonl) under a directory into pandas DataFrames.

Nothing is dropped silently: a run directory that cannot be read, or has not finished, is
returned in ``skipped`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from wab.records import RunDir


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (one holding config.yaml) below root, in a stable order."""
    return sorted(
        p.parent for p in Path(root).rglob("config.yaml") if not any(part.startswith(".") for part in p.parent.parts)
    )


def variant_label(method: str, hparams: dict) -> str:
    """'wash' or 'wash (p=0.01)': the method and its hyper-parameters that vary in the results."""
    if not hparams:
        return method
    return f"{method} ({', '.join(f'{k}={v}' for k, v in sorted(hparams.items()))})"


def collect_runs(root: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per run with a final.json (flattened; the config under ``config.*``), plus
    (run dir, reason) for each run skipped. Adds ``variant``: the method with those of its
    hyper-parameters that differ between runs of that method."""
    rows, skipped = [], []
    for run_dir in find_runs(root):
        rd = RunDir(run_dir)
        if not rd.final.exists():
            skipped.append((str(run_dir), f"no final.json ({rd.state()})"))
            continue
        try:
            rec = json.loads(rd.final.read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append((str(run_dir), f"unreadable final.json: {e}"))
            continue
        if not isinstance(rec, dict) or "status" not in rec or "method" not in rec:
            skipped.append((str(run_dir), "final.json lacks status or method"))
            continue
        rec = dict(rec)
        cfg = rec.pop("config", {}) or {}
        row = _flatten(rec)
        row.update(_flatten(cfg, "config."))
        row["run_dir"] = str(run_dir)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df["variant"] = _variants(df)
    return df, skipped


def _variants(df: pd.DataFrame) -> pd.Series:
    hp_cols = [c for c in df.columns if c.startswith("config.method.") and c != "config.method.name"]
    labels = pd.Series(index=df.index, dtype=object)
    for method, sub in df.groupby("method"):
        varying = [c for c in hp_cols if sub[c].astype(str).nunique(dropna=False) > 1]
        for idx, row in sub.iterrows():
            labels[idx] = variant_label(str(method), {c.removeprefix("config.method."): row[c] for c in varying})
    return labels


def collect_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Every evaluation line (metrics.jsonl) of the collected runs, with their variant."""
    frames = []
    for _, run in df.iterrows():
        lines = RunDir(run["run_dir"]).read_metrics()
        if lines:
            curve = pd.DataFrame([_flatten(line) for line in lines])
            curve["variant"] = run["variant"]
            curve["run_dir"] = run["run_dir"]
            frames.append(curve)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
