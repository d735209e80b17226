"""Image decoding, defined once: the training cache, ``predict``, ``explain`` and ``serve`` all decode here.

:func:`load_image` is the preprocessing every model sees (shorter side -> ``size``, centre square, 8-bit RGB).
:func:`decode` adds what inference on untrusted files needs first, all checked from the header before a single
pixel is decoded: the format must be one we accept, the pixel count must be under the caller's cap, the aspect
ratio under :data:`MAX_ASPECT`, and (optionally) the estimated memory of the whole decode under a byte budget.

Why an aspect cap bounds the *work*: :func:`load_image` scales the shorter side to ``size``, so the resized
intermediate is ``size`` x ``size * aspect`` pixels before the centre crop. A 141-byte 20000 x 1 PNG passes any
pixel cap, yet at 384 px its intermediate would be 384 x 7,680,000 pixels (8.8 GB). With the aspect at most
:data:`MAX_ASPECT` the intermediate is at most ``size`` x ``size * MAX_ASPECT`` (at 384 px: 4.4 MB).
:func:`load_image` refuses such shapes itself too, so the training cache is bounded the same way. Pillow's
decompression-bomb limit stays in force on top of all this.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

# The formats crossderm reads; Pillow's other decoders are never offered untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
# Longest side / shortest side accepted. Dermoscopy images are 1:1 to 4:3 (HAM10000 600 x 450, ISIC 2019 up to
# 1024 x 1024 and 3:2 crops); 10:1 leaves a wide margin for panoramas and odd crops while bounding the resized
# intermediate of load_image to size x 10 * size pixels.
MAX_ASPECT = 10.0
ImageSource = str | Path | bytes | BinaryIO

# Peak bytes per decoded pixel of decode(), by the header's mode, measured on Pillow 13 with some margin
# (tests/test_imaging.py checks the estimate stays above the measured peak): Pillow keeps RGB in 4 bytes a pixel;
# modes with alpha (and palettes with transparency) go through RGBA, a white background and the composite;
# 16/32-bit greyscale through a float32 array. The WebP decoder keeps a buffer of its own.
_BYTES_PER_PIXEL = {"1": 5, "L": 6, "P": 15, "RGB": 9, "YCbCr": 9, "CMYK": 9, "LA": 17, "PA": 17, "RGBA": 18,
                    "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 18, "F": 18}
_DEFAULT_BYTES_PER_PIXEL = 22  # any other mode: more than the most expensive above
_FORMAT_EXTRA_BYTES_PER_PIXEL = {"WEBP": 6}


class ImageError(Exception):
    """One image cannot be used; ``kind`` says why: ``missing``, ``unsupported``, ``too_large`` (pixels or memory),
    ``bad_shape`` (aspect ratio over the cap) or ``corrupt``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    mode: str = "RGB"

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def aspect(self) -> float:
        """Longest side / shortest side (>= 1)."""
        return max(self.width, self.height) / max(1, min(self.width, self.height))


def _open(source: ImageSource) -> Image.Image:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    return Image.open(stream, formats=ACCEPTED_FORMATS)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of load_image's intermediate: the shorter side scaled to ``size``, before the crop."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def check_shape(width: int, height: int, max_aspect: float = MAX_ASPECT) -> None:
    """Refuse empty images and aspect ratios over ``max_aspect`` (:class:`ImageError` ``bad_shape``)."""
    if min(width, height) < 1:
        raise ImageError("corrupt", f"image has no pixels ({width} x {height})")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageError(
            "bad_shape",
            f"image is {width} x {height}, an aspect ratio of {aspect:,.2f}:1; the limit is {max_aspect:g}:1 "
            "(dermoscopy images are 1:1 to 4:3)",
        )


