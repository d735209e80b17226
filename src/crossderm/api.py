"""The Python API: the pipeline's stages as functions with keyword arguments, the ones the ``crossderm`` command
calls. Re-exported lazily from :mod:`crossderm` (``import crossderm`` stays light; torch loads on first use).
``docs/api.md`` shows the notebook flow: synthesize, prepare_data, cross_validate, load_predictor, predict.

Why ``prepare_data`` / ``evaluate_predictions`` / ``write_report`` and not ``prepare`` / ``evaluate`` / ``report``:
those are the names of crossderm's subpackages, and Python sets ``crossderm.prepare`` to the subpackage the moment
anything imports ``crossderm.prepare.pipeline``, so a top-level function of that name would vanish mid-session.

User errors are :class:`crossderm.errors.CrossdermError` (one line saying what to fix), as on the command line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossderm.defaults import BOOTSTRAP_SEED, MAX_TTA_VIEWS, N_BOOTSTRAP, PREDICT_MAX_PIXELS, REFERENCE_SOURCE
from crossderm.errors import CrossdermError
from crossderm.labels import CLASSES

if TYPE_CHECKING:
    import pandas as pd

    from crossderm.models.card import ModelCard
    from crossderm.train.config import ExperimentConfig
    from crossderm.train.tracking import TrackingOptions

PathLike = str | Path

__all__ = [
    "Predictor", "cross_validate", "evaluate_predictions", "load_predictor", "pool", "prepare_data", "presets",
    "synthesize", "write_model_card", "write_report",
]


def synthesize(
    out: PathLike,
    *,
    ham_lesions: int | None = None,
    isic_lesions: int | None = None,
    seed: int = 0,
    min_per_class: int | None = None,
    image_scale: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic download in the official layouts, ``out/HAM10000/`` and ``out/ISIC2019/``; returns the
    counts per site and class (what ``crossderm synth`` prints).

    Args:
        out: folder to create (written atomically); it also gets ``crossderm-synth.json``, which tells the model
            cards of runs trained on these images that the data are synthetic.
        ham_lesions: HAM10000 lesions (about 1.35 images each, also rows of ISIC 2019); None: 740.
        isic_lesions: ISIC-only lesions, 70 % BCN-like, 30 % MSK-like; None: 610.
        seed: random seed; the same seed and sizes give byte-identical files.
        min_per_class: fewest lesions per class and site; None: 6.
        image_scale: scale of all image sizes (1.0: HAM 160 x 120 px); None: 1.0.
        overwrite: replace a non-empty ``out``.
    """
    from crossderm.synth.generator import generate

    sizes = {"ham_lesions": ham_lesions, "isic_lesions": isic_lesions, "min_per_class": min_per_class,
             "image_scale": image_scale}  # None: left out, so generate's defaults (the ones above) apply
    return generate(out, seed=seed, overwrite=overwrite, **{k: v for k, v in sizes.items() if v is not None})


