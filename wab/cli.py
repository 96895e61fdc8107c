"""The ``wab`` command: ``wab demo``, ``wab train [hydra overrides]``."""

from __future__ import annotations

import argparse
import sys

import hydra
from omegaconf import DictConfig

from wab import CONFIG_DIR

_last_status: list[str] = []


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _train_app(cfg: DictConfig) -> None:
    from wab.run import run, run_dir_for

    record = run(cfg)
    _last_status.append(record["status"])
    m = record.get("metrics", {})
    print(f"{record['status']}: {run_dir_for(cfg).path}")
    if record["status"] == "failed":
        print(record.get("error"), file=sys.stderr)
    elif m.get("individual_mean") is not None:
        print(
            f"individual {m['individual_mean']:.4f}  ensemble {m['ensemble_acc']:.4f}  "
            f"avg {m['avg_acc']:.4f}  avg_bn {m['avg_bn_acc']:.4f}  final ({m['final_model']}) {m['final_acc']:.4f}"
        )


def train_main(overrides: list[str]) -> int:
    """Run the hydra app with the given overrides (single run or -m multirun)."""
    argv = sys.argv
    sys.argv = ["wab train", *overrides]
    try:
        _train_app()
    finally:
        sys.argv = argv
    return 1 if "failed" in _last_status else 0


def sweep_main(config: str, cluster: str, dry_run: bool) -> int:
    from wab.sweep import launch, load_sweep, plan

    spec = load_sweep(config)
    if dry_run:
        for r in plan(spec):
            print(f"{r.run_id}  {r.dir.state():<12}  {' '.join(r.overrides)}")
        return 0
    manifest = launch(spec, cluster)
    last = manifest["launches"][-1]
    total = len(manifest["runs"])
    done = total - last["submitted"]
    print(f"sweep {spec.name}: {total} runs, {done} already finished, {last['submitted']} submitted")
    if last["jobs"]:
        print(f"job array: {sorted(set(j.split('_')[0] for j in last['jobs'].values()))}")
    print(f"follow it with: wab status {spec.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wab", description="wab, the weight-averaging benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small population on digits for every method and compare")
    demo.add_argument("--out", default="results/demo", help="where the runs go (default: results/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    demo.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    sub.add_parser(
        "train",
        help="train one run: wab train [hydra overrides], e.g. method=independent population.size=4",
        add_help=False,
    )
    sweep = sub.add_parser("sweep", help="launch a grid of runs as one job array (returns after submission)")
    sweep.add_argument("config", help="a sweep YAML file, or the name of one in configs/sweep/")
    sweep.add_argument("--cluster", required=True, choices=["slurm", "local", "debug"], help="where the jobs run")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their states; submit nothing")
    status = sub.add_parser("status", help="each run's state in a sweep directory, from the files alone")
    status.add_argument("sweep_dir")
    report = sub.add_parser("report", help="tables, figures and a summary page from every run under a directory")
    report.add_argument("results", help="a results directory (searched recursively for runs)")
    report.add_argument("--out", default=None, help="where the report goes (default: <results>/report)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return train_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "sweep":
        return sweep_main(args.config, args.cluster, args.dry_run)
    if args.command == "status":
        from wab.sweep import format_status, sweep_status

        print(format_status(sweep_status(args.sweep_dir)))
        return 0
    if args.command == "report":
        from wab.analysis.report import write_report

        print(f"report written: {write_report(args.results, args.out)}")
        return 0
    if args.command == "demo":
        from wab.demo import demo as run_demo

        return run_demo(args.out, epochs=args.epochs, methods=args.methods)
    return 2


if __name__ == "__main__":
    sys.exit(main())
