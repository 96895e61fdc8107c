"""The ``wab`` command: ``demo``, ``train``, ``sweep``, ``status``, ``report``.

Every user error (a bad value, missing data, an empty results directory, no cluster) is one
line on stderr and exit status 2, without a traceback (``--verbose`` shows it). ``wab train``
checks its config before it creates anything; Ctrl-C stops it at the next step boundary with a
checkpoint, and rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator

from tqdm.auto import tqdm

from wab.errors import UserError

INTERRUPTED = 130  # the shell's code for a Ctrl-C
_last_status: list[str] = []


class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def _console_logging() -> None:
    log = logging.getLogger("wab")
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


@contextlib.contextmanager
def _ctrl_c_checkpoints() -> Iterator[None]:
    """A first Ctrl-C asks for a checkpoint at the next step boundary (an evaluation under way
    finishes first; the final one completes the run); a second one stops at once."""
    from wab.run.loop import request_stop, stop_requested

    def handler(signum, frame):
        if stop_requested():
            raise KeyboardInterrupt
        request_stop()
        print("\nstopping at the next step boundary to save a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr)  # fmt: skip

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary(record: dict) -> str:
    m = record.get("metrics") or {}
    if m.get("individual_mean") is None:
        return ""
    return (
        f"individual {m['individual_mean']:.4f}  ensemble {m['ensemble_acc']:.4f}  avg {m['avg_acc']:.4f}  "
        f"avg_bn {m['avg_bn_acc']:.4f}  final ({m['final_model']}) {m['final_acc']:.4f}"
    )


def train_one(overrides: list[str]) -> int:
    """``wab train`` without -m: check the config, then train (or resume) its run."""
    from wab.run.lifecycle import process_group, run, run_dir_for
    from wab.run.loop import Interrupted
    from wab.run.validate import compose_checked, validate

    cfg = compose_checked(overrides)
    validate(cfg)
    group = process_group(cfg)
    if group.rank != 0:  # another process of a distributed run: the main one reports
        return _follow(cfg, group)
    rd = run_dir_for(cfg)
    state = rd.state()
    if state in ("done", "diverged"):
        if group.world > 1:
            run(cfg, group)  # the other processes wait for the main one's word that there is nothing to do
        print(f"already {state}: {rd.path} (nothing to do; delete the directory to train it again)")
        record = rd.read_final() or {}
        if line := _summary(record):
            print(line)
        if note := _code_changed(cfg, record):
            print(note, file=sys.stderr)
        return 0
    _console_logging()
    try:
        with _ctrl_c_checkpoints():
            record = run(cfg, group)
    except Interrupted as e:
        print(f"interrupted: {e} in {rd.path}; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        where = f"the last checkpoint is {rd.checkpoint}" if rd.checkpoint.exists() else "no checkpoint was saved yet"
        print(f"\ninterrupted: {where}; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
    print(f"{record['status']}: {rd.path}")
    if record["status"] in ("failed", "lost"):
        print(f"{record.get('error')} (traceback in {rd.final})", file=sys.stderr)
        return 1
    if line := _summary(record):
        print(line)
    return 0


def _code_changed(cfg: dict, record: dict) -> str | None:
    """A warning when the method's source file differs from the one the finished run recorded:
    the run id names the config, not the code, so the record may be stale."""
    from wab.method import method_of, source_hash

    recorded = (record.get("method_source") or {}).get("source_sha256")
    now = source_hash(method_of(cfg))
    if recorded is None or now is None or recorded == now:
        return None
    cls = method_of(cfg)
    return (f"note: {cls.__module__} changed since this run was trained (its record is of the code before); "
            "delete the run directory, or change a setting, to train it with the code as it is now")


def _follow(cfg: dict, group) -> int:
    """A non-main process of a distributed run: train, quietly; its exit status follows the run."""
    from wab.run.lifecycle import run
    from wab.run.loop import Interrupted

    try:
        with _ctrl_c_checkpoints():
            record = run(cfg, group)
    except (Interrupted, KeyboardInterrupt):
        return INTERRUPTED
    return 1 if record.get("status") in ("failed", "lost") else 0


def train_multirun(overrides: list[str]) -> int:
    """``wab train -m``: hydra's multirun and its launchers. Each job checks its config, honours
    USR2 and TERM as a sweep's jobs do, and uses ``cpus_per_task`` threads; the command exits
    non-zero when a run of it failed or was invalid. ``wab sweep`` is the supported path to a
    cluster (manifest, validation of every point before submission, relaunch, cancel)."""
    import time

    import hydra
    from omegaconf import DictConfig

    from wab import CONFIG_DIR
    from wab.run.config import method_overrides

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
    def app(cfg: DictConfig) -> None:
        from wab.launch.jobs import job_signals, link_job_logs
        from wab.run.lease import RunLeased
        from wab.run.lifecycle import plain_config, run, run_dir_for
        from wab.run.loop import Interrupted
        from wab.run.validate import check_config

        cfg = plain_config(cfg)
        cfg.pop("hydra", None)
        problems = check_config(cfg)
        if problems:
            _last_status.append("invalid")
            print("invalid config: " + "; ".join(problems), file=sys.stderr)
            return
        link_job_logs(cfg)  # job.out and job.err in the run directory, as a sweep's jobs do
        try:
            with job_signals(lambda: cfg):
                record = run(cfg)
        except RunLeased as e:
            print(e, file=sys.stderr)
            return
        except Interrupted as e:  # TERM or USR2: a checkpoint is saved; one line, as wab train prints
            _last_status.append("interrupted")
            print(f"interrupted: {e} in {run_dir_for(cfg).path}; run the same command again to resume",
                  file=sys.stderr)  # fmt: skip
            return
        _last_status.append(record["status"])
        print(f"{record['status']}: {run_dir_for(cfg).path}")
        if record["status"] == "failed":
            print(record.get("error"), file=sys.stderr)

    _check_multirun(overrides)
    import submitit  # noqa: F401  (configures its logger on import: before ours, not after)

    logging.getLogger("submitit").setLevel(logging.ERROR)  # its polling warns twice a poll when sacct is missing
    _last_status.clear()
    t0, argv = time.time(), sys.argv
    sys.argv = ["wab train", *method_overrides(overrides)]  # a plugin's config in hydra's store
    try:
        app()
    finally:
        sys.argv = argv
    failed = _failed_since(overrides, t0)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or {"failed", "invalid"} & set(_last_status) else 0


def _check_multirun(overrides: list[str]) -> None:
    """Check every value of every comma-separated sweep override (each with the first value of
    the others) before hydra starts, so that a bad key or method is one line with a "did you
    mean" rather than hydra's own message; raises :class:`UserError`."""
    from wab.run.validate import compose_checked, validate

    plain = [o for o in overrides if not o.startswith(("-", "hydra.", "hydra/", "+hydra"))]  # not the run's config

    def values(o: str) -> list[str]:
        key, sep, value = o.partition("=")
        if not sep or value.lstrip().startswith(("[", "{", "'", '"')) or "(" in value:
            return [o]
        return [f"{key}={v}" for v in value.split(",")]

    base = [values(o)[0] for o in plain]
    validate(compose_checked(base))
    for i, o in enumerate(plain):
        for v in values(o)[1:]:
            validate(compose_checked([*base[:i], v, *base[i + 1 :]]))


