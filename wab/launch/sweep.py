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
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch
import yaml

from wab import CONFIG_DIR
from wab.errors import UserError, did_you_mean, directory_problem
from wab.launch.jobs import PoolWorker, RunJob, run_unless_leased
from wab.launch.status import BUSY, FINISHED, MANIFEST, directory_status, is_launch_job, read_manifest, slurm_jobs
from wab.launch.status import STATES as STATUS_STATES
from wab.parts.device import resolve_compute
from wab.run.config import format_value
from wab.run.records import RunDir, atomic_write_json, run_id
from wab.run.validate import InvalidConfig, check_config, compose_checked

CLUSTERS = ("slurm", "local", "debug")
SPEC_KEYS = {"name", "out_dir", "base", "grid", "variants", "resources"}
RESOURCE_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "account": None,
    "qos": None,
    "gpus_per_node": 0,
    "nodes": 1,  # a distributed run (population.backend=distributed) spans nodes x tasks_per_node processes
    "tasks_per_node": 1,  # one process per GPU
    "cpus_per_task": 1,
    "mem_gb": 4,
    "timeout_min": 60,
    "array_parallelism": 64,
    "max_requeues": 3,  # requeues after a time limit (preemptions are not counted)
    "signal_delay_s": 90,  # USR2 this long before the time limit: the run checkpoints and requeues
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
    out_dir = Path(raw.get("out_dir") or f"results/sweeps/{name}")
    if problem := directory_problem(out_dir, f"{path}: out_dir"):
        raise UserError(problem)
    return SweepSpec(
        name=name,
        out_dir=out_dir,
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
    """Every run of the sweep, with its resolved config and id (duplicates removed): the device
    and CPU threads a run leaves at ``auto`` are those of its jobs' ``resources``. With
    ``check``, each run's ``problems`` lists what :func:`wab.run.validate.check_config` finds
    (``gpus``: per job on a cluster; None: this machine's devices); a point whose overrides do
    not even compose gets its error there and no config."""
    runs, seen = [], set()
    for overrides in expand(spec):
        try:
            # trainer.progress stays on: a job's output is no terminal, so there is no bar, and the
            # trainer logs a progress line every minute into train.log and the job's output
            cfg = compose_checked([*overrides, f"out_dir={spec.out_dir}"])
        except InvalidConfig as e:
            runs.append(PlannedRun("-", overrides, {}, e.problems))
            continue
        cfg = resolve_compute(cfg, int(spec.resources["gpus_per_node"]), int(spec.resources["cpus_per_task"]))
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


def make_executor(
    spec: SweepSpec, cluster: str, timeout_min: float | None = None, dependency: list[str] | None = None
) -> submitit.AutoExecutor:
    """The submitit executor of the sweep's ``resources`` (``dependency``: SLURM jobs to wait for)."""
    if cluster not in CLUSTERS:
        raise UserError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    r = spec.resources
    requeues = {f"{cluster}_max_num_timeout": int(r["max_requeues"])} if cluster != "debug" else {}
    executor = submitit.AutoExecutor(folder=spec.out_dir / ".submitit" / "%j", cluster=cluster, **requeues)
    params: dict[str, Any] = {
        "name": f"wab-{spec.name}",
        "timeout_min": int(timeout_min or r["timeout_min"]),
        "cpus_per_task": int(r["cpus_per_task"]),
        "mem_gb": float(r["mem_gb"]),
    }
    if r["gpus_per_node"]:
        params["gpus_per_node"] = int(r["gpus_per_node"])
    if cluster == "slurm" and (int(r["nodes"]) > 1 or int(r["tasks_per_node"]) > 1):
        params["nodes"], params["tasks_per_node"] = int(r["nodes"]), int(r["tasks_per_node"])
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]  # a task that fails ends its run's other tasks
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = int(r["signal_delay_s"])
        params["slurm_array_parallelism"] = int(r["array_parallelism"])
        for key in ("partition", "account", "qos"):
            if r[key]:
                params[f"slurm_{key}"] = r[key]
        extra = dict(r["additional_parameters"])
        if dependency:
            after = "afterany:" + ":".join(dependency)
            extra["dependency"] = f"{extra['dependency']},{after}" if extra.get("dependency") else after
        if extra:
            params["slurm_additional_parameters"] = extra
        if r["setup"]:
            params["slurm_setup"] = list(r["setup"])
    executor.update_parameters(**params)
    return executor


