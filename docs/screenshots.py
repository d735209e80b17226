"""Regenerate the README's pictures of the web page (docs/serve.png) and of the report (docs/report.png).

    crossderm demo --out demo                      # the trained runs, the report and the synthetic data
    python docs/screenshots.py --demo demo         # -> docs/serve.png, docs/report.png

serve.png: ``crossderm serve`` on the demo's joint run (``runs/demo_b_joint``), in headless Chromium, after
uploading one of the demo's *synthetic* HAM10000 look-alike images: a melanoma or basal cell carcinoma image the
run classifies correctly, with the highest probability (and not flagged as unlike the training data). The upload is
named ``synthetic-<class>-<image>.jpg`` so the page's status line says what it is. Real HAM10000 / ISIC images are
CC BY-NC and stay out of the repository: the script refuses a data folder without the synthetic generator's marker
(``crossderm-synth.json``).

report.png: the demo's ``report/report.html`` in the same browser, 1200 px wide: its top (the runs, Table 1's
headline metrics, the generalisation gap and the paired comparison) and, below a grey band marking the sections
left out, the first of its figures. The report is one long page, so a single window cannot show both.

Needs Chromium and its chromedriver (Debian: ``apt-get install chromium chromium-driver``) and selenium; nothing is
downloaded. The functions take paths (run folder, synthetic raw folder, report HTML, image), so they work on any
finished run; ``--demo`` only resolves them in a ``crossderm demo`` folder.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossderm.cli.demo import EXPERIMENTS
from crossderm.datafolder import SYNTHETIC_MARKER
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_bytes
from crossderm.labels import CLASSES
from crossderm.prepare.sources import HAM_FOLDER, HAM_IMAGE_FOLDERS, HAM_METADATA_NAMES
from crossderm.runfolder import METRICS_JSON

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--force-color-profile=srgb")
SERVE_WINDOW = (1000, 1380)  # the page's whole column (max-width 980 px): image, prediction, model panel, footer
REPORT_WIDTH = 1200  # Table 1 needs about 1120 px without wrapping its CI cells
REPORT_BAND = 28  # px of grey between the report's top and its figure: sections left out
PICK_CLASSES = ("mel", "bcc")  # the classes a newcomer most wants the tool to tell apart from a naevus
PICK_PER_CLASS = 24  # candidates per class (the first by image id): enough to find a clear one, quick to predict
WAIT_S = 120
GENERATOR = "crossderm synth"


class ScreenshotError(Exception):
    """A one-line reason the pictures cannot be made (printed without a traceback)."""


@dataclass(frozen=True)
class DemoPaths:
    run_dir: Path
    raw_dir: Path
    report_html: Path


@dataclass(frozen=True)
class Choice:
    """The image to upload and what the run says about it."""

    path: Path
    label: str
    predicted: str
    probability: float  # of ``label``
    mahalanobis: float | None  # 1.0 = the 95th percentile of validation images

    @property
    def correct(self) -> bool:
        return self.predicted == self.label

    def describe(self) -> str:
        ood = "" if self.mahalanobis is None else f", Mahalanobis {self.mahalanobis:.2f}"
        return f"{self.path.name} ({self.label}): predicted {self.predicted}, p({self.label}) = " \
               f"{100 * self.probability:.1f} %{ood}"


# --- paths ---------------------------------------------------------------------------------------------------


def demo_paths(demo: Path, experiment: str = EXPERIMENTS[-1]) -> DemoPaths:
    """The run, synthetic raw data and report that ``crossderm demo --out DEMO`` writes, checked."""
    again = f"run `crossderm demo --out {demo}` first (it resumes what is missing)"
    if not demo.is_dir():
        raise ScreenshotError(f"{demo}: no such demo folder; {again}")
    paths = DemoPaths(run_dir=demo / "runs" / experiment, raw_dir=demo / "data" / "raw",
                      report_html=demo / "report" / "report.html")
    if not (paths.run_dir / METRICS_JSON).is_file():
        raise ScreenshotError(f"{paths.run_dir}: no finished run ({METRICS_JSON} missing); {again}")
    if not paths.raw_dir.is_dir():
        raise ScreenshotError(f"{paths.raw_dir}: no synthetic data folder; {again}")
    if not paths.report_html.is_file():
        raise ScreenshotError(f"{paths.report_html}: no report; {again}")
    return paths


def check_synthetic(raw_dir: Path) -> None:
    """Refuse a raw data folder that the synthetic generator did not write: its images could be real ones."""
    marker = raw_dir / SYNTHETIC_MARKER
    try:
        generator = json.loads(marker.read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    if generator != GENERATOR:
        raise ScreenshotError(f"{raw_dir}: no {SYNTHETIC_MARKER} from `{GENERATOR}`, so its images may be real "
                              "(HAM10000 and ISIC images are CC BY-NC and stay out of the repository); refusing")


def check_image(image: Path, raw_dir: Path) -> None:
    """``image`` must be a file of the synthetic ``raw_dir``."""
    check_synthetic(raw_dir)
    if not image.is_file():
        raise ScreenshotError(f"{image}: no such image")
    if not image.resolve().is_relative_to(raw_dir.resolve()):
        raise ScreenshotError(f"{image}: not in the synthetic data folder {raw_dir}; refusing (it may be real)")


# --- the image -----------------------------------------------------------------------------------------------


def candidate_images(raw_dir: Path, classes: Sequence[str] = PICK_CLASSES,
                     per_class: int = PICK_PER_CLASS) -> list[tuple[Path, str]]:
    """(path, label) of the first ``per_class`` synthetic HAM10000 images of each class, by image id."""
    check_synthetic(raw_dir)
    ham = raw_dir / HAM_FOLDER
    metadata = next((ham / name for name in HAM_METADATA_NAMES if (ham / name).is_file()), None)
    if metadata is None:
        raise ScreenshotError(f"{ham}: no {HAM_METADATA_NAMES[0]}")
    with open(metadata, newline="") as handle:
        labels = {row["image_id"]: row["dx"] for row in csv.DictReader(handle)}
    found = []
    for cls in classes:
        ids = sorted(image_id for image_id, dx in labels.items() if dx == cls)
        for image_id in ids[:per_class]:
            paths = [ham / part / f"{image_id}.jpg" for part in HAM_IMAGE_FOLDERS]
            found += [(path, cls) for path in paths if path.is_file()][:1]
    if not found:
        raise ScreenshotError(f"{ham}: no {' or '.join(classes)} images")
    return found


def pick_image(run_dir: Path, raw_dir: Path, classes: Sequence[str] = PICK_CLASSES,
               per_class: int = PICK_PER_CLASS) -> Choice:
    """The candidate the run gets right with the highest probability, preferring ones the page would not flag as
    unlike the training data; deterministic (ties: image id). Without a correct one, the most probable, with a
    warning on stderr."""
    import crossderm
    from crossderm.serve.worker import UNLIKE_TRAINING_ABOVE

    candidates = candidate_images(raw_dir, classes, per_class)
    table = crossderm.load_predictor(run_dir, device="cpu").predict([path for path, _ in candidates])
    choices = []
    for (path, label), (_, row) in zip(candidates, table.iterrows(), strict=True):
        if row["status"] != "ok":
            continue
        distance = row.get("ood_mahalanobis")
        known = distance is not None and not math.isnan(float(distance))
        choices.append(Choice(path, label, str(row["predicted"]), float(row[label]),
                              float(distance) if known else None))
    if not choices:
        raise ScreenshotError(f"{run_dir}: could not predict any of the {len(candidates)} candidate images")

    def rank(choice: Choice) -> tuple[bool, bool, float, str]:
        unlike = choice.mahalanobis is not None and choice.mahalanobis > UNLIKE_TRAINING_ABOVE
        return not choice.correct, unlike, -choice.probability, choice.path.name

    best = min(choices, key=rank)
    if not best.correct:
        print(f"screenshots.py: warning: the run classifies none of the {len(choices)} {'/'.join(classes)} "
              f"candidates correctly; using the most probable, {best.describe()}", file=sys.stderr)
    return best


# --- the server ----------------------------------------------------------------------------------------------


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_server(run_dir: Path, wait_s: float = WAIT_S) -> Iterator[str]:
    """``crossderm serve --model RUN_DIR`` on loopback and a free port, in its own process group; yields its URL once
    /healthz answers, and always stops it (SIGTERM, then SIGKILL for the group)."""
    with tempfile.TemporaryDirectory(prefix="crossderm-screenshots-serve-") as scratch:
        log = Path(scratch) / "serve.log"
        command = [sys.executable, "-m", "crossderm", "serve", "--model", str(run_dir), "--host", "127.0.0.1",
                   "--port", "0", "--threads", "1"]
        with open(log, "w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        try:
            deadline = time.monotonic() + wait_s
            url = None
            while url is None or not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
                    why = f"exited with {process.returncode}" if process.returncode is not None else \
                        f"not healthy after {wait_s:.0f} s"
                    raise ScreenshotError(f"crossderm serve {why}: {lines[-1]}")
                time.sleep(0.2)
                found = re.search(r" on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
                url = found.group(1) if found else None
            yield url
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own group: the server and its model workers
            process.wait()


# --- the browser ---------------------------------------------------------------------------------------------


def check_browser(chromium: Path = CHROMIUM, chromedriver: Path = CHROMEDRIVER) -> None:
    for path, what in ((chromium, "Chromium"), (chromedriver, "chromedriver")):
        if not path.is_file():
            raise ScreenshotError(f"no {what} at {path} (Debian: apt-get install chromium chromium-driver, or pass "
                                  f"--{what.lower()})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise ScreenshotError("needs selenium (pip install selenium)") from None


def set_viewport(driver: Any, width: int, height: int) -> None:
    """The page's viewport, and so the screenshot, exactly width x height CSS px at one device pixel each."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


