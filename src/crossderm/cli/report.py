"""``crossderm report``: tables, generalisation gaps, paired comparisons and plots across finished run folders.

The report package (numpy, pandas, matplotlib) is imported inside :func:`run` so ``crossderm --help``
stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.options import add_group_option

EPILOG = """examples:
  crossderm report runs/a_ham_only --out reports/a
  crossderm report runs/a_ham_only runs/b_joint --out reports/a_vs_b
  crossderm report runs/paper_a runs/paper_b runs/paper_b_class_balanced --out reports/paper --overwrite
  crossderm report runs/x runs/y --reference-source isic --out reports/from_isic
  crossderm report runs/a_ham_only runs/b_joint --by sex --by age_bin --out reports/subgroups
  crossderm report --ablation runs/ablation --out reports/ablation      # the variants of `crossderm ablate`

Each RUN_DIR is a finished `crossderm cv` folder (config.yaml, run.json, oof_predictions.csv,
metrics.json, fold_<k>/history.csv). Any number of runs and of test sources: one table per test source,
and a generalisation gap between the reference source and each other source. The first RUN_DIR is the
reference run: every later run is compared with it (gap reduction per source pair, macro-F1 gain per
non-reference source; paired bootstrap over the images of the sources both runs have, so the runs must
predict the same images there). When the runs' predictions have a site column: a per-site table
(n, macro-F1, accuracy with CIs per "<source>/<site>", mean and worst site) and a per-site macro-F1
plot; --by adds subgroup tables (sex, age_bin, anatom_site), and a run whose metrics.json has a
site_matrix gets a train site x test site heatmap and table. Writes OUT/report.html (self-contained,
plots embedded), OUT/report.md, OUT/summary.json and OUT/figures/*.png.

--ablation DIR (a `crossderm ablate` folder, no RUN_DIRs): its variants are the runs, baseline first,
and the report opens with the ablation table and a plot of each variant's Δ macro-F1 from the baseline
per site with paired CIs.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "report",
        help="run folders -> per-source tables, generalisation gaps, comparisons, plots (HTML + Markdown + JSON)",
        description="Collect one or more finished run folders into the paper's tables (macro-F1, accuracy, "
        "balanced accuracy with 95 % CIs, one table per test source; per-class F1), the generalisation gap "
        "between the reference source and each other source, every later run's gap reduction and macro-F1 "
        "gain against the first run with paired-bootstrap CIs, and plots (confusion matrices, per-class F1, "
        "training curves, reliability), with the paper's published numbers beside them for context.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR", help="run folders, reference run first")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR", help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace REPORT_DIR if it exists")
    parser.add_argument(
        "--reference-source",
        metavar="NAME",
        default=None,
        help="test source every gap is measured from; None = the reference_source in the first run's "
        "metrics.json (normally ham)",
    )
    parser.add_argument("--ablation", type=Path, metavar="DIR",
                        help="a `crossderm ablate` folder: its table and plot, its variants as the runs")
    add_group_option(parser, "add a subgroup table (per site is always shown when the runs have sites).")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.api import write_report
    from crossderm.errors import CrossdermError
    from crossderm.report.build import render_text
    from crossderm.report.build import write_report as build_report

    if args.ablation is not None:
        if args.run_dirs:
            raise CrossdermError("give RUN_DIRs or --ablation DIR, not both (the ablation's variants are the runs)")
        summary = build_report([], args.out, overwrite=args.overwrite, reference_source=args.reference_source,
                               by=tuple(args.by or ()), ablation=args.ablation)
    elif not args.run_dirs:
        raise CrossdermError("give one or more RUN_DIRs, or --ablation DIR")
    else:
        summary = write_report(
            args.run_dirs, args.out, overwrite=args.overwrite, reference_source=args.reference_source,
            by=args.by or (),
        )
    print(render_text(summary), end="")
    print(f"wrote {args.out}/report.html, report.md, summary.json and figures/")
    return 0
