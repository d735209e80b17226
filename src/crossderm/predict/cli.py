"""``crossderm predict`` (images -> class probabilities) and ``crossderm export`` (run -> one ONNX graph).

predict decodes every image with :func:`crossderm.prepare.cache.load_image` (the training preprocessing), runs the
fold ensemble with flip TTA through torch or onnxruntime, and writes one row per input image. A bad image (missing,
not an image, truncated, a decompression bomb, over ``--max-pixels``) becomes an error row; the rest still runs.
Exit status: 0 all images ok, 1 some image failed (the output is still written), 2 usage or model error.

``--format isic2019`` writes the ISIC 2019 challenge columns ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``. Rule:
each of our seven classes goes to its ISIC column by ``ham_to_isic_columns(DEFAULT_ISIC_TO_HAM)`` (akiec -> AK,
bcc -> BCC, bkl -> BKL, df -> DF, mel -> MEL, nv -> NV, vasc -> VASC); SCC and UNK, which the 7-class models cannot
tell apart (SCC is folded into akiec in training) or do not know, are 0.0. Failed images are listed on stderr and
left out of that file, which has no error column.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from crossderm.errors import CrossdermError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from crossderm.predict.model_io import Ensemble
    from crossderm.predict.onnx_backend import OnnxEnsemble

PREDICT_EPILOG = """examples:
  crossderm predict --model runs/b images/ --out pred.csv                 # every fold, 4-view TTA
  crossderm predict --model runs/b a.jpg b.png list.csv --out pred.csv --fold 0 --tta 1
  crossderm predict --model runs/b ISIC_2019_Test_Input/ --out submission.csv --format isic2019
  crossderm export --model runs/b --out runs/b/model.onnx
  crossderm predict --backend onnx --onnx-model runs/b/model.onnx images/ --out pred.csv