def _failed_since(overrides: list[str], t0: float) -> list[str]:
    """Runs under the multirun's out_dir that recorded a failure since ``t0`` (jobs of a remote
    launcher report nothing back to this process)."""
    from wab.run.records import RunDir, find_runs
    from wab.run.validate import compose_checked

    fixed = [o for o in overrides if not o.startswith("-") and "," not in o.split("=", 1)[-1]]
    try:
        out_dir = compose_checked(fixed)["out_dir"]
    except UserError:
        return []
    failed = []
    for path in find_runs(out_dir) if os.path.isdir(out_dir) else []:
        rd = RunDir(path)
        if rd.final.exists() and rd.final.stat().st_mtime >= t0 and rd.state() in ("failed", "corrupt"):
            failed.append(path.name)
    return failed


def sweep_main(config: str, cluster: str, dry_run: bool, select: str = "all") -> int:
    from wab.launch.status import directory_status
    from wab.launch.sweep import launch, load_sweep, plan

    spec = load_sweep(config)
    if dry_run:
        runs = plan(spec, check=True, gpus=int(spec.resources["gpus_per_node"]) if cluster == "slurm" else None)
        states = {s.run_id: s.state for s in directory_status(spec.out_dir)} if spec.out_dir.exists() else {}
        for r in runs:
            state = "INVALID" if r.problems else states.get(r.run_id) or r.dir.state()
            print(f"{r.run_id:<28}  {state:<12}  {' '.join(r.overrides)}")
            for p in r.problems:
                print(f"{'':<28}    - {p}")
        bad = sum(bool(r.problems) for r in runs)
        print(f"\n{len(runs)} runs, {bad} invalid" + ("; a launch would submit nothing" if bad else ""))
        return 2 if bad else 0
    result = launch(spec, cluster, select)
    print(f"sweep {spec.name}: {result.summary()}")
    last = result.manifest["launches"][-1]
    if last.get("arrays"):
        print(f"job arrays: {', '.join(last['arrays'])}" + (f" (after {', '.join(last['waited_for'])})"
                                                           if last.get("waited_for") else ""))  # fmt: skip
    if last.get("workers"):
        print(f"local workers (pids): {last['workers']}")
    if cluster == "debug":  # the runs ran in this process: they are over
        print(f"every run has run; their states: wab status {spec.out_dir}; the report: wab report {spec.out_dir}")
    else:
        print(f"follow it with: wab status {spec.out_dir}")
    return 0


