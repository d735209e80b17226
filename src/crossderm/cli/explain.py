"""``crossderm explain``: Grad-CAM overlays of a run's prediction for image files, as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.options import add_threads_option
from crossderm.defaults import PREDICT_MAX_PIXELS
from crossderm.errors import CrossdermError
from crossderm.labels import CLASS_INDEX, CLASSES

EPILOG = """examples:
  crossderm explain --model runs/b_joint ISIC_0024306.jpg --out cams
  crossderm explain --model runs/b_joint images/*.jpg --out cams --class mel

Writes OUT/<image_id>_gradcam.png (image_id = file name without extension) and prints each image's
predicted class. The heatmap is the mean Grad-CAM of the fold models for the predicted class (or --class).
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="Grad-CAM overlays of a run's prediction for image files",
        description="Predict each image with a run's fold ensemble and write its Grad-CAM overlay as a PNG.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="finished run folder")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the overlays")
    parser.add_argument("--class", dest="class_name", choices=CLASSES, help="explain this class, not the prediction")
    parser.add_argument("--device", default="cpu", help="torch device for the models")
    add_threads_option(parser)
    parser.add_argument("--max-pixels", type=int, default=PREDICT_MAX_PIXELS,
                        help="refuse images whose header declares more pixels, before decoding")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.fsutil import atomic_write_bytes, check_writable_folder
    from crossderm.imaging import ImageError, decode
    from crossderm.predict.ensemble import Ensemble
    from crossderm.predict.gradcam import DISPLAY_SIZE, explain_image
    from crossderm.runtime import Runtime, configure_threads

    configure_threads(args.threads)
    if args.max_pixels < 1:
        raise CrossdermError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    check_writable_folder(args.out, "--out")
    stems = [path.stem for path in args.images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise CrossdermError(f"two inputs share the image id {repeated[0]!r}; one overlay would overwrite the other")
    ensemble = Ensemble(args.model, device=Runtime.resolve(args.device).device)
    target = CLASS_INDEX[args.class_name] if args.class_name else None
    images = []  # every image decoded before the first overlay is written: a bad one in the list costs no output
    for path in args.images:
        try:
            images.append(decode(path, ensemble.image_size, args.max_pixels, DISPLAY_SIZE))
        except ImageError as exc:
            raise CrossdermError(f"{path}: {exc}") from None
    for path, image in zip(args.images, images, strict=True):
        result = explain_image(ensemble, image, target)
        out = args.out / f"{path.stem}_gradcam.png"
        atomic_write_bytes(out, result.png)
        print(f"{path.stem}: {CLASSES[result.predicted]} (p = {result.probabilities[result.predicted]:.3f}); "
              f"Grad-CAM for {result.explanation.class_name} -> {out}")
    return 0
