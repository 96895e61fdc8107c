"""Communication time on a named link, modelled from the ledger (an estimate, never a measurement).

Each operation of a run's ledger has its bytes per member, its calls (rounds) and its collective
pattern. With n the population size (one member per worker), S the bytes one member sends per
call, B the link's bandwidth and L its latency per message, one call costs:

- ``all_reduce`` (a ring): 2 (n - 1) / n * S / B + 2 (n - 1) L;
- ``all_gather`` (a ring): (n - 1) S / B + (n - 1) L;
- ``neighbour`` (point to point; S already counts every peer's copy): S / B + L;
- ``broadcast`` (a tree): S / B + ceil(log2 n) L.

The per-step figure is the sum over operations of calls x cost, divided by the run's steps, and
assumes no overlap with computation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from wab import CONFIG_DIR
from wab.errors import UserError

DEFAULT_LINKS = CONFIG_DIR / "network.yaml"


def load_links(path: str | Path | None = None) -> dict[str, tuple[float, float]]:
    """{link: (bandwidth in bytes/s, latency in s)} from a YAML file (default configs/network.yaml)."""
    path = Path(path) if path else DEFAULT_LINKS
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--network {path}: cannot read the links ({type(e).__name__}: {e})") from None
    links = raw.get("links") if isinstance(raw, dict) else None
    if not isinstance(links, dict) or not links:
        raise UserError(f"--network {path}: expected 'links: {{name: {{bandwidth_gbps, latency_us}}}}'")
    out = {}
    for name, spec in links.items():
        try:
            bw, lat = float(spec["bandwidth_gbps"]), float(spec["latency_us"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"--network {path}: link {name!r} needs numbers bandwidth_gbps and latency_us") from None
        if bw <= 0 or lat < 0:
            raise UserError(f"--network {path}: link {name!r} needs bandwidth_gbps > 0 and latency_us >= 0")
        out[str(name)] = (bw * 1e9 / 8, lat * 1e-6)
    return out


def call_time(pattern: str, nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """Seconds of one call of a collective moving ``nbytes`` per member among ``n`` members."""
    if n < 2 or nbytes <= 0:
        return 0.0
    if pattern == "all_reduce":
        return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency
    if pattern == "all_gather":
        return (n - 1) * nbytes / bandwidth + (n - 1) * latency
    if pattern == "neighbour":
        return nbytes / bandwidth + latency
    if pattern == "broadcast":
        return nbytes / bandwidth + math.ceil(math.log2(n)) * latency
    raise ValueError(f"unknown collective pattern {pattern!r}")


# records written before the ledger kept patterns
LEGACY_PATTERNS = {"permute_elements": "all_gather", "permute_buffers": "all_gather", "mix": "all_gather",
                   "pair_average": "all_gather", "soup_gather": "all_gather", "twa_gather": "all_gather"}  # fmt: skip


def step_time(ops: dict[str, dict[str, Any]], n: int, steps: int, bandwidth: float, latency: float) -> float:
    """Modelled communication seconds per training step of a run's ledger ``ops``."""
    total = 0.0
    for name, op in ops.items():
        calls = int(op.get("calls") or 0)
        if calls:
            pattern = str(op.get("pattern") or LEGACY_PATTERNS.get(name, "all_reduce"))
            total += calls * call_time(pattern, float(op.get("bytes") or 0.0) / calls, n, bandwidth, latency)
    return total / max(steps, 1)