def status_main(directory: str) -> int:
    from pathlib import Path

    from wab.launch.status import directory_status, format_status

    if not Path(directory).is_dir():
        raise UserError(f"{directory} is not a directory")
    rows = directory_status(directory)
    if not rows:
        raise UserError(f"no runs under {directory} (neither a sweep's manifest.json nor run directories)")
    print(format_status(rows))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wab", description="wab, the weight-averaging benchmark")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small population on digits for every method and compare")
    demo.add_argument("--out", default="results/demo", help="where the runs go (default: results/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    demo.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    demo.add_argument("--threads", type=int, default=None,
                      help="CPU threads per run (default: the cores the machine's load leaves free)")  # fmt: skip
    sub.add_parser(
        "train",
        help="train one run: wab train [hydra overrides], e.g. method=independent population.size=4",
        add_help=False,
    )
    sweep = sub.add_parser("sweep", help="launch a grid of runs as one job array (returns after submission)")
    sweep.add_argument("config", help="a sweep YAML file, or the name of one in configs/sweep/")
    sweep.add_argument("--cluster", required=True, choices=["slurm", "local", "debug"], help="where the jobs run")
    sweep.add_argument("--dry-run", action="store_true", help="check every run and list their states; submit nothing")
    only = sweep.add_mutually_exclusive_group()
    only.add_argument("--only-failed", action="store_true", help="resubmit the failed runs and nothing else")
    only.add_argument("--skip-failed", action="store_true", help="submit every unfinished run but the failed ones")
    cancel = sub.add_parser("cancel", help="cancel a sweep's queued and running jobs (running runs checkpoint first)")
    cancel.add_argument("directory", help="the sweep's out_dir")
    cancel.add_argument(
        "--stale", action="store_true", help="only jobs SLURM says run while their run is finished or its lease expired"
    )
    compare = sub.add_parser("compare", help="compare the finished runs of two results directories, run id by run id")
    compare.add_argument("reference", help="e.g. results/reference (the committed study)")
    compare.add_argument("other", help="e.g. a retrained copy (scripts/reference_study.sh --retrain DIR)")
    compare.add_argument("--tolerance", type=float, default=0.0, help="largest absolute difference counted as equal")
    status = sub.add_parser("status", help="each run's state under a directory (a sweep's, or any results directory)")
    status.add_argument("directory")
    report = sub.add_parser("report", help="tables, figures and a summary page from every run under a directory")
    _report_options(report)
    return parser


