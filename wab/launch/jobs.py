"""What a sweep's job runs on its node: one run (:class:`RunJob`, a SLURM array task) or a pool
worker going through many (:class:`PoolWorker`: the local pool, and SLURM sweeps larger than one
array), its log links, and what a signal does (:func:`job_signals`). Submitted by
:mod:`wab.launch.sweep`, also used by ``wab train -m`` (the hydra path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import submitit

from wab.launch.status import FINISHED
from wab.run.lease import RunLeased, read_lease
from wab.run.lifecycle import run, run_dir_for
from wab.run.loop import Interrupted, clear_stop, request_stop


def link_job_logs(cfg: dict[str, Any]) -> None:
    """``job.out`` and ``job.err`` in the run directory point at this job's submitit logs, unless
    the run is finished or another live process trains it (a duplicate job, e.g. after a lost
    manifest, does nothing and must not take the links)."""
    try:
        paths = submitit.JobEnvironment().paths
    except RuntimeError:  # not inside a submitit job (the debug cluster)
        return
    rd = run_dir_for(cfg)
    holder = read_lease(rd.path) if rd.path.exists() else None
    if rd.state() in FINISHED or (holder is not None and holder.is_live()):
        return
    rd.path.mkdir(parents=True, exist_ok=True)
    for name, target in (("job.out", paths.stdout), ("job.err", paths.stderr)):
        tmp = rd.path / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.abspath(target), tmp)
        os.replace(tmp, rd.path / name)


class RunJob(submitit.helpers.Checkpointable):
    """The callable each array task runs: one run, resumed from its checkpoint if it has one
    (see :func:`job_signals` for what a signal does). A run another live process holds (a
    relaunch raced a running job) is left to it."""

    def __call__(self, cfg: dict[str, Any]) -> str:
        if cfg["population"].get("backend") == "distributed":  # one task per process of the run
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if int(os.environ.get("RANK", 0)) == 0:
            link_job_logs(cfg)
        try:
            with job_signals(lambda: cfg):
                status = run_unless_leased(cfg)
        except Interrupted:  # stopped by TERM with a checkpoint: said in train.log, no traceback in job.err
            return "interrupted"
        if status in ("failed", "lost") and cfg["population"].get("backend") == "distributed":
            raise SystemExit(1)  # a non-zero exit: srun ends the run's other tasks, which may wait in a collective
        return status


class PoolWorker(submitit.helpers.Checkpointable):
    """One of the ``array_parallelism`` workers of a local sweep, or of a SLURM sweep larger than
    one array: goes through the runs in order
    and trains each one that is not finished and that no other worker holds (the run's lease
    decides), so at most that many runs train at once and none twice."""

    def __call__(self, cfgs: list[dict[str, Any]]) -> list[str]:
        if any(c["population"].get("backend") == "distributed" for c in cfgs):  # a SLURM pool of multi-task workers
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        current: list[dict[str, Any]] = [{}]
        out = []
        try:
            with job_signals(lambda: current[0]):
                for cfg in cfgs:
                    current[0] = cfg
                    if int(os.environ.get("RANK", 0)) == 0:
                        link_job_logs(cfg)
                    out.append(run_unless_leased(cfg))
        except Interrupted:  # stopped by TERM with a checkpoint: the worker ends, the rest waits for a relaunch
            out.append("interrupted")
        return out


def run_unless_leased(cfg: dict[str, Any]) -> str:
    rd = run_dir_for(cfg)
    if rd.state() in FINISHED:
        return rd.state()
    try:
        return run(cfg)["status"]
    except RunLeased:
        return "leased"


@contextlib.contextmanager
def job_signals(current_cfg: Callable[[], dict[str, Any]]) -> Iterator[None]:
    """What a job does on a signal, while it runs a run (``current_cfg()``):

    - USR2 (submitit asks SLURM for it ``signal_delay_s`` before the time limit; sites that set
      ``send_user_signal`` send it on preemption): the trainer saves a checkpoint at the next step
      boundary, then submitit requeues the job, at most ``max_requeues`` times after time limits
      (a run that gives up says so in its train.log);
    - TERM (``scancel``, ``scontrol requeue``, preemption on most sites): the trainer saves a
      checkpoint at the next step boundary and the job exits; SLURM itself requeues a job it
      requeued or preempted, and a cancelled run resumes when the sweep is launched again.
    """
    submitit_usr2 = signal.getsignal(signal.SIGUSR2)
    previous_term = signal.getsignal(signal.SIGTERM)
    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        request_stop()

    clear_stop()
    signal.signal(signal.SIGUSR2, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except Interrupted:
        if received and received[-1] == signal.SIGUSR2 and callable(submitit_usr2):
            try:
                submitit_usr2(signal.SIGUSR2, None)  # checkpoint() + requeue + exit
            except submitit.core.utils.UncompletedJobError as e:
                _note(current_cfg(), f"the job gives up: {e} Launch the sweep again to continue from the checkpoint.")
                raise
        elif received:
            _note(current_cfg(), f"{signal.Signals(received[-1]).name} received: checkpoint saved; the job exits "
                                 "(launch the sweep again with wab sweep to resume it)")  # fmt: skip
        raise
    finally:
        clear_stop()
        signal.signal(signal.SIGUSR2, submitit_usr2)
        signal.signal(signal.SIGTERM, previous_term)


def _note(cfg: dict[str, Any], message: str) -> None:
    """A line in the run's train.log, after its own logging ended."""
    if cfg:
        with open(run_dir_for(cfg).log, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {message}\n")
