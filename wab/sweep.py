"""Sweeps: a grid of runs launched as one submitit job array, resumable and preemption-safe.

A sweep config (``configs/sweep/<name>.yaml`` or any YAML file) names the overrides every run
shares (``base``), the axes of the grid (``grid``: override key -> list of values; their
cartesian product), optional ``variants`` (a list of further grids, e.g. one per method with its
own hyper-parameters, each crossed with ``grid``), where the runs go (``out_dir``) and the
cluster ``resources``. Expansion is deterministic and a run's identity is the hash of its resolved
config, so adding a value to an axis keeps every existing run's id, and relaunching submits only
the runs that are not done (failed and incomplete ones included).
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from wab import CONFIG_DIR
from wab.config import compose_config
from wab.records import STATES, RunDir, atomic_write_json, run_id
from wab.run import run
from wab.trainer import Interrupted, clear_stop, request_stop

CLUSTERS = ("slurm", "local", "debug")
SPEC_KEYS = {"name", "out_dir", "base", "grid", "variants", "resources"}
RESOURCE_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "account": None,
    "qos": None,
    "gpus_per_node": 0,
    "cpus_per_task": 1,
    "mem_gb": 4,
    "timeout_min": 60,
    "array_parallelism": 64,
    "additional_parameters": {},
    "setup": [],
}
MANIFEST = "manifest.json"


@dataclass
class SweepSpec:
    name: str
    out_dir: Path
    base: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    variants: list[dict[str, list]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass
class PlannedRun:
    run_id: str
    overrides: list[str]
    config: dict[str, Any]

    @property
    def dir(self) -> RunDir:
        return RunDir(Path(self.config["out_dir"]) / self.run_id)


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_format_value(x) for x in v) + "]"
    return str(v)


def _axes(name: str, d: Any) -> dict[str, list]:
    if not isinstance(d, dict):
        raise ValueError(f"sweep {name} must map override keys to lists of values, got {d!r}")
    return {str(k): list(v) if isinstance(v, list | tuple) else [v] for k, v in d.items()}


def load_sweep(path_or_name: str | Path) -> SweepSpec:
    """Read a sweep config: a YAML path, or the name of one in configs/sweep/."""
    path = Path(path_or_name)
    if not path.exists():
        path = CONFIG_DIR / "sweep" / f"{path_or_name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))
        raise FileNotFoundError(f"sweep config {str(path_or_name)!r} not found (a YAML path, or one of {known})")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    resources = {**RESOURCE_DEFAULTS, **(raw.get("resources") or {})}
    bad = set(resources) - set(RESOURCE_DEFAULTS)
    if bad:
        raise ValueError(f"{path}: unknown resource(s) {sorted(bad)}; allowed: {sorted(RESOURCE_DEFAULTS)}")
    name = str(raw.get("name") or path.stem)
    return SweepSpec(
        name=name,
        out_dir=Path(raw.get("out_dir") or f"results/sweeps/{name}"),
        base=[str(o) for o in raw.get("base") or []],
        grid=_axes("grid", raw.get("grid") or {}),
        variants=[_axes("variants", v) for v in raw.get("variants") or []],
        resources=resources,
        source=str(path),
    )


def expand(spec: SweepSpec) -> list[list[str]]:
    """The runs' override lists, in a deterministic order: variants in order, then the grid's
    cartesian product with axes in the order written and values in the order listed."""
    out = []
    for variant in spec.variants or [{}]:
        axes = {**spec.grid, **variant}
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            out.append([*spec.base, *(f"{k}={_format_value(v)}" for k, v in zip(keys, values))])
    return out


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, with its resolved config and id (duplicates removed)."""
    runs, seen = [], set()
    for overrides in expand(spec):
        cfg = compose_config([*overrides, f"out_dir={spec.out_dir}", "trainer.progress=false"])
        rid = run_id(cfg)
        if rid not in seen:
            seen.add(rid)
            runs.append(PlannedRun(rid, overrides, cfg))
    return runs


