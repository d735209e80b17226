"""Layout and metadata planning: which lesions exist, their labels, ids, views and patient fields.

Why a separate step: every decision that ends up in a CSV row is made here, from the real releases'
frequencies, before any pixel is drawn, so the tables can be written (and reasoned about) without painting.
File names, HAM10000's id range and the label map come from the modules that read the real downloads
(:mod:`crossderm.prepare.sources`, :mod:`crossderm.labels`), so what is written is what is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossderm.errors import CrossdermError
from crossderm.labels import CLASSES, DEFAULT_ISIC_TO_HAM, ISIC2019_COLUMNS
from crossderm.prepare.sources import (
    HAM_FOLDER,
    HAM_ID_RANGE,
    HAM_IMAGE_FOLDERS,
    HAM_METADATA_NAMES,
    ISIC_FOLDER,
    ISIC_GROUND_TRUTH,
    ISIC_METADATA,
)

# Keys of a site's independent random streams: (seed, code, PLAN_STREAM) plans it, (.., CANVAS_STREAM, lesion)
# paints a lesion, (.., VIEW_STREAM, lesion, view) photographs one view.
SITE_CODES = {"ham": 1, "bcn": 2, "msk": 3}
PLAN_STREAM, CANVAS_STREAM, VIEW_STREAM = 0, 1, 2

# Class priors: HAM10000 as released; the ISIC-only sites like ISIC 2019 minus HAM10000 (BCN-heavy).
PRIORS: dict[str, dict[str, float]] = {
    "ham": {"nv": 0.67, "mel": 0.111, "bkl": 0.11, "bcc": 0.051, "akiec": 0.033, "vasc": 0.014, "df": 0.011},
    "bcn": {"mel": 0.24, "nv": 0.33, "bcc": 0.22, "bkl": 0.10, "akiec": 0.095, "df": 0.008, "vasc": 0.007},
    "msk": {"mel": 0.18, "nv": 0.57, "bcc": 0.09, "bkl": 0.10, "akiec": 0.04, "df": 0.01, "vasc": 0.01},
}
# Each class's ISIC 2019 columns under the readers' label map, in the file's column order: one for most,
# (AK, SCC) for akiec. _AK_SHARE is the share of akiec lesions labelled with the first, AK (rest SCC):
# 130/327 for HAM10000 and 737/1168 elsewhere in ISIC 2019.
_ISIC_LABELS = {dx: tuple(c for c in ISIC2019_COLUMNS if DEFAULT_ISIC_TO_HAM[c] == dx) for dx in CLASSES}
_AK_SHARE = {"ham": 0.4, "bcn": 0.63, "msk": 0.63}
# Probability of 1, 2, 3, ... views of one lesion (HAM10000: 1.34 images per lesion on average).
_VIEWS = {"ham": (0.74, 0.19, 0.065, 0.005), "bcn": (0.35, 0.4, 0.25), "msk": (0.95, 0.05)}
BCN_LESION_SHARE = 0.7  # of the ISIC-only lesions; the rest are MSK-like
# ISIC 2019 images without a lesion id come from the older ISIC archive (crossderm.prepare.sources' site
# ``archive``): in the synthetic data they are the MSK-range lesions left without one, photographed differently.
ARCHIVE_STYLE = "archive"
_MSK_DOWNSAMPLED, _MSK_BLANK_LESION = 0.5, 0.6


@dataclass(frozen=True)
class _Ids:
    """Where one site's image numbers and lesion numbers are drawn from, and its lesion-id prefix."""

    prefix: str
    first_image: int
    image_span: int
    image_limit: int
    first_lesion: int
    lesion_span: int


# Image-id ranges of the real release: MSK/archive below HAM10000, HAM10000 from its official range, BCN20000
# from 53000 on. Lesion numbers are drawn below 10**7 (seven digits).
_BCN_FIRST_ID = 53000
_HAM_FIRST_ID, _HAM_ID_SPAN = HAM_ID_RANGE[0], HAM_ID_RANGE[1] - HAM_ID_RANGE[0] + 1
_IDS = {
    "ham": _Ids("HAM_", _HAM_FIRST_ID, _HAM_ID_SPAN, _BCN_FIRST_ID, 0, 7629),
    "bcn": _Ids("BCN_", _BCN_FIRST_ID, 20000, 10**7, 1, 5000),
    "msk": _Ids("MSK4_", 0, 16073, _HAM_FIRST_ID, 11000, 1000),
}

