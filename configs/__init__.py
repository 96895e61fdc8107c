"""wab's hydra config tree, installed as package data (``wab.configs``): ``config.yaml`` and the
groups ``method/``, ``data/``, ``model/``, ``optim/``, ``trainer/``, ``sweep/``, ``study/`` and
``hydra/launcher/``. Read it through :data:`wab.CONFIG_DIR`; it imports nothing."""
