"""``wab demo``: every registered method on the embedded digits set, on CPU, then a comparison."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from wab.analysis.collect import collect_runs
from wab.analysis.report import write_report
from wab.method import available_methods, get_method
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


def comparison_table(root: str | Path) -> pd.DataFrame:
    """Individual, ensemble, averaged and final-model accuracy (%) and communication, one row per run."""
    df, _ = collect_runs(root)
    if df.empty:
        return df
    df = df[df["status"] == "done"].reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    for col in ACCURACIES:  # in percent, as the report gives them
        df[col] = df[col] * 100
    return df.sort_values("method").reset_index(drop=True)


def demo(out: str = "results/demo", epochs: int | None = None, methods: list[str] | None = None) -> int:
    names = methods or available_methods()
    for name in names:
        get_method(name)  # unknown names fail here, with the list of known ones
    failed = 0
    for name in names:
        overrides = [method_override(name), *DEMO_OVERRIDES, *get_method(name).demo_overrides, f"out_dir={out}"]
        if epochs:
            overrides.append(f"trainer.epochs={epochs}")
        t0 = time.perf_counter()
        record = run(compose_config(overrides))
        failed += record["status"] == "failed"
        print(f"{name:>14s}: {record['status']} in {time.perf_counter() - t0:.1f}s", flush=True)
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
    print(f"\nruns in {out}/")
    print(f"report: {write_report(out)}")
    return 1 if failed else 0
