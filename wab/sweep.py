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

import contextlib
import itertools
import math
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch
import yaml

from wab import CONFIG_DIR
from wab.config import format_value
from wab.errors import UserError, did_you_mean
from wab.lease import RunLeased
from wab.records import RunDir, atomic_write_json, run_id
from wab.run import run, run_dir_for
from wab.status import BUSY, FINISHED, MANIFEST, directory_status, read_manifest
from wab.status import STATES as STATUS_STATES
from wab.trainer import Interrupted, clear_stop, request_stop
from wab.validate import InvalidConfig, check_config, compose_checked

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
    problems: list[str] = field(default_factory=list)

    @property
    def dir(self) -> RunDir:
        return RunDir(Path(self.config["out_dir"]) / self.run_id)


def _axes(name: str, d: Any) -> dict[str, list]:
    if not isinstance(d, dict):
        raise UserError(f"sweep {name} must map override keys to lists of values, got {d!r}")
    return {str(k): list(v) if isinstance(v, list | tuple) else [v] for k, v in d.items()}


def load_sweep(path_or_name: str | Path) -> SweepSpec:
    """Read a sweep config: a YAML path, or the name of one in configs/sweep/."""
    path = Path(path_or_name)
    if not path.exists():
        path = CONFIG_DIR / "sweep" / f"{path_or_name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))
        raise UserError(f"sweep config {str(path_or_name)!r} not found (a YAML path, or one of {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of {sorted(SPEC_KEYS)}, got {type(raw).__name__}")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    resources = {**RESOURCE_DEFAULTS, **(raw.get("resources") or {})}
    bad = set(resources) - set(RESOURCE_DEFAULTS)
    if bad:
        raise UserError(
            f"{path}: unknown resource(s) {sorted(bad)}{did_you_mean(sorted(bad)[0], RESOURCE_DEFAULTS)}; "
            f"allowed: {sorted(RESOURCE_DEFAULTS)}"
        )
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
            out.append([*spec.base, *(f"{k}={format_value(v)}" for k, v in zip(keys, values))])
    return out


def plan(spec: SweepSpec, check: bool = True, gpus: int | None = None) -> list[PlannedRun]:
    """Every run of the sweep, with its resolved config and id (duplicates removed). With
    ``check``, each run's ``problems`` lists what :func:`wab.validate.check_config` finds
    (``gpus``: per job on a cluster; None: this machine's devices); a point whose overrides do
    not even compose gets its error there and no config."""
    runs, seen = [], set()
    for overrides in expand(spec):
        try:
            cfg = compose_checked([*overrides, f"out_dir={spec.out_dir}", "trainer.progress=false"])
        except InvalidConfig as e:
            runs.append(PlannedRun("-", overrides, {}, e.problems))
            continue
        rid = run_id(cfg)
        if rid in seen:
            continue
        seen.add(rid)
        runs.append(PlannedRun(rid, overrides, cfg, check_config(cfg, gpus) if check else []))
    return runs


class InvalidSweep(UserError):
    """Some points of a sweep are invalid: nothing was submitted."""

    def __init__(self, spec: SweepSpec, bad: list[PlannedRun], total: int) -> None:
        self.bad = bad
        lines = [f"sweep {spec.name}: {len(bad)} of {total} runs are invalid; nothing was submitted:"]
        for r in bad:
            lines += [f"  {' '.join(r.overrides)}"] + [f"    - {p}" for p in r.problems]
        super().__init__("\n".join(lines))


def _set_threads(threads: int) -> None:
    """Use the CPUs the job asked for, not every core of the node."""
    if threads > 0:
        torch.set_num_threads(threads)


class RunJob(submitit.helpers.Checkpointable):
    """The callable each array task runs: one run, resumed from its checkpoint if it has one.

    On submitit's signal (USR2: preemption or time limit) it asks the trainer to stop at the next
    step boundary, where the trainer saves a checkpoint; then submitit's own handler requeues the
    job (``checkpoint`` resubmits this callable with the same config, which resumes the run).
    A run another live process holds (a relaunch raced a running job) is left to it.
    """

    def __call__(self, cfg: dict[str, Any], threads: int = 0) -> str:
        _set_threads(threads)
        with _stop_on_signal():
            return _run_unless_leased(cfg)


class PoolWorker(submitit.helpers.Checkpointable):
    """One of the ``array_parallelism`` workers of a local sweep: goes through the runs in order
    and trains each one that is not finished and that no other worker holds (the run's lease
    decides), so at most that many runs train at once and none twice."""

    def __call__(self, cfgs: list[dict[str, Any]], threads: int = 0) -> list[str]:
        _set_threads(threads)
        with _stop_on_signal():
            return [_run_unless_leased(cfg) for cfg in cfgs]


def _run_unless_leased(cfg: dict[str, Any]) -> str:
    rd = run_dir_for(cfg)
    if rd.state() in FINISHED:
        return rd.state()
    try:
        return run(cfg)["status"]
    except RunLeased:
        return "leased"


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[None]:
    """While a job runs: submitit's USR2 makes the trainer checkpoint at the next step boundary
    and raise Interrupted; then submitit's handler checkpoints the callable and requeues the job."""
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    clear_stop()
    signal.signal(signal.SIGUSR2, lambda signum, frame: request_stop())
    try:
        yield
    except Interrupted:
        if callable(submitit_handler):
            submitit_handler(signal.SIGUSR2, None)  # checkpoint() + requeue + exit
        raise
    finally:
        clear_stop()
        signal.signal(signal.SIGUSR2, submitit_handler)