@contextlib.contextmanager
def browser(chromium: Path = CHROMIUM, chromedriver: Path = CHROMEDRIVER) -> Iterator[Any]:
    """Headless Chromium driven by the local chromedriver (nothing downloaded), with a throwaway profile."""
    check_browser(chromium, chromedriver)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="crossderm-screenshots-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(chromium)
        width, height = SERVE_WINDOW
        for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(service=Service(executable_path=str(chromedriver)), options=options)
        except WebDriverException as exc:
            raise ScreenshotError(f"cannot start {chromium}: {exc.msg or exc}".splitlines()[0]) from None
        try:
            driver.set_page_load_timeout(WAIT_S)
            yield driver
        finally:
            driver.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        raise ScreenshotError(f"{what} within {WAIT_S} s") from None


def write_png(path: Path, png: bytes) -> tuple[int, int]:
    """Re-encode (losslessly, optimised) and write atomically; returns the size."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
    return image.size


def serve_screenshot(driver: Any, url: str, image: Path, out_png: Path, upload_name: str | None = None,
                     window: tuple[int, int] = SERVE_WINDOW) -> tuple[int, int]:
    """Open the page, upload ``image`` (as ``upload_name``), wait for the bars and the Grad-CAM overlay, save the
    window; returns the PNG's size."""
    from selenium.webdriver.common.by import By

    set_viewport(driver, *window)
    driver.get(url)
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready"), "the page did not load the model")
    with tempfile.TemporaryDirectory(prefix="crossderm-screenshots-upload-") as scratch:
        upload = Path(scratch) / (upload_name or image.name)
        shutil.copyfile(image, upload)
        driver.find_element(By.ID, "file").send_keys(str(upload))

        def verdict(d: Any) -> tuple[str, str] | None:
            status = d.find_element(By.ID, "status")
            kind, text = status.get_attribute("class"), status.text
            return (kind, text) if kind in ("done", "error") and text.startswith(upload.name) else None

        kind, text = _wait(driver, verdict, f"the page showed no prediction for {upload.name}")
    if kind != "done":
        raise ScreenshotError(f"the page refused {image}: {text}")
    _wait(driver, lambda d: d.execute_script(
        f"return document.querySelectorAll('#chart .bar').length === {len(CLASSES)}"
        " && document.querySelector('#chart .bar.top') !== null"), "the page drew no probability bars")
    _wait(driver, lambda d: d.execute_script(
        "const img = document.getElementById('overlay'); return img.complete && img.naturalWidth > 0"),
        "the page showed no Grad-CAM overlay")
    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    if height > window[1]:
        print(f"screenshots.py: warning: the page is {height} px tall, the window {window[1]} px: its bottom is cut",
              file=sys.stderr)
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")  # painted
    return write_png(out_png, driver.get_screenshot_as_png())


