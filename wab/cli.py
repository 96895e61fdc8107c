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
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return train_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from wab.demo import demo as run_demo

        return run_demo(args.out, epochs=args.epochs, methods=args.methods)
    return 2


if __name__ == "__main__":
    sys.exit(main())