# HAM10000 sub-sources and their real images per class (vidir_molemax, vidir_modern, rosendahl, vienna_dias).
HAM_DATASETS = ("vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias")
_HAM_DATASET_COUNTS = {
    "akiec": (0, 32, 295, 0), "bcc": (2, 211, 296, 5), "bkl": (124, 475, 490, 10), "df": (30, 51, 30, 4),
    "mel": (24, 680, 342, 67), "nv": (3720, 1832, 803, 350), "vasc": (54, 82, 3, 3),
}
_HAM_ROW_ORDER = ("bkl", "df", "mel", "vasc", "bcc", "nv", "akiec")
_DX_TYPES = {
    "akiec": {"histo": 1.0}, "bcc": {"histo": 1.0}, "mel": {"histo": 1.0},
    "bkl": {"histo": 0.7, "consensus": 0.24, "confocal": 0.06}, "df": {"histo": 0.48, "consensus": 0.52},
    "nv": {"follow_up": 0.55, "histo": 0.37, "consensus": 0.08}, "vasc": {"histo": 0.47, "consensus": 0.53},
}
_MEAN_AGE = {"akiec": 67, "bcc": 66, "bkl": 64, "df": 52, "mel": 61, "nv": 47, "vasc": 52}
# HAM10000 localization -> ISIC 2019 anatom_site_general (blank where ISIC has none), with real frequencies.
_LOCALIZATIONS = {
    "back": ("posterior torso", 2192), "lower extremity": ("lower extremity", 2077), "trunk": ("", 1404),
    "upper extremity": ("upper extremity", 1118), "abdomen": ("anterior torso", 1022), "face": ("head/neck", 745),
    "chest": ("anterior torso", 407), "foot": ("lower extremity", 319), "unknown": ("", 234),
    "neck": ("head/neck", 168), "scalp": ("head/neck", 128), "hand": ("upper extremity", 90),
    "ear": ("head/neck", 56), "genital": ("", 48), "acral": ("palms/soles", 7),
}
_ISIC_SITES = {
    "anterior torso": 6915, "lower extremity": 4990, "head/neck": 4587, "upper extremity": 2910,
    "posterior torso": 2787, "": 2631, "palms/soles": 398, "oral/genital": 59, "lateral torso": 54,
}
_HAM_COLUMNS = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"
_ISIC_META_COLUMNS = "image,age_approx,anatom_site_general,lesion_id,sex"


@dataclass
class Lesion:
    """One planned lesion: its label, photographic style, ids and patient fields (shared by all its views).

    ``style`` names the camera that took it: a HAM10000 sub-source (:data:`HAM_DATASETS`), the site, or
    :data:`ARCHIVE_STYLE`.
    """

    dx: str
    label: str
    style: str
    n_views: int
    lesion_id: str = ""
    downsampled: bool = False
    image_ids: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)


def site_rng(seed: int, site: str, *key: int) -> np.random.Generator:
    """The random stream of one (seed, site, purpose, ...) key, so no step's draws shift another's."""
    return np.random.default_rng([seed, SITE_CODES[site], *key])


def plan(ham_lesions: int, isic_lesions: int, seed: int, min_per_class: int) -> dict[str, list[Lesion]]:
    """Every site's lesions; the ISIC-only ones split BCN_LESION_SHARE / rest between BCN and MSK."""
    n_msk = max(len(CLASSES), round((1 - BCN_LESION_SHARE) * isic_lesions))
    sizes = {"ham": ham_lesions, "bcn": isic_lesions - n_msk, "msk": n_msk}
    return {site: _plan_site(site, n, seed, min_per_class) for site, n in sizes.items()}