IMAGES: image files, folders (recursive: .jpg .jpeg .png .bmp .tif .tiff, sorted) or .csv lists with a
path, image or image_id column (relative to the CSV's folder; a name without suffix is tried with each).

output (--format crossderm): image_id (file stem), path, akiec bcc bkl df mel nv vasc, predicted, status
(ok|error), error (one-line reason, empty when ok).
--format isic2019: image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK with akiec->AK, bcc->BCC, bkl->BKL, df->DF,
mel->MEL, nv->NV, vasc->VASC (ham_to_isic_columns of the default ISIC->HAM map); SCC and UNK are 0.0 (the
7-class models fold SCC into akiec and have no UNK). Failed images go to stderr only.

exit status: 0 every image ok; 1 some image failed (the output file is still written); 2 usage or model error
(missing/tampered weights, a model.json that does not fit its weights, bad ONNX file or sidecar).
"""

EXPORT_EPILOG = """examples:
  crossderm export --model runs/b --out runs/b/model.onnx              # all folds in one graph
  crossderm export --model runs/b --out fold0.onnx --fold 0 --opset 17

The graph takes float32 images (N, 3, S, S) normalised with the run's mean/std (N dynamic) and returns
probs (N, 7), the mean over folds of each model's softmax. TTA stays outside: `crossderm predict --backend
onnx` stacks the flip views and averages them. OUT.json (sidecar) holds image size, mean, std, classes,
folds and the sha256 of OUT, checked before use. The graph is compared with torch before it is written.
"""
ERRORS_SHOWN = 10
# Below Pillow's decompression-bomb threshold (89.5 MP), so users meet this clear cap first; dermoscopy originals
# are a few tens of megapixels at most. Pillow's own limit still applies inside load_image.
DEFAULT_MAX_PIXELS = 64_000_000


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
    parser.add_argument("--tta", type=int, choices=(1, 2, 3, 4), default=4, help="flip views: id, h, v, both")
    parser.add_argument("--format", dest="output_format", choices=("crossderm", "isic2019"), default="crossderm",
                        help="output columns")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="inference engine")
    parser.add_argument("--onnx-model", type=Path, metavar="FILE", help="ONNX file from `crossderm export`")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (before TTA)")
    parser.add_argument("--calibrated", action="store_true",
                        help="torch backend: apply the per-fold temperatures of RUN_DIR/calibration.json")
    parser.add_argument("--device", default="auto", help="torch backend: auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images whose header declares more pixels, before decoding")
    parser.set_defaults(handler=run_predict)

    export = subparsers.add_parser(
        "export",
        help="export a run's fold ensemble as one ONNX graph (+ sidecar JSON)",
        description="Export the fold ensemble of RUN_DIR (or --fold k) as one ONNX graph averaging the folds' "
        "probabilities, for `crossderm predict --backend onnx` or any ONNX runtime.",
        epilog=EXPORT_EPILOG,
        formatter_class=formatter_class,
    )
    export.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    export.add_argument("--out", type=Path, required=True, metavar="FILE.onnx", help="ONNX file (written atomically)")
    export.add_argument("--fold", type=int, action="append", help="export only this fold (repeatable; default all)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (7..20)")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from crossderm.predict.model_io import Ensemble
    from crossderm.predict.onnx_backend import export_onnx, sidecar_path

    if args.out.is_dir():
        raise CrossdermError(f"--out {args.out}: is a folder; give a file name like model.onnx")
    sidecar = export_onnx(Ensemble(args.model, args.fold, device="cpu"), args.out, args.opset)
    megabytes = args.out.stat().st_size / 1e6
    print(
        f"wrote {args.out} ({megabytes:.1f} MB, {sidecar['model']}, folds {sidecar['folds']}, opset {args.opset}) and "
        f"{sidecar_path(args.out)}; onnxruntime matches torch within {sidecar['export_check_max_abs_diff']:.1e}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from crossderm.fsutil import atomic_write_text
    from crossderm.predict.inputs import collect_inputs

    if args.batch_size < 1:
        raise CrossdermError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_pixels < 1:
        raise CrossdermError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    if args.out.is_dir():
        raise CrossdermError(f"--out {args.out}: is a folder; give a file name like pred.csv")
    paths = collect_inputs(args.images)
    predictor = load_predictor(args)
    started = time.perf_counter()
    probs, errors = predict_paths(predictor, paths, args.tta, args.batch_size, args.max_pixels)
    table = prediction_table(paths, probs, errors)
    output = isic2019_table(table) if args.output_format == "isic2019" else table
    atomic_write_text(args.out, output.to_csv(index=False, lineterminator="\n"))
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


def load_predictor(args: argparse.Namespace) -> Ensemble | OnnxEnsemble:
    """The torch fold ensemble of --model, or the ONNX file of --onnx-model; usage errors are CrossdermErrors."""
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
        return predictor

    from crossderm.predict.model_io import Ensemble
    from crossderm.train.engine import Runtime

    if args.onnx_model is not None:
        raise CrossdermError("--onnx-model needs --backend onnx")
    if args.model is None:
        raise CrossdermError("--model RUN_DIR is required (or --backend onnx --onnx-model FILE)")
    device = Runtime.resolve(args.device, "auto").device
    return Ensemble(args.model, args.fold, device=device, calibrated=args.calibrated)


def predict_paths(
    predictor: Ensemble | OnnxEnsemble, paths: list[Path], views: int, batch_size: int, max_pixels: int
) -> tuple[np.ndarray, list[str]]:
    """Probabilities (N, 7), NaN rows for failed images, and each image's error ('' when ok)."""
    import numpy as np
    from tqdm import tqdm

    from crossderm.labels import CLASSES
    from crossderm.predict.inputs import ImageError, decode

    probs = np.full((len(paths), len(CLASSES)), np.nan)
    errors = [""] * len(paths)
    with tqdm(total=len(paths), desc="predict", unit="img", disable=None) as progress:
        for start in range(0, len(paths), batch_size):
            rows, pixels = [], []
            for row in range(start, min(start + batch_size, len(paths))):
                try:
                    pixels.append(decode(paths[row], predictor.image_size, max_pixels))
                    rows.append(row)
                except ImageError as exc:
                    errors[row] = str(exc)
            if rows:
                probs[rows] = predictor.predict(np.stack(pixels), views)
            progress.update(min(batch_size, len(paths) - start))
    return probs, errors


def prediction_table(paths: list[Path], probs: np.ndarray, errors: list[str]) -> pd.DataFrame:
    """The crossderm output: one row per input in input order; failed rows have empty probabilities."""
    import numpy as np
    import pandas as pd

    from crossderm.labels import CLASSES

    ok = np.array([not error for error in errors], dtype=bool)
    table = pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths]})
    table[list(CLASSES)] = probs
    best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    table["predicted"] = [CLASSES[k] if good else "" for k, good in zip(best, ok, strict=True)]
    table["status"] = np.where(ok, "ok", "error")
    table["error"] = errors
    return table


def isic2019_table(table: pd.DataFrame) -> pd.DataFrame:
    """ISIC 2019 submission columns for the ok rows; the mapping rule is in the module docstring."""
    import pandas as pd

    from crossderm.labels import DEFAULT_ISIC_TO_HAM, ISIC2019_COLUMNS, ham_to_isic_columns

    source_class = {column: cls for cls, column in ham_to_isic_columns(DEFAULT_ISIC_TO_HAM).items()}
    ok = table[table["status"] == "ok"]
    out = pd.DataFrame({"image": ok["image_id"].to_numpy()})
    for column in ISIC2019_COLUMNS:
        out[column] = ok[source_class[column]].to_numpy() if column in source_class else 0.0
    return out
