"""The serve app through FastAPI's TestClient: predictions, every kind of bad upload, limits, the CLI's checks."""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from crossderm.cli import main
from crossderm.labels import CLASSES
from crossderm.serve.app import ServeLimits, create_app

LIMITS = ServeLimits(max_upload_bytes=256 * 1024, max_pixels=1_000_000, timeout_s=60, max_queue=4)


@pytest.fixture(scope="module")
def client(synth_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(synth_run, LIMITS)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def jpeg(synth_raw: Path) -> bytes:
    return sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[0].read_bytes()


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_good_prediction(client: TestClient, jpeg: bytes) -> dict:
    response = client.post("/api/predict", files={"file": ("lesion.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities = body["probabilities"]
    assert list(probabilities) == list(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert body["predicted"] == max(probabilities, key=probabilities.get) == body["gradcam_class"]
    prefix = "data:image/png;base64,"
    assert body["gradcam_png"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(body["gradcam_png"][len(prefix):]))) as overlay:
        assert overlay.format == "PNG" and min(overlay.size) >= 32
    return body


def test_predict_synthetic_image(client: TestClient, jpeg: bytes) -> None:
    body = assert_good_prediction(client, jpeg)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert body["image"] == {"format": "JPEG", "width": image.width, "height": image.height}
    again = assert_good_prediction(client, jpeg)
    assert again["probabilities"] == body["probabilities"], "the same image must give the same answer"


def test_model_health_and_page(client: TestClient, synth_run: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model": "test_efficientnet", "folds": 5}
    info = client.get("/api/model").json()
    assert info["model"] == "test_efficientnet" and info["folds"] == [0, 1, 2, 3, 4]
    assert info["experiment"] and info["parameters"] > 0 and info["run"] == synth_run.name
    assert set(info["metrics"]) == {"ham", "isic"}
    for summary in info["metrics"].values():
        f1 = summary["macro_f1"]
        assert summary["n"] > 0 and f1["ci_low"] <= f1["value"] <= f1["ci_high"]
    assert info["limits"]["max_upload_bytes"] == LIMITS.max_upload_bytes
    assert info["gradcam"]["layers"] == ["blocks.2"]
    page = client.get("/")
    assert page.status_code == 200 and "Research use only" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text):
        assert text and "://" not in text, "the page must work offline: nothing from another host"


def chunked(parts: int) -> Iterator[bytes]:
    """A multipart body with no Content-Length, so only the streaming check can stop it."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    yield from (b"\xff" * 65536 for _ in range(parts))
    yield b"\r\n--b--\r\n"


BAD_UPLOADS = {
    "not an image": (415, "not a supported image", {"files": {"file": ("a.jpg", b"hello, world" * 20, "image/jpeg")}}),
    "wrong content type": (415, "is not an image", {"files": {"file": ("a.txt", b"plain text", "text/plain")}}),
    "too big": (413, "upload too large", {"files": {"file": ("a.jpg", b"\xff" * (LIMITS.max_upload_bytes + 1),
                                                             "image/jpeg")}}),
    "too big, declared": (413, "upload too large", {"content": b"x" * (2 * LIMITS.max_upload_bytes),
                                                     "headers": {"content-type": "image/jpeg"}}),
    "too big, streamed": (413, "upload too large", {"content": chunked(8),
                                                     "headers": {"content-type": "multipart/form-data; boundary=b"}}),
    "too many pixels": (413, "2000 x 1000 = 2,000,000 pixels; the limit is 1,000,000",
                        {"files": {"file": ("a.png", png_of(2000, 1000), "image/png")}}),
    "empty": (422, "empty", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}),
    "no file field": (422, "field named 'file'", {"data": {"other": "x"}}),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS) + ["truncated JPEG"])
def test_bad_upload_gets_readable_4xx_and_server_keeps_serving(client: TestClient, jpeg: bytes, case: str) -> None:
    if case == "truncated JPEG":
        status, message, request = 422, "cannot decode image (OSError: image file is truncated", {
            "files": {"file": ("a.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}}
    else:
        status, message, request = BAD_UPLOADS[case]
    response = client.post("/api/predict", **request)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]
    assert_good_prediction(client, jpeg)


def test_timeout_and_full_queue(synth_run: Path, jpeg: bytes) -> None:
    app = create_app(synth_run, ServeLimits(timeout_s=1e-4, max_queue=1))
    with TestClient(app) as slow:
        response = slow.post("/api/predict", files={"file": ("a.jpg", jpeg, "image/jpeg")})
        assert response.status_code == 504 and "longer than" in response.json()["error"]
    app = create_app(synth_run, ServeLimits(max_queue=1))
    with TestClient(app) as busy:
        slots = app.state.queue.slots
        assert slots.acquire(blocking=False)  # the only slot is taken, as by a request still running
        response = busy.post("/api/predict", files={"file": ("a.jpg", jpeg, "image/jpeg")})
        assert response.status_code == 503 and "busy" in response.json()["error"]
        slots.release()
        assert_good_prediction(busy, jpeg)


def test_serve_cli_refuses_bad_setups(synth_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["serve", "--model", str(synth_run), "--max-pixels", str(10**9)]) == 2
    assert "decompression-bomb limit" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(synth_run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
