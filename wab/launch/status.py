"""The state of every run under a directory: from its files, its lease, and (for a sweep) the
jobs its manifest names, asked of the scheduler when one answers.

States: ``done``, ``diverged``, ``failed`` (recorded in final.json), ``corrupt`` (final.json
unreadable), ``running`` (a live lease: a process trains it now), ``queued`` (its job waits in the
scheduler, or was submitted and no process has started it yet), ``dead`` (its job left the
scheduler, or its local process is gone, and the run is unfinished), ``incomplete`` (started,
not running, no job waiting: a checkpoint to resume from), ``not launched``.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from wab.run.lease import read_lease
from wab.run.records import RunDir

STATES = ("done", "diverged", "failed", "corrupt", "running", "queued", "dead", "incomplete", "not launched")
FINISHED = ("done", "diverged")
BUSY = ("running", "queued")  # a relaunch leaves these alone
MANIFEST = "manifest.json"
# SLURM states of a job that will still run (or runs); any other (or none: it left squeue) is over
_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STAGE_OUT", "SIGNALING"}  # fmt: skip


@dataclass
class RunStatus:
    """One run's state and what explains it."""

    run_id: str
    path: Path
    state: str
    overrides: str = ""
    job: str | None = None
    detail: str = ""  # the error, the lease holder, the scheduler's state
    stale: bool = False  # SLURM says its job runs, but the run is finished or its lease expired


@dataclass(frozen=True)
class SlurmJob:
    """What squeue says of one job: enough to tell whether it is a sweep's own."""

    state: str
    name: str = ""
    submitted: float | None = None  # epoch seconds
    workdir: str = ""


def slurm_jobs() -> dict[str, SlurmJob] | None:
    """{job id: SlurmJob} of this user's SLURM jobs (array tasks as ``<array>_<task>``), or None
    when no scheduler answers."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%j|%V|%Z"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    except (subprocess.TimeoutExpired, OSError):
        return None
    if out.returncode != 0:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5:
            jobs[parts[0]] = SlurmJob(parts[1], parts[2], _epoch(parts[3]), parts[4])
    return jobs


def _epoch(stamp: str) -> float | None:
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


SUBMIT_SLACK_S = 300  # a scheduler's clock may run behind the launching host's


def is_launch_job(job: SlurmJob, launch: dict) -> bool:
    """Whether a job squeue lists under a launch's job id is that launch's: the name, the working
    directory and a submit time no earlier than the launch (what the launch recorded of them).
    Ids restart after a cluster restart and wrap, so an id alone names another job in time."""
    if launch.get("job_name") and job.name != launch["job_name"]:
        return False
    if launch.get("cwd") and job.workdir and job.workdir != launch["cwd"]:
        return False
    t = launch.get("t")
    return not (t is not None and job.submitted is not None and job.submitted < t - SUBMIT_SLACK_S)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def launch_job_states(launch: dict, slurm: dict[str, SlurmJob] | None) -> dict[str, str | None]:
    """{job id: scheduler state, "GONE" once it left the queue (or its id names another job now),
    or None when it cannot be asked from here} for one launch's jobs (SLURM array tasks, or
    local workers' pids)."""
    cluster = launch.get("cluster")
    ids = [*launch.get("jobs", {}).values(), *launch.get("workers", [])]
    if cluster == "slurm":
        if slurm is None:
            return dict.fromkeys(ids)
        return {j: slurm[j].state if j in slurm and is_launch_job(slurm[j], launch) else "GONE" for j in ids}
    if cluster == "local" and launch.get("host") == socket.gethostname():
        return {j: "RUNNING" if _pid_alive(int(j)) else "GONE" for j in ids}
    return dict.fromkeys(ids)


#: seconds after a run ended before a job SLURM still calls running is stale (a job exits for a few
#: seconds); $WAB_STALE_AFTER_S sets another
STALE_AFTER_S = float(os.environ.get("WAB_STALE_AFTER_S", 60))


