"""Every method's tiny run into OUT_DIR with the given backend: ``python tests/run_methods.py OUT local``,
or under ``torchrun --nproc_per_node=K tests/run_methods.py OUT distributed`` (tests/test_distributed.py);
overrides after the backend apply to every run (``trainer.members=batched``)."""

import sys

from wab.method import available_methods
from wab.run.config import compose_config, method_override
from wab.run.lifecycle import run

TINY = ["data=digits", "model.width=4", "population.size=4", "trainer.epochs=2", "trainer.batch_size=128",
        "trainer.progress=false", "trainer.lmc_points=3", "device=cpu", "trainer.threads=1"]  # fmt: skip
MERGE_SETTINGS = ["finalizer.fisher.examples=24", "finalizer.regmean.examples=64"]  # few examples: fast
EXTRA = {  # settings that make a method act within two tiny epochs (a method not listed runs at its defaults)
    "independent": ["population.finalizers=[rebasin,greedy_soup,fisher,regmean]", *MERGE_SETTINGS],
    "dart": ["method.every_steps=5", "population.finalizers=[fisher,dare]", "finalizer.fisher.variant=sampled",
             "finalizer.dare.combine=ties", *MERGE_SETTINGS],
    "papa": ["method.every=3"],
    "papa_all": ["method.every_epochs=1", "method.repair_batches=2", "method.repair_batch_size=64"],
    "papa_2": ["method.every_epochs=1", "method.repair_batches=2", "method.repair_batch_size=64"],
    "swa": ["method.start=0.5"],
    "twa": ["method.epochs=1", "method.candidates=both", "method.snapshot_start=0.5"],
    "twa_t": ["method.epochs=1", "method.candidates=both", "method.snapshot_start=0.5", "method.variant=t"],
    "wash": ["method.p=0.1"],
    "wash_opt": ["method.p=0.1"],
    "local_sgd": ["method.every_steps=3", "population.finalizers=[model_stock,task_arithmetic,ties,dare,regmean]",
                  *MERGE_SETTINGS],
    "diloco": ["method.every_steps=4"],
    "sparta": ["method.p=0.05"],
    "gossip": ["method.topology=random_peer"],
    "lookaround": ["method.every_steps=3"],
}
VARIANTS = ["twa_t"]  # a label beyond the registry's names: a method (twa) and its variant (t)
METHODS = [*available_methods(), *VARIANTS]  # every registered method: a new one is in every test that uses this


def configs(out_dir: str, backend: str, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """{label: config}: a label is a method, or a method and its variant (``twa_t``); ``extra``:
    overrides for every run."""
    return {
        m: compose_config(
            [
                method_override(m.removesuffix("_t")),
                *TINY,
                *EXTRA.get(m, []),
                f"population.backend={backend}",
                f"out_dir={out_dir}",
                *extra,
            ]
        )  # fmt: skip
        for m in METHODS
    }


if __name__ == "__main__":
    for method, cfg in configs(sys.argv[1], sys.argv[2], tuple(sys.argv[3:])).items():
        record = run(cfg)
        if record.get("status") not in ("done", None):
            raise SystemExit(f"{method}: {record.get('status')} {record.get('error')}")
