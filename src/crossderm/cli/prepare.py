"""``crossderm prepare`` command line."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  crossderm prepare --ham data/HAM10000 --isic data/ISIC2019 --out prepared/real --image-size 224
  crossderm prepare --ham ../shared/data/HAM10000 --isic ../shared/data/ISIC2019 --out prepared/sample \\
      --image-size 128 --allow-missing
  crossderm prepare --ham data/HAM10000 --isic data/ISIC2019 --out prepared/real \\
      --splits splits/ham10000_isic2019_5fold_seed0.csv    # the exact shipped folds
  crossderm prepare --isic data/ISIC2019 --out prepared/isic --label-map configs/label_map_scc_dropped.yaml
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="official HAM10000 / ISIC 2019 files -> manifest, lesion-grouped folds, image cache, audit",
        description="Harmonise the official downloads into one manifest with lesion-grouped stratified folds, "
        "remove the HAM10000 images from ISIC 2019, decode every image once into a cache, and write the audit.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--ham", type=Path, help="HAM10000 folder (HAM10000_metadata.csv + images in any subfolder)")
    parser.add_argument("--isic", type=Path, help="ISIC 2019 folder (training ground truth + metadata CSVs, images)")
    parser.add_argument("--out", type=Path, required=True, help="DATA_DIR to create")
    parser.add_argument("--folds", type=int, default=5, help="folds per source")
    parser.add_argument("--splits", type=Path, help="reuse the folds of a split file (e.g. splits/*.csv) instead")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    parser.add_argument("--image-size", type=int, default=224, help="side of the cached square images (px)")
    parser.add_argument("--allow-missing", action="store_true", help="drop (and count) rows whose image is absent")
    parser.add_argument("--label-map", type=Path, help="YAML {ISIC_COLUMN: ham_class or null} overriding the default")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--max-hamming", type=int, default=8, help="pHash distance for near-duplicate candidates")
    parser.add_argument(
        "--min-correlation", type=float, default=0.95, help="grey-level correlation confirming a near-duplicate"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.prepare.audit import render_audit
    from crossderm.prepare.pipeline import PrepareConfig, prepare

    config = PrepareConfig(
        out=args.out,
        ham=args.ham,
        isic=args.isic,
        folds=args.folds,
        seed=args.seed,
        image_size=args.image_size,
        allow_missing=args.allow_missing,
        label_map=args.label_map,
        workers=args.workers,
        overwrite=args.overwrite,
        max_hamming=args.max_hamming,
        min_correlation=args.min_correlation,
        splits=args.splits,
    )
    audit = prepare(config)
    print(render_audit(audit))
    print(f"wrote {args.out}/manifest.csv, audit.json, audit.md and the image cache")
    return 0