REPORT_LAYOUT_JS = """
const boxes = [...document.body.children].map(e => {
  const r = e.getBoundingClientRect();
  return [e.tagName, e.textContent.trim().slice(0, 80), r.top + window.scrollY, r.bottom + window.scrollY];
});
return [document.documentElement.scrollHeight, boxes];
"""


def report_cuts(boxes: Sequence[tuple[str, str, float, float]]) -> tuple[int, int, int]:
    """From the report's top-level elements (tag, text, top, bottom): where its top part ends (before Table 2, the
    per-class details: so the runs, Table 1, the gap and the comparison show) and where the first figure's section
    starts and ends."""
    headings = [(text, top) for tag, text, top, _ in boxes if tag == "H2"]
    figures = [(top, bottom) for tag, _, top, bottom in boxes if tag == "FIGURE"]
    figures_heading = next((top for text, top in headings if text == "Figures"), None)
    if figures_heading is None or not figures:
        raise ScreenshotError("the report has no figures")
    later = [top for text, top in headings if not text.startswith(("Table 1", "Generalisation gap", "Comparisons"))]
    top_end = min(later, default=figures_heading)
    first_bottom = figures[0][1]
    next_top = min((top for _, _, top, _ in boxes if top > first_bottom), default=first_bottom + 16)
    return int(top_end) - 8, int(figures_heading) - 16, int(min(first_bottom + 12, next_top))