def max_array_size() -> int | None:
    """The most tasks one job array may have on this cluster (``MaxArraySize``), None if unknown."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(m.group(1)) if m else None


def _alive_arrays(manifest: dict) -> list[str]:
    """The sweep's job arrays (of earlier launches) that still have a task queued or running:
    tasks squeue lists under their ids that are still the launch's own (:func:`is_launch_job`),
    never another job that reuses an id."""
    alive = slurm_jobs() or {}
    out = set()
    for la in manifest.get("launches", []):
        if la.get("cluster") == "slurm":
            ids = [*la.get("jobs", {}).values(), *la.get("workers", [])]
            out |= {j.split("_")[0] for j in ids if j in alive and is_launch_job(alive[j], la)}
    return sorted(out)


def _submit_slurm(spec: SweepSpec, todo: list[PlannedRun], previous: dict) -> dict[str, Any]:
    """One job array with a task per run (waiting for the sweep's arrays still alive from earlier
    launches, so ``array_parallelism`` caps the runs at once across relaunches). More runs than
    ``MaxArraySize``: a pool (:func:`_submit_slurm_pool`)."""
    size = max_array_size()
    waited_for = _alive_arrays(previous)
    if size is not None and len(todo) > size:
        return _submit_slurm_pool(spec, todo, waited_for, size)
    executor = make_executor(spec, "slurm", dependency=waited_for)
    with executor.batch():
        submitted = [executor.submit(RunJob(), p.config) for p in todo]
    jobs = {p.run_id: j.job_id for p, j in zip(todo, submitted)}
    return {"jobs": jobs, "arrays": [submitted[0].job_id.split("_")[0]], "waited_for": waited_for}


def _submit_slurm_pool(spec: SweepSpec, todo: list[PlannedRun], waited_for: list[str], size: int) -> dict[str, Any]:
    """More runs than one array may hold: one array of ``array_parallelism`` workers, each going
    through every run (from its own starting point) and training those no other worker holds,
    as the local pool does. Chained arrays would leave slots idle at each array's end while its
    last runs finish; a pool keeps every slot busy until no run is left. A worker's time limit
    is the runs' ``timeout_min`` times its share of the runs; USR2 near it checkpoints the run in
    hand and requeues the worker, which goes on where it was."""
    r = spec.resources
    workers = min(int(r["array_parallelism"]), len(todo), size)
    share = math.ceil(len(todo) / workers)
    executor = make_executor(spec, "slurm", dependency=waited_for, timeout_min=float(r["timeout_min"]) * share)
    cfgs = [p.config for p in todo]
    with executor.batch():
        submitted = [executor.submit(PoolWorker(), cfgs[w * share :] + cfgs[: w * share])
                     for w in range(workers)]  # fmt: skip
    return {"jobs": {}, "workers": [j.job_id for j in submitted], "arrays": [submitted[0].job_id.split("_")[0]],
            "waited_for": waited_for}  # fmt: skip


def _submit_local(spec: SweepSpec, todo: list[PlannedRun]) -> dict[str, Any]:
    """A pool of at most ``array_parallelism`` workers (one per ``gpus_per_node`` GPUs)."""
    r = spec.resources
    per_gpu = int(r["gpus_per_node"])
    workers = min(int(r["array_parallelism"]), len(todo), _gpus_here() // per_gpu if per_gpu else len(todo))
    per_worker = math.ceil(len(todo) / workers)
    jobs = []
    for w in range(workers):
        executor = make_executor(spec, "local", timeout_min=float(r["timeout_min"]) * per_worker)
        if per_gpu:
            executor.update_parameters(visible_gpus=list(range(w * per_gpu, (w + 1) * per_gpu)))
        jobs.append(executor.submit(PoolWorker(), [p.config for p in todo]))
    return {"jobs": {}, "workers": [j.job_id for j in jobs]}


def process_problems(cfg: dict[str, Any], resources: dict[str, Any], cluster: str) -> list[str]:
    """A run's processes must fit its population: several tasks need population.backend=
    distributed (and at most one process per member), a distributed run needs SLURM tasks."""
    if not cfg:
        return []
    if cluster != "debug" and (problem := job_import_problem(cfg)):
        return [problem]
    processes = int(resources["nodes"]) * int(resources["tasks_per_node"])
    backend = cfg["population"].get("backend", "local")
    size = int(cfg["population"]["size"])
    if processes > 1 and cluster != "slurm":
        return [f"resources.nodes x tasks_per_node = {processes} processes need --cluster slurm"]
    if processes > 1 and backend != "distributed":
        return [f"{processes} tasks per run need population.backend=distributed (got {backend})"]
    if backend == "distributed" and processes > size:
        return [f"{processes} processes but population.size={size}: each process must hold a member"]
    if backend == "distributed" and processes == 1:
        return ["population.backend=distributed in a sweep needs resources.tasks_per_node (or nodes) > 1"]
    return []


def job_import_problem(cfg: dict[str, Any]) -> str | None:
    """Why a sweep's job (a fresh process) could not find the run's method, or None: a method is
    found there when it is wab's, an installed package's entry point, or importable from its
    config's ``_target_``; one defined in a script or inside a function is not."""
    from wab.method import from_entry_point, is_builtin, method_of

    cls = method_of(cfg)
    if is_builtin(cls) or from_entry_point(cls.name) or cfg["method"].get("_target_"):
        return None
    return (
        f"method {cls.name!r} is defined in {cls.__module__}.{cls.__qualname__}, which a sweep's jobs (fresh "
        f"processes) cannot import: put it in a module and select it with method=<module>:{cls.__name__}, or "
        f"register it with an entry point (docs/methods.md)"
    )


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