def load_image(source: ImageSource, size: int, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Decode one image to RGB, shorter side -> ``size``, centre-cropped square. Raises on bad files.

    The aspect ratio is checked before any pixel is decoded (:class:`ImageError` ``bad_shape``), which bounds the
    resized intermediate to ``size`` x ``size * max_aspect`` pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(source) as image:
            check_shape(*image.size, max_aspect)
            image.draft("RGB", (size, size))
            image = _to_rgb(image)
    new_w, new_h = resized_size(*image.size, size)
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


def read_header(source: ImageSource, max_pixels: int, max_aspect: float = MAX_ASPECT) -> ImageHeader:
    """Format, size and mode from the header alone; refuses unknown formats, more than ``max_pixels`` pixels and
    an aspect ratio over ``max_aspect``."""
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
                header = ImageHeader(str(image.format), *image.size, mode=str(image.mode))
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
    check_shape(header.width, header.height, max_aspect)
    return header


def _draft_scale(header: ImageHeader, size: int) -> int:
    """The DCT scale factor Pillow's JPEG draft mode decodes at for ``size`` (1 for other formats)."""
    if header.format != "JPEG":
        return 1
    fit = min(header.width, header.height) // size
    return next((s for s in (8, 4, 2) if fit >= s), 1)


def decode_cost(header: ImageHeader, size: int, display_size: int | None = None) -> int:
    """Estimated peak bytes of :func:`decode` for this header: the decoded image and its conversions, plus the
    resized intermediate (``size`` x ``size * aspect``), for the larger of the model and display decodes."""
    per_pixel = _BYTES_PER_PIXEL.get(header.mode, _DEFAULT_BYTES_PER_PIXEL)
    per_pixel += _FORMAT_EXTRA_BYTES_PER_PIXEL.get(header.format, 0)
    peak = 0
    for target in {size, max(size, display_size or 0)}:
        scale = _draft_scale(header, target)
        decoded = math.ceil(header.width / scale) * math.ceil(header.height / scale)
        new_w, new_h = resized_size(header.width, header.height, target)
        peak = max(peak, decoded * per_pixel + 2 * 4 * new_w * new_h)  # resize result + reduce(), 4 bytes a pixel
    return peak


@dataclass(frozen=True)
class DecodedImage:
    header: ImageHeader
    pixels: np.ndarray  # uint8 (size, size, 3): exactly what the model sees
    display: Image.Image | None = None  # a larger crop of the same image, for overlays


def decode(
    source: ImageSource,
    size: int,
    max_pixels: int,
    display_size: int | None = None,
    max_aspect: float = MAX_ASPECT,
    max_bytes: int | None = None,
) -> DecodedImage:
    """Check the header (format, pixels, aspect ratio, and with ``max_bytes`` the estimated memory of the decode),
    then decode as training did; every failure is an :class:`ImageError`."""
    header = read_header(source, max_pixels, max_aspect)
    if max_bytes is not None:
        check_cost(header, size, display_size, max_bytes)
    try:
        pixels = np.array(load_image(_rewound(source), size, max_aspect))  # writable: torch.from_numpy needs it
        display = load_image(_rewound(source), max(size, display_size), max_aspect) if display_size else None
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too_large", "decoding the image needs more memory than this process may use") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, bomb errors...: all mean "bad image"
        raise ImageError("corrupt", f"cannot decode image ({type(exc).__name__}: {_reason(exc)})") from None
    return DecodedImage(header, pixels, display)


def check_cost(header: ImageHeader, size: int, display_size: int | None, max_bytes: int) -> None:
    """Refuse (``too_large``) an image whose estimated decode (:func:`decode_cost`) exceeds ``max_bytes``."""
    cost = decode_cost(header, size, display_size)
    if cost > max_bytes:
        raise ImageError(
            "too_large",
            f"decoding this {header.width} x {header.height} {header.mode} image would need about "
            f"{cost / 2**20:,.0f} MiB; the limit is {max_bytes / 2**20:,.0f} MiB",
        )


def _rewound(source: ImageSource) -> ImageSource:
    if hasattr(source, "seek"):
        source.seek(0)  # type: ignore[union-attr]
    return source
