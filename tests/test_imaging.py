"""The one image decoder: header limits (pixels, aspect ratio, decode memory) that bound the *work*, checked before
any pixel is decoded, and the training preprocessing unchanged bit for bit for normal images.

Peak memory is the process's high-water mark (VmHWM, reset through /proc/self/clear_refs) over the call: it counts
Pillow's and numpy's allocations alike, which tracemalloc would not.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crossderm import imaging
from crossderm.cli import main
from crossderm.imaging import (
    MAX_ASPECT,
    ImageError,
    check_cost,
    decode,
    decode_cost,
    load_image,
    read_header,
    resized_size,
)

MiB = 2**20
REFUSAL_PEAK_BOUND = 16 * MiB  # a refused image costs its header, never its resized intermediate
REFUSAL_TIME_BOUND_S = 0.5
WIDE = [(2000, 1), (20000, 1), (1, 20000)]  # 2000 x 1 first: on unbounded code it costs 1.2 GB, 20000 x 1 ~100 GB


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _hwm() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else None


def _rss() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Yields a function giving the peak resident memory (bytes) above the start, over the ``with`` body."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    start = _rss()
    peak: list[int] = []
    try:
        yield lambda: peak[0]
    finally:
        peak.append((_hwm() or start) - start)


def _reference_load_image(source: bytes | Path, size: int) -> Image.Image:
    """load_image as it was before the shape limits (crossderm 460345d), for the bit-for-bit comparison."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source,
                        formats=imaging.ACCEPTED_FORMATS) as image:
            image.draft("RGB", (size, size))
            image = imaging._to_rgb(image)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


@pytest.mark.parametrize(("width", "height"), WIDE)
def test_extreme_aspect_refused_from_the_header_fast_and_small(width: int, height: int) -> None:
    data = png(width, height)
    assert len(data) < 300, "a tiny file: the work, not the input, is what must be bounded"
    for call in (lambda: read_header(data, 10**8), lambda: decode(data, 224, 10**8, 384),
                 lambda: load_image(data, 224)):
        started = time.perf_counter()
        with peak_memory() as peak, pytest.raises(ImageError) as refused:
            call()
        assert refused.value.kind == "bad_shape"
        assert f"image is {width} x {height}" in str(refused.value) and "the limit is 10:1" in str(refused.value)
        assert time.perf_counter() - started < REFUSAL_TIME_BOUND_S
        assert peak() < REFUSAL_PEAK_BOUND, f"{peak() / MiB:.0f} MiB to refuse a {width} x {height} image"


def test_aspect_cap_is_inclusive_and_bounds_the_resized_intermediate() -> None:
    ok = decode(png(320, 32), 32, 10**8, display_size=384)
    assert ok.pixels.shape == (32, 32, 3) and ok.display is not None and ok.display.size == (384, 384)
    assert decode(png(32, 320), 32, 10**8).pixels.shape == (32, 32, 3)
    with pytest.raises(ImageError, match=r"321 x 32, an aspect ratio of 10.03:1"):
        read_header(png(321, 32), 10**8)
    assert read_header(png(400, 20), 10**8, max_aspect=20).aspect == 20
    assert MAX_ASPECT == 10
    for width, height in [(600, 450), (1024, 1024), (4000, 400), (400, 4000)]:
        new_w, new_h = resized_size(width, height, 384)
        assert min(new_w, new_h) == 384 and new_w * new_h <= 384 * 384 * MAX_ASPECT


def _images(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)
    paths = {}

    def save(name: str, image: Image.Image, **options: object) -> None:
        paths[name] = tmp_path / name
        image.save(paths[name], **options)

    save("ham_like.jpg", Image.fromarray(rgb), quality=90)
    save("big.jpg", Image.fromarray(np.kron(rgb, np.ones((4, 4, 1), np.uint8))), quality=85)  # draft path
    save("square.png", Image.fromarray(rgb[:, :450]))
    save("rgba.png", Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (450, 600), dtype=np.uint8)])))
    save("grey16.png", Image.fromarray(rng.integers(0, 65535, (300, 400), dtype=np.uint16)))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    save("cmyk.tif", Image.fromarray(rgb).convert("CMYK"))
    save("small.bmp", Image.fromarray(rgb[:20, :30]))
    save("wide.webp", Image.fromarray(rng.integers(0, 256, (100, 900, 3), dtype=np.uint8)), lossless=True)
    return paths


@pytest.mark.parametrize("size", [32, 224])
def test_load_image_unchanged_bit_for_bit_for_normal_images(tmp_path: Path, size: int) -> None:
    for name, path in _images(tmp_path).items():
        expected = np.asarray(_reference_load_image(path, size))
        got = np.asarray(load_image(path, size))
        assert got.shape == (size, size, 3) and got.dtype == np.uint8, name
        assert np.array_equal(got, expected), f"{name}: the training preprocessing changed"
        assert np.array_equal(decode(path, size, 10**8).pixels, expected), name