SELECT = ("all", "failed", "not-failed")


def launch(spec: SweepSpec, cluster: str, select: str = "all") -> Launch:
    """Check every run, then submit every run that is neither finished nor running nor queued
    (``select``: ``failed`` only the failed ones, ``not-failed`` all but them), as job arrays
    (SLURM) or a pool of ``array_parallelism`` workers (local), write the manifest and return
    without waiting (the ``debug`` cluster runs the jobs here, one at a time). Raises
    :class:`InvalidSweep`, submitting nothing, when any point is invalid."""
    if cluster not in CLUSTERS:
        raise UserError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    if select not in SELECT:
        raise UserError(f"select must be one of {SELECT}, got {select!r}")
    r = spec.resources
    if cluster == "slurm":
        check_slurm()
    gpus = int(r["gpus_per_node"]) if cluster == "slurm" else None
    if cluster == "local" and int(r["gpus_per_node"]) > _gpus_here():
        raise UserError(f"resources.gpus_per_node={r['gpus_per_node']} but this machine has {_gpus_here()} GPU(s)")
    runs = plan(spec, check=True, gpus=gpus)
    for p in runs:
        p.problems += process_problems(p.config, r, cluster)
    bad = [p for p in runs if p.problems]
    if bad:
        raise InvalidSweep(spec, bad, len(runs))
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(spec.out_dir) or {}
    before = {s.run_id: s for s in directory_status(spec.out_dir)} if previous else {}
    states = {p.run_id: (before[p.run_id].state if p.run_id in before else p.dir.state()) for p in runs}
    todo = [p for p in runs if states[p.run_id] not in FINISHED + BUSY]
    if select != "all":
        todo = [p for p in todo if (states[p.run_id] == "failed") == (select == "failed")]
    now = time.time()
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "t": now, "cluster": cluster, "host": socket.gethostname(),
        "job_name": f"wab-{spec.name}", "cwd": os.getcwd(),
        "submitted": len(todo), "left_alone": {s: sum(v == s for v in states.values()) for s in BUSY}, "jobs": {},
    }  # fmt: skip
    if todo and cluster == "local":
        record.update(_submit_local(spec, todo))
    elif todo and cluster == "slurm":
        record.update(_submit_slurm(spec, todo, previous))
    manifest = _manifest(spec, runs, states, {p.run_id for p in todo}, previous, record)
    atomic_write_json(spec.out_dir / MANIFEST, manifest)
    if cluster == "debug":
        for p in todo:
            run_unless_leased(p.config)
    return Launch(manifest, runs, states, sorted(p.run_id for p in todo))


def _manifest(
    spec: SweepSpec, runs: list[PlannedRun], states: dict[str, str], submitted: set[str], previous: dict, record: dict
) -> dict[str, Any]:
    """Every run of the sweep with its latest job, and every launch so far."""
    old = {e["run_id"]: e for e in previous.get("runs", [])}
    index = len(previous.get("launches", []))

    def entry(p: PlannedRun) -> dict[str, Any]:
        latest = (
            {"job_id": record["jobs"].get(p.run_id), "submitted_at": record["t"], "launch": index}
            if p.run_id in submitted
            else {k: old.get(p.run_id, {}).get(k) for k in ("job_id", "submitted_at", "launch")}
        )
        return {"run_id": p.run_id, "overrides": p.overrides, "state_at_launch": states[p.run_id], **latest}

    return {
        "name": spec.name,
        "source": spec.source,
        "out_dir": str(spec.out_dir),
        "resources": spec.resources,
        "runs": [entry(p) for p in runs],
        "launches": [*previous.get("launches", []), record],
    }


def cancel(out_dir: str | Path, stale: bool = False) -> list[str]:
    """Cancel every job of a sweep that is still queued or running (SLURM arrays, local workers);
    a run that trains saves a checkpoint first (TERM). With ``stale``, only the SLURM tasks that
    still run although their run is finished or its lease expired (:func:`wab.launch.status.run_status`).
    Only jobs that are still the sweep's own are touched. Returns what was cancelled."""
    manifest = read_manifest(Path(out_dir))
    if manifest is None:
        raise UserError(f"{out_dir} has no readable {MANIFEST}: is it a sweep directory (made by wab sweep)?")
    if stale:
        tasks = sorted({r.job for r in directory_status(out_dir) if r.stale and r.job})
        if tasks:
            subprocess.run(["scancel", *tasks], check=True, timeout=60)
        return [f"stale job {t}" for t in tasks]
    cancelled = []
    arrays = _alive_arrays(manifest)
    if arrays:
        subprocess.run(["scancel", *arrays], check=True, timeout=60)
        cancelled += [f"job array {a}" for a in arrays]
    for la in manifest.get("launches", []):
        if la.get("cluster") == "local" and la.get("host") == socket.gethostname():
            for pid in la.get("workers", []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
                    cancelled.append(f"local worker {pid}")
    return cancelled
