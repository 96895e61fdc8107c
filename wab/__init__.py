"""wab, the weight-averaging benchmark.

A population trainer that runs every weight-averaging method as a plugin, measured the same way.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository's hydra configs (``configs/`` beside this package; wab is installed editable).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
