"""A run's fold ensemble as one ONNX graph, and an onnxruntime predictor interchangeable with :class:`Ensemble`.

Graph contract: input ``images`` float32 (N, 3, S, S), already normalised with the run's mean/std (dynamic N);
output ``probs`` float32 (N, 7), the mean over the fold models of each model's softmax. Test-time augmentation
stays outside the graph: :class:`OnnxEnsemble` stacks the flip views along the batch exactly like
:func:`crossderm.models.tta.predict_proba_tta`, runs the graph once and averages the views, so one file serves
``--tta 1..4`` and the graph is a plain feed-forward net any runtime accepts. Fold and view means commute (both are
plain means of probabilities), so the result equals the torch backend's.

Exporter: ``torch.onnx.export(dynamo=False)``, the TorchScript exporter. Since torch 2.9 the default is the
torch.export-based exporter, which needs the extra ``onnxscript`` package; the TorchScript exporter still ships
(deprecated), needs nothing more and exports the timm CNNs and ConvNeXts we train. Graphs are single files, so
the ensemble's weights must stay under protobuf's 2 GiB (export fewer folds with ``--fold`` otherwise).

Sidecar ``FILE.onnx.json``: image size, mean, std, classes, folds, architecture, opset, the sha256 of the ONNX file
(checked before every load) and of each fold's weights (to tell which run it came from).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossderm.colour import apply_color_constancy
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from crossderm.labels import CLASSES
from crossderm.models.card import read_card
from crossderm.models.preprocess import Normalise, to_unit_float
from crossderm.models.tta import VIEW_FLIPS, check_views
from crossderm.predict.ensemble import Ensemble
from crossderm.runfolder import RunFolder

SIDECAR_FORMAT = "crossderm-onnx/1"
INPUT_NAME, OUTPUT_NAME = "images", "probs"
MIN_OPSET, MAX_OPSET = 7, 20  # the TorchScript exporter's range
MAX_GRAPH_BYTES = 2**31 - 1  # protobuf's message limit for a single-file graph
EXPORT_TOLERANCE = 1e-4  # max |onnxruntime - torch| probability allowed on the export self-check


def sidecar_path(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name + ".json")


class FoldAverage(nn.Module):
    """The exported graph: mean over fold models of their softmax probabilities."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images).float().softmax(dim=1) for m in self.members]).mean(dim=0)


def export_onnx(ensemble: Ensemble, out: Path, opset: int = 17) -> dict[str, Any]:
    """Write ``out`` (the fold-averaged graph) and its sidecar atomically; returns the sidecar content.

    The graph is checked against the torch ensemble on a random batch before anything is written.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CrossdermError(f"--opset must be {MIN_OPSET}..{MAX_OPSET} for the TorchScript ONNX exporter, got {opset}")
    graph = FoldAverage([m.model for m in ensemble.members]).to("cpu").eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    if weight_bytes > MAX_GRAPH_BYTES:
        raise CrossdermError(
            f"{len(graph.members)} folds hold {weight_bytes / 2**30:.1f} GiB of weights, over ONNX's 2 GiB "
            "single-file limit: export fewer folds with --fold"
        )
    size = ensemble.image_size
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based exporter": chosen, see above
        try:
            torch.onnx.export(
                graph,
                (torch.zeros(2, 3, size, size),),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0]
            raise CrossdermError(f"ONNX export of {ensemble.card.model} failed: {reason}") from None
    data = buffer.getvalue()

    check = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = graph(check).numpy()
    got = _session(data).run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= EXPORT_TOLERANCE:
        raise CrossdermError(
            f"exported graph disagrees with torch by {difference:.2e} (> {EXPORT_TOLERANCE:g}); not writing {out}"
        )

    atomic_write_bytes(out, data)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "onnx_file": out.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "model": ensemble.card.model,
        "image_size": size,
        "mean": list(ensemble.card.mean),
        "std": list(ensemble.card.std),
        "color_constancy": ensemble.card.color_constancy,
        "classes": list(CLASSES),
        "folds": list(ensemble.folds),
        "weights_sha256": {str(m.card.fold): m.card.sha256 for m in ensemble.members},
        "run_dir": str(ensemble.run_dir),
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32", "normalised": True},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(CLASSES)], "meaning": "mean over folds of softmax"},
        "tta": "outside the graph: stack flip views along the batch, average the view probabilities",
        "export_check_max_abs_diff": difference,
    }
    atomic_write_json(sidecar_path(out), sidecar)
    return sidecar


def _session(model: bytes | str, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def read_sidecar(onnx_file: Path) -> dict[str, Any]:
    """The sidecar of ``onnx_file``, validated, after checking the file's sha256 against it."""
    path = sidecar_path(onnx_file)
    if not onnx_file.is_file():
        raise CrossdermError(f"{onnx_file}: no such ONNX file")
    sidecar = read_json(path, "the sidecar of the ONNX file: make both with `crossderm export`")
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise CrossdermError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    if sidecar.get("classes") != list(CLASSES):
        raise CrossdermError(f"{path}: classes {sidecar.get('classes')} differ from {list(CLASSES)}")
    if sha256_file(onnx_file) != sidecar.get("sha256"):
        raise CrossdermError(f"{onnx_file}: sha256 does not match {path} (corrupt or tampered); refusing it")
    return sidecar


def check_same_run(sidecar: dict[str, Any], run_dir: Path) -> None:
    """Refuse an ONNX file whose fold weights are not those of ``run_dir`` (stale or from another run)."""
    for fold, digest in sidecar["weights_sha256"].items():
        card = read_card(RunFolder(run_dir).fold(int(fold)).model_card)
        if card.sha256 != digest:
            raise CrossdermError(f"ONNX file was exported from other weights than {run_dir}/fold_{fold}; re-export it")


class OnnxEnsemble:
    """The exported ensemble under onnxruntime (CPU); same ``image_size`` / ``predict`` as :class:`Ensemble`."""

    def __init__(self, onnx_file: Path, threads: int = 0) -> None:
        self.onnx_file = Path(onnx_file)
        self.sidecar = read_sidecar(self.onnx_file)
        try:
            self.session = _session(str(self.onnx_file), threads)
        except Exception as exc:  # onnxruntime raises its own exception types for invalid or unsupported graphs
            raise CrossdermError(f"{self.onnx_file}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        self.image_size: int = self.sidecar["image_size"]
        self.folds: list[int] = self.sidecar["folds"]
        self.normalise = Normalise(tuple(self.sidecar["mean"]), tuple(self.sidecar["std"]))

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> normalised float32 (N, 3, H, W) by the same code as ``Ensemble.preprocess``."""
        pixels = apply_color_constancy(np.ascontiguousarray(pixels), self.sidecar.get("color_constancy", "none"))
        return self.normalise(to_unit_float(torch.from_numpy(np.array(pixels)))).numpy()

    def predict(self, pixels: np.ndarray, views: int = 4) -> np.ndarray:
        """Class probabilities (N, 7): the graph's fold mean, averaged over ``views`` flip views."""
        check_views(views)
        images = self.preprocess(pixels)
        stacked = np.concatenate([np.flip(images, axis=dims) if dims else images for dims in VIEW_FLIPS[:views]])
        probs = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(stacked)})[0]
        return probs.reshape(views, len(pixels), -1).mean(axis=0).astype(np.float64)
