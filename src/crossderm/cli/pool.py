"""``crossderm pool``: join the folds of a run (run as separate jobs) into oof_predictions.csv and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.options import add_bootstrap_options, check_bootstrap_options


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "pool",
        help="join the folds of a run into oof_predictions.csv and evaluate it",
        description="Pool every fold's test predictions of RUN_DIR and write metrics.json "
        "(for folds run as separate jobs).",
        epilog="example:\n  crossderm pool runs/paper_b",
        formatter_class=formatter_class,
    )
    parser.add_argument("run_dir", type=Path)
    add_bootstrap_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.train.cv import pool

    check_bootstrap_options(args)

    pool(args.run_dir, n_bootstrap=args.bootstrap, seed=args.seed, reference_source=args.reference_source)
    print(f"wrote {args.run_dir}/oof_predictions.csv and metrics.json")
    return 0
