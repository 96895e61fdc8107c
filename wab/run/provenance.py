"""Where a run's code came from: the wab version and, for a git checkout, its commit and whether
the tree had uncommitted changes (records written by different code must not be pooled unseen)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import wab

_REPO = Path(wab.__file__).resolve().parent.parent
CODE = ("wab", "methods", "configs", "analysis")  # the folders whose files make a run's results


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


_FIRST: dict[str, str | bool | None] | None = None  # the checkout as this process first saw it


def _checkout() -> dict[str, str | bool | None]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=all", "--", *CODE) if commit else None
    return {
        "wab_version": wab.__version__,
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
    }


def provenance() -> dict[str, str | bool | None]:
    """``{"wab_version", "git_commit", "git_dirty"}``; commit and dirty are None outside a git
    checkout. Dirty means the code folders (``wab/``, ``methods/``, ``configs/``, ``analysis/``)
    differ from the commit: a tracked file changed, or a file git does not track and does not
    ignore (a new method the commit has not got). Files outside them do not count: run outputs,
    also a committed study's (its manifest changes as its sweep resumes), and the docs.

    Read afresh on every call, as one worker process (the local pool's, a SLURM array task's)
    trains run after run while the checkout may move on. Such a process runs the modules it
    imported first beside ones it imports later (a method's, lazily), so once the checkout
    differs from what it first saw (another commit, or uncommitted changes then), its runs are
    recorded as dirty: they ran code of no single commit."""
    global _FIRST
    now = _checkout()
    if _FIRST is None:
        _FIRST = now
    elif now["git_commit"] != _FIRST["git_commit"] or _FIRST["git_dirty"]:
        now["git_dirty"] = True
    return now
