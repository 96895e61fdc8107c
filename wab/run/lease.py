"""Leases: at most one process trains a run directory at a time, also across nodes on NFS.

A process that trains a run holds a lease in ``<run>/.lease/``: a file named by a generation
number (``00000003.json``) holding who holds it (host, pid, SLURM job) and a heartbeat time that
a background thread refreshes every ``timeout / 6`` seconds. A lease is created with
``os.link`` from a complete temporary file, which is atomic and exclusive on local filesystems
and NFS alike: of two processes creating the same generation, one wins. A lease is live while
its heartbeat is younger than the timeout (``WAB_LEASE_TIMEOUT_S``, default 180 s); it is dead at
once when its holder ran on this host and that process is gone, or when the holder was an
earlier incarnation of this very SLURM job (a requeue). A dead lease is taken over by creating
the next generation; the holder of an older generation that wakes up finds a newer one (or its
own file gone), knows it lost the run, and stops without writing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from wab.errors import UserError

LEASE_DIR = ".lease"


def timeout_s() -> float:
    """Seconds without a heartbeat after which a lease held elsewhere counts as dead."""
    return float(os.environ.get("WAB_LEASE_TIMEOUT_S", 180))


def slurm_job() -> str | None:
    """This process's SLURM job (``<array job>_<task>`` for an array task), kept across requeues."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lease, from its file."""

    gen: int
    token: str
    host: str
    pid: int
    job: str | None
    started: float
    heartbeat: float

    def describe(self) -> str:
        job = f", job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}, heartbeat {time.time() - self.heartbeat:.0f} s ago"

    def is_live(self) -> bool:
        """Whether the holder may still be training the run."""
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return True
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False  # it ran here and is gone
            except PermissionError:
                pass  # another user's process: alive
        if self.job and self.job == slurm_job():
            return False  # an earlier incarnation of this job: SLURM requeued it, so it is dead
        return time.time() - self.heartbeat < timeout_s()


class RunLeased(UserError):
    """Another live process holds the run's lease."""

    def __init__(self, run: Path, holder: Holder) -> None:
        self.holder = holder
        super().__init__(f"run {run.name} is being trained by {holder.describe()}; not starting a second copy")


class LeaseLost(Exception):
    """Another process took over the run while this one held its lease (it was frozen too long)."""


def _gens(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit())


def _path(directory: Path, gen: int) -> Path:
    return directory / f"{gen:08d}.json"


def read_lease(run: str | os.PathLike) -> Holder | None:
    """The newest lease of a run directory, or None. An unreadable file reads as a dead lease."""
    directory = Path(run) / LEASE_DIR
    gens = _gens(directory)
    if not gens:
        return None
    try:
        d = json.loads(_path(directory, gens[-1]).read_text())
        return Holder(gens[-1], d["token"], d["host"], int(d["pid"]), d.get("job"), d["started"], d["heartbeat"])
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(gens[-1], "", "?", 0, None, 0.0, 0.0)


class Lease:
    """The lease of one run directory, held by this process from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run: str | os.PathLike) -> None:
        self.run = Path(run)
        self.dir = self.run / LEASE_DIR
        self.token = uuid.uuid4().hex
        self.gen = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        """True once another process took the run over (this one was frozen past the timeout)."""
        return self._lost.is_set()

    def _content(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "job": slurm_job(),
                "started": self.started,
                "heartbeat": time.time(),
            }  # fmt: skip
        ).encode()

    def _write_tmp(self) -> Path:
        tmp = self.dir / f".{self.token}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(self._content())
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def acquire(self) -> Lease:
        """Take the lease, or raise :class:`RunLeased` when a live process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            current = read_lease(self.run)
            if current is not None and current.is_live():
                raise RunLeased(self.run, current)
            gen = (current.gen if current else 0) + 1
            tmp = self._write_tmp()
            try:
                os.link(tmp, _path(self.dir, gen))
            except FileExistsError:
                continue  # another process took this generation first: look again
            finally:
                tmp.unlink(missing_ok=True)
            self.gen = gen
            for old in _gens(self.dir):
                if old < gen:
                    _path(self.dir, old).unlink(missing_ok=True)
            self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.run.name}", daemon=True)
            self._thread.start()
            return self
        raise RuntimeError(f"could not take the lease of {self.run} (too many concurrent attempts)")

    def held(self) -> bool:
        """Whether this lease is still the newest and still ours (checked on the filesystem)."""
        gens = _gens(self.dir)
        return bool(gens) and gens[-1] == self.gen and _path(self.dir, self.gen).exists()

    def _heartbeat(self) -> None:
        while not self._stop.wait(timeout_s() / 6):
            if not self.held():
                self._lost.set()
                return
            tmp = self._write_tmp()
            os.replace(tmp, _path(self.dir, self.gen))

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.gen and not self._lost.is_set() and self.held():
            _path(self.dir, self.gen).unlink(missing_ok=True)
        self.gen = 0

    def remove_empty_dir(self) -> None:
        """Remove the lease directory of a finished run once no lease is left in it."""
        try:
            self.dir.rmdir()
        except OSError:  # not empty (another process's lease), or already gone
            pass
