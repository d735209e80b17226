"""``crossderm synth``: write a synthetic HAM10000 + ISIC 2019 download for demos, tests and benchmarks.

Why a subcommand: the real data cannot be shipped, yet a user should be able to try the whole pipeline
(and CI can exercise it) on folders that look exactly like the official downloads.
"""

from __future__ import annotations

import argparse

from crossderm.cli.options import count, number

# crossderm.synth holds only the generator's defaults (no numpy, no PIL): importing it keeps --help instant.
from crossderm.synth import (
    DEFAULT_HAM_LESIONS,
    DEFAULT_IMAGE_SCALE,
    DEFAULT_ISIC_LESIONS,
    DEFAULT_MIN_PER_CLASS,
    DEFAULT_SEED,
)

EPILOG = """\
examples:
  crossderm synth --out demo/data
      ~1,000 HAM10000 images + ~1,000 ISIC-only images (BCN-like and MSK-like sites), seed 0
  crossderm synth --out /tmp/tiny --ham-lesions 60 --isic-lesions 60 --seed 3
      a tiny set for smoke tests
  crossderm synth --out demo/data --image-scale 2 --overwrite
      twice the default image sizes, replacing an existing output

layout written (as in the official downloads):
  OUT/HAM10000/HAM10000_metadata.csv, HAM10000_images_part_{1,2}/<image_id>.jpg
  OUT/ISIC2019/ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv,
  OUT/ISIC2019/ISIC_2019_Training_Input/<image>.jpg   (includes every HAM10000 image, same bytes)
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic dermoscopy data in the official HAM10000 / ISIC 2019 layouts",
        description="Generate deterministic dermoscopy-like images with a real class signal and a site shift, "
        "in the exact official HAM10000 and ISIC 2019 file layouts (same seed and sizes: identical bytes).",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--seed", type=count(0, 2**32 - 1), default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--ham-lesions", type=count(1), default=DEFAULT_HAM_LESIONS,
                        help="HAM10000 lesions (about 1.35 images each; also rows of ISIC 2019)")
    parser.add_argument("--isic-lesions", type=count(1), default=DEFAULT_ISIC_LESIONS,
                        help="ISIC-only lesions, 70%% BCN-like (1-3 images each), 30%% MSK-like (mostly 1)")
    parser.add_argument("--min-per-class", type=count(0), default=DEFAULT_MIN_PER_CLASS,
                        help="minimum lesions per class and site")
    parser.add_argument("--image-scale", type=number(0.0, above=True), default=DEFAULT_IMAGE_SCALE,
                        help="scale of all image sizes (1.0: HAM 160x120, BCN 192x192, MSK 224x168)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.fsutil import check_writable_folder
    from crossderm.synth.generator import generate

    check_writable_folder(args.out, "--out")
    summary = generate(
        args.out,
        ham_lesions=args.ham_lesions,
        isic_lesions=args.isic_lesions,
        seed=args.seed,
        min_per_class=args.min_per_class,
        image_scale=args.image_scale,
        overwrite=args.overwrite,
    )
    sites = summary["sites"]
    print(f"wrote {summary['out']} (seed {summary['seed']})")
    print(f"  HAM10000: {summary['ham_images']} images; ISIC 2019: {summary['isic_images']} rows, "
          f"{summary['isic_rows_from_ham']} of them HAM10000 images")
    classes = list(sites["ham"]["classes"])
    print(f"  {'site':<5} {'lesions':>7} {'images':>6}  " + " ".join(f"{c:>6}" for c in classes) + "  (images)")
    for name, site in sites.items():
        per_class = " ".join(f"{site['classes'][c]['images']:>6}" for c in classes)
        print(f"  {name:<5} {site['lesions']:>7} {site['images']:>6}  {per_class}")
    msk = sites["msk"]
    print(f"  msk: {msk['downsampled_images']} _downsampled images, {msk['blank_lesion_id_images']} without lesion_id "
          f"(the ISIC archive site, photographed in its own style)")
    return 0