def report_screenshot(driver: Any, report_html: Path, out_png: Path, width: int = REPORT_WIDTH) -> tuple[int, int]:
    """The report's top and its first figure, one above the other with a grey band between; returns the size."""
    from PIL import Image, ImageDraw

    set_viewport(driver, width, 1000)
    driver.get(report_html.resolve().as_uri())
    _wait(driver, lambda d: d.execute_script(
        "return document.readyState === 'complete' && [...document.images].every(i => i.complete)"),
        f"{report_html} did not load")
    height, _ = driver.execute_script(REPORT_LAYOUT_JS)
    set_viewport(driver, width, int(height))  # the whole page in one capture; the width, and so the layout, stays
    driver.execute_script("window.scrollTo(0, 0);")
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    _, boxes = driver.execute_script(REPORT_LAYOUT_JS)
    top_end, figure_top, figure_end = report_cuts(boxes)
    with Image.open(io.BytesIO(driver.get_screenshot_as_png())) as page:
        page = page.convert("RGB")
    top, figure = page.crop((0, 0, width, top_end)), page.crop((0, figure_top, width, min(figure_end, page.height)))
    picture = Image.new("RGB", (width, top.height + REPORT_BAND + figure.height), "white")
    picture.paste(top, (0, 0))
    band = ImageDraw.Draw(picture)
    band.rectangle((0, top.height, width, top.height + REPORT_BAND - 1), fill=(236, 236, 236))
    middle = top.height + REPORT_BAND // 2
    for x in range(0, width, 16):
        band.line((x, middle, x + 8, middle), fill=(160, 160, 160), width=2)
    picture.paste(figure, (0, top.height + REPORT_BAND))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return write_png(out_png, buffer.getvalue())


# --- all together --------------------------------------------------------------------------------------------


def make_screenshots(run_dir: Path, raw_dir: Path, report_html: Path, out_dir: Path, image: Path | None = None,
                     chromium: Path = CHROMIUM, chromedriver: Path = CHROMEDRIVER,
                     per_class: int = PICK_PER_CLASS) -> dict[str, Path]:
    """serve.png and report.png into ``out_dir``; ``image`` (a file of the synthetic ``raw_dir``) or the one
    :func:`pick_image` chooses. Returns the two paths."""
    check_browser(chromium, chromedriver)
    check_synthetic(raw_dir)
    if not report_html.is_file():
        raise ScreenshotError(f"{report_html}: no such report")
    if image is None:
        choice = pick_image(run_dir, raw_dir, per_class=per_class)
        print(f"image: {choice.describe()}", flush=True)
        image, upload_name = choice.path, f"synthetic-{choice.label}-{choice.path.name}"
    else:
        upload_name = f"synthetic-{image.name}"
    check_image(image, raw_dir)
    out = {"serve": out_dir / "serve.png", "report": out_dir / "report.png"}
    with browser(chromium, chromedriver) as driver:
        with running_server(run_dir) as url:
            size = serve_screenshot(driver, url, image, out["serve"], upload_name)
        print(f"wrote {out['serve']} ({size[0]} x {size[1]})", flush=True)
        size = report_screenshot(driver, report_html, out["report"])
        print(f"wrote {out['report']} ({size[0]} x {size[1]})", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate docs/serve.png and docs/report.png from a "
                                     "`crossderm demo` folder (its trained run, synthetic images and report).")
    parser.add_argument("--demo", type=Path, required=True, help="folder `crossderm demo --out DEMO` wrote")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for the PNGs "
                        "(default: this script's folder, docs/)")
    parser.add_argument("--experiment", default=EXPERIMENTS[-1], choices=EXPERIMENTS, help="the run to serve")
    parser.add_argument("--image", type=Path, default=None, help="upload this image of DEMO/data/raw instead of "
                        "the one picked")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help="Chromium binary")
    parser.add_argument("--chromedriver", type=Path, default=CHROMEDRIVER, help="chromedriver binary")
    args = parser.parse_args(argv)
    try:
        paths = demo_paths(args.demo, args.experiment)
        make_screenshots(paths.run_dir, paths.raw_dir, paths.report_html, args.out, args.image, args.chromium,
                         args.chromedriver)
    except (ScreenshotError, CrossdermError) as exc:
        print(f"screenshots.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