def run_status(
    rd: RunDir,
    job: str | None = None,
    job_state: str | None = None,
    submitted_at: float | None = None,
    own_job: bool = True,
) -> RunStatus:
    """The state of one run directory. ``job`` is the latest job a launch sent it to (at
    ``submitted_at``, epoch seconds), ``job_state`` what the scheduler says of that job (None:
    unknown, "GONE": it left the queue); ``own_job`` false for a pool's workers, which go on to
    other runs (never stale for one run's end)."""
    state = rd.state()
    holder = read_lease(rd.path) if rd.path.exists() else None
    if job is None and (rd.path / "job.err").is_symlink():  # no manifest (the hydra path): its log names the job
        job = Path(os.readlink(rd.path / "job.err")).name.removesuffix("_log.err").rsplit("_", 1)[0]
    recorded_after = submitted_at is not None and rd.final.exists() and rd.final.stat().st_mtime > submitted_at
    detail = ""
    if holder is not None and holder.is_live() and state not in FINISHED:
        state, detail = "running", holder.describe()
    elif state == "diverged":
        error = ((rd.read_final() or {}).get("error") or "").strip().splitlines()
        detail = error[0][:100] if error else ""
    elif state == "done":
        pass
    elif submitted_at is not None and job_state in _ALIVE and not (state in ("failed", "corrupt") and recorded_after):
        state, detail = "queued", f"job {job} {job_state.lower()}"
    elif state == "corrupt":
        detail = rd.final_problem() or ""
    elif state == "failed":
        error = ((rd.read_final() or {}).get("error") or "").strip().splitlines()
        detail = error[0][:100] if error else ""
    elif submitted_at is not None and job_state is None and state == "not launched":
        state, detail = "queued", "submitted; no process has started it yet"
    elif submitted_at is not None and job_state is not None:
        gone = "ended" if job == "debug" else "left the queue" if job_state == "GONE" else job_state.lower()
        state, detail = "dead", f"job {job} {gone}"
    # a job whose run ended moments ago is still exiting (its last records, the interpreter's exit): not stale yet
    ended = rd.final.stat().st_mtime if state in FINISHED and rd.final.exists() else None
    ended = ended if ended is not None else holder.heartbeat if holder is not None and not holder.is_live() else None
    stale = (own_job and job_state == "RUNNING" and ended is not None and time.time() - ended > STALE_AFTER_S
             and (state in FINISHED or (holder is not None and not holder.is_live())))  # fmt: skip
    if stale:  # e.g. a killed slurmstepd: the job holds its slot and blocks the arrays chained after it
        why = "the run is finished" if state in FINISHED else "its lease expired"
        detail += f"{'; ' if detail else ''}stale: SLURM says job {job} runs but {why} (wab cancel --stale ends it)"
    if state in ("running", "incomplete", "dead") and rd.metrics.exists():
        detail += f"{'; ' if detail else ''}last progress {_ago(rd.metrics.stat().st_mtime)} ago"
    if state not in FINISHED and (rd.path / "job.err").is_symlink():
        detail += f"{'; ' if detail else ''}log {rd.path / 'job.err'}"
    return RunStatus(rd.path.name, rd.path, state, job=job, detail=detail, stale=stale)


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"


def read_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _pool_worker(run: Path, workers: list[str]) -> str | None:
    """The pool worker that took a run: its lease's holder while it trains, after that the job
    whose logs the run's ``job.out`` links to (``.submitit/<job>/``); None before any took it."""
    holder = read_lease(run) if run.exists() else None
    if holder is not None and (found := [w for w in workers if w in (holder.job, str(holder.pid))]):
        return found[0]
    link = run / "job.out"
    if link.is_symlink() and (job := Path(os.readlink(link)).parent.name) in workers:
        return job
    return None


def directory_status(directory: str | os.PathLike) -> list[RunStatus]:
    """Every run of a sweep (its manifest's runs, in grid order) or, for any other directory,
    every run directory below it."""
    from wab.run.records import find_runs

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return [run_status(RunDir(p)) for p in find_runs(directory)]
    launches = manifest.get("launches", [])
    slurm = slurm_jobs() if any(la.get("cluster") == "slurm" for la in launches) else None
    job_states = [launch_job_states(la, slurm) for la in launches]
    rows = []
    for r in manifest["runs"]:
        job, job_state, at = r.get("job_id"), None, r.get("submitted_at")
        i, own_job = r.get("launch"), True
        if i is not None and at is not None and 0 <= i < len(launches):
            la, states = launches[i], job_states[i]
            if la.get("cluster") == "debug":  # it ran in the launching process, which has returned
                job, job_state = "debug", "GONE"
            elif la.get("workers"):  # a pool (local, or SLURM past MaxArraySize): alive while a worker is
                alive = [states[w] for w in la["workers"]]
                job = ",".join(la["workers"]) if la.get("cluster") == "local" else la["workers"][0].split("_")[0]
                if (taken := _pool_worker(directory / r["run_id"], la["workers"])) is not None:
                    job = taken
                live, own_job = [a for a in alive if a in _ALIVE], False
                job_state = "RUNNING" if "RUNNING" in live else live[0] if live else None if None in alive else "GONE"
            elif job:
                job_state = states.get(job)
        status = run_status(RunDir(directory / r["run_id"]), job, job_state, at, own_job)
        log = directory / ".submitit" / str(job) / f"{job}_0_log.err"
        if status.state not in FINISHED and "log " not in status.detail and job and log.exists():
            status.detail += f"{'; ' if status.detail else ''}log {log}"  # killed before it could link its log
        if job_state is None and job and slurm is None and at is not None and status.state not in FINISHED + BUSY[:1]:
            status.detail += f"{'; ' if status.detail else ''}the scheduler did not answer: job {job} unknown"
        status.overrides = " ".join(r["overrides"])
        rows.append(status)
    return rows


def format_status(rows: list[RunStatus]) -> str:
    width = max((len(r.run_id) for r in rows), default=6)
    lines = [f"{'run':<{width}}  {'state':<12}  {'job':<10}  overrides"]
    for r in rows:
        extra = f"  ({r.detail})" if r.detail else ""
        lines.append(f"{r.run_id:<{width}}  {r.state:<12}  {r.job or '-':<10}  {r.overrides}{extra}")
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    if any("the scheduler did not answer" in r.detail for r in rows):
        lines.append("")
        lines.append("SLURM did not answer (squeue failed or timed out): these states come from the run files alone; "
                     "a job may still be waiting. Run wab status again once the controller is back.")  # fmt: skip
    lines.append("")
    lines.append(
        ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("done", "failed")) + f" ({len(rows)} runs)"
    )
    return "\n".join(lines)
