"""Image painting: a lesion drawn once on its own canvas, then photographed by each site's camera.

Why two steps: all views of one lesion must show the same lesion (the class signal) while each view and each
site differ in pose, optics, colour and noise (the site shift a cross-dataset model must survive). Each
class painter draws the dermoscopic features that tell the class apart in real images, with per-lesion
variation so no class is a single colour; the same (seeded) generator always paints the same pixels.
"""

from __future__ import annotations

import cmath
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

JPEG_QUALITY = 90


@dataclass(frozen=True)
class Style:
    """How one acquisition site photographs a lesion (applied in output-pixel space)."""

    size: tuple[int, int]
    zoom: tuple[float, float]
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0
    contrast: float = 1.0
    blur: float = 0.0
    noise: float = 0.008
    vignette: tuple[float, float] | None = None  # dermoscope circle radius range, in half shorter sides


# One style per planned ``Lesion.style``: the four HAM10000 sub-sources (same size, slightly different
# colour and optics) and the three ISIC-only sites (own sizes, stronger casts, dermoscope circles).
_HAM_SIZE = (160, 120)
STYLES = {
    "vidir_molemax": Style(_HAM_SIZE, (0.95, 1.2), cast=(1.0, 0.99, 0.98), brightness=1.03),
    "vidir_modern": Style(_HAM_SIZE, (0.95, 1.2)),
    "rosendahl": Style(_HAM_SIZE, (0.95, 1.2), cast=(1.03, 0.98, 0.97), contrast=1.06),
    "vienna_dias": Style(_HAM_SIZE, (0.95, 1.2), cast=(0.98, 0.99, 1.02), brightness=0.97, blur=0.7, noise=0.015),
    "bcn": Style((192, 192), (1.1, 1.4), cast=(0.94, 0.98, 1.06), brightness=0.97, contrast=0.95, blur=1.0,
                 vignette=(0.95, 1.5)),
    "msk": Style((224, 168), (0.95, 1.1), cast=(1.12, 1.01, 0.8), brightness=1.06, contrast=1.08, noise=0.035),
    "archive": Style((192, 144), (0.9, 1.05), cast=(1.08, 1.0, 0.86), brightness=0.92, contrast=0.9, blur=0.6,
                     noise=0.02, vignette=(1.1, 1.6)),
}

# Lesion frame: the canvas spans [-_EXTENT, _EXTENT] units; a view spans 2/zoom units across its width.
_EXTENT = 1.6
_CANVAS = 256  # canvas pixels at image scale 1
_MAX_SHIFT = 0.15


