"""``crossderm prepare`` command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.options import count, image_size, number
from crossderm.colour import COLOR_CONSTANCY

EPILOG = """examples:
  crossderm prepare --ham data/HAM10000 --isic data/ISIC2019 --out prepared/real --image-size 224
  crossderm prepare --ham ../shared/data/HAM10000 --isic ../shared/data/ISIC2019 --out prepared/sample \\
      --image-size 128 --allow-missing
  crossderm prepare --ham data/HAM10000 --isic data/ISIC2019 --out prepared/real \\
      --splits splits/ham10000_isic2019_5fold_seed0.csv    # the exact shipped folds
  crossderm prepare --isic data/ISIC2019 --out prepared/isic --label-map configs/label_map_scc_dropped.yaml
  crossderm prepare --ham ../shared/data/HAM10000 --isic ../shared/data/ISIC2019 \\
      --ham-metadata ../shared/data/extra/HAM10000_metadata_with_dataset.csv \\
      --out prepared/sample --image-size 96 --allow-missing        # the sample, with HAM's four sites
  crossderm prepare --ham data/HAM10000 --isic data/ISIC2019 --source clinic=data/my_clinic --out prepared/x
      (data/my_clinic/labels.csv: image,label[,lesion_id,site,age,sex,anatom_site]; label_map.yaml optional)
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
    parser.add_argument("--folds", type=count(2), default=5, help="folds per source")
    parser.add_argument("--splits", type=Path, help="reuse the folds of a split file (e.g. splits/*.csv) instead")
    parser.add_argument("--seed", type=count(0, 2**32 - 1), default=0, help="fold assignment seed")
    parser.add_argument("--image-size", type=image_size, default=224, help="side of the cached square images (px)")
    parser.add_argument("--allow-missing", action="store_true", help="drop (and count) rows whose image is absent")
    parser.add_argument("--label-map", type=Path, help="YAML {ISIC_COLUMN: ham_class or null} overriding the default")
    parser.add_argument("--workers", type=count(1), default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--max-hamming", type=count(0, 64), default=8,
                        help="pHash distance for near-duplicate candidates")
    parser.add_argument(
        "--min-correlation", type=number(-1.0, 1.0), default=0.95,
        help="grey-level correlation confirming a near-duplicate",
    )
    parser.add_argument("--ham-metadata", type=Path, metavar="FILE",
                        help="HAM10000 metadata to use instead of the download's (e.g. the Dataverse file with "
                        "the `dataset` site column)")
    parser.add_argument("--sites", type=Path, metavar="FILE",
                        help="image -> site CSV (image, site columns; or FLamby's split file with `center`)")
    parser.add_argument("--source", dest="sources", action="append", default=[], metavar="NAME=DIR",
                        help="your own dataset: DIR/labels.csv (image, label, optional lesion_id, site, age, sex, "
                        "anatom_site) + optional DIR/label_map.yaml; repeatable")
    parser.add_argument("--color-constancy", action="append", default=[], choices=COLOR_CONSTANCY,
                        help="also write this colour-constancy variant of the cache (sog6: Shades of Gray, p = 6); "
                        "without --ham/--isic/--source it is added to the existing DATA_DIR --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.api import prepare_data
    from crossderm.prepare.audit import render_audit
    from crossderm.prepare.pipeline import add_color_constancy

    if args.color_constancy and not (args.ham or args.isic or args.sources) and args.out.is_dir():
        caches = add_color_constancy(args.out, args.color_constancy)
        print(f"{args.out}: image caches {', '.join(f'{m} ({f})' for m, f in caches.items())}")
        return 0
    audit = prepare_data(
        args.out,
        ham=args.ham,
        isic=args.isic,
        sources=args.sources,
        image_size=args.image_size,
        folds=args.folds,
        seed=args.seed,
        splits=args.splits,
        allow_missing=args.allow_missing,
        label_map=args.label_map,
        ham_metadata=args.ham_metadata,
        sites=args.sites,
        color_constancy=args.color_constancy,
        workers=args.workers,
        max_hamming=args.max_hamming,
        min_correlation=args.min_correlation,
        overwrite=args.overwrite,
    )
    print(render_audit(audit))
    print(f"wrote {args.out}/manifest.csv, audit.json, audit.md and the image cache")
    return 0
