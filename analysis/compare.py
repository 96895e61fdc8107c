"""``wab compare A B``: the runs of two results directories side by side, run id by run id (the
same config gives the same id), to check that a retrained study reproduces a committed one:
every metric equal, or the differences listed."""

from __future__ import annotations

import math
from pathlib import Path

from wab.errors import UserError
from wab.run.config import flatten
from wab.run.records import RunDir, find_runs


def _records(root: Path) -> dict[str, dict]:
    out = {}
    for path in find_runs(root):
        rec = RunDir(path).read_final()
        if rec is not None and rec.get("status") == "done":
            out[path.name] = rec
    return out


def compare(a: str | Path, b: str | Path, tolerance: float = 0.0) -> tuple[list[str], int]:
    """Lines describing how the finished runs of ``b`` differ from those of ``a`` (metrics only;
    ``tolerance``: the largest absolute difference counted as equal), and how many runs matched."""
    a, b = Path(a), Path(b)
    for d in (a, b):
        if not d.is_dir():
            raise UserError(f"{d} is not a directory")
    ra, rb = _records(a), _records(b)
    if not ra or not rb:
        raise UserError(f"no finished runs under {a if not ra else b}")
    lines, equal = [], 0
    for rid in sorted(set(ra) & set(rb)):
        ma, mb = flatten(ra[rid]["metrics"]), flatten(rb[rid]["metrics"])
        diffs = []
        for key in sorted(set(ma) | set(mb)):
            x, y = ma.get(key), mb.get(key)
            if isinstance(x, float) and isinstance(y, float):
                if not (math.isclose(x, y, rel_tol=0, abs_tol=tolerance) or (math.isnan(x) and math.isnan(y))):
                    diffs.append((abs(x - y), f"{key} {x:.6g} -> {y:.6g}"))
            elif x != y and not (isinstance(x, list) and isinstance(y, list) and _close(x, y, tolerance)):
                diffs.append((math.inf, f"{key} differs"))
        if diffs:
            worst = sorted(diffs, reverse=True)[:3]
            lines.append(f"{rid}: {len(diffs)} metrics differ, e.g. " + "; ".join(d for _, d in worst))
        else:
            equal += 1
    for rid in sorted(set(ra) - set(rb)):
        lines.append(f"{rid}: only in {a}")
    for rid in sorted(set(rb) - set(ra)):
        lines.append(f"{rid}: only in {b}")
    return lines, equal


def _close(x: list, y: list, tolerance: float) -> bool:
    if len(x) != len(y):
        return False
    for p, q in zip(x, y):
        if isinstance(p, float) and isinstance(q, float):
            if not math.isclose(p, q, rel_tol=0, abs_tol=tolerance):
                return False
        elif isinstance(p, list) and isinstance(q, list):
            if not _close(p, q, tolerance):
                return False
        elif p != q:
            return False
    return True
