"""``crossderm pool``: join the folds of a run (run as separate jobs) into oof_predictions.csv and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.cv import add_tracking_options, tracking_options
from crossderm.cli.options import add_bootstrap_options, check_bootstrap_options


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "pool",
        help="join the folds of a run into oof_predictions.csv and evaluate it",
        description="Pool every fold's test predictions of RUN_DIR and write metrics.json "
        "(for folds run as separate jobs).",
        epilog="examples:\n  crossderm pool runs/paper_b\n"
        "  crossderm pool runs/paper_b --mlflow      # + MLflow: the run's local store (sqlite:///RUN_DIR/mlflow.db)",
        formatter_class=formatter_class,
    )
    parser.add_argument("run_dir", type=Path)
    add_bootstrap_options(parser)
    add_tracking_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.runfolder import RunFolder
    from crossderm.train.cv import pool
    from crossderm.train.tracking import open_tracker

    check_bootstrap_options(args)
    tracking = tracking_options(args)
    run = RunFolder(args.run_dir).require()
    with open_tracker(run, run.read_config(), tracking) as tracker:
        pool(args.run_dir, n_bootstrap=args.bootstrap, seed=args.seed, reference_source=args.reference_source,
             tracker=tracker)
    print(f"wrote {args.run_dir}/oof_predictions.csv and metrics.json")
    return 0
