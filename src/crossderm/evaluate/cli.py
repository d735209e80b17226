"""``crossderm evaluate``: per-source metrics with bootstrap CIs from a predictions CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.errors import CrossdermError

EPILOG = """examples:
  crossderm evaluate --predictions runs/ham_to_isic/predictions.csv --out runs/ham_to_isic/eval
  crossderm evaluate --predictions preds.csv --out eval --bootstrap 10000 --seed 1

PRED.csv has columns image_id, source, label and one probability column per class
(akiec, bcc, bkl, df, mel, nv, vasc); other columns are ignored. The prediction is the argmax.
Writes OUT/metrics.json and OUT/metrics.md; with sources ham and isic both present, also the
generalisation gap ham - isic.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="predictions CSV -> macro-F1, accuracy, balanced accuracy, AUC per source with bootstrap CIs",
        description="Score each source of a predictions CSV (macro-F1 headline, per-class F1/precision/"
        "recall, accuracy, balanced accuracy, one-vs-rest AUC, confusion matrix) with percentile-bootstrap "
        "95 % CIs over images, and the HAM - ISIC generalisation gap.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--predictions", type=Path, required=True, metavar="PRED.csv", help="predictions CSV")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for metrics.json/.md")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the images")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (non-negative)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 1:
        raise CrossdermError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    if args.seed < 0:
        raise CrossdermError(f"--seed must be non-negative, got {args.seed}")
    from crossderm.evaluate.predictions import evaluate_file

    _, markdown = evaluate_file(args.predictions, args.out, args.bootstrap, args.seed)
    print(markdown, end="")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'metrics.md'}")
    return 0
