"""``crossderm report``: tables, gap reduction and plots across finished run folders.

The report module (numpy, pandas, matplotlib) is imported inside :func:`run` so ``crossderm --help``
stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  crossderm report runs/a_ham_only runs/b_joint --out reports/a_vs_b
  crossderm report runs/paper_a runs/paper_b runs/paper_b_class_balanced --out reports/paper --overwrite

Each RUN_DIR is a finished `crossderm cv` folder (config.yaml, run.json, oof_predictions.csv,
metrics.json, fold_<k>/history.csv). The first RUN_DIR is the reference: every later run is compared
with it (generalisation-gap reduction and ISIC macro-F1 gain, paired bootstrap over the shared images,
so the runs must predict the same images). Writes OUT/report.html (self-contained, plots embedded),
OUT/report.md, OUT/summary.json and OUT/figures/*.png.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "report",
        help="run folders -> Table 1/2, generalisation gap and its reduction, plots (HTML + Markdown + JSON)",
        description="Collect finished run folders into the paper's tables (macro-F1, accuracy, balanced "
        "accuracy with 95 % CIs on HAM-test and ISIC-test; per-class F1), the HAM - ISIC generalisation gap, "
        "its reduction against the first run with a paired-bootstrap CI, and plots (confusion matrices, "
        "per-class F1, training curves), with the paper's published numbers beside them for context.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders, reference first")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR", help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace REPORT_DIR if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.report.report import render_text, write_report

    summary = write_report(args.run_dirs, args.out, overwrite=args.overwrite)
    print(render_text(summary), end="")
    print(f"wrote {args.out}/report.html, report.md, summary.json and figures/")
    return 0