def class_counts(prior: dict[str, float], n: int, minimum: int) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` lesions, with every class raised to a floor."""
    floor = min(minimum, n // len(CLASSES))
    total = sum(prior.values())
    raw = {c: prior[c] * n / total for c in CLASSES}
    counts = {c: max(floor, int(raw[c])) for c in CLASSES}
    while sum(counts.values()) < n:
        counts[max(CLASSES, key=lambda c: raw[c] - counts[c])] += 1
    while sum(counts.values()) > n:
        counts[max((c for c in CLASSES if counts[c] > floor), key=lambda c: counts[c] - raw[c])] -= 1
    return counts


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One key drawn with probability proportional to its weight (real-data frequencies)."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _distinct(rng: np.random.Generator, first: int, span: int, n: int, limit: int) -> list[int]:
    """``n`` distinct random integers from ``first`` on, in random order, never reaching ``limit``."""
    span = min(max(span, 2 * n), limit - first)
    if n > span:
        raise CrossdermError(f"too many images/lesions for the id range {first}..{limit - 1}; use fewer lesions")
    return [first + int(i) for i in rng.choice(span, size=n, replace=False)]


def _isic_label(rng: np.random.Generator, site: str, dx: str) -> str:
    """The lesion's ISIC 2019 column; only a class with two columns (akiec: AK or SCC) costs a draw."""
    columns = _ISIC_LABELS[dx]
    if len(columns) == 1:
        return columns[0]
    ak, scc = columns
    return ak if rng.random() < _AK_SHARE[site] else scc


def _plan_site(site: str, n: int, seed: int, min_per_class: int) -> list[Lesion]:
    """Labels, views, ids and metadata of one site's lesions, decided before any pixel is drawn."""
    rng = site_rng(seed, site, PLAN_STREAM)
    counts = class_counts(PRIORS[site], n, min_per_class)
    dxs = [dx for dx in CLASSES for _ in range(counts[dx])]
    dxs = [dxs[i] for i in rng.permutation(len(dxs))]
    views = _VIEWS[site]
    lesions = []
    for dx in dxs:
        label = _isic_label(rng, site, dx)
        style = site
        if site == "ham":
            style = _choice(rng, dict(zip(HAM_DATASETS, _HAM_DATASET_COUNTS[dx], strict=True)))
        n_views = 1 + int(rng.choice(len(views), p=np.array(views) / sum(views)))
        lesions.append(Lesion(dx, label, style, n_views))
    ids = _IDS[site]
    n_images = sum(lesion.n_views for lesion in lesions)
    numbers = _distinct(rng, ids.first_image, ids.image_span, n_images, ids.image_limit)
    lesion_numbers = _distinct(rng, ids.first_lesion, ids.lesion_span, n, 10**7)
    for lesion, number in zip(lesions, lesion_numbers, strict=True):
        lesion.lesion_id = f"{ids.prefix}{number:07d}"
        if site == "msk":
            lesion.downsampled = bool(rng.random() < _MSK_DOWNSAMPLED)
            if lesion.n_views == 1 and rng.random() < _MSK_BLANK_LESION:
                lesion.lesion_id = ""
                lesion.style = ARCHIVE_STYLE  # no lesion id: the older ISIC archive, a third ISIC site
        suffix = "_downsampled" if lesion.downsampled else ""
        lesion.image_ids = [f"ISIC_{numbers.pop():07d}{suffix}" for _ in range(lesion.n_views)]
        lesion.meta = _metadata(rng, site, lesion.dx)
    return lesions


def _metadata(rng: np.random.Generator, site: str, dx: str) -> dict[str, str]:
    """Lesion-level patient fields, shared by all views as in the real files."""
    age = int(np.clip(round((_MEAN_AGE[dx] + 15 * rng.standard_normal()) / 5) * 5, 0, 85))
    age_missing = rng.random() < (0.006 if site == "ham" else 0.02)
    sex = _choice(rng, {"male": 0.54, "female": 0.454, "unknown": 0.006 if site == "ham" else 0.015})
    if site == "ham":
        localization = _choice(rng, {k: v[1] for k, v in _LOCALIZATIONS.items()})
        return {
            "dx_type": _choice(rng, _DX_TYPES[dx]),
            "age": "" if age_missing else f"{age}.0",
            "age_approx": "" if age_missing else str(age),
            "sex": sex,
            "isic_sex": "" if sex == "unknown" else sex,
            "localization": localization,
            "anatom_site_general": _LOCALIZATIONS[localization][0],
        }
    return {
        "age_approx": "" if age_missing else str(age),
        "isic_sex": "" if sex == "unknown" else sex,
        "anatom_site_general": _choice(rng, {k: float(v) for k, v in _ISIC_SITES.items()}),
    }


def ham_image_folders(lesions: dict[str, list[Lesion]]) -> dict[str, str]:
    """HAM10000 image id -> its part folder: the lower half of the sorted ids in part 1, as released."""
    ham_ids = sorted(i for lesion in lesions["ham"] for i in lesion.image_ids)
    return {image_id: HAM_IMAGE_FOLDERS[k * 2 >= len(ham_ids)] for k, image_id in enumerate(ham_ids)}


def write_tables(root: Path, lesions: dict[str, list[Lesion]]) -> None:
    """The three CSV files with the real ones' columns, row orders and line endings (HAM LF, ISIC CRLF)."""
    ham_rows = [_HAM_COLUMNS]
    for dx in _HAM_ROW_ORDER:
        for lesion in (lesion for lesion in lesions["ham"] if lesion.dx == dx):
            m = lesion.meta
            ham_rows += [
                f"{lesion.lesion_id},{i},{dx},{m['dx_type']},{m['age']},{m['sex']},{m['localization']},{lesion.style}"
                for i in lesion.image_ids
            ]
    (root / HAM_FOLDER / HAM_METADATA_NAMES[0]).write_text("\n".join(ham_rows) + "\n", newline="")
    gt, meta = {}, {}
    for lesion in (lesion for site in lesions.values() for lesion in site):
        onehot = ",".join("1.0" if column == lesion.label else "0.0" for column in ISIC2019_COLUMNS)
        m = lesion.meta
        for image_id in lesion.image_ids:
            gt[image_id] = f"{image_id},{onehot}"
            meta[image_id] = (
                f"{image_id},{m['age_approx']},{m['anatom_site_general']},{lesion.lesion_id},{m['isic_sex']}"
            )
    ids = sorted(gt)
    gt_rows = ["image," + ",".join(ISIC2019_COLUMNS), *(gt[i] for i in ids)]
    meta_rows = [_ISIC_META_COLUMNS, *(meta[i] for i in ids)]
    (root / ISIC_FOLDER / ISIC_GROUND_TRUTH).write_text("\r\n".join(gt_rows) + "\r\n", newline="")
    (root / ISIC_FOLDER / ISIC_METADATA).write_text("\r\n".join(meta_rows) + "\r\n", newline="")


def summary(out: Path, seed: int, lesions: dict[str, list[Lesion]]) -> dict[str, Any]:
    """Lesion and image counts per site and class, plus the quirks written, for the command's report."""

    def site_summary(site_lesions: list[Lesion]) -> dict[str, Any]:
        return {
            "lesions": len(site_lesions),
            "images": sum(lesion.n_views for lesion in site_lesions),
            "classes": {
                dx: {
                    "lesions": sum(lesion.dx == dx for lesion in site_lesions),
                    "images": sum(lesion.n_views for lesion in site_lesions if lesion.dx == dx),
                }
                for dx in CLASSES
            },
        }

    ham, msk = lesions["ham"], lesions["msk"]
    sites = {site: site_summary(site_lesions) for site, site_lesions in lesions.items()}
    sites["ham"]["datasets"] = {d: sum(x.n_views for x in ham if x.style == d) for d in HAM_DATASETS}
    sites["msk"]["downsampled_images"] = sum(x.n_views for x in msk if x.downsampled)
    sites["msk"]["blank_lesion_id_images"] = sum(x.n_views for x in msk if not x.lesion_id)
    sites["msk"]["archive_style_images"] = sum(x.n_views for x in msk if x.style == ARCHIVE_STYLE)
    return {
        "out": str(out),
        "seed": seed,
        "ham_images": sites["ham"]["images"],
        "isic_images": sum(s["images"] for s in sites.values()),
        "isic_rows_from_ham": sites["ham"]["images"],
        "sites": sites,
    }
