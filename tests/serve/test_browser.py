"""End to end in a real headless Chromium: upload images on the page, read the bar chart and the Grad-CAM overlay.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped without them.
Selenium drives /usr/bin/chromedriver directly, so nothing is downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossderm.labels import CLASSES

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1000,1250")
WAIT_S = 90

if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only importable where the browser test can run)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.get(server)
        WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return document.body.dataset.ready"))
        yield driver
    finally:
        driver.quit()


def upload(driver: webdriver.Chrome, path: Path) -> tuple[str, str]:
    """Choose ``path`` in the file input; wait for the page's verdict on it: (status class, status text)."""
    driver.find_element(By.ID, "file").send_keys(str(path))

    def verdict(d: webdriver.Chrome) -> tuple[str, str] | None:
        status = d.find_element(By.ID, "status")
        kind, text = status.get_attribute("class"), status.text
        return (kind, text) if kind in ("done", "error") and text.startswith(path.name) else None

    return WebDriverWait(driver, WAIT_S).until(verdict)


def assert_prediction_shown(driver: webdriver.Chrome, path: Path) -> None:
    kind, text = upload(driver, path)
    assert kind == "done", text
    bars = driver.execute_script(
        "return [...document.querySelectorAll('#chart .bar')].map(b => [b.dataset.class, "
        "parseFloat(b.dataset.probability), b.querySelector('.fill').getBoundingClientRect().width / "
        "b.querySelector('.track').getBoundingClientRect().width, b.classList.contains('top')])"
    )
    assert [b[0] for b in bars] == list(CLASSES)
    assert sum(b[1] for b in bars) == pytest.approx(1.0, abs=1e-4)
    for _, probability, drawn, _ in bars:  # the bars are drawn to scale
        assert drawn == pytest.approx(probability, abs=0.01)
    top = [b[0] for b in bars if b[3]]
    assert top == [max(bars, key=lambda b: b[1])[0]]
    assert top[0] in driver.find_element(By.ID, "predicted").text
    natural = WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
        "const img = document.getElementById('overlay');"
        "return img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null"
    ))
    assert min(natural) >= 32
    assert driver.find_element(By.ID, "overlay").is_displayed()


def test_page_shows_notice_and_provenance(browser: webdriver.Chrome, server: str) -> None:
    notice = browser.find_element(By.ID, "notice")
    assert notice.is_displayed() and "Research use only" in notice.text and "not a diagnosis" in notice.text
    provenance = browser.find_element(By.ID, "provenance").text
    assert "test_efficientnet" in provenance and "5 (0, 1, 2, 3, 4)" in provenance
    rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["ham", "isic", "gap (ham - isic)"]
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", rows[0].text), rows[0].text
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(server) for name in loaded), loaded


def test_synthetic_image_then_bad_file_then_again(browser: webdriver.Chrome, synth_raw: Path, tmp_path: Path) -> None:
    image = sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[0]
    assert_prediction_shown(browser, image)
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    kind, text = upload(browser, not_an_image)
    assert kind == "error" and "not an image" in text
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    kind, text = upload(browser, truncated)
    assert kind == "error" and "cannot decode" in text
    assert_prediction_shown(browser, image)


def mahalanobis_shown(driver: webdriver.Chrome) -> float:
    scores = driver.find_element(By.ID, "ood-scores").text
    found = re.search(r"Mahalanobis (\d+\.\d\d) \(1\.0 = the 95th percentile of validation images\)", scores)
    assert found and "energy" in scores, scores
    return float(found.group(1))


def test_out_of_distribution_notice(browser: webdriver.Chrome, synth_raw: Path, tmp_path: Path) -> None:
    """A flat green square is far from the training lesions: the page says so; a lesion gets the notice only
    when its score is over 1.0. The scores are shown for every prediction."""
    from PIL import Image

    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (0, 255, 0)).save(flat)
    assert upload(browser, flat)[0] == "done"
    score = mahalanobis_shown(browser)
    notice = browser.find_element(By.ID, "ood-notice")
    assert score > 1.0 and notice.is_displayed(), (score, notice.text)
    assert notice.text == (f"This image looks unlike the training data (Mahalanobis score {score:.2f}, 1.0 = the "
                           "95th percentile of validation images): treat the prediction with extra caution.")
    lesion = sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[0]
    assert upload(browser, lesion)[0] == "done"
    score = mahalanobis_shown(browser)
    if score != 1.0:  # shown as "1.00", the flag could go either way
        assert notice.is_displayed() == (score > 1.0), score
    assert browser.find_element(By.ID, "notice").is_displayed()  # the research-use notice stays
    assert not browser.find_element(By.ID, "metadata").is_displayed(), "this model uses no metadata"


def test_real_dermoscopic_image(browser: webdriver.Chrome, shared_data: Path) -> None:
    images = sorted((shared_data / "HAM10000" / "HAM10000_images").glob("*.jpg"))
    if not images:
        pytest.skip(f"no HAM10000 images in {shared_data}")
    assert_prediction_shown(browser, images[0])
