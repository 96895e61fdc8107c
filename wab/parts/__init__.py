"""The parts a run is made of, each on its own: datasets (``data``), batched augmentation
(``augment``), models (``models``), the optimizer and lr schedules (``optim``), devices and
threads (``device``), training cost (``cost``) and network-link models (``network``). A part
imports other parts and :mod:`wab.errors`, nothing else of wab."""
