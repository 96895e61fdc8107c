"""``wab demo``: every registered method on the embedded digits set, on CPU, then a comparison."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from wab.analysis.collect import collect_runs
from wab.analysis.report import write_report
from wab.errors import UserError
from wab.method import available_methods, get_method
from wab.parts.device import free_cores
from wab.run.config import compose_config, method_override
from wab.run.lifecycle import run

DEMO_OVERRIDES = (
    "data=digits",
    "model=cnn",
    "population.size=4",
    "trainer.epochs=8",
    "trainer.batch_size=32",
    "trainer.eval_every=2",
    "trainer.progress=false",
    "device=cpu",
)

COLUMNS = {
    "variant": "method",
    "metrics.individual_mean": "individual",
    "metrics.ensemble_acc": "ensemble",
    "metrics.avg_acc": "averaged",
    "metrics.avg_bn_acc": "averaged+BN",
    "metrics.final_model": "final model",
    "metrics.final_acc": "final",
    "comm.elements_per_step": "comm/step",
    "wall_time_s": "time (s)",
}


ACCURACIES = ("individual", "ensemble", "averaged", "averaged+BN", "final")
# one row of the report's method x merge grid: an independent population from one initialisation
# (the anchor of the task-vector merges: model soups' setting), merged six ways at the end of the run
MERGE_METHOD = "independent"
MERGES = ("fisher", "regmean", "model_stock", "task_arithmetic", "ties", "dare")
MERGE_OVERRIDES = (
    "population.same_init=true",
    f"population.finalizers=[{','.join(MERGES)}]",
    "finalizer.fisher.examples=256",
    "finalizer.regmean.examples=256",
)


def comparison_table(root: str | Path) -> pd.DataFrame:
    """Individual, ensemble, averaged and final-model accuracy (%) and communication, one row per run."""
    df, _ = collect_runs(root)
    if df.empty:
        return df
    finalizers = df.get("config.population.finalizers", pd.Series([[]] * len(df), index=df.index))
    plain = finalizers.map(lambda f: not f if isinstance(f, list) else True)  # the merge row is printed apart
    df = df[(df["status"] == "done") & plain].reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    for col in ACCURACIES:  # in percent, as the report gives them
        df[col] = df[col] * 100
    return df.sort_values("method").reset_index(drop=True)


def _demo_run(name: str, extra: tuple[str, ...], out: str, epochs: int | None, label: str) -> dict:
    """One demo run of method ``name`` (with ``extra`` overrides) into ``out``; prints its status."""
    overrides = [method_override(name), *DEMO_OVERRIDES, *get_method(name).demo_overrides, *extra, f"out_dir={out}"]
    if epochs:
        overrides.append(f"trainer.epochs={epochs}")
    t0 = time.perf_counter()
    record = run(compose_config(overrides))
    print(f"{label:>20s}: {record['status']} in {time.perf_counter() - t0:.1f}s", flush=True)
    return record


def demo(out: str = "results/demo", epochs: int | None = None, methods: list[str] | None = None,
         threads: int | None = None) -> int:  # fmt: skip
    """Every method (or ``methods``) on digits, then the comparison table and the report. ``threads``:
    CPU threads per run (default: the cores the machine's load leaves free, :func:`free_cores`)."""
    names = methods or available_methods()
    for name in names:
        get_method(name)  # unknown names fail here, with the list of known ones
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: give a number of CPU threads >= 1")
    chosen = threads or free_cores()
    print(f"{len(names)} method{'s' if len(names) > 1 else ''}, {chosen} CPU thread{'s' if chosen > 1 else ''} each"
          f"{'' if threads else ' (the cores the load leaves free; --threads to choose)'}", flush=True)  # fmt: skip
    extra = (f"trainer.threads={chosen}",)
    total = len(names) + (MERGE_METHOD in names)
    records = {name: _demo_run(name, extra, out, epochs, f"{i}/{total} {name}") for i, name in enumerate(names, 1)}
    merge_row = None
    if MERGE_METHOD in names:
        merge_row = _demo_run(MERGE_METHOD, (*MERGE_OVERRIDES, *extra), str(Path(out) / "merging"), epochs,
                              f"{total}/{total} + merges")  # fmt: skip
        records["+ merges"] = merge_row
    failed = sum(r["status"] == "failed" for r in records.values())
    table = comparison_table(out)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print()
        print(table.to_string(index=False))
        print("(accuracies in %)")
    notes: dict[str, list[str]] = {}  # a note shared by several methods (WASH+Opt inherits WASH's) once
    for n in names:
        if note := get_method(n).demo_note:
            notes.setdefault(note, []).append(n)
    if notes:
        print("\nnot the papers' settings (the demo is a few hundred steps; see results/reference for the defaults):")
        for note, which in notes.items():
            print(f"  {' and '.join(which)}: {note}")
    if merge_row is not None and merge_row["status"] == "done":
        m = merge_row["metrics"]
        cells = [f"ensemble {100 * m['ensemble_acc']:.1f}", f"uniform average {100 * m['avg_bn_acc']:.1f}"]
        cells += [f"{k} {100 * v['acc']:.1f}" for k, v in m["final"].items()]
        print(f"\none row of the method x merge grid: {MERGE_METHOD} from one initialisation, its members merged (%):")
        print("  " + " | ".join(cells))
    print(f"\nruns in {out}/")
    print(f"report: {write_report(out)}")
    return 1 if failed else 0
