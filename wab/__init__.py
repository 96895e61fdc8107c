"""wab, the weight-averaging benchmark.

A population trainer that runs every weight-averaging method as a plugin, measured the same way.
"""

from importlib.resources import files
from pathlib import Path

__version__ = "0.1.0"

#: wab's hydra configs: the package ``wab.configs``, installed from the top-level ``configs/``
#: (an editable install maps it to the checkout's folder, a wheel carries it as package data).
CONFIG_DIR = Path(str(files("wab.configs")))
