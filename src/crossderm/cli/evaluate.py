"""``crossderm evaluate``: per-source metrics with bootstrap CIs from a predictions CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.options import add_bootstrap_options, add_group_option, check_bootstrap_options

EPILOG = """examples:
  crossderm evaluate --predictions runs/ham_to_isic/predictions.csv --out runs/ham_to_isic/eval
  crossderm evaluate --predictions preds.csv --out eval --bootstrap 10000 --seed 1
  crossderm evaluate --predictions runs/b/oof_predictions.csv --out eval --by site --by sex --by age_bin

PRED.csv has columns image_id, source, label and one probability column per class
(akiec, bcc, bkl, df, mel, nv, vasc); optional: site, sex, age, anatom_site; other columns are
ignored. The prediction is the argmax. Writes OUT/metrics.json and OUT/metrics.md: every metric per
source, the generalisation gap of the reference source (--reference-source, default ham) against
each other source, and per group of --by (default: site, when there is a site column): every metric
per "<source>/<site>" with the mean and worst site, or per "<source>/<value>" of sex, age_bin
(<30, 30-44, 45-59, 60-74, 75+ from age) or anatom_site.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="predictions CSV -> macro-F1, accuracy, balanced accuracy, AUC per source with bootstrap CIs",
        description="Score each source of a predictions CSV (macro-F1 headline, per-class F1/precision/"
        "recall, accuracy, balanced accuracy, one-vs-rest AUC, confusion matrix) with percentile-bootstrap "
        "95 % CIs over images, and the gap of the reference source against each other source.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--predictions", type=Path, required=True, metavar="PRED.csv", help="predictions CSV")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for metrics.json/.md")
    add_bootstrap_options(parser)
    add_group_option(parser, "also evaluate per group (default: site, when PRED.csv has a site column).")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_bootstrap_options(args)
    from crossderm.api import evaluate_predictions
    from crossderm.runfolder import METRICS_JSON, METRICS_MD

    evaluate_predictions(args.predictions, args.out, by=args.by, reference_source=args.reference_source,
                         n_bootstrap=args.bootstrap, seed=args.seed)
    print((args.out / METRICS_MD).read_text(), end="")
    print(f"wrote {args.out / METRICS_JSON} and {args.out / METRICS_MD}")
    return 0
