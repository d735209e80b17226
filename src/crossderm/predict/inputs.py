"""Inputs of ``crossderm predict``: collect image paths, decode each exactly as training did.

Arguments may be image files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff, sorted; hidden
files and folders skipped) or ``.csv`` lists with a ``path``, ``image`` or ``image_id`` column (the first present, in
that order; relative entries resolve against the CSV's folder, and an entry without an image suffix, like ISIC's
``ISIC_0000000``, is looked up with each suffix). A missing or undecodable image is never fatal: :func:`decode`
raises :class:`ImageError` with a one-line reason so the caller writes an error row and carries on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from crossderm.errors import CrossdermError, at
from crossderm.prepare.cache import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CSV_COLUMNS = ("path", "image", "image_id")


class ImageError(Exception):
    """One image cannot be used; the message is a one-line reason for its error row."""


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


def _resolve(path: Path) -> Path:
    """``path`` itself, or ``path`` + the first image suffix that exists when it names no file."""
    if path.exists() or path.suffix.lower() in IMAGE_SUFFIXES:
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return path


def decode(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """uint8 (size, size, 3) through :func:`load_image`; the pixel cap is checked from the header first."""
    if not path.exists():
        raise ImageError("no such file")
    if not path.is_file():
        raise ImageError("not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                width, height = header.size
        if width * height > max_pixels:
            raise ImageError(f"{width} x {height} = {width * height:,} pixels exceeds --max-pixels {max_pixels:,}")
        return np.asarray(load_image(path, size))
    except ImageError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, bomb errors...: all mean "bad image"
        message = " ".join(str(exc).split()) or "no details"
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {message})") from None
