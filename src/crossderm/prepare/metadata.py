"""Patient and acquisition metadata harmonised across sources: age, sex, anatomical site, acquisition site.

Anatomical site vocabulary (``crossderm.patient.ANATOM_SITES``), the coarsest one both official files can be
mapped to without guessing: ISIC 2019's ``anatom_site_general`` with its three torso values merged (HAM10000
says ``trunk`` for many lesions, which does not tell anterior from posterior). HAM10000 ``localization`` ->
vocabulary: abdomen, back, chest, trunk -> torso; face, ear, neck, scalp -> head/neck; hand, upper extremity
-> upper extremity; foot, lower extremity -> lower extremity; acral -> palms/soles; genital -> oral/genital;
unknown -> missing. ISIC 2019: anterior/posterior/lateral torso -> torso, every other value as it is. Blank or
unknown values stay missing (an empty string): nothing is invented.

Age: a whole number of years (HAM's ``80.0`` -> ``80``; ISIC's ``age_approx`` is already rounded to 5 years).
Sex: ``male`` / ``female`` or missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crossderm.errors import CrossdermError, at
from crossderm.patient import ANATOM_SITES, SEXES

HAM_LOCALIZATION = {
    "abdomen": "torso", "back": "torso", "chest": "torso", "trunk": "torso",
    "face": "head/neck", "ear": "head/neck", "neck": "head/neck", "scalp": "head/neck",
    "hand": "upper extremity", "upper extremity": "upper extremity",
    "foot": "lower extremity", "lower extremity": "lower extremity",
    "acral": "palms/soles", "genital": "oral/genital", "unknown": "",
}
ISIC_ANATOM_SITE = {
    "anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso",
    **{site: site for site in ANATOM_SITES},
}
MISSING_WORDS = ("", "unknown", "nan", "na", "n/a", "none", "missing")
# FLamby's Fed-ISIC2019 centre codes (flamby_fed_isic2019_train_test_split.csv, column ``center``).
FLAMBY_CENTERS = {0: "bcn", 1: "vidir_molemax", 2: "vidir_modern", 3: "rosendahl", 4: "msk", 5: "vienna_dias"}


def _fail(path: Path, values: pd.Series, bad: pd.Series, what: str, allowed: str) -> None:
    rows = np.flatnonzero(bad.to_numpy())
    if rows.size:
        row = int(rows[0])
        # values come from crossderm.prepare.sources.read_csv, which indexes each row by its line in the file
        raise CrossdermError(f"{at(path, int(values.index[row]))}: {what} {values.iat[row]!r} is not {allowed}")


def harmonise_age(values: pd.Series, path: Path) -> pd.Series:
    """Whole years as text (blank = missing); anything that is not an age 0..120 names its line."""
    text = values.fillna("").astype(str).str.strip()
    missing = text.str.lower().isin(MISSING_WORDS)
    numbers = pd.to_numeric(text.where(~missing), errors="coerce")
    _fail(path, text, ~missing & ~numbers.between(0, 120), "age", "a number of years (0-120) or blank")
    years = numbers.round().astype("Int64")
    return years.astype(str).where(years.notna(), "")  # pandas 3 turns <NA> into NaN, not "<NA>", in astype(str)


def harmonise_sex(values: pd.Series, path: Path) -> pd.Series:
    text = values.fillna("").astype(str).str.strip().str.lower()
    missing = text.isin(MISSING_WORDS)
    _fail(path, text, ~missing & ~text.isin(SEXES), "sex", "male, female or blank")
    return text.where(~missing, "")


def harmonise_anatom_site(values: pd.Series, mapping: dict[str, str], path: Path) -> pd.Series:
    text = values.fillna("").astype(str).str.strip().str.lower()
    missing = text.isin(MISSING_WORDS)
    known = text.isin(mapping.keys())
    _fail(path, text, ~missing & ~known, "anatomical site", f"one of {', '.join(sorted(mapping))} or blank")
    return text.map(mapping).fillna("").where(~missing, "")


def read_sites(path: Path) -> dict[str, str]:
    """Image id -> site from a plain CSV: an ``image``/``image_id`` column and a ``site`` column, or FLamby's
    Fed-ISIC2019 split file with its numeric ``center`` column (codes in :data:`FLAMBY_CENTERS`)."""
    from crossderm.prepare.sources import read_csv

    frame = read_csv(path, ())
    id_column = next((c for c in ("image_id", "image") if c in frame.columns), None)
    site_column = next((c for c in ("site", "center") if c in frame.columns), None)
    if id_column is None or site_column is None:
        raise CrossdermError(f"{at(path, 1)}: a sites file needs an image (or image_id) column and a site (or "
                             f"FLamby center) column; have {', '.join(frame.columns)}")
    ids = frame[id_column].str.removesuffix("_downsampled")
    _fail(path, ids, ids == "", "image", "an image id")
    sites = frame[site_column].str.strip()
    if site_column == "center":
        codes = pd.to_numeric(sites, errors="coerce")
        _fail(path, sites, ~codes.isin(FLAMBY_CENTERS.keys()), "center",
              f"a FLamby centre code {sorted(FLAMBY_CENTERS)}")
        sites = codes.astype(int).map(FLAMBY_CENTERS)
    _fail(path, sites, sites == "", "site", "a site name")
    repeated = ids.duplicated(keep=False) & ~frame.assign(_i=ids, _s=sites).duplicated(["_i", "_s"], keep=False)
    _fail(path, ids, repeated, "image", "listed once (it has two different sites)")
    return dict(zip(ids, sites, strict=True))