_RGB = tuple[float, float, float]
_SKIN_LIGHT, _SKIN_DARK = (0.94, 0.79, 0.71), (0.70, 0.50, 0.38)
_TAN, _LIGHT_BROWN, _BROWN = (0.74, 0.56, 0.38), (0.62, 0.42, 0.28), (0.45, 0.28, 0.17)
_DARK_BROWN, _BLACK, _BLUE_GREY = (0.27, 0.16, 0.10), (0.11, 0.08, 0.08), (0.40, 0.46, 0.56)
_PINK, _RED, _DARK_RED = (0.90, 0.62, 0.62), (0.72, 0.14, 0.18), (0.45, 0.08, 0.12)
_PURPLE, _WHITE, _SCALE = (0.45, 0.16, 0.36), (0.94, 0.91, 0.88), (0.93, 0.90, 0.78)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates in lesion units, shared by every lesion of one canvas size."""
    axis = np.linspace(-_EXTENT, _EXTENT, size, dtype=np.float32)
    return np.meshgrid(axis, axis)


class _Canvas:
    """One lesion drawn in its own frame; every view of the lesion samples this same canvas."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng, self.size = rng, size
        self.u, self.v = _grid(size)
        self.img = self.skin()

    def noise(self, cells: float) -> np.ndarray:
        """Smooth value noise with about ``cells`` features across the canvas (roughly unit variance)."""
        n = max(2, round(cells))
        grid = self.rng.standard_normal((n + 3, n + 3)).astype(np.float32)
        image = Image.fromarray(grid).resize((self.size, self.size), Image.Resampling.BICUBIC,
                                             box=(1, 1, n + 2, n + 2))
        return np.asarray(image) * 1.4

    def jitter(self, colour: _RGB, amount: float = 0.07) -> np.ndarray:
        """A per-lesion variant of a reference colour, so one class never has a single exact hue."""
        return np.clip(np.asarray(colour, np.float32) * (1 + amount * self.rng.standard_normal(3)), 0, 1)

    def paint(self, colour: _RGB | np.ndarray, alpha: np.ndarray) -> None:
        """Alpha-blend a colour (or colour field) over the canvas in place."""
        change = np.asarray(colour, np.float32) - self.img
        change *= np.clip(alpha, 0, 1)[..., None]
        self.img += change

    def skin(self) -> np.ndarray:
        """Background skin of a random tone with low-frequency shading, blotchy redness and fine texture."""
        tone = self.rng.beta(2, 3)
        base = (1 - tone) * np.asarray(_SKIN_LIGHT) + tone * np.asarray(_SKIN_DARK)
        base = (base * (1 + 0.04 * self.rng.standard_normal(3))).astype(np.float32)
        shade = 1 + 0.05 * self.noise(3) + 0.015 * self.noise(60)
        redness = shade * (1 - 0.04 * np.clip(self.noise(7), 0, None))
        return np.stack([base[0] * shade, base[1] * redness, base[2] * redness], axis=-1)

    def shape(self, radius: float, irregular: float, soft: float, elong: float = 0.85,
              warp: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
        """Normalised distance ``d`` (border at 1) and a soft mask of a lobed, domain-warped blob."""
        rng = self.rng
        cx, cy = (float(t) for t in rng.normal(0, 0.06, 2))
        angle = rng.uniform(0, math.pi)
        x, y = self.u - cx, self.v - cy
        x, y = math.cos(angle) * x + math.sin(angle) * y, -math.sin(angle) * x + math.cos(angle) * y
        y = y / rng.uniform(elong, 1.0)
        r = np.hypot(x, y)
        z = np.empty(r.shape, np.complex64)  # e^{i phi}
        z.real, z.imag = x / np.maximum(r, 1e-6), y / np.maximum(r, 1e-6)
        # border(phi) = 1 + sum_k a_k cos(k phi + p_k), evaluated as Re of a polynomial in e^{i phi} (Horner).
        poly = np.zeros_like(z)
        for k in range(7, 1, -1):
            amplitude, phase = irregular * rng.standard_normal() / k**0.7, rng.uniform(0, 2 * math.pi)
            poly = (poly + np.complex64(amplitude * cmath.exp(1j * phase))) * z
        poly *= z
        border = np.clip(1 + poly.real, 0.5, None)
        d = r / (radius * border) + warp * self.noise(5)
        return d, _smooth(1 + soft, 1 - soft, d)

    def lines(self, cells: float, width: float) -> np.ndarray:
        """A reticular mesh: the zero crossings of two independent value noises."""
        return np.exp(-((np.minimum(abs(self.noise(cells)), abs(self.noise(cells))) / width) ** 2))

    def dots(self, cells: float, threshold: float) -> np.ndarray:
        """Scattered soft dots/globules at the peaks of value noise."""
        return _smooth(threshold, threshold + 0.3, self.noise(cells))

    def strokes(self, polylines: list[np.ndarray], width: float) -> np.ndarray:
        """Anti-aliased thick polylines (vessels, hairs) given in canvas units, as an alpha map."""
        scale = self.size / (2 * _EXTENT)
        mask = Image.new("L", (self.size, self.size))
        draw = ImageDraw.Draw(mask)
        for points in polylines:
            pixels = [(float(x), float(y)) for x, y in (points + _EXTENT) * scale]
            draw.line(pixels, fill=255, width=max(1, round(width * scale)), joint="curve")
        mask = mask.filter(ImageFilter.GaussianBlur(0.6))
        return np.asarray(mask, np.float32) / 255

    def hairs(self) -> None:
        """A few gently curved dark hairs: a site-independent nuisance every classifier must ignore."""
        count = int(self.rng.integers(1, 7))
        paths = []
        for _ in range(count):
            start = self.rng.uniform(-_EXTENT, _EXTENT, 2)
            heading = self.rng.uniform(0, 2 * math.pi)
            turn = self.rng.normal(0, 0.15)
            steps = [start]
            for k in range(6):
                steps.append(steps[-1] + 0.35 * np.array([math.cos(heading + k * turn), math.sin(heading + k * turn)]))
            paths.append(np.array(steps))
        self.paint(self.jitter(_DARK_BROWN, 0.2) * 0.6, 0.9 * self.strokes(paths, self.rng.uniform(0.008, 0.016)))


def _smooth(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Smoothstep from 0 at ``edge0`` to 1 at ``edge1`` (either order), for soft anti-aliased edges."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0, 1)
    return t * t * (3 - 2 * t)


def _mix(a: _RGB | np.ndarray, b: _RGB | np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation between two colours."""
    return (1 - t) * np.asarray(a, np.float32) + t * np.asarray(b, np.float32)


def _paint_nv(c: _Canvas) -> None:
    """Benign naevus: round, regular, one uniform brown, fine regular network; some look atypical."""
    rng = c.rng
    atypical = rng.random() < 0.18
    d, m = c.shape(rng.uniform(0.35, 0.8), 0.1 if atypical else 0.035, 0.07,
                   elong=0.7 if atypical else 0.85, warp=0.06 if atypical else 0.025)
    base = c.jitter(_mix(_LIGHT_BROWN, _DARK_BROWN, rng.uniform(0.35, 0.9) if atypical else rng.uniform(0, 0.7)))
    profile = rng.uniform(-0.25, 0.35)
    field = base * np.clip(1 - profile * (1 - d), 0.5, 1.3)[..., None]
    c.paint(field, m * rng.uniform(0.7, 0.95))
    if rng.random() < 0.6:
        c.paint(base * 0.6, 0.35 * m * c.lines(rng.uniform(35, 55), 0.15))
    if rng.random() < 0.3:
        c.paint(base * 0.55, 0.7 * m * c.dots(rng.uniform(30, 45), 1.1))
    if atypical:
        c.paint(_mix(base, _DARK_BROWN, 0.6), 0.6 * m * _smooth(0.0, 0.6, c.noise(4)))


def _paint_mel(c: _Canvas) -> None:
    """Melanoma: asymmetric irregular border, several browns and black, blue-grey veil, atypical network."""
    rng = c.rng
    tame = rng.random() < 0.2
    d, m = c.shape(rng.uniform(0.5, 0.92), 0.07 if tame else rng.uniform(0.12, 0.22), 0.05,
                   elong=0.7, warp=0.04 if tame else rng.uniform(0.07, 0.14))
    tilt = rng.uniform(0, 2 * math.pi)
    regions = c.noise(4) + rng.uniform(-1, 1) * (c.u * math.cos(tilt) + c.v * math.sin(tilt))
    light, dark = c.jitter(_LIGHT_BROWN), c.jitter(_mix(_DARK_BROWN, _BLACK, rng.uniform(0, 1)))
    field = light + _smooth(-0.6, 0.6, regions)[..., None] * (dark - light)
    c.paint(field, 0.92 * m)
    if rng.random() < (0.2 if tame else 0.65):
        angle, off = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.35)
        veil = np.hypot(c.u - off * math.cos(angle), c.v - off * math.sin(angle)) + 0.05 * c.noise(6)
        c.paint(c.jitter(_BLUE_GREY), 0.65 * m * _smooth(rng.uniform(0.25, 0.45), 0.1, veil))
    if rng.random() < 0.6:
        width = 0.2 + 0.1 * c.noise(5)
        c.paint(c.jitter(_BLACK), 0.5 * m * np.exp(-((c.noise(rng.uniform(18, 30)) / width) ** 2)))
    if rng.random() < 0.5:
        c.paint(c.jitter(_DARK_BROWN) * 0.6, 0.8 * c.dots(40, 1.2) * _smooth(0.55, 0.75, d) * _smooth(1.1, 0.95, d))
    if rng.random() < 0.35:
        c.paint(c.jitter(_WHITE), 0.55 * m * _smooth(0.6, 1.1, c.noise(5)))


def _paint_bcc(c: _Canvas) -> None:
    """Basal cell carcinoma: pink translucent, arborising red vessels, blue-grey ovoid nests, ulceration."""
    rng = c.rng
    radius = rng.uniform(0.4, 0.85)
    d, m = c.shape(radius, rng.uniform(0.05, 0.12), 0.18)
    c.paint(c.jitter(_PINK), m * rng.uniform(0.4, 0.7) * (1 + 0.2 * c.noise(8)))
    if rng.random() < 0.4:
        c.paint(_WHITE, 0.45 * m * _smooth(0.5, 1.2, c.noise(10)))
    if rng.random() < 0.7:
        nests = np.zeros_like(d)
        for _ in range(int(rng.integers(2, 7))):
            r, a = radius * math.sqrt(rng.uniform(0, 0.6)), rng.uniform(0, 2 * math.pi)
            size = radius * rng.uniform(0.08, 0.2)
            dist = np.hypot(c.u - r * math.cos(a), (c.v - r * math.sin(a)) * rng.uniform(1, 2)) / size
            nests = np.maximum(nests, _smooth(1.1, 0.8, dist))
        c.paint(c.jitter(_BLUE_GREY) * 0.75, 0.8 * nests)
    if rng.random() < 0.8:
        vessels = c.strokes(_vessel_tree(rng, radius), rng.uniform(0.008, 0.022))
        c.paint(c.jitter(_RED), rng.uniform(0.5, 0.95) * vessels * (d < 1.15))
    if rng.random() < 0.25:
        c.paint(c.jitter(_DARK_RED) * 0.8, 0.85 * m * _smooth(0.9, 1.3, c.noise(4)))


def _vessel_tree(rng: np.random.Generator, radius: float) -> list[np.ndarray]:
    """Branching, tapering vessel polylines starting inside the lesion."""
    stack = []
    for _ in range(int(rng.integers(2, 5))):
        r, a = radius * rng.uniform(0, 0.7), rng.uniform(0, 2 * math.pi)
        stack.append((np.array([r * math.cos(a), r * math.sin(a)]), rng.uniform(0, 2 * math.pi), 0.45 * radius, 0))
    paths = []
    while stack:
        start, heading, length, depth = stack.pop()
        bend = heading + rng.normal(0, 0.4)
        mid = start + 0.5 * length * np.array([math.cos(heading), math.sin(heading)])
        end = mid + 0.5 * length * np.array([math.cos(bend), math.sin(bend)])
        paths.append(np.stack([start, mid, end]))
        if depth < 3:
            for sign in (-1, 1):
                stack.append((end, bend + sign * rng.uniform(0.3, 0.9), length * 0.65, depth + 1))
    return paths


def _paint_akiec(c: _Canvas) -> None:
    """Actinic keratosis / Bowen: ill-defined red-pink, rough scaly surface, strawberry pattern."""
    rng = c.rng
    d, m = c.shape(rng.uniform(0.45, 0.85), 0.08, 0.3, warp=0.08)
    c.paint(c.jitter(_mix(_PINK, _RED, rng.uniform(0.2, 0.5))), 0.6 * m * (1 + 0.3 * c.noise(10)))
    c.img *= (1 + 0.12 * m * c.noise(70))[..., None]
    if rng.random() < 0.3:
        c.paint(c.jitter(_LIGHT_BROWN), 0.55 * m * _smooth(0.0, 0.8, c.noise(4)))
    c.paint(c.jitter(_SCALE, 0.04), rng.uniform(0.5, 0.9) * m * _smooth(0.3, 0.9, c.noise(rng.uniform(10, 18))))
    if rng.random() < 0.6:
        c.paint(_RED, 0.3 * m * c.lines(30, 0.2))
        c.paint(_WHITE, 0.7 * m * c.dots(40, 1.1))
    if rng.random() < 0.5:
        c.paint(_DARK_RED, 0.8 * m * c.dots(55, 1.3))


def _paint_bkl(c: _Canvas) -> None:
    """Benign keratosis: sharp border, tan/light brown, waxy cerebriform ridges, milia and comedones."""
    rng = c.rng
    d, m = c.shape(rng.uniform(0.45, 0.9), rng.uniform(0.04, 0.1), 0.04)
    dark = rng.random() < 0.3
    base = c.jitter(_mix(_TAN, _BROWN, rng.uniform(0.4, 1.0) if dark else rng.uniform(0, 0.5)))
    c.paint(base, 0.85 * m)
    if rng.random() < 0.75:
        sulci = np.exp(-((c.noise(rng.uniform(8, 16)) / rng.uniform(0.25, 0.45)) ** 2))
        c.paint(base * 0.55, 0.55 * m * sulci)
        c.paint(_mix(base, _WHITE, 0.35), 0.3 * m * (1 - sulci))
    if rng.random() < 0.5:
        c.paint(_SCALE, 0.85 * m * c.dots(35, 1.3))
    if rng.random() < 0.5:
        c.paint(_DARK_BROWN, 0.85 * m * _smooth(-1.3, -1.6, c.noise(35)))
    if dark and rng.random() < 0.5:
        c.paint(base * 0.6, 0.3 * m * c.lines(30, 0.15))


def _paint_df(c: _Canvas) -> None:
    """Dermatofibroma: small, light-brown delicate ring around a central white scar-like patch."""
    rng = c.rng
    radius = rng.uniform(0.3, 0.6)
    d, m = c.shape(radius, 0.04, 0.15)
    base = c.jitter(_mix(_LIGHT_BROWN, _PINK, rng.uniform(0, 0.5)))
    c.paint(base, m * (0.3 + 0.45 * _smooth(0.3, 0.75, d)))
    if rng.random() < 0.6:
        c.paint(base * 0.65, 0.3 * m * _smooth(0.4, 0.8, d) * c.lines(35, 0.15))
    if rng.random() < 0.9:
        centre, _ = c.shape(radius * rng.uniform(0.35, 0.55), 0.15, 0.1, warp=0.1)
        c.paint(c.jitter(_WHITE, 0.03), 0.85 * _smooth(1.2, 0.8, centre))


def _paint_vasc(c: _Canvas) -> None:
    """Vascular lesion: red to purple round lacunae (clods) separated by pale septa."""
    rng = c.rng
    radius = rng.uniform(0.3, 0.65)
    d, m = c.shape(radius, 0.06, 0.07)
    c.paint(c.jitter(_mix(_PINK, _WHITE, 0.3)), 0.7 * m)
    count = int(rng.integers(6, 22))
    r = (radius * np.sqrt(rng.uniform(0, 0.8, count))).tolist()
    a = rng.uniform(0, 2 * math.pi, count).tolist()
    sizes = (radius * rng.uniform(0.12, 0.3, count)).tolist()
    colours = np.stack([_mix(_RED, _PURPLE, t) for t in rng.uniform(0, 1, count)])
    colours *= rng.uniform(0.6, 1.1, (count, 1)).astype(np.float32)
    gap = np.stack([
        np.hypot(c.u - r[k] * math.cos(a[k]), c.v - r[k] * math.sin(a[k])) - sizes[k] for k in range(count)
    ])
    nearest = gap.argmin(axis=0)
    c.paint(colours[nearest], 0.95 * m * _smooth(0.02, -0.02, gap.min(axis=0)))


_PAINTERS: dict[str, Callable[[_Canvas], None]] = {
    "akiec": _paint_akiec, "bcc": _paint_bcc, "bkl": _paint_bkl, "df": _paint_df,
    "mel": _paint_mel, "nv": _paint_nv, "vasc": _paint_vasc,
}


def render_lesion(dx: str, rng: np.random.Generator, scale: float) -> Image.Image:
    """The lesion's own appearance (skin, lesion, hairs) on a square canvas in the lesion frame."""
    c = _Canvas(rng, round(_CANVAS * scale))
    _PAINTERS[dx](c)
    if rng.random() < 0.3:
        c.hairs()
    return Image.fromarray((np.clip(c.img, 0, 1) * 255 + 0.5).astype(np.uint8))


@lru_cache(maxsize=16)
def _view_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output-pixel coordinates scaled so that half the shorter side is 1, and their radius."""
    half = min(width, height) / 2
    xx = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / half
    yy = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / half
    xx, yy = np.meshgrid(xx, yy)
    return xx, yy, np.hypot(xx, yy)


def photograph(canvas: Image.Image, style: Style, rng: np.random.Generator, scale: float,
                downsampled: bool) -> bytes:
    """One view: rotate/shift/zoom the canvas, then the site's optics, lighting and sensor; JPEG bytes."""
    width, height = round(style.size[0] * scale), round(style.size[1] * scale)
    zoom, theta = rng.uniform(*style.zoom), rng.uniform(0, 2 * math.pi)
    tx, ty = (float(t) for t in np.clip(rng.normal(0, 0.07, 2), -_MAX_SHIFT, _MAX_SHIFT))
    per_unit = canvas.size[0] / (2 * _EXTENT)
    k = 2.0 / (width * zoom) * per_unit  # canvas pixels per output pixel
    cos, sin = math.cos(theta) * k, math.sin(theta) * k
    coeffs = (cos, -sin, (-cos * width + sin * height) / 2 + (tx + _EXTENT) * per_unit,
              sin, cos, (-sin * width - cos * height) / 2 + (ty + _EXTENT) * per_unit)
    view = canvas.transform((width, height), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    if style.blur:
        view = view.filter(ImageFilter.GaussianBlur(style.blur * scale))
    xx, yy, radius = _view_grid(width, height)
    slope, angle = rng.uniform(0, 0.08), rng.uniform(0, 2 * math.pi)
    light = 1 + slope * (math.cos(angle) * xx + math.sin(angle) * yy)
    dark = np.ones_like(light)
    if style.vignette:
        r = radius / rng.uniform(*style.vignette)
        dark = _smooth(1.0, 0.93, r) * (1 - 0.25 * r**2)
    gain = np.asarray(style.cast) * style.brightness * (1 + rng.normal(0, 0.03, 3)) * rng.normal(1, 0.04)
    # ((x * light * gain - 1/2) * contrast + 1/2) * dark, on 0..255 values
    x = np.asarray(view, np.float32) * (light * dark)[..., None] * (gain * style.contrast).astype(np.float32)
    x += (np.float32(127.5 * (1 - style.contrast)) * dark)[..., None]
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(style.noise * 255)
    image = Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))
    if downsampled:
        image = image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
