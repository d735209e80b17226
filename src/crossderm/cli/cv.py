"""``crossderm cv``: train and evaluate a cross-validated experiment from a YAML preset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from crossderm.cli.options import add_bootstrap_options, add_threads_option, check_bootstrap_options
from crossderm.defaults import TTA_VIEW_CHOICES

if TYPE_CHECKING:
    from crossderm.train.tracking import TrackingOptions

CV_EPILOG = """examples:
  crossderm cv --config demo_b_joint --data demo/data/prepared --out runs/b
  crossderm cv --config paper_b_joint_convnext_tiny --data prepared/real --out runs/paper_b \\
      --pretrained-path weights/convnext_tiny.safetensors
  crossderm cv --config paper_a_ham_only_fusion --data prepared/real --out runs/paper_a \\
      --pretrained-path convnext_small=weights/cs.safetensors --pretrained-path efficientnet_b3=weights/b3.safetensors
  crossderm cv --config paper_b_joint_convnext_tiny --data prepared/real --out runs/b --fold 2   # one fold per job
  crossderm cv --config runs/b/config.yaml --data prepared/real --out runs/b --resume           # after a crash
  crossderm cv --config demo_b_joint --data demo/data/prepared --out runs/b --mlflow     # + MLflow, local store
  crossderm cv --config demo_b_joint --data demo/data/prepared --out runs/b --mlflow http://127.0.0.1:5000
  torchrun --standalone --nproc_per_node 4 -m crossderm cv --config paper_b_joint_convnext_tiny \\
      --data prepared/real --out runs/b
presets: see `crossderm cv --list-presets`
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "cv",
        help="train and evaluate a cross-validated experiment from a YAML preset",
        description="Train every fold (or --fold k) of an experiment, predict each test fold with TTA, and once "
        "all folds are done pool the out-of-fold predictions and evaluate them with bootstrap CIs.",
        epilog=CV_EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--config", help="preset name or YAML file")
    parser.add_argument("--data", type=Path, help="DATA_DIR made by `crossderm prepare`")
    parser.add_argument("--out", type=Path, help="RUN_DIR for checkpoints, predictions and metrics")
    parser.add_argument("--fold", type=int, action="append", help="train only this fold (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue interrupted folds from their checkpoints")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config setting, e.g. --set epochs=5 --set augment.min_area=0.5",
    )
    parser.add_argument(
        "--pretrained-path",
        action="append",
        default=[],
        metavar="[BACKBONE=]FILE",
        help="local safetensors weights (implies pretrained); BACKBONE=FILE per backbone of a fusion model",
    )
    parser.add_argument("--tta", type=int, choices=TTA_VIEW_CHOICES,
                        help="test-time views (4 = id, h-flip, v-flip, both)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_option(parser)
    add_bootstrap_options(parser, seed=False)
    add_tracking_options(parser)
    parser.add_argument("--list-presets", action="store_true", help="list the bundled presets and exit")
    parser.set_defaults(handler=run)


def add_tracking_options(parser: argparse.ArgumentParser) -> None:
    """``--no-tensorboard`` and ``--mlflow [URI]`` (shared with ``pool``; crossderm.train.tracking)."""
    parser.add_argument("--no-tensorboard", action="store_true",
                        help="skip the TensorBoard event files otherwise written to RUN_DIR/tensorboard/")
    parser.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI",
                        help='also log to MLflow (pip install "crossderm[mlflow]"); without a URI a local SQLite '
                        "store, sqlite:///RUN_DIR/mlflow.db (artifacts in RUN_DIR/mlartifacts)")


def tracking_options(args: argparse.Namespace) -> TrackingOptions:
    """The options as asked; ``--mlflow`` without MLflow installed is refused here, before any work."""
    from crossderm.train.tracking import TrackingOptions, check_tracking

    options = TrackingOptions(tensorboard=not args.no_tensorboard, mlflow=args.mlflow)
    check_tracking(options)
    return options


def run(args: argparse.Namespace) -> int:
    from crossderm.api import cross_validate, presets
    from crossderm.errors import CrossdermError
    from crossderm.runtime import configure_threads

    configure_threads(args.threads)
    if args.list_presets:
        print("\n".join(presets()))
        return 0
    missing = [f"--{name}" for name in ("config", "data", "out") if getattr(args, name) is None]
    if missing:
        raise CrossdermError(f"missing {', '.join(missing)}")
    check_bootstrap_options(args)
    tracking = tracking_options(args)
    metrics = cross_validate(
        args.config, args.data, args.out, folds=args.fold, resume=args.resume, overrides=args.overrides,
        pretrained_paths=args.pretrained_path, tta=args.tta, device=args.device, n_bootstrap=args.bootstrap,
        reference_source=args.reference_source, tracking=tracking,
    )
    if metrics is not None:
        print(f"wrote {args.out}/oof_predictions.csv and metrics.json")
    return 0
