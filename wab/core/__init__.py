"""The population core: the N members as flat [N, P] rows (``population``), the processes they
span (``distributed``), the communication ledger (``ledger``), per-member checkpoint rows
(``member_rows``), the population's optimizer step (``step``) and evaluation (``evaluate``,
``lmc``). ``population`` and ``distributed`` are the only modules that know which process holds
which member. The core imports :mod:`wab.parts` and :mod:`wab.errors`, never a run, a launcher,
a method or the analysis."""