class RunJob(submitit.helpers.Checkpointable):
    """The callable each array task runs: one run, resumed from its checkpoint if it has one.

    On submitit's signal (USR2: preemption or time limit) it asks the trainer to stop at the next
    step boundary, where the trainer saves a checkpoint; then submitit's own handler requeues the
    job (``checkpoint`` resubmits this callable with the same config, which resumes the run).
    """

    def __call__(self, cfg: dict[str, Any]) -> str:
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        clear_stop()
        signal.signal(signal.SIGUSR2, lambda signum, frame: request_stop())
        try:
            return run(cfg)["status"]
        except Interrupted:
            if callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + exit
            raise
        finally:
            clear_stop()
            signal.signal(signal.SIGUSR2, submitit_handler)


def make_executor(spec: SweepSpec, cluster: str) -> submitit.AutoExecutor:
    if cluster not in CLUSTERS:
        raise ValueError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    r = spec.resources
    executor = submitit.AutoExecutor(folder=spec.out_dir / ".submitit" / "%j", cluster=cluster)
    params: dict[str, Any] = {
        "name": f"wab-{spec.name}",
        "timeout_min": int(r["timeout_min"]),
        "cpus_per_task": int(r["cpus_per_task"]),
        "mem_gb": float(r["mem_gb"]),
    }
    if r["gpus_per_node"]:
        params["gpus_per_node"] = int(r["gpus_per_node"])
    if cluster == "slurm":
        params["slurm_array_parallelism"] = int(r["array_parallelism"])
        for key in ("partition", "account", "qos"):
            if r[key]:
                params[f"slurm_{key}"] = r[key]
        if r["additional_parameters"]:
            params["slurm_additional_parameters"] = dict(r["additional_parameters"])
        if r["setup"]:
            params["slurm_setup"] = list(r["setup"])
    executor.update_parameters(**params)
    return executor


def launch(spec: SweepSpec, cluster: str) -> dict[str, Any]:
    """Submit every run that is not done as one job array; write the manifest; do not wait
    (except on the ``debug`` cluster, which runs the jobs in this process)."""
    runs = plan(spec)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    states = {r.run_id: r.dir.state() for r in runs}
    todo = [r for r in runs if states[r.run_id] not in ("done", "diverged")]
    executor = make_executor(spec, cluster)
    jobs = []
    if todo:
        with executor.batch():
            for r in todo:
                jobs.append(executor.submit(RunJob(), r.config))
    job_ids = {r.run_id: j.job_id for r, j in zip(todo, jobs)}
    manifest_path = spec.out_dir / MANIFEST
    history = json.loads(manifest_path.read_text()).get("launches", []) if manifest_path.exists() else []
    history.append(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cluster": cluster, "submitted": len(todo), "jobs": job_ids}
    )
    manifest = {
        "name": spec.name,
        "source": spec.source,
        "out_dir": str(spec.out_dir),
        "resources": spec.resources,
        "runs": [
            {
                "run_id": r.run_id,
                "overrides": r.overrides,
                "state_at_launch": states[r.run_id],
                "job_id": job_ids.get(r.run_id),
            }
            for r in runs
        ],  # fmt: skip
        "launches": history,
    }
    atomic_write_json(manifest_path, manifest)
    if cluster == "debug":
        for job in jobs:
            job.result()
    return manifest


def sweep_status(sweep_dir: str | Path) -> list[dict[str, str]]:
    """Each run's state, from the filesystem alone (no scheduler, no accounting)."""
    sweep_dir = Path(sweep_dir)
    manifest_path = sweep_dir / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: is {sweep_dir} a sweep directory (made by wab sweep)?")
    manifest = json.loads(manifest_path.read_text())
    rows = []
    for r in manifest["runs"]:
        rd = RunDir(sweep_dir / r["run_id"])
        final = rd.read_final() or {}
        error = (final.get("error") or "").strip().splitlines()
        rows.append(
            {
                "run_id": r["run_id"],
                "state": rd.state(),
                "overrides": " ".join(r["overrides"]),
                "error": error[0][:100] if error else "",
            }
        )
    return rows


def format_status(rows: list[dict[str, str]]) -> str:
    width = max((len(r["run_id"]) for r in rows), default=6)
    lines = [f"{'run':<{width}}  {'state':<12}  overrides"]
    for r in rows:
        extra = f"  ({r['error']})" if r["error"] else ""
        lines.append(f"{r['run_id']:<{width}}  {r['state']:<12}  {r['overrides']}{extra}")
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({len(rows)} runs)")
    return "\n".join(lines)
