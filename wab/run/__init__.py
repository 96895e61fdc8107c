"""One run, in rooms of one job each: composing its config (``config``), checking it once into a
typed spec (``spec``, ``validate``), building its components (``build``), the training loop
(``loop``), checkpointing (``checkpointing``), its records (``recorder``; the run directory and
its id, ``records``; saved models, ``saved_models``; external loggers, ``loggers``; provenance,
``provenance``), the lease that keeps it from training twice (``lease``) and its lifecycle from
directory to ``final.json`` (``lifecycle``). A run imports the plugin API (:mod:`wab.method`),
the core and the parts; never a launcher, the command line or the analysis."""