def make_executor(spec: SweepSpec, cluster: str, timeout_min: float | None = None) -> submitit.AutoExecutor:
    if cluster not in CLUSTERS:
        raise UserError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    r = spec.resources
    executor = submitit.AutoExecutor(folder=spec.out_dir / ".submitit" / "%j", cluster=cluster)
    params: dict[str, Any] = {
        "name": f"wab-{spec.name}",
        "timeout_min": int(timeout_min or r["timeout_min"]),
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


@dataclass
class Launch:
    """What one launch did."""

    manifest: dict[str, Any]
    runs: list[PlannedRun]
    states: dict[str, str]  # run id -> state before the launch
    submitted: list[str]  # run ids

    def summary(self) -> str:
        counts = {s: sum(v == s for v in self.states.values()) for s in STATUS_STATES}
        skipped = [f"{counts[s]} {s}" for s in BUSY if counts[s]]
        done = sum(counts[s] for s in FINISHED)
        return (
            f"{len(self.runs)} runs, {done} already finished"
            + (f", {' and '.join(skipped)} left alone (not submitted again)" if skipped else "")
            + f", {len(self.submitted)} submitted"
        )


def _gpus_here() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_slurm(timeout: float = 15.0) -> None:
    """Raise a :class:`UserError` unless a SLURM controller answers ``sinfo`` within ``timeout`` s."""
    if not shutil.which("sbatch"):
        raise UserError("--cluster slurm but sbatch is not on PATH: run wab sweep where SLURM's commands are")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        said = (e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or "").strip().splitlines()
        raise UserError(f"no SLURM controller answered in {timeout:.0f} s{': ' + said[0] if said else ''}") from None
    if out.returncode != 0:
        said = out.stderr.strip().splitlines()
        raise UserError(f"no SLURM controller reachable: {said[-1] if said else 'sinfo failed'}")


def launch(spec: SweepSpec, cluster: str) -> Launch:
    """Check every run, then submit every run that is neither finished nor running nor queued,
    as one job array (SLURM) or a pool of ``array_parallelism`` workers (local), write the
    manifest and return without waiting (the ``debug`` cluster runs the jobs here, one at a
    time). Raises :class:`InvalidSweep`, submitting nothing, when any point is invalid."""
    if cluster not in CLUSTERS:
        raise UserError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    r = spec.resources
    if cluster == "slurm":
        check_slurm()
    gpus = int(r["gpus_per_node"]) if cluster == "slurm" else None
    if cluster == "local" and int(r["gpus_per_node"]) > _gpus_here():
        raise UserError(f"resources.gpus_per_node={r['gpus_per_node']} but this machine has {_gpus_here()} GPU(s)")
    runs = plan(spec, check=True, gpus=gpus)
    bad = [p for p in runs if p.problems]
    if bad:
        raise InvalidSweep(spec, bad, len(runs))
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(spec.out_dir) or {}
    before = {s.run_id: s for s in directory_status(spec.out_dir)} if previous else {}
    states = {p.run_id: (before[p.run_id].state if p.run_id in before else p.dir.state()) for p in runs}
    todo = [p for p in runs if states[p.run_id] not in FINISHED + BUSY]
    threads = int(r["cpus_per_task"])
    now = time.time()
    launch_record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "t": now, "cluster": cluster, "host": socket.gethostname(),
        "submitted": len(todo), "left_alone": {s: sum(v == s for v in states.values()) for s in BUSY},
        "jobs": {},
    }  # fmt: skip
    jobs = []
    if todo and cluster == "local":
        per_gpu = int(r["gpus_per_node"])
        workers = min(int(r["array_parallelism"]), len(todo), _gpus_here() // per_gpu if per_gpu else len(todo))
        per_worker = math.ceil(len(todo) / workers)
        for w in range(workers):
            executor = make_executor(spec, cluster, timeout_min=float(r["timeout_min"]) * per_worker)
            if per_gpu:
                executor.update_parameters(visible_gpus=list(range(w * per_gpu, (w + 1) * per_gpu)))
            jobs.append(executor.submit(PoolWorker(), [p.config for p in todo], threads))
        launch_record["workers"] = [j.job_id for j in jobs]
    elif todo and cluster == "slurm":
        executor = make_executor(spec, cluster)
        with executor.batch():
            for p in todo:
                jobs.append(executor.submit(RunJob(), p.config, threads))
        launch_record["jobs"] = {p.run_id: j.job_id for p, j in zip(todo, jobs)}
    old_runs = {e["run_id"]: e for e in previous.get("runs", [])}
    submitted = {p.run_id for p in todo}
    manifest = {
        "name": spec.name,
        "source": spec.source,
        "out_dir": str(spec.out_dir),
        "resources": spec.resources,
        "runs": [
            {
                "run_id": p.run_id,
                "overrides": p.overrides,
                "state_at_launch": states[p.run_id],
                "job_id": launch_record["jobs"].get(p.run_id)
                if p.run_id in submitted
                else old_runs.get(p.run_id, {}).get("job_id"),
                "submitted_at": now if p.run_id in submitted else old_runs.get(p.run_id, {}).get("submitted_at"),
                "launch": len(previous.get("launches", []))
                if p.run_id in submitted
                else old_runs.get(p.run_id, {}).get("launch"),
            }
            for p in runs
        ],  # fmt: skip
        "launches": [*previous.get("launches", []), launch_record],
    }
    atomic_write_json(spec.out_dir / MANIFEST, manifest)
    if cluster == "debug":
        for p in todo:
            _run_unless_leased(p.config)
    return Launch(manifest, runs, states, sorted(submitted))
