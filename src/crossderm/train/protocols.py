"""Evaluation protocols: which images each training job ("fold") trains on and tests on.

- ``cv``: lesion-grouped K-fold per source; job k trains on the training sources' other folds and tests the
  test sources' fold k (the paper's protocol).
- ``loso`` (leave one site out): one job per site (``source/site``) of the test sources with at least
  ``min_site_images`` images; it trains on every other site of the training sources and tests every image
  of the held-out site. Smaller sites are never held out but always trained on.
- ``site-matrix``: one job per training site with at least ``min_site_images`` images; it trains on that
  site alone and tests every image of every other such site (FLamby's grid). An image is then predicted by
  several jobs: ``predictions.csv`` carries the ``train_site`` of each row.

External sources (``external_sources``) are never trained on; every job predicts all their images, and
pooling averages the jobs' probabilities. Model selection always uses a lesion-grouped inner validation
split of the job's own training images. Job k writes ``fold_<k>``; ``run.json`` records each job's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from crossderm.errors import CrossdermError
from crossderm.train.config import ExperimentConfig


@dataclass(frozen=True)
class Job:
    """One training job of a protocol: fold number, readable name, and the site it holds out or trains on."""

    fold: int
    name: str
    site: str | None = None


def site_keys(frame: pd.DataFrame) -> pd.Series:
    """``source/site``: site names may repeat across sources, this key never does."""
    return frame["source"] + "/" + frame["site"]


def _eligible_sites(manifest: pd.DataFrame, sources: list[str], minimum: int) -> list[str]:
    counts = site_keys(manifest[manifest["source"].isin(sources)]).value_counts()
    return sorted(counts[counts >= minimum].index)


def check_sources(manifest: pd.DataFrame, config: ExperimentConfig) -> None:
    have = set(manifest["source"])
    for source in (*config.train_sources, *config.test_sources, *config.external_sources):
        if source not in have:
            raise CrossdermError(f"source {source!r} is not in the prepared data (have {sorted(have)})")


def jobs(manifest: pd.DataFrame, config: ExperimentConfig) -> list[Job]:
    """The protocol's training jobs in fold order; with ``only_folds`` just those (a partial evaluation)."""
    every = _all_jobs(manifest, config)
    if config.only_folds is None:
        return every
    known = [job.fold for job in every]
    unknown = [k for k in config.only_folds if k not in known]
    if unknown:
        raise CrossdermError(f"only_folds: fold {unknown[0]} does not exist (the {config.protocol} folds: {known})")
    return [job for job in every if job.fold in config.only_folds]


def _all_jobs(manifest: pd.DataFrame, config: ExperimentConfig) -> list[Job]:
    check_sources(manifest, config)
    if config.protocol == "cv":
        return [Job(int(k), f"fold {k}") for k in sorted(manifest["fold"].unique())]
    sources = config.test_sources if config.protocol == "loso" else config.train_sources
    sites = _eligible_sites(manifest, sources, config.min_site_images)
    if len(sites) < 2:
        raise CrossdermError(
            f"protocol {config.protocol} needs at least 2 sites with >= {config.min_site_images} images in "
            f"{', '.join(sources)}; have {sites or 'none'} (lower min_site_images, or give --sites)"
        )
    verb = "held out" if config.protocol == "loso" else "trained on"
    return [Job(k, f"{site} {verb}", site) for k, site in enumerate(sites)]


@dataclass(frozen=True)
class JobImages:
    """Boolean masks over the manifest rows: what one job trains on, tests, and predicts as external."""

    train: np.ndarray
    test: np.ndarray
    external: np.ndarray


def job_images(manifest: pd.DataFrame, config: ExperimentConfig, job: Job) -> JobImages:
    source = manifest["source"]
    external = source.isin(config.external_sources).to_numpy()
    training_sources = source.isin(config.train_sources).to_numpy()
    testing_sources = source.isin(config.test_sources).to_numpy() & ~external
    if config.protocol == "cv":
        in_fold = (manifest["fold"] == job.fold).to_numpy()
        return JobImages(training_sources & ~in_fold, testing_sources & in_fold, external)
    keys = site_keys(manifest).to_numpy()
    groups = manifest["lesion_group"].to_numpy()
    if config.protocol == "loso":
        held_out = keys == job.site
        # A lesion photographed at two sites (9 HAM10000 lesions, 26 images, span vidir_modern and vidir_molemax)
        # is left out of training entirely while one of its sites is held out: the test site's lesions stay unseen.
        seen_at_test_site = np.isin(groups, groups[held_out & testing_sources])
        return JobImages(training_sources & ~held_out & ~seen_at_test_site, held_out & testing_sources, external)
    test_sites = _eligible_sites(manifest, config.test_sources, config.min_site_images)
    trained = training_sources & (keys == job.site)
    tested = np.isin(keys, test_sites) & (keys != job.site) & ~np.isin(groups, groups[trained])
    return JobImages(trained, testing_sources & tested, external)


def job_of(manifest: pd.DataFrame, config: ExperimentConfig, fold: int) -> Job:
    found = [job for job in jobs(manifest, config) if job.fold == fold]
    if not found:
        raise CrossdermError(f"fold {fold} does not exist (folds: {[job.fold for job in jobs(manifest, config)]})")
    return found[0]
