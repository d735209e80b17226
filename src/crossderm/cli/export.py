"""``crossderm export``: a run's fold ensemble -> one ONNX graph averaging the folds (+ sidecar JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossderm.cli.options import add_threads_option

EPILOG = """examples:
  crossderm export --model runs/b --out runs/b/model.onnx              # all folds in one graph
  crossderm export --model runs/b --out fold0.onnx --fold 0 --opset 17

The graph takes float32 images (N, 3, S, S) normalised with the run's mean/std (N dynamic) and returns
probs (N, 7), the mean over folds of each model's softmax. TTA stays outside: `crossderm predict --backend
onnx` stacks the flip views and averages them. OUT.json (sidecar) holds image size, mean, std, classes,
folds and the sha256 of OUT, checked before use. The graph is compared with torch before it is written.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's fold ensemble as one ONNX graph (+ sidecar JSON)",
        description="Export the fold ensemble of RUN_DIR (or --fold k) as one ONNX graph averaging the folds' "
        "probabilities, for `crossderm predict --backend onnx` or any ONNX runtime.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.onnx", help="ONNX file (written atomically)")
    parser.add_argument("--fold", type=int, action="append", help="export only this fold (repeatable; default all)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (7..20)")
    add_threads_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.fsutil import check_writable_file, output_lock
    from crossderm.models.hub_card import card_path_beside, write_model_card
    from crossderm.predict.ensemble import Ensemble
    from crossderm.predict.onnx_backend import export_onnx, sidecar_path
    from crossderm.runtime import configure_threads

    configure_threads(args.threads)
    check_writable_file(args.out, "--out")
    with output_lock(args.out, "crossderm export"):
        sidecar = export_onnx(Ensemble(args.model, args.fold, device="cpu"), args.out, args.opset)
    megabytes = args.out.stat().st_size / 1e6
    print(
        f"wrote {args.out} ({megabytes:.1f} MB, {sidecar['model']}, folds {sidecar['folds']}, opset {args.opset}) and "
        f"{sidecar_path(args.out)}; onnxruntime matches torch within {sidecar['export_check_max_abs_diff']:.1e}"
    )
    card_path = card_path_beside(args.out.parent, args.out.stem)
    # the card's own lock clears a killed writer's .README.md.*.tmp; exports beside each other share the card: wait
    with output_lock(card_path, "crossderm export, model card", wait=True):
        card = write_model_card(args.model, card_path, onnx=sidecar)
    kept = "" if card.name == "README.md" else f" ({card.parent / 'README.md'} is not crossderm's: left as it was)"
    print(f"wrote the model card {card}{kept}")
    return 0
