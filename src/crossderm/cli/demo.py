"""``crossderm demo``: the whole protocol on the bundled synthetic data, on a laptop CPU in minutes.

synth -> prepare -> cv (a) HAM-only fusion model -> cv (b) joint, source-balanced ConvNeXt -> report.
Each step reuses what an earlier, interrupted demo already finished in the same folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from crossderm.cli.options import add_bootstrap_options, add_threads_option, check_bootstrap_options, count, image_size

EXPERIMENTS = ("demo_a_ham_only", "demo_b_joint")
EPILOG = """examples:
  crossderm demo                       # everything under ./demo
  crossderm demo --out /tmp/demo --epochs 4 --bootstrap 500
  crossderm demo --ham-lesions 2000 --isic-lesions 1600 --image-size 64   # a larger synthetic problem
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole protocol (both paper experiments, 5-fold CV, TTA, report) on synthetic data",
        description="Generate the synthetic HAM10000/ISIC 2019 look-alike data, prepare it, run both experiments "
        "with 5-fold lesion-grouped CV and 4-view TTA, and write the report (DIR/report).",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--out", type=Path, default=Path("demo"), help="folder for data, runs and report")
    parser.add_argument("--ham-lesions", type=count(1), default=None, help="synthetic HAM lesions (default: synth's)")
    parser.add_argument("--isic-lesions", type=count(1), default=None,
                        help="synthetic ISIC-only lesions (default: synth's)")
    parser.add_argument("--image-size", type=image_size, default=48, help="cached image side (px)")
    parser.add_argument("--epochs", type=count(1), default=None, help="override the presets' epochs")
    add_bootstrap_options(parser, seed=False, reference=False)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_threads_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.api import cross_validate, prepare_data, synthesize, write_report
    from crossderm.datafolder import AUDIT_MD, MANIFEST
    from crossderm.fsutil import check_writable_folder
    from crossderm.prepare.sources import HAM_FOLDER, ISIC_FOLDER, ISIC_GROUND_TRUTH
    from crossderm.runtime import Runtime, configure_threads

    configure_threads(args.threads)
    check_bootstrap_options(args)
    check_writable_folder(args.out, "--out")
    Runtime.resolve(args.device)  # an unknown --device fails here, before the synthetic data are written
    started = time.perf_counter()
    raw, prepared, runs = args.out / "data" / "raw", args.out / "data" / "prepared", args.out / "runs"
    if not (raw / ISIC_FOLDER / ISIC_GROUND_TRUTH).is_file():
        synthesize(raw, ham_lesions=args.ham_lesions, isic_lesions=args.isic_lesions, seed=0,
                   overwrite=True)
    _step("synthetic data", raw, started)
    if not (prepared / MANIFEST).is_file():
        prepare_data(prepared, ham=raw / HAM_FOLDER, isic=raw / ISIC_FOLDER, image_size=args.image_size,
                     overwrite=True)
    print((prepared / AUDIT_MD).read_text())
    _step("prepared", prepared, started)
    run_dirs = []
    for name in EXPERIMENTS:
        overrides = [f"epochs={args.epochs}"] if args.epochs else []
        run_dir = runs / name
        cross_validate(name, prepared, run_dir, overrides=overrides, resume=True, device=args.device,
                       n_bootstrap=args.bootstrap)
        run_dirs.append(run_dir)
        _step(f"experiment {name}", run_dir, started)
    write_report(run_dirs, args.out / "report", overwrite=True)
    _step("report", args.out / "report" / "report.html", started)
    return 0


def _step(what: str, where: Path, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {what}: {where}", flush=True)
