"""Image decoding, defined once: the training cache, ``predict``, ``explain`` and ``serve`` all decode here.

:func:`load_image` is the preprocessing every model sees (shorter side -> ``size``, centre square, 8-bit RGB).
:func:`decode` adds what inference on untrusted files needs first: the format must be one we accept and the
header's pixel count must be under the caller's cap, both checked before a single pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

# The formats crossderm reads; Pillow's other decoders are never offered untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
ImageSource = str | Path | bytes | BinaryIO


class ImageError(Exception):
    """One image cannot be used; ``kind`` says why (``missing``, ``unsupported``, ``too_large``, ``corrupt``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open(source: ImageSource) -> Image.Image:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    return Image.open(stream, formats=ACCEPTED_FORMATS)


def load_image(source: ImageSource, size: int) -> Image.Image:
    """Decode one image to RGB, shorter side -> ``size``, centre-cropped square. Raises on bad files."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(source) as image:
            image.draft("RGB", (size, size))
            image = _to_rgb(image)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (L, I;16, P, RGBA, CMYK) -> 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_header(source: ImageSource, max_pixels: int) -> ImageHeader:
    """Format and size from the header alone; refuses unknown formats and more than ``max_pixels`` pixels."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise ImageError("missing", "no such file")
        if not path.is_file():
            raise ImageError("missing", "not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides below
            with _open(source) as image:
                header = ImageHeader(str(image.format), *image.size)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", f"image has too many pixels ({_reason(exc)})") from None
    except Image.UnidentifiedImageError:
        raise ImageError("unsupported", f"not a supported image (accepted: {', '.join(ACCEPTED_FORMATS)})") from None
    except Exception as exc:  # any header parser failure is the file's fault, reported in one line
        raise ImageError("corrupt", f"cannot read the image header ({type(exc).__name__}: {_reason(exc)})") from None
    if header.pixels > max_pixels:
        raise ImageError(
            "too_large",
            f"image is {header.width} x {header.height} = {header.pixels:,} pixels; the limit is {max_pixels:,}",
        )
    return header


@dataclass(frozen=True)
class DecodedImage:
    header: ImageHeader
    pixels: np.ndarray  # uint8 (size, size, 3): exactly what the model sees
    display: Image.Image | None = None  # a larger crop of the same image, for overlays


def decode(source: ImageSource, size: int, max_pixels: int, display_size: int | None = None) -> DecodedImage:
    """Check the header, then decode as training did; every failure is an :class:`ImageError`."""
    header = read_header(source, max_pixels)
    try:
        pixels = np.array(load_image(_rewound(source), size))  # writable: torch.from_numpy needs it
        display = load_image(_rewound(source), max(size, display_size)) if display_size else None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, bomb errors...: all mean "bad image"
        raise ImageError("corrupt", f"cannot decode image ({type(exc).__name__}: {_reason(exc)})") from None
    return DecodedImage(header, pixels, display)


def _rewound(source: ImageSource) -> ImageSource:
    if hasattr(source, "seek"):
        source.seek(0)  # type: ignore[union-attr]
    return source
