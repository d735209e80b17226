"""Patient metadata as model input, defined once: the vocabulary and the encoding of age, sex, anatomical site.

The encoding (``METADATA_FEATURES``, 12 numbers) is one-hot with an explicit missing indicator per field, so a
blank is never mistaken for a value (Gessert et al. 2019 / MetaBlock encode ISIC metadata the same way):
age / 100 and age_missing; sex male / female / missing; one of ``ANATOM_SITES`` or anatom_site_missing.
Training (manifest columns), ``crossderm predict`` (CSV columns) and ``serve`` (form fields) all go through
:func:`encode_metadata`, so a model always sees the encoding it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ANATOM_SITES = ("head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital")
SEXES = ("male", "female")
METADATA_FIELDS = ("age", "sex", "anatom_site")
METADATA_FEATURES: tuple[str, ...] = (
    "age", "age_missing", *(f"sex_{s}" for s in SEXES), "sex_missing",
    *(f"anatom_site_{a}" for a in ANATOM_SITES), "anatom_site_missing",
)
MAX_AGE = 120


class MetadataError(ValueError):
    """A metadata value outside the vocabulary; the message names the field and the value."""


def encode_metadata(age: Sequence[str], sex: Sequence[str], anatom_site: Sequence[str]) -> np.ndarray:
    """(n, len(METADATA_FEATURES)) float32 from harmonised text values (blank = missing)."""
    n = len(age)
    if not len(sex) == len(anatom_site) == n:
        raise ValueError("age, sex and anatom_site need one value per image")
    out = np.zeros((n, len(METADATA_FEATURES)), dtype=np.float32)
    for i, (a, s, site) in enumerate(zip(age, sex, anatom_site, strict=True)):
        a, s, site = str(a).strip(), str(s).strip().lower(), str(site).strip().lower()
        if a:
            try:
                years = float(a)
            except ValueError:
                raise MetadataError(f"age {a!r} is not a number of years") from None
            if not 0 <= years <= MAX_AGE:
                raise MetadataError(f"age {a!r} is outside 0..{MAX_AGE}")
            out[i, 0] = years / 100
        else:
            out[i, 1] = 1
        if s and s not in SEXES:
            raise MetadataError(f"sex {s!r} is not one of {', '.join(SEXES)} or blank")
        out[i, 2 + (SEXES.index(s) if s else len(SEXES))] = 1
        if site and site not in ANATOM_SITES:
            raise MetadataError(f"anatom_site {site!r} is not one of {', '.join(ANATOM_SITES)} or blank")
        out[i, 5 + (ANATOM_SITES.index(site) if site else len(ANATOM_SITES))] = 1
    return out


def missing_metadata(n: int) -> np.ndarray:
    """Every field missing: what ``--impute-metadata`` gives an image without metadata."""
    return encode_metadata([""] * n, [""] * n, [""] * n)
