"""Collect run records (final.json, metrics.jsonl) under a directory into pandas DataFrames."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


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
    return sorted(p.parent for p in Path(root).rglob("config.yaml") if not p.parent.name.startswith("."))


def collect_runs(root: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per finished run (flattened final.json); plus (run dir, reason) for each skipped."""
    rows, skipped = [], []
    for run_dir in find_runs(root):
        final = run_dir / "final.json"
        if not final.exists():
            skipped.append((str(run_dir), "no final.json (incomplete)"))
            continue
        try:
            rec = json.loads(final.read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append((str(run_dir), f"unreadable final.json: {e}"))
            continue
        if not isinstance(rec, dict) or "status" not in rec:
            skipped.append((str(run_dir), "final.json has no status"))
            continue
        rec = dict(rec)
        cfg = rec.pop("config", {}) or {}
        row = _flatten(rec)
        row.update(_flatten(cfg, "config."))
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return pd.DataFrame(rows), skipped
