"""Shared fixtures: tiny configs, the offline data root, and plugin registration helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wab.run.config import compose_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_root() -> Path | None:
    """The offline datasets: $WAB_DATA, else ../shared/data beside the checkout."""
    root = Path(os.environ.get("WAB_DATA", SHARED_DATA))
    return root if root.exists() else None


def requires_data(test):
    """Marks a test ``data`` (``pytest -m "not data"`` leaves it out) and skips it, with the
    reason, when the offline datasets are absent."""
    skip = pytest.mark.skipif(
        data_root() is None, reason=f"offline datasets not found (set WAB_DATA or provide {SHARED_DATA})"
    )
    return pytest.mark.data(skip(test))


def tiny_config(tmp_path: Path, *overrides: str) -> dict:
    """A run of a tiny CNN on digits that takes about a second on CPU."""
    return compose_config(
        [
            "data=digits",
            "model=cnn",
            "model.width=4",
            "population.size=3",
            "trainer.epochs=2",
            "trainer.batch_size=128",
            "trainer.progress=false",
            "device=cpu",
            f"out_dir={tmp_path}",
            *overrides,
        ]
    )


@pytest.fixture
def tiny(tmp_path):
    return lambda *overrides: tiny_config(tmp_path, *overrides)


@pytest.fixture
def registered():
    """``registered(name)``: like ``wab.method.register``, undone after the test."""
    from wab.method import register, unregister

    names = []

    def reg(name):
        names.append(name)
        return register(name)

    yield reg
    for n in names:
        unregister(n)
