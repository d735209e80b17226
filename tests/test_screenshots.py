"""docs/screenshots.py, the script behind the README's pictures: on the tiny synthetic run of the fixtures (never
writing into docs/), and its refusals. The browser test needs Debian's chromium and chromium-driver; skipped
without them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "screenshots.py"
spec = importlib.util.spec_from_file_location("crossderm_docs_screenshots", SCRIPT)
screenshots = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = screenshots  # its dataclasses look their module up there
spec.loader.exec_module(screenshots)

HAVE_BROWSER = screenshots.CHROMIUM.is_file() and screenshots.CHROMEDRIVER.is_file()


def pixels_spread(path: Path) -> float:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float64).std())


@pytest.mark.skipif(not HAVE_BROWSER, reason=f"needs {screenshots.CHROMIUM} and {screenshots.CHROMEDRIVER} "
                    "(apt-get install chromium chromium-driver)")
def test_pictures_of_the_page_and_the_report(synth_run: Path, synth_raw: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    import crossderm

    crossderm.write_report([synth_run], tmp_path / "report")
    out = tmp_path / "pictures"
    written = screenshots.make_screenshots(synth_run, synth_raw, tmp_path / "report" / "report.html", out,
                                           per_class=4)
    assert written == {"serve": out / "serve.png", "report": out / "report.png"}
    assert sorted(p.name for p in out.iterdir()) == ["report.png", "serve.png"]  # no temporary files left
    picked = capsys.readouterr().out.splitlines()[0]
    assert picked.startswith("image: ISIC_") and ("(mel)" in picked or "(bcc)" in picked), picked
    with Image.open(written["serve"]) as image:
        assert image.size == screenshots.SERVE_WINDOW
    with Image.open(written["report"]) as image:
        width, height = image.size
    assert width == screenshots.REPORT_WIDTH and 600 < height < 4000
    for path in written.values():
        assert pixels_spread(path) > 10, f"{path} looks blank"


def test_picks_only_synthetic_images(synth_raw: Path) -> None:
    candidates = screenshots.candidate_images(synth_raw, per_class=3)
    assert [label for _, label in candidates] == ["mel"] * 3 + ["bcc"] * 3
    assert all(path.is_relative_to(synth_raw / "HAM10000") for path, _ in candidates)
    assert candidates == screenshots.candidate_images(synth_raw, per_class=3)  # deterministic


def test_refuses_data_without_the_synthetic_marker(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    image = raw / "ISIC_0000000.jpg"
    image.write_bytes(b"")
    with pytest.raises(screenshots.ScreenshotError, match="may be real"):
        screenshots.check_image(image, raw)
    (raw / "crossderm-synth.json").write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(screenshots.ScreenshotError, match="refusing"):
        screenshots.candidate_images(raw)


def test_refuses_an_image_outside_the_synthetic_folder(synth_raw: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "ISIC_0024306.jpg"
    elsewhere.write_bytes(b"\xff\xd8")
    with pytest.raises(screenshots.ScreenshotError, match="not in the synthetic data folder"):
        screenshots.check_image(elsewhere, synth_raw)


def test_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert screenshots.main(["--demo", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no such demo folder" in error and "crossderm demo --out" in error
    (tmp_path / "demo").mkdir()
    assert screenshots.main(["--demo", str(tmp_path / "demo"), "--out", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err
    with pytest.raises(screenshots.ScreenshotError, match="no Chromium at /nonexistent/chromium"):
        screenshots.check_browser(Path("/nonexistent/chromium"), screenshots.CHROMEDRIVER)
    assert not list(tmp_path.glob("*.png"))
