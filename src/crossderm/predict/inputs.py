"""Inputs of ``crossderm predict``: the image paths named by files, folders and CSV lists.

Arguments may be image files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff, sorted; hidden
files and folders skipped) or ``.csv`` lists with a ``path``, ``image`` or ``image_id`` column (the first present, in
that order; relative entries resolve against the CSV's folder, and an entry without an image suffix, like ISIC's
``ISIC_0000000``, is looked up with each suffix). Missing paths are kept: decoding them later gives an error row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crossderm.errors import CrossdermError, at
from crossderm.patient import METADATA_FIELDS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CSV_COLUMNS = ("path", "image", "image_id")


def collect_inputs(arguments: Sequence[str | Path]) -> list[Path]:
    """Every image named by ``arguments`` in order, duplicates dropped; missing paths are kept (error rows)."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = _images_under(path)
            if not found:
                raise CrossdermError(f"{path}: folder holds no images ({' '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif path.suffix.lower() == ".csv":
            paths += read_image_list(path)
        else:
            paths.append(path)
    if not paths:
        raise CrossdermError("no input images given")
    return list(dict.fromkeys(paths))


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def read_image_list(csv_path: Path) -> list[Path]:
    """The images listed in a CSV; a missing column or blank entry is a usage error naming the line."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except FileNotFoundError:
        raise CrossdermError(f"{csv_path}: no such image list") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CrossdermError(f"{csv_path}: cannot read image list ({' '.join(str(exc).split())})") from None
    column = next((c for c in CSV_COLUMNS if c in table.columns), None)
    if column is None:
        raise CrossdermError(f"{csv_path}: image list needs a column named one of {', '.join(CSV_COLUMNS)}")
    paths = []
    for row, entry in enumerate(table[column].str.strip(), start=2):
        if not entry:
            raise CrossdermError(f"{at(csv_path, row)}: blank {column}")
        paths.append(_resolve(csv_path.parent / entry))
    return paths


def listed_metadata(arguments: Sequence[str | Path]) -> dict[Path, tuple[str, str, str]]:
    """(age, sex, anatom_site) of every image listed in a ``.csv`` argument that has those columns (blank =
    missing): what a metadata-fusion model needs besides the pixels."""
    import pandas as pd

    values: dict[Path, tuple[str, str, str]] = {}
    for argument in arguments:
        path = Path(argument)
        if path.suffix.lower() != ".csv" or path.is_dir():
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=True)
        fields = [c for c in METADATA_FIELDS if c in table.columns]
        if not fields:
            continue
        for image, (_, row) in zip(read_image_list(path), table.iterrows(), strict=True):
            values[image] = tuple(row.get(field, "").strip() for field in METADATA_FIELDS)
    return values


def _resolve(path: Path) -> Path:
    """``path`` itself, or ``path`` + the first image suffix that exists when it names no file."""
    if path.exists() or path.suffix.lower() in IMAGE_SUFFIXES:
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return path
