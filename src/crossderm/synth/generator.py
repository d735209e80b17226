"""``generate``: plan the lesions, paint their views and write both downloads in one atomic step.

Why atomic: a half-written synthetic download looks like a damaged real one to every later stage, so the
folders appear complete, or not at all (an existing output is replaced only with ``overwrite``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from crossderm.datafolder import SYNTHETIC_MARKER
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_directory, atomic_write_json
from crossderm.labels import CLASSES
from crossderm.prepare.sources import HAM_FOLDER, HAM_IMAGE_FOLDERS, ISIC_FOLDER, ISIC_IMAGE_FOLDER
from crossderm.synth import (
    DEFAULT_HAM_LESIONS,
    DEFAULT_IMAGE_SCALE,
    DEFAULT_ISIC_LESIONS,
    DEFAULT_MIN_PER_CLASS,
    DEFAULT_SEED,
    MAX_IMAGE_SCALE,
    MIN_IMAGE_SCALE,
    paint,
    plan,
)


def generate(
    out_dir: str | Path,
    *,
    ham_lesions: int = DEFAULT_HAM_LESIONS,
    isic_lesions: int = DEFAULT_ISIC_LESIONS,
    seed: int = DEFAULT_SEED,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    image_scale: float = DEFAULT_IMAGE_SCALE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic HAM10000/ and ISIC2019/ folders under ``out_dir`` atomically; return counts.

    ``ham_lesions`` HAM10000 lesions (about 1.35 images each) are also ISIC 2019 rows; ``isic_lesions``
    ISIC-only lesions are split 70/30 between a BCN-like and an MSK-like site. Every class gets at least
    ``min_per_class`` lesions per site (fewer only when a site is too small). ``image_scale`` scales all
    image sizes.
    """
    if ham_lesions < len(CLASSES) or isic_lesions < 2 * len(CLASSES):
        raise CrossdermError(f"need at least {len(CLASSES)} HAM and {2 * len(CLASSES)} ISIC-only lesions")
    if not MIN_IMAGE_SCALE <= image_scale <= MAX_IMAGE_SCALE:
        raise CrossdermError(f"image scale {image_scale} is outside {MIN_IMAGE_SCALE}..{MAX_IMAGE_SCALE}")
    if seed < 0:
        raise CrossdermError(f"seed must be >= 0, got {seed}")
    lesions = plan.plan(ham_lesions, isic_lesions, seed, min_per_class)
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        _write_images(staging, lesions, seed, image_scale)
        plan.write_tables(staging, lesions)
        summary = plan.summary(Path(out_dir), seed, lesions)
        marker = {key: value for key, value in summary.items() if key != "out"}  # same bytes wherever written
        atomic_write_json(staging / SYNTHETIC_MARKER, {"generator": "crossderm synth", **marker})
    return summary


def _write_images(root: Path, lesions: dict[str, list[plan.Lesion]], seed: int, scale: float) -> None:
    """Every view as JPEG into the ISIC 2019 input folder; HAM10000 views, same bytes, also into its parts."""
    isic_dir = root / ISIC_FOLDER / ISIC_IMAGE_FOLDER
    part_of = plan.ham_image_folders(lesions)
    for directory in [isic_dir, *(root / HAM_FOLDER / part for part in HAM_IMAGE_FOLDERS)]:
        directory.mkdir(parents=True)
    total = sum(len(site_lesions) for site_lesions in lesions.values())
    progress = tqdm(total=total, desc="synthetic lesions", unit="lesion", disable=None)
    for site, site_lesions in lesions.items():
        for index, lesion in enumerate(site_lesions):
            progress.update(1)
            canvas = paint.render_lesion(lesion.dx, plan.site_rng(seed, site, plan.CANVAS_STREAM, index), scale)
            for view, image_id in enumerate(lesion.image_ids):
                rng = plan.site_rng(seed, site, plan.VIEW_STREAM, index, view)
                data = paint.photograph(canvas, paint.STYLES[lesion.style], rng, scale, lesion.downsampled)
                (isic_dir / f"{image_id}.jpg").write_bytes(data)
                if site == "ham":
                    (root / HAM_FOLDER / part_of[image_id] / f"{image_id}.jpg").write_bytes(data)
    progress.close()