def _report_options(report: argparse.ArgumentParser) -> None:
    """``wab report``'s options."""
    report.add_argument("results", help="a results directory (searched recursively for runs)")
    report.add_argument("--out", default=None, help="where the report goes (default: <results>/report)")
    report.add_argument(
        "--baseline",
        default=None,
        help="each row's baseline: a row label, or overrides of the row "
        "(default: method=independent, the independent population with the same everything else)",
    )
    report.add_argument("--margin", default="0.5", help="equivalence margin in accuracy points (0.5), or a "
                        "fraction of each row's headroom, the independent ensemble's gain over a member (0.3h)")
    report.add_argument(
        "--target",
        type=float,
        default=None,
        help="time-to-target accuracy in percent (default: "
        "trainer.target_acc of the runs, else the mean accuracy of the baseline's members minus the margin)",
    )
    report.add_argument(
        "--metric",
        action="append",
        default=None,
        dest="metrics",
        help="an accuracy to give verdicts for (repeatable; default: final_acc and individual_mean)",
    )
    report.add_argument(
        "--network",
        nargs="?",
        const="",
        default=None,
        metavar="LINKS.yaml",
        help="model each row's communication time per step on named links (default: configs/network.yaml)",
    )
    report.add_argument(
        "--versus",
        action="append",
        default=None,
        metavar="A:B",
        help="a claim between two methods (repeatable): each row of method A against method B's row with "
        "otherwise the same settings, e.g. --versus twa:swa; B may be one row's label, e.g. "
        "'diloco:local_sgd (every_steps=1)' (synchronous data-parallel training)",
    )


def _train_help() -> str:
    """``wab train --help``: the config groups and their options (plugins included)."""
    from wab.method import available_methods
    from wab.run.config import group_options

    options = {"method": available_methods(), **{g: group_options(g) for g in ("data", "model", "optim", "trainer")}}
    lines = [
        "usage: wab train [-m] [OVERRIDE ...]",
        "",
        "Train one run (or, with -m, a hydra multirun) from hydra overrides of wab's config tree, e.g.",
        "  wab train method=wash data=digits population.size=4 method.p=0.05",
        "",
        "config groups (select one with group=option; override a key with group.key=value):",
        *(f"  {g:<8} {', '.join(o)}" for g, o in options.items()),
        "",
        "every key and its default: docs/training.md; a sweep of many runs: wab sweep --help",
    ]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        if any(a in ("-h", "--help") for a in rest):
            print(_train_help())
            return 0
        multirun = any(a in ("-m", "--multirun") for a in rest)
        return train_multirun(rest) if multirun else train_one(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "sweep":
        select = "failed" if args.only_failed else "not-failed" if args.skip_failed else "all"
        return sweep_main(args.config, args.cluster, args.dry_run, select)
    if args.command == "cancel":
        from wab.launch.sweep import cancel

        cancelled = cancel(args.directory, stale=args.stale)
        nothing = "no stale job" if args.stale else "no job is queued or running"
        print("cancelled: " + ", ".join(cancelled) if cancelled else f"nothing to cancel: {nothing}")
        return 0
    if args.command == "status":
        return status_main(args.directory)
    if args.command == "compare":
        from wab.analysis.compare import compare as compare_runs

        lines, equal = compare_runs(args.reference, args.other, args.tolerance)
        print("\n".join(lines) if lines else "every run in both directories has the same metrics")
        print(f"{equal} runs equal, {len(lines)} differ or are missing")
        return 1 if lines else 0
    if args.command == "report":
        from wab.analysis.report import write_report

        summary = write_report(
            args.results, args.out, args.baseline, args.margin, args.target, args.metrics, args.network, args.versus
        )
        print(f"report written: {summary}")
        return 0
    from wab.demo import demo as run_demo

    return run_demo(args.out, epochs=args.epochs, methods=args.methods, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
        return _dispatch(argv)
    except UserError as e:
        if verbose:
            traceback.print_exc()
        lines = str(e).splitlines() or [type(e).__name__]
        problems = getattr(e, "problems", None)
        if problems and len(problems) > 1:
            lines = ["invalid config:", *(f"  - {p}" for p in problems)]
        print(f"wab: error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nwab: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
