"""Building a wheel and running wab as an installed package would: ``python -S`` with only the
install target and the test environment's dependencies on the path (no editable checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = sysconfig.get_paths()["purelib"]  # torch, hydra... of the environment running the tests


def build_and_install(source: Path, target: Path, work: Path) -> Path:
    """Build ``source`` (a project folder) into a wheel without network access and install it,
    without its dependencies, into ``target``; returns the wheel."""
    wheels = work / "wheels" / source.name
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, cwd=work, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    return wheel


def copy_of_wab(dest: Path) -> Path:
    """The files a wheel of wab is built from (so that building leaves nothing in the checkout)."""
    for name in ("wab", "methods", "analysis", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def installed_env(*paths: Path) -> dict[str, str]:
    """An environment whose Python finds ``paths`` first, then the dependencies, and not the checkout."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), DEPENDENCIES])}


def wab_installed(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``wab <args>`` from an install: ``python -S`` skips the site directory, so the editable
    checkout's import hook is not loaded."""
    return subprocess.run([sys.executable, "-S", "-m", "wab.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
