"""Files written whole: through a temporary file of their own, then moved into place, so that a
reader never sees a part and two writers (runs of a sweep decoding a dataset at once) never share
a temporary."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], Any], before_replace: Callable[[], Any] | None = None
) -> None:
    """Write `path` through a temporary file of its own in the same folder, then move it into place: a
    reader sees the old file or the new one, never a part, and two writers never share a temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide records from collaborators
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