def prepare_data(
    out: PathLike,
    *,
    ham: PathLike | None = None,
    isic: PathLike | None = None,
    sources: Iterable[str] = (),
    image_size: int = 224,
    folds: int = 5,
    seed: int = 0,
    splits: PathLike | None = None,
    allow_missing: bool = False,
    label_map: PathLike | None = None,
    ham_metadata: PathLike | None = None,
    sites: PathLike | None = None,
    color_constancy: Iterable[str] = (),
    workers: int | None = None,
    max_hamming: int = 8,
    min_correlation: float = 0.95,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build DATA_DIR: harmonised manifest, lesion-grouped folds, decode-once image cache, leakage audit.

    Args:
        out: DATA_DIR to create (written atomically).
        ham: HAM10000 folder (``HAM10000_metadata.csv`` + images in any subfolder).
        isic: ISIC 2019 folder (training ground truth + metadata CSVs, images); its HAM10000 images are removed.
        sources: your own datasets as ``"NAME=DIR"`` (``DIR/labels.csv``: image, label, optional lesion_id, site,
            age, sex, anatom_site; optional ``DIR/label_map.yaml``).
        image_size: side of the cached square images in pixels (shorter side resized, centre crop).
        folds: lesion-grouped stratified folds per source.
        seed: fold assignment seed.
        splits: reuse the folds of a split file (e.g. ``splits/*.csv``) instead of drawing them.
        allow_missing: drop (and count) labelled rows whose image file is absent instead of refusing.
        label_map: YAML ``{ISIC_COLUMN: ham_class or null}`` overriding the default ISIC -> HAM map.
        ham_metadata: HAM10000 metadata file to use instead of the download's (e.g. with the site column).
        sites: image -> site CSV (``image``, ``site`` columns, or FLamby's split file with ``center``).
        color_constancy: extra colour-constancy variants of the cache to write (e.g. ``["sog6"]``).
        workers: decoding processes; None: all cores.
        max_hamming: perceptual-hash distance for near-duplicate candidates.
        min_correlation: grey-level correlation that confirms a near-duplicate.
        overwrite: replace an existing ``out``.

    Returns: the audit (``DATA_DIR/audit.json``): counts per source, class and site, overlap removed, near-duplicates.
    """
    from crossderm.prepare.pipeline import PrepareConfig, prepare

    path = _optional_path
    return prepare(PrepareConfig(
        out=Path(out), ham=path(ham), isic=path(isic), sources=list(sources), image_size=image_size, folds=folds,
        seed=seed, splits=path(splits), allow_missing=allow_missing, label_map=path(label_map),
        ham_metadata=path(ham_metadata), sites=path(sites), color_constancy=list(color_constancy), workers=workers,
        max_hamming=max_hamming, min_correlation=min_correlation, overwrite=overwrite,
    ))


def presets() -> list[str]:
    """The bundled experiment presets (``src/crossderm/configs/*.yaml``), for ``cross_validate(config=...)``."""
    from crossderm.train.config import preset_names

    return preset_names()


def cross_validate(
    config: PathLike | ExperimentConfig,
    data: PathLike,
    out: PathLike,
    *,
    folds: Sequence[int] | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    pretrained_paths: Sequence[str] = (),
    tta: int | None = None,
    device: str = "auto",
    n_bootstrap: int = N_BOOTSTRAP,
    reference_source: str = REFERENCE_SOURCE,
    tracking: TrackingOptions | None = None,
) -> dict[str, Any] | None:
    """Train and test every fold (or ``folds``) of an experiment; pool and evaluate once all folds are done.

    Args:
        config: a preset name (see :func:`presets`), a YAML file, or an ``ExperimentConfig``.
        data: DATA_DIR made by :func:`prepare_data`.
        out: RUN_DIR for checkpoints, predictions, ``metrics.json`` and the model card ``README.md``.
        folds: train only these folds (one job per fold, e.g. a Slurm array); None: all.
        resume: continue interrupted folds from their checkpoints (same predictions as an uninterrupted run).
        overrides: ``"key=value"`` settings on top of the config, e.g. ``["epochs=5", "augment.min_area=0.5"]``.
        pretrained_paths: local safetensors weights, ``"FILE"`` or ``"BACKBONE=FILE"`` (implies pretrained).
        tta: test-time flip views 1-4; None: the config's.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        n_bootstrap: bootstrap resamples behind every confidence interval.
        reference_source: the generalisation gap is this source minus each other test source.
        tracking: TensorBoard / MLflow logging (``crossderm.train.tracking.TrackingOptions``); None: none.

    Returns: the pooled metrics (``RUN_DIR/metrics.json``), or None while folds remain (run them, then :func:`pool`).
    Under ``torchrun`` every process calls this; only rank 0 gets the metrics.
    """
    from crossderm.runtime import init_distributed
    from crossderm.train.config import ExperimentConfig, apply_overrides, build_config, load_config
    from crossderm.train.config import with_pretrained_paths as add_paths
    from crossderm.train.cv import run_cv

    _check_bootstrap(n_bootstrap)
    extra = list(overrides) + ([f"tta={tta}"] if tta else [])
    if isinstance(config, ExperimentConfig):
        resolved = build_config(apply_overrides(config.to_dict(), extra), config.name) if extra else config
    else:
        resolved = load_config(config, extra)
    if pretrained_paths:
        resolved = add_paths(resolved, list(pretrained_paths))
    init_distributed()
    return run_cv(resolved, Path(data), Path(out), list(folds) if folds is not None else None, resume, device,
                  n_bootstrap, reference_source, tracking=tracking)


def pool(
    run_dir: PathLike, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
    reference_source: str = REFERENCE_SOURCE,
) -> dict[str, Any]:
    """Join the folds of a run trained as separate jobs, evaluate, calibrate and write the model card; returns the
    metrics (``RUN_DIR/metrics.json``).

    Args:
        run_dir: RUN_DIR whose folds are all finished.
        n_bootstrap: bootstrap resamples; seed: their seed; reference_source: as in :func:`cross_validate`.
    """
    from crossderm.train.pooling import pool as pool_run

    _check_bootstrap(n_bootstrap)
    return pool_run(Path(run_dir), n_bootstrap=n_bootstrap, seed=seed, reference_source=reference_source)


def evaluate_predictions(
    predictions: PathLike | pd.DataFrame,
    out: PathLike | None = None,
    *,
    by: Sequence[str] | None = None,
    reference_source: str = REFERENCE_SOURCE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """The metrics.json content of a predictions table: metrics with bootstrap CIs per source (``sources``), the
    generalisation ``gaps``, ``bootstrap``, and per-group results (``sites``, ``site_summary``, ...).

    Args:
        predictions: a predictions CSV (or a DataFrame with its columns): image_id, source, label, one probability
            column per class; optional site, sex, age, anatom_site.
        out: folder for ``metrics.json`` and ``metrics.md``; None: write nothing, just return the metrics.
        by: groupings (``"site"``, ``"sex"``, ``"age_bin"``, ``"anatom_site"``); None: per site when there is a
            site column. A grouping asked for whose column is missing is an error.
        reference_source, n_bootstrap: as in :func:`cross_validate`.
        seed: the bootstrap seed (each source's draws depend only on its own rows).
    """
    from crossderm.evaluate.predictions import evaluate_file
    from crossderm.fsutil import read_json
    from crossderm.runfolder import METRICS_JSON

    _check_bootstrap(n_bootstrap)
    with tempfile.TemporaryDirectory(prefix="crossderm-evaluate-") as scratch:
        if not isinstance(predictions, str | Path):
            csv = Path(scratch) / "predictions.csv"
            predictions.to_csv(csv, index=False)
            predictions = csv
        folder = Path(out) if out is not None else Path(scratch)
        evaluate_file(Path(predictions), folder, n_bootstrap, seed, reference_source, by=by)
        return read_json(folder / METRICS_JSON, "")  # plain Python types, exactly what metrics.json holds


def write_report(
    run_dirs: Sequence[PathLike], out: PathLike, *, reference_source: str | None = None, by: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """The cross-run report: ``out/report.html``, ``report.md``, ``summary.json`` and ``figures/``; returns the
    summary (``out/summary.json``).

    Args:
        run_dirs: finished run folders; the first is the reference run every later one is compared with.
        out: report folder to create (atomically).
        reference_source: source every gap is measured from; None: the first run's (normally ``"ham"``).
        by: subgroup tables to add (``"sex"``, ``"age_bin"``, ``"anatom_site"``); per site is always shown.
        overwrite: replace an existing ``out``.
    """
    from crossderm.report.build import write_report as build

    return build([Path(r) for r in run_dirs], Path(out), overwrite=overwrite, reference_source=reference_source,
                 by=tuple(by))


def write_model_card(run_dir: PathLike, out: PathLike | None = None) -> Path:
    """(Re)write the run's Hugging Face-style model card; returns its path.

    Args:
        run_dir: a pooled run folder (``metrics.json`` present).
        out: file to write; None: ``RUN_DIR/README.md`` (``RUN_DIR/model.README.md`` when a README.md that
            crossderm did not write is already there).
    """
    from crossderm.models.hub_card import write_model_card as write

    return write(run_dir, out)


def load_predictor(
    run_dir: PathLike, *, folds: Sequence[int] | None = None, device: str = "auto", calibrated: bool = False
) -> Predictor:
    """A trained run's fold ensemble, ready to predict images (weights checked against their sha256).

    Args:
        run_dir: RUN_DIR made by :func:`cross_validate` (``fold_<k>/model.json`` + weights).
        folds: use only these folds; None: every finished fold.
        device: as in :func:`cross_validate`.
        calibrated: apply the per-fold temperatures of ``RUN_DIR/calibration.json``.
    """
    from crossderm.predict.ensemble import Ensemble
    from crossderm.runtime import Runtime

    return Predictor(Ensemble(Path(run_dir), list(folds) if folds is not None else None,
                              device=Runtime.resolve(device).device, calibrated=calibrated))


class Predictor:
    """Class probabilities for images, decoded exactly as training decoded them (:mod:`crossderm.imaging`).

    Made by :func:`load_predictor` (torch), or around an ``OnnxEnsemble`` (``crossderm predict --backend onnx``).
    Attributes: ``classes`` (column order of the probabilities), ``card`` (the fold model card ``model.json``:
    architecture, input size, normalisation; None for ONNX), ``folds``, ``image_size``, ``backend``.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.classes: tuple[str, ...] = tuple(CLASSES)
        self.card: ModelCard | None = getattr(backend, "card", None)
        self.folds: list[int] = list(backend.folds)
        self.image_size: int = backend.image_size

    def __repr__(self) -> str:
        model = self.card.model if self.card else "onnx"
        return f"Predictor({model}, folds {self.folds}, {self.image_size} px)"

    def predict(
        self, images: Any, *, tta: int | None = None, batch_size: int = 32, max_pixels: int = PREDICT_MAX_PIXELS,
        metadata: Sequence[Mapping[str, Any] | None] | None = None, impute_metadata: bool = False,
    ) -> pd.DataFrame:
        """One row per image, in input order: ``image_id``, ``path``, the seven probabilities, ``predicted``,
        ``status`` (``ok`` / ``error``) and ``error`` (why an image could not be used; the others still run).

        Args:
            images: one image or a list: file paths (``str`` / ``Path``), folders (their images, recursively,
                sorted), ``.csv`` lists (``path``/``image``/``image_id`` column), PIL images and uint8 arrays (H, W,
                3), (H, W), (H, W, 4) or (N, H, W, 3) for N images (``image_id`` ``image_<i>``, empty ``path``), all
                by the same resize and centre crop. A JPEG *file* is decoded with Pillow's draft (DCT-domain)
                downscaling as in training, so a large JPEG's path can differ slightly from it opened as a PIL image.
            tta: flip views 1-4 (identity, h, v, both); None: the run's (``card.tta``; 4 for ONNX).
            batch_size: images per forward pass (before TTA).
            max_pixels: refuse (as an error row) images whose header declares more pixels, before decoding.
            metadata: for a metadata model (``card.metadata``), one mapping per image (after folders and CSV
                lists are expanded) with ``age``, ``sex``, ``anatom_site`` (blank = missing), or None for an
                image without; ignored by other models.
            impute_metadata: predict an image without metadata with every field missing, instead of an error row.

        The torch backend adds the out-of-distribution scores ``ood_msp``, ``ood_energy``, ``ood_mahalanobis``
        (crossderm.models.ood; higher = less like the training images).
        """
        from crossderm.patient import METADATA_FIELDS
        from crossderm.predict.batch import metadata_rows, predict_paths, prediction_table

        if batch_size < 1 or max_pixels < 1:
            raise CrossdermError("batch_size and max_pixels must be at least 1")
        names, sources = _inputs(images)
        views = tta if tta is not None else (self.card.tta if self.card else MAX_TTA_VIEWS)
        rows = None
        if getattr(self.backend, "needs_metadata", False):
            if metadata is not None and len(metadata) != len(sources):
                raise CrossdermError(f"metadata: {len(metadata)} entries for {len(sources)} images; give one per image")
            given = {i: tuple(str(m.get(k, "") or "") for k in METADATA_FIELDS)
                     for i, m in enumerate(metadata or []) if m is not None}
            rows = metadata_rows(range(len(sources)), given, impute_metadata)
        result = predict_paths(self.backend, sources, views, batch_size, max_pixels, rows)
        table = prediction_table([Path(n) for n, _ in names], result)
        table["image_id"] = [n for n, _ in names]
        table["path"] = [p for _, p in names]
        return table


def _inputs(images: Any) -> tuple[list[tuple[str, str]], list[Any]]:
    """(image_id, path) and the decodable source (a Path, or PNG bytes) of each input image."""
    import numpy as np
    from PIL import Image

    from crossderm.predict.inputs import collect_inputs

    single = isinstance(images, str | Path | Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
    items = [images] if single else list(images)
    names: list[tuple[str, str]] = []
    sources: list[Any] = []
    seen: set[Path] = set()
    for item in items:
        if isinstance(item, str | Path):
            for path in collect_inputs([item]):
                if path not in seen:  # as on the command line: each file once
                    seen.add(path)
                    names.append((path.stem, str(path)))
                    sources.append(path)
        else:
            for png in _png_images(item):
                names.append((f"image_{len(names)}", ""))
                sources.append(png)
    if not names:
        raise CrossdermError("no input images given")
    return names, sources


def _png_images(item: Any) -> list[bytes]:
    """Lossless PNGs of a PIL image or uint8 array (N of an (N, H, W, 3) one): the one decoder (crossderm.imaging)
    then sees them like files."""
    import io

    import numpy as np
    from PIL import Image

    if isinstance(item, Image.Image):
        images = [item]
    elif not isinstance(item, np.ndarray):
        raise CrossdermError(f"cannot predict a {type(item).__name__}: give paths, PIL images or uint8 arrays")
    elif item.dtype != np.uint8:
        raise CrossdermError(f"image arrays must be uint8 (0-255), got {item.dtype}")
    elif item.ndim == 4 and item.shape[-1] == 3:
        images = [Image.fromarray(pixels) for pixels in item]
    elif item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (3, 4)):
        images = [Image.fromarray(item)]
    else:
        raise CrossdermError(f"image arrays must be (H, W), (H, W, 3), (H, W, 4) or (N, H, W, 3); got {item.shape}")
    pngs = []
    for image in images:
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):  # modes PNG cannot hold (CMYK, F)
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def _optional_path(value: PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


def _check_bootstrap(n_bootstrap: int) -> None:
    if n_bootstrap < 1:
        raise CrossdermError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
