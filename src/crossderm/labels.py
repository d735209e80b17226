"""The harmonised label space and the ISIC 2019 -> HAM10000 mapping.

All experiments score on the seven HAM10000 classes. ISIC 2019 has nine one-hot columns; by default
AK and SCC both become ``akiec`` (HAM10000's ``akiec`` holds both actinic keratoses and intraepithelial
carcinoma / SCC in situ) and UNK is dropped. A YAML/JSON file ``{ISIC_COLUMN: ham_class_or_null}`` overrides it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from crossderm.errors import CrossdermError

if TYPE_CHECKING:
    import numpy as np

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_INDEX: dict[str, int] = {name: index for index, name in enumerate(CLASSES)}
CLASS_DESCRIPTIONS: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
ISIC2019_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
DEFAULT_ISIC_TO_HAM: dict[str, str | None] = {
    "MEL": "mel",
    "NV": "nv",
    "BCC": "bcc",
    "AK": "akiec",
    "SCC": "akiec",
    "BKL": "bkl",
    "DF": "df",
    "VASC": "vasc",
    "UNK": None,
}


def label_indices(labels: Iterable[str]) -> np.ndarray:
    """Class names -> their indices in :data:`CLASSES` (int64); an unknown name is a ``KeyError``."""
    import numpy as np

    return np.fromiter((CLASS_INDEX[label] for label in labels), dtype=np.int64)


def read_class_map(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, str | None]:
    """A YAML/JSON mapping ``{their label: one of CLASSES or null}`` (null = drop those images).

    ``keys``, when given, are the only labels the map may name (e.g. the ISIC 2019 columns).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CrossdermError(f"{path}: cannot read label map ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict) or not raw:
        raise CrossdermError(f"{path}: label map must be a mapping LABEL -> class or null")
    allowed = tuple(keys) if keys is not None else None
    mapping: dict[str, str | None] = {}
    for key, value in raw.items():
        if allowed is not None and key not in allowed:
            raise CrossdermError(f"{path}: unknown label {key!r} (expected one of {', '.join(allowed)})")
        if value is not None and value not in CLASSES:
            raise CrossdermError(f"{path}: {key!r} -> {value!r} is not one of {', '.join(CLASSES)} or null")
        mapping[str(key)] = value
    return mapping


def load_label_map(path: str | Path | None) -> dict[str, str | None]:
    """The ISIC 2019 -> HAM10000 map: the default, with the columns a file names overridden."""
    if path is None:
        return dict(DEFAULT_ISIC_TO_HAM)
    return {**DEFAULT_ISIC_TO_HAM, **read_class_map(path, ISIC2019_COLUMNS)}


def ham_to_isic_columns(mapping: dict[str, str | None]) -> dict[str, str]:
    """Inverse map used to write ISIC-format outputs: each HAM class goes to its first ISIC column."""
    inverse: dict[str, str] = {}
    for column, cls in mapping.items():
        if cls is not None and cls not in inverse:
            inverse[cls] = column
    return inverse
