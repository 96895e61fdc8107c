"""The parts a run is made of, each on its own: datasets (``data``), batched augmentation
(``augment``), models (``models``), the optimizer and lr schedules (``optim``), devices and
threads (``device``), training cost (``cost``), network-link models (``network``) and files
written whole (``files``). A part imports other parts and :mod:`wab.errors`, nothing else of wab."""