PEAK_SCRIPT = """
import io, re, sys
from pathlib import Path
import numpy as np
from PIL import Image
from crossderm.imaging import decode, decode_cost, read_header
mode, fmt = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
shape = (1200, 1600, {"RGB": 3, "RGBA": 4}[mode]) if mode in ("RGB", "RGBA") else (1200, 1600)
dtype = np.uint16 if mode == "I;16" else np.uint8
image = Image.fromarray(rng.integers(0, 65535 if mode == "I;16" else 256, shape, dtype=dtype))
image = image.convert("P") if mode == "P" else image
options = {"transparency": 0} if mode == "P" else {"lossless": True} if fmt == "WEBP" else {}
buffer = io.BytesIO()
image.save(buffer, format=fmt, **options)
data = buffer.getvalue()
del image, buffer
header = read_header(data, 10**8)
status = lambda key: int(re.search(key + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
Path("/proc/self/clear_refs").write_text("5")
start = status("VmRSS")
decode(data, 32, 10**8, 384)
print(header.mode, status("VmHWM") - start, decode_cost(header, 32, 384))
"""


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("I;16", "PNG"),
                                           ("P", "PNG"), ("RGB", "WEBP")])
def test_decode_cost_estimate_is_above_the_measured_peak(mode: str, fmt: str) -> None:
    """In a fresh process (freed memory of earlier tests would hide part of the peak here)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode, fmt], capture_output=True, text=True, check=True)
    header_mode, peak, estimate = done.stdout.split()
    peak, estimate = int(peak), int(estimate)
    assert header_mode == mode
    assert peak <= estimate, f"{mode} {fmt}: measured {peak / MiB:.1f} MiB > estimated {estimate / MiB:.1f} MiB"
    assert estimate < 1.5 * peak + 4 * MiB, f"{mode} {fmt}: estimate {estimate / MiB:.1f} MiB, peak {peak / MiB:.1f}"


def test_cost_check_refuses_over_the_budget() -> None:
    data = png(1600, 1200, "RGBA")
    header = read_header(data, 10**8)
    estimate = decode_cost(header, 32, 384)
    assert estimate > 1600 * 1200 * 4
    check_cost(header, 32, 384, estimate)  # at the estimate: accepted
    with pytest.raises(ImageError, match="would need about") as refused:
        decode(data, 32, 10**8, 384, max_bytes=estimate - 1)
    assert refused.value.kind == "too_large"


def test_pillow_bomb_limit_and_memory_errors_stay_image_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too many pixels") as bomb:
        read_header(png(100, 100), 10**8)  # over twice Pillow's limit: its DecompressionBombError
    assert bomb.value.kind == "too_large"
    with pytest.raises(Image.DecompressionBombWarning):
        load_image(png(40, 40), 32)  # over Pillow's limit: its warning is an error in load_image
    monkeypatch.undo()

    def out_of_memory(*_: object, **__: object) -> Image.Image:
        raise MemoryError

    monkeypatch.setattr(imaging, "load_image", out_of_memory)
    with pytest.raises(ImageError, match="more memory") as refused:
        decode(png(64, 64), 32, 10**8)
    assert refused.value.kind == "too_large"


@pytest.fixture()
def wide_images(tmp_path: Path, synth_raw: Path) -> list[Path]:
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[0]
    paths = [folder / "good.jpg"]
    paths[0].write_bytes(good.read_bytes())
    for width, height in WIDE[:2]:
        paths.append(folder / f"wide_{width}x{height}.png")
        paths[-1].write_bytes(png(width, height))
    return paths


def test_predict_gives_error_rows_for_extreme_aspect(synth_run: Path, wide_images: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred.csv"
    main(["predict", "--model", str(synth_run), str(wide_images[0]), "--out", str(out), "--device", "cpu"])  # warm
    capsys.readouterr()
    started = time.perf_counter()
    with peak_memory() as peak:
        code = main(["predict", "--model", str(synth_run), *map(str, wide_images), "--out", str(out),
                     "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert code == 1  # some images failed
    table = pd.read_csv(out, keep_default_na=False).set_index("image_id")
    assert table.loc["good", "status"] == "ok"
    for path in wide_images[1:]:
        row = table.loc[path.stem]
        assert row["status"] == "error" and "aspect ratio" in row["error"] and "the limit is 10:1" in row["error"]
    assert "aspect ratio" in capsys.readouterr().err
    assert peak() < 64 * MiB, f"predict peaked {peak() / MiB:.0f} MiB above its start"
    assert seconds < 30


def test_explain_refuses_extreme_aspect_in_one_line(synth_run: Path, wide_images: list[Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for path in wide_images[1:]:  # 2000 x 1 first
        started = time.perf_counter()
        with peak_memory() as peak:
            code = main(["explain", "--model", str(synth_run), str(path), "--out", str(tmp_path / "cams")])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and str(path) in err and "aspect ratio" in err, err
        assert peak() < 64 * MiB, f"explain peaked {peak() / MiB:.0f} MiB above its start"
        assert time.perf_counter() - started < 30
    assert not list(tmp_path.glob("cams/*.png"))
