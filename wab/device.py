"""The training device, and host-to-device copies that do not stall it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def to_device(x: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """A host array or tensor on ``device``. To CUDA it goes through pinned memory without
    blocking: a plain ``.to("cuda")`` from pageable memory synchronises the stream, which would
    idle the GPU once per copy (the trainer copies random draws for every member every step)."""
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
