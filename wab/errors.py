"""Errors a user can fix: the CLI prints them as one line and exits non-zero, without a traceback
(``--verbose`` shows it)."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """Bad input (a value, a path, a missing dataset, no cluster): the message says what and how to fix it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def directory_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why ``path`` cannot be (or become) a writable directory, or None; nothing is left behind
    (a probe directory is made in the nearest existing ancestor and removed)."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{what}={path}: {probe} is a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".wab-probe-"))
    except OSError as e:
        return f"{what}={path} is not writable ({e.strerror} in {probe})"
    return None
