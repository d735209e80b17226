"""``crossderm predict``: image files, folders or CSV lists -> class probabilities, one row per image.

Every image is decoded by :mod:`crossderm.imaging` exactly as training did; the fold ensemble runs with flip TTA
through torch or onnxruntime. A bad image (missing, not an image, truncated, a decompression bomb, over
``--max-pixels``) becomes an error row; the rest still runs. Exit status: 0 all images ok, 1 some image failed
(the output is still written), 2 usage or model error. The ``--format isic2019`` rule is in
:mod:`crossderm.predict.batch`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from crossderm.cli.options import add_threads_option
from crossderm.defaults import MAX_TTA_VIEWS, PREDICT_MAX_PIXELS, TTA_VIEW_CHOICES
from crossderm.errors import CrossdermError

if TYPE_CHECKING:
    from crossderm.api import Predictor

PREDICT_EPILOG = """examples:
  crossderm predict --model runs/b images/ --out pred.csv                 # every fold, 4-view TTA
  crossderm predict --model runs/b a.jpg b.png list.csv --out pred.csv --fold 0 --tta 1
  crossderm predict --model runs/b ISIC_2019_Test_Input/ --out submission.csv --format isic2019
  crossderm export --model runs/b --out runs/b/model.onnx
  crossderm predict --backend onnx --onnx-model runs/b/model.onnx images/ --out pred.csv

IMAGES: image files, folders (recursive: .jpg .jpeg .png .bmp .tif .tiff, sorted) or .csv lists with a
path, image or image_id column (relative to the CSV's folder; a name without suffix is tried with each).

output (--format crossderm): image_id (file stem), path, akiec bcc bkl df mel nv vasc, predicted,
ood_msp ood_energy ood_mahalanobis (torch backend; higher = less like the training images; Mahalanobis 1.0 =
the 95th percentile of the validation images), status (ok|error), error (one-line reason, empty when ok).
A metadata model reads age, sex, anatom_site columns of a CSV list (blank = missing); --impute-metadata
predicts images without them with every field missing.
--format isic2019: image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK with akiec->AK, bcc->BCC, bkl->BKL, df->DF,
mel->MEL, nv->NV, vasc->VASC (ham_to_isic_columns of the default ISIC->HAM map); SCC and UNK are 0.0 (the
7-class models fold SCC into akiec and have no UNK). Failed images go to stderr only.

exit status: 0 every image ok; 1 some image failed (the output file is still written); 2 usage or model error
(missing/tampered weights, a model.json that does not fit its weights, bad ONNX file or sidecar).
"""

ERRORS_SHOWN = 10


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="class probabilities for image files, folders or CSV lists with a trained run or ONNX file",
        description="Predict the 7 classes of each input image with a run's fold ensemble (or chosen folds) and "
        "flip TTA; one output row per image, bad images reported per row while the rest complete.",
        epilog=PREDICT_EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or .csv lists")
    parser.add_argument("--model", type=Path, metavar="RUN_DIR", help="run folder made by `crossderm cv`")
    parser.add_argument("--out", type=Path, required=True, metavar="PRED.csv", help="output CSV (written atomically)")
    parser.add_argument("--fold", type=int, action="append", help="use only this fold (repeatable; default all)")
    parser.add_argument("--tta", type=int, choices=TTA_VIEW_CHOICES, default=MAX_TTA_VIEWS,
                        help="flip views: id, h, v, both")
    parser.add_argument("--format", dest="output_format", choices=("crossderm", "isic2019"), default="crossderm",
                        help="output columns")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="inference engine")
    parser.add_argument("--onnx-model", type=Path, metavar="FILE", help="ONNX file from `crossderm export`")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (before TTA)")
    parser.add_argument("--calibrated", action="store_true",
                        help="torch backend: apply the per-fold temperatures of RUN_DIR/calibration.json")
    parser.add_argument("--device", default="auto", help="torch backend: auto, cpu, cuda or cuda:N")
    add_threads_option(parser)
    parser.add_argument("--max-pixels", type=int, default=PREDICT_MAX_PIXELS,
                        help="refuse images whose header declares more pixels, before decoding")
    parser.add_argument("--impute-metadata", action="store_true",
                        help="metadata model: predict an image without age/sex/anatom_site with every field missing "
                        "(default: an error row)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.fsutil import atomic_write_text, check_writable_file, output_lock
    from crossderm.patient import METADATA_FIELDS
    from crossderm.predict.batch import isic2019_table
    from crossderm.predict.inputs import collect_inputs, listed_metadata
    from crossderm.runtime import configure_threads

    configure_threads(args.threads)
    if args.batch_size < 1:
        raise CrossdermError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_pixels < 1:
        raise CrossdermError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    check_writable_file(args.out, "--out")
    paths = collect_inputs(args.images)
    predictor = load_predictor(args)
    listed = listed_metadata(args.images)
    metadata = [dict(zip(METADATA_FIELDS, listed[p], strict=True)) if p in listed else None for p in paths]
    started = time.perf_counter()
    with output_lock(args.out, "crossderm predict"):
        table = predictor.predict(paths, tta=args.tta, batch_size=args.batch_size, max_pixels=args.max_pixels,
                                  metadata=metadata, impute_metadata=args.impute_metadata)
        output = isic2019_table(table) if args.output_format == "isic2019" else table
        atomic_write_text(args.out, output.to_csv(index=False, lineterminator="\n"))
    errors = table["error"].tolist()
    seconds = time.perf_counter() - started

    failed = [(path, error) for path, error in zip(paths, errors, strict=True) if error]
    shown = failed if args.output_format == "isic2019" else failed[:ERRORS_SHOWN]
    for path, error in shown:
        print(f"failed: {path}: {error}", file=sys.stderr)
    if len(failed) > len(shown):
        print(f"... and {len(failed) - len(shown)} more (status=error rows in {args.out})", file=sys.stderr)
    print(
        f"predicted {len(paths)} image(s): {len(paths) - len(failed)} ok, {len(failed)} failed in {seconds:.2f} s "
        f"({len(paths) / seconds:.1f} images/s, {args.backend}) -> {args.out}"
    )
    return 1 if failed else 0


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The torch fold ensemble of --model, or the ONNX file of --onnx-model; usage errors are CrossdermErrors."""
    from crossderm.api import Predictor
    from crossderm.api import load_predictor as load_run

    if args.backend == "onnx":
        from crossderm.predict.onnx_backend import OnnxEnsemble, check_same_run

        if args.onnx_model is None:
            raise CrossdermError("--backend onnx needs --onnx-model FILE (made by `crossderm export`)")
        if args.fold:
            raise CrossdermError("--fold applies to the torch backend; choose the folds of an ONNX file at export")
        if args.device not in ("auto", "cpu"):
            raise CrossdermError(f"--device {args.device}: the onnx backend runs on the CPU only")
        if args.calibrated:
            raise CrossdermError("--calibrated applies to the torch backend")
        predictor = OnnxEnsemble(args.onnx_model)
        if args.model is not None:
            check_same_run(predictor.sidecar, args.model)
        return Predictor(predictor)

    if args.onnx_model is not None:
        raise CrossdermError("--onnx-model needs --backend onnx")
    if args.model is None:
        raise CrossdermError("--model RUN_DIR is required (or --backend onnx --onnx-model FILE)")
    return load_run(args.model, folds=args.fold, device=args.device, calibrated=args.calibrated)
