"""Pooling a run's jobs into ``oof_predictions.csv`` (every image once) and evaluating it.

cv and loso: every test image is predicted by exactly one job, so the pool is their concatenation. External
sources and the site-matrix protocol predict an image from several jobs: their rows are averaged into one
(probabilities of the jobs' models, ``fold`` = -1); the site matrix keeps every row in
``site_matrix_predictions.csv`` and scores each (training site, test site) cell.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crossderm.datafolder import METADATA_COLUMNS
from crossderm.defaults import BOOTSTRAP_SEED, N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_text, exclusive_lock, remove_stale_staging
from crossderm.labels import CLASSES
from crossderm.runfolder import RunFolder
from crossderm.train.tracking import Tracker

TEXT_COLUMNS = {name: str for name in ("image_id", "source", "label", "train_site", *METADATA_COLUMNS)}
ENSEMBLE_FOLD = -1


def read_fold_predictions(path: Path) -> pd.DataFrame:
    """One fold's predictions, validated like any predictions CSV first (a bad row names this file, not the
    pool), so a good ``oof_predictions.csv`` is never replaced by a bad one."""
    from crossderm.evaluate.predictions import load_predictions

    if not path.is_file():
        raise CrossdermError(f"{path}: missing (run that fold again)")
    load_predictions(path)
    try:
        return pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CrossdermError(f"{path}: cannot read predictions ({' '.join(str(exc).split())})") from None


def ensemble_mean(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, image_id): the mean of the jobs' probabilities, the image's own columns kept."""
    keys = ["source", "image_id"]
    own = [c for c in rows.columns if c not in (*CLASSES, "fold", "train_site") and c not in keys]
    grouped = rows.groupby(keys, sort=False)
    mean = grouped[list(CLASSES)].mean()
    first = grouped[own].first()
    out = first.join(mean).reset_index()
    out["fold"] = ENSEMBLE_FOLD
    return out[[c for c in ("image_id", "source", "label", *CLASSES, "fold", *METADATA_COLUMNS) if c in out.columns]]


def pooled_predictions(run: RunFolder, protocol: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The run's pool (each image once) and, for the site matrix, every (training site, image) row."""
    expected = run.expected_folds()
    missing = [k for k in expected if not run.fold(k).finished]
    if missing:
        raise CrossdermError(
            f"{run.path}: fold(s) {', '.join(map(str, missing))} not finished; run `crossderm cv ... --fold k` "
            "for each, then pool again (pooling a subset would evaluate part of the data as if it were all)"
        )
    tested = pd.concat([read_fold_predictions(run.fold(k).predictions) for k in expected], ignore_index=True)
    for k in expected:  # the calibration reads them after the pooled files are written: check them first
        read_fold_predictions(run.fold(k).val_predictions)
    externals = [run.fold(k).external_predictions for k in expected if run.fold(k).external_predictions.is_file()]
    matrix = None
    if protocol == "site-matrix":
        matrix, tested = tested, ensemble_mean(tested)
    duplicated = tested.duplicated(["source", "image_id"])
    if duplicated.any():
        raise CrossdermError(f"{run.path}: image {tested.loc[duplicated.idxmax(), 'image_id']} is predicted by "
                             "two folds")
    parts = [tested]
    if externals:
        parts.append(ensemble_mean(pd.concat([read_fold_predictions(p) for p in externals], ignore_index=True)))
    return pd.concat(parts, ignore_index=True), matrix


def ood_evaluation(run: RunFolder, pooled: pd.DataFrame, protocol: str, held_out_classes: list[str],
                   n_bootstrap: int, seed: int) -> dict:
    """AUROC of the OOD scores for the held-out site (loso) and for the classes held out of training."""
    from crossderm.evaluate.ood import held_out_class_auroc, held_out_site_auroc

    if "ood_msp" not in pooled.columns:
        return {}
    tested = pooled[pooled["fold"] != ENSEMBLE_FOLD]
    ood: dict = {}
    if protocol == "loso":
        sites = {int(k): v for k, v in run.read_run_info().get("job_sites", {}).items()}
        validation = {k: read_fold_predictions(run.fold(k).val_predictions) for k in sites}
        ood["held_out_site"] = held_out_site_auroc(tested, validation, sites, n_bootstrap, seed)
    if held_out_classes:
        ood["held_out_class"] = held_out_class_auroc(tested, held_out_classes, n_bootstrap, seed)
    return ood


def pool(
    run_dir: Path,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    reference_source: str = REFERENCE_SOURCE,
    tracker: Tracker | None = None,
) -> dict:
    """Join the jobs' predictions into ``oof_predictions.csv``, evaluate it, fit the calibration, write the
    model card (``README.md``, :mod:`crossderm.models.hub_card`); ``tracker`` then logs the pooled metrics and
    the run's files (:mod:`crossderm.train.tracking`). The run folder is locked meanwhile."""
    run = RunFolder(run_dir).require()
    with exclusive_lock(run.path, "crossderm pool"):
        remove_stale_staging(run.path)  # what a killed pool left
        return _pool(run, n_bootstrap, seed, reference_source, tracker)


def _pool(run: RunFolder, n_bootstrap: int, seed: int, reference_source: str, tracker: Tracker | None) -> dict:
    from crossderm.evaluate.calibration import calibrate_run
    from crossderm.evaluate.predictions import evaluate_file
    from crossderm.models.hub_card import write_model_card

    config = run.read_config()
    protocol = config.get("protocol", "cv")
    pooled, matrix = pooled_predictions(run, protocol)
    if config.get("only_folds"):
        print(f"only_folds {config['only_folds']}: these metrics cover the test images of those folds only, "
              "not all the data")
    if matrix is not None:
        atomic_write_text(run.site_matrix_predictions, matrix.to_csv(index=False))
    atomic_write_text(run.oof_predictions, pooled.to_csv(index=False))
    metrics, markdown = evaluate_file(
        run.oof_predictions, run.path, n_bootstrap, seed, reference_source,
        site_matrix_predictions=run.site_matrix_predictions if matrix is not None else None,
        ood=ood_evaluation(run, pooled, protocol, config.get("held_out_classes") or [], n_bootstrap, seed),
    )
    print(markdown, end="")
    calibration = calibrate_run(run.path)
    for source, info in calibration["sources"].items():
        print(f"calibration {source}: ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f} with per-fold "
              "temperature")
    print(f"model card: {write_model_card(run.path)}")
    if tracker is not None:
        tracker.log_pooled(run, metrics)
    return metrics

