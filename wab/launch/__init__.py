"""Launching runs: sweeps as submitit job arrays or local pools (``sweep``), what a job runs on
its node (``jobs``) and where every run of a directory stands (``status``). A launcher imports
the runs (:mod:`wab.run`), the plugin API, the core and the parts; never the command line or the
analysis."""
