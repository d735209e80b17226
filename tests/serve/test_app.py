"""The serve app through FastAPI's TestClient: predictions with their out-of-distribution scores, patient metadata
for a metadata model (required, imputed, refused, ignored by other models), every kind of bad upload, limits that
bound the work (aspect ratio, decode memory, work time, CPU time, memory), the Host/Origin allow-list, the
security headers on every response, and the CLI's checks.

The clients talk to ``http://127.0.0.1:8000`` (a loopback Host, which the app serves by default). The model
workers run with one torch thread: on a shared 2-core machine more threads are far slower.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from PIL import Image

from crossderm.cli import main
from crossderm.defaults import OOD_COLUMNS
from crossderm.labels import CLASSES
from crossderm.patient import ANATOM_SITES, SEXES, encode_metadata
from crossderm.serve.app import create_app, inspect_header
from crossderm.serve.guard import HostAllowList
from crossderm.serve.limits import ServeLimits
from crossderm.serve.queue import InferenceQueue
from crossderm.serve.worker import WORKER_CODE, ModelWorker, ood_summary, rss_bytes

MiB = 2**20
LIMITS = ServeLimits(max_upload_bytes=256 * 1024, max_pixels=1_000_000, timeout_s=60, max_queue=4)
BASE_URL = "http://127.0.0.1:8000"
REFUSAL_PEAK_BOUND = 16 * MiB
REFUSAL_TIME_BOUND_S = 1.0


@pytest.fixture(scope="module")
def client(synth_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(synth_run, LIMITS, threads=1), base_url=BASE_URL) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def jpeg(synth_raw: Path) -> bytes:
    return sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[0].read_bytes()


def png_of(width: int, height: int, mode: str = "RGB", colour: tuple = (120, 80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: TestClient, data: bytes, name: str = "lesion.jpg", kind: str = "image/jpeg",
           fields: dict | None = None, **kwargs):
    """POST ``data`` as the form's file, with the other form ``fields`` (patient metadata)."""
    return client.post("/api/predict", files={"file": (name, data, kind)}, data=fields, **kwargs)


def assert_good_prediction(client: TestClient, jpeg: bytes) -> dict:
    response = upload(client, jpeg)
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities = body["probabilities"]
    assert list(probabilities) == list(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert body["predicted"] == max(probabilities, key=probabilities.get) == body["gradcam_class"]
    assert_ood_scores(body)
    prefix = "data:image/png;base64,"
    assert body["gradcam_png"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(body["gradcam_png"][len(prefix):]))) as overlay:
        assert overlay.format == "PNG" and min(overlay.size) >= 32
    return body


def assert_ood_scores(body: dict) -> None:
    """The three OOD scores, finite, and ``unlike_training`` exactly when Mahalanobis is over 1.0 (the 95th
    percentile of the fold's inner-validation images)."""
    ood = body["ood"]
    assert set(ood) == {*OOD_COLUMNS, "unlike_training"}
    assert all(isinstance(ood[name], float) and math.isfinite(ood[name]) for name in OOD_COLUMNS), ood
    assert ood["unlike_training"] is (ood["ood_mahalanobis"] > 1.0)
    assert ood["ood_msp"] == pytest.approx(1 - max(body["probabilities"].values()), abs=1e-6)
    assert ood["ood_mahalanobis"] >= 0


def assert_json_error(response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"], response.text


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
    assert info["limits"]["max_aspect"] == 10 and info["limits"]["max_work_s"] == LIMITS.max_work_s
    assert info["gradcam"]["layers"] == ["blocks.2"]
    assert info["metadata"] == {"used": False, "fields": ["age", "sex", "anatom_site"], "vocabulary": {
        "age": {"min": 0, "max": 120, "unit": "years"}, "sex": list(SEXES), "anatom_site": list(ANATOM_SITES)}}
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
    "aspect over 10:1": (422, "image is 400 x 39, an aspect ratio of 10.26:1; the limit is 10:1",
                         {"files": {"file": ("a.png", png_of(400, 39), "image/png")}}),
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
    assert_json_error(response, status, message)
    assert_good_prediction(client, jpeg)


def _hwm() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Peak resident memory of this process above its start, over the ``with`` body (VmHWM, reset first)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    start = rss_bytes() or 0
    peak: list[int] = []
    try:
        yield lambda: peak[0]
    finally:
        peak.append(_hwm() - start)


def test_tiny_files_with_huge_aspect_refused_fast_and_small(client: TestClient, jpeg: bytes) -> None:
    """A 2000 x 1 PNG took 1.2 GB before (shorter side resized up to 384 px); 20000 x 1 would take ~12 GB."""
    worker = client.app.state.queue.worker
    worker_rss = rss_bytes(worker.pid)
    for width, height in [(2000, 1), (20000, 1), (1, 20000)]:  # 2000 x 1 first: cheap to fail with on old code
        data = png_of(width, height)
        assert len(data) < 300
        started = time.perf_counter()
        with peak_memory() as peak:
            response = upload(client, data, "wide.png", "image/png")
        seconds = time.perf_counter() - started
        assert_json_error(response, 422, f"image is {width} x {height}, an aspect ratio of")
        assert "the limit is 10:1" in response.json()["error"]
        assert seconds < REFUSAL_TIME_BOUND_S, f"{seconds:.2f} s to refuse a {width} x {height} PNG"
        assert peak() < REFUSAL_PEAK_BOUND, f"the server peaked {peak() / MiB:.0f} MiB on a {width} x {height} PNG"
    assert rss_bytes(worker.pid) < worker_rss + REFUSAL_PEAK_BOUND, "the worker never saw the refused images"
    assert_good_prediction(client, jpeg)


def test_decode_memory_estimate_refused_up_front() -> None:
    data = png_of(1000, 1000, "RGBA", (1, 2, 3, 4))
    with pytest.raises(HTTPException) as refused:
        inspect_header(data, ServeLimits(max_memory_bytes=8 * MiB), image_size=32, display_size=384)
    assert refused.value.status_code == 413
    assert "1000 x 1000 RGBA image would need about 18 MiB; the limit is 8 MiB" in refused.value.detail
    assert inspect_header(data, ServeLimits(), 32, 384).mode == "RGBA"


# ---------------------------------------------------------------------------------------------------------------
# Out-of-distribution scores and patient metadata


def test_ood_summary_flags_unlike_training_over_one() -> None:
    assert ood_summary({"ood_msp": 0.2, "ood_energy": -3.0, "ood_mahalanobis": 1.5}) == {
        "ood_msp": 0.2, "ood_energy": -3.0, "ood_mahalanobis": 1.5, "unlike_training": True}
    assert ood_summary({"ood_mahalanobis": 1.0})["unlike_training"] is False  # 1.0 is the 95th percentile itself
    assert ood_summary({"ood_msp": 0.2, "ood_mahalanobis": float("nan")}) == {  # a run without OOD statistics
        "ood_msp": 0.2, "ood_mahalanobis": None, "unlike_training": False}


def test_flat_colours_flagged_unlike_training(client: TestClient) -> None:
    """Flat colours are far from every synthetic lesion (Mahalanobis 25 to 400 with the tiny demo model); noise
    may or may not be, and its flag follows its score."""
    for colour in ((0, 255, 0), (255, 255, 255), (0, 0, 0)):
        response = upload(client, png_of(64, 64, colour=colour), "flat.png", "image/png")
        assert response.status_code == 200, response.text
        assert_ood_scores(response.json())
        assert response.json()["ood"]["unlike_training"], (colour, response.json()["ood"])
    noise = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(noise, format="PNG")
    response = upload(client, noise.getvalue(), "noise.png", "image/png")
    assert response.status_code == 200, response.text
    assert_ood_scores(response.json())


def test_model_without_metadata_ignores_the_fields(client: TestClient, jpeg: bytes) -> None:
    plain = upload(client, jpeg).json()
    for fields in ({"age": "45", "sex": "female", "anatom_site": "torso"},
                   {"age": "not a number", "sex": "other", "anatom_site": "elbow", "impute_metadata": "maybe"}):
        response = upload(client, jpeg, fields=fields)
        assert response.status_code == 200, (fields, response.text)
        assert response.json()["probabilities"] == plain["probabilities"]


@pytest.fixture(scope="module")
def metadata_run(synth_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fold of a tiny metadata-fusion run (age, sex and anatomical site as a second input)."""
    out = tmp_path_factory.mktemp("runs") / "metadata"
    assert main(["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out), "--fold", "0",
                 "--set=model=test_efficientnet", "--set=epochs=1", "--set=batch_size=32",
                 "--set=channels_last=false", "--set=metadata=true", "--set=tta=1", "--no-tensorboard"]) == 0
    return out


@pytest.fixture(scope="module")
def metadata_client(metadata_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(metadata_run, LIMITS, threads=1), base_url=BASE_URL) as test_client:
        yield test_client


def test_metadata_model_describes_its_inputs(metadata_client: TestClient) -> None:
    info = metadata_client.get("/api/model").json()
    assert info["metadata"]["used"] is True and info["metadata"]["fields"] == ["age", "sex", "anatom_site"]
    assert info["metadata"]["vocabulary"]["anatom_site"] == list(ANATOM_SITES)
    assert info["metadata"]["vocabulary"]["sex"] == list(SEXES) and info["folds"] == [0]


def test_metadata_model_needs_metadata_or_imputation(metadata_client: TestClient, jpeg: bytes) -> None:
    for fields in ({}, {"age": "", "sex": " ", "anatom_site": ""}, {"impute_metadata": "false"}):
        assert_json_error(upload(metadata_client, jpeg, fields=fields), 422, "this model uses patient metadata")
    imputed = upload(metadata_client, jpeg, fields={"impute_metadata": "true"})
    assert imputed.status_code == 200, imputed.text
    assert_ood_scores(imputed.json())
    blank_imputed = upload(metadata_client, jpeg, fields={"age": "", "sex": "", "impute_metadata": "on"}).json()
    assert blank_imputed["probabilities"] == imputed.json()["probabilities"], "imputed = every field missing"
    partial = upload(metadata_client, jpeg, fields={"age": "60"})  # the blank fields are missing
    assert partial.status_code == 200, partial.text


@pytest.mark.parametrize(("fields", "named"), [
    ({"age": "sixty"}, "age 'sixty' is not a number of years"),
    ({"age": "130", "sex": "male"}, "age '130' is outside 0..120"),
    ({"sex": "unknown"}, "sex 'unknown' is not one of male, female"),
    ({"anatom_site": "elbow", "impute_metadata": "true"}, "anatom_site 'elbow' is not one of head/neck"),
    ({"age": "60", "impute_metadata": "maybe"}, "impute_metadata must be true or false"),
])
def test_metadata_bad_value_names_the_field(metadata_client: TestClient, jpeg: bytes, fields: dict,
                                            named: str) -> None:
    assert_json_error(upload(metadata_client, jpeg, fields=fields), 422, named)


def test_metadata_reaches_the_model(metadata_client: TestClient, metadata_run: Path, jpeg: bytes) -> None:
    """The served probabilities and OOD scores are the ensemble's for the image and its encoded metadata."""
    from crossderm.imaging import decode
    from crossderm.predict.ensemble import Ensemble
    from crossderm.predict.gradcam import DISPLAY_SIZE

    fields = {"age": "60", "sex": "Female", "anatom_site": "torso"}
    served = upload(metadata_client, jpeg, fields=fields)
    assert served.status_code == 200, served.text
    body = served.json()
    assert_ood_scores(body)
    ensemble = Ensemble(metadata_run)
    image = decode(jpeg, ensemble.image_size, LIMITS.max_pixels, DISPLAY_SIZE)
    probs, ood = ensemble.predict_with_ood(image.pixels[None], views=ensemble.card.tta,
                                           metadata=encode_metadata(["60"], ["female"], ["torso"]))
    assert list(body["probabilities"].values()) == pytest.approx(probs[0].tolist(), abs=1e-6)
    assert body["ood"]["ood_mahalanobis"] == pytest.approx(float(ood["ood_mahalanobis"][0]), rel=1e-5)
    other = upload(metadata_client, jpeg, fields={"age": "5", "sex": "male", "anatom_site": "palms/soles"}).json()
    assert other["probabilities"] != body["probabilities"], "other metadata, other prediction"


def test_worker_refuses_bad_metadata_on_its_own(metadata_client: TestClient, jpeg: bytes) -> None:
    """The server checks the values first; a worker sent a bad one still answers 422, and keeps serving."""
    worker = metadata_client.app.state.queue.worker
    answer = worker.call(jpeg, time.monotonic() + 30, ["", "", "elbow"])
    assert answer[:2] == ("error", 422) and "anatom_site 'elbow'" in answer[2], answer
    assert worker.call(jpeg, time.monotonic() + 30, ["", "", ""])[0] == "ok"


# ---------------------------------------------------------------------------------------------------------------
# Host / Origin allow-list and the security headers

HEADERS_ON_EVERY_RESPONSE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}


def assert_security_headers(response, api: bool) -> None:
    for name, value in HEADERS_ON_EVERY_RESPONSE.items():
        assert response.headers.get(name) == value, (response.request.url, name, dict(response.headers))
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp or "default-src 'none'" in csp, csp
    if api:
        assert response.headers.get("cache-control") == "no-store", (response.request.url, dict(response.headers))


def test_security_headers_on_every_response(client: TestClient) -> None:
    cases = {
        "page": (client.get("/"), 200, True),
        "static file": (client.get("/static/app.js"), 200, False),
        "health": (client.get("/healthz"), 200, True),
        "model": (client.get("/api/model"), 200, True),
        "404": (client.get("/no/such/page"), 404, True),
        "static 404": (client.get("/static/missing.js"), 404, False),
        "413": (client.post("/api/predict", content=b"x" * (2 * LIMITS.max_upload_bytes),
                            headers={"content-type": "image/jpeg"}), 413, True),
        "415": (upload(client, b"text", "a.txt", "text/plain"), 415, True),
        "405": (client.get("/api/predict"), 405, True),
        "421": (client.get("/healthz", headers={"host": "evil.example"}), 421, True),
        "403": (upload(client, b"x", headers={"origin": "http://evil.example"}), 403, True),
    }
    for name, (response, status, api) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert_security_headers(response, api)
    assert cases["page"][0].headers["content-security-policy"].startswith("default-src 'self'")
    assert cases["model"][0].headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "", "user@127.0.0.1", "127.0.0.1:8000/x"])
def test_foreign_host_refused(client: TestClient, host: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends Host: evil.example."""
    for response in (client.get("/api/model", headers={"host": host}), client.get("/", headers={"host": host})):
        assert_json_error(response, 421, "is not served here")
        assert "--allow-host" in response.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000",
                                  "localhost.:8000"])
def test_loopback_hosts_allowed(client: TestClient, host: str) -> None:
    assert client.get("/healthz", headers={"host": host}).status_code == 200


def test_configured_hosts() -> None:
    hosts = HostAllowList.of(["derm-box.local", "10.0.0.7:8443", "::2"])
    assert hosts.allows_host("derm-box.local:8000") and hosts.allows_host("DERM-BOX.local")
    assert hosts.allows_host("10.0.0.7:8443") and not hosts.allows_host("10.0.0.7:8000")
    assert hosts.allows_host("[::2]:80") and hosts.allows_host("localhost")
    assert not hosts.allows_host("evil.example") and not hosts.allows_host(None)
    with pytest.raises(Exception, match="--allow-host"):
        HostAllowList.of(["user@host"])


@pytest.mark.parametrize(("headers", "problem"), [
    ({"origin": "http://evil.example"}, "Origin: http://evil.example"),
    ({"origin": "http://127.0.0.1:9999"}, "Origin: http://127.0.0.1:9999"),  # another local app, another port
    ({"origin": "null"}, "Origin: null"),  # sandboxed frames, file:// pages
    ({"origin": "file://"}, "Origin: file://"),
    ({"sec-fetch-site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
    ({"sec-fetch-site": "same-site", "origin": BASE_URL}, "Sec-Fetch-Site: same-site"),
])
def test_cross_origin_post_refused(client: TestClient, jpeg: bytes, headers: dict, problem: str) -> None:
    """A cross-site form post or fetch to /api/predict is refused before the body is read."""
    response = upload(client, jpeg, headers=headers)
    assert_json_error(response, 403, "cross-origin request refused")
    assert problem in response.json()["error"]


def test_same_origin_and_non_browser_posts_allowed(client: TestClient, jpeg: bytes) -> None:
    for headers in ({"origin": BASE_URL, "sec-fetch-site": "same-origin"}, {"origin": "http://localhost:8000",
                    "host": "localhost:8000"}, {"sec-fetch-site": "none"}, {}):
        response = upload(client, jpeg, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    assert client.get("/api/model", headers={"origin": "http://evil.example"}).status_code == 200  # GET: no change


# ---------------------------------------------------------------------------------------------------------------
# Work that takes too long, too much CPU or too much memory is stopped; the next request is served


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _assert_gone(pid: int) -> None:
    assert not Path(f"/proc/{pid}").exists(), f"the stopped worker {pid} still exists"


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def slow_image() -> bytes:
    """A valid 49-megapixel RGBA PNG (200 kB): about 4 CPU seconds of decoding, well over 2.5 s of work."""
    return png_of(7000, 7000, "RGBA", (10, 20, 30, 200))


def test_work_past_its_limit_is_stopped_and_next_request_served(synth_run: Path, jpeg: bytes,
                                                                slow_image: bytes) -> None:
    limits = ServeLimits(timeout_s=120, max_work_s=2.5, max_queue=2)
    app = create_app(synth_run, limits, threads=1)
    queue = app.state.queue
    pids = set()
    with TestClient(app, base_url=BASE_URL) as slow:
        assert_good_prediction(slow, jpeg)
        first = queue.worker.pid
        pids.add(first)
        started = time.perf_counter()
        response = upload(slow, slow_image, "big.png", "image/png")
        seconds = time.perf_counter() - started
        assert_json_error(response, 504, "took longer than 2.5 s to process and was stopped")
        assert 2.5 <= seconds < 2.5 + 5, seconds
        assert queue.stopped == ["work time"]
        _assert_gone(first)  # killed and reaped: its CPU use has stopped
        _wait_until(lambda: queue.worker.pid != first and queue.worker.ready and queue.worker.alive(), "a restart")
        second = queue.worker.pid
        pids.add(second)
        ticks = _cpu_ticks(second)
        time.sleep(1.0)
        assert _cpu_ticks(second) - ticks <= 10, "the new worker is idle (under 0.1 s of CPU in 1 s)"
        assert_good_prediction(slow, jpeg)

        _wait_until(lambda: queue.spare is not None and queue.spare.ready, "the spare worker")  # after a stop
        pids.add(queue.spare.pid)
        assert_json_error(upload(slow, slow_image, "big.png", "image/png"), 504, "was stopped")
        _assert_gone(second)
        started = time.perf_counter()
        assert_good_prediction(slow, jpeg)  # by the spare, at once: no restart to wait for
        assert time.perf_counter() - started < 5 and queue.stopped == ["work time", "work time"]

        slots = queue.slots  # the queue is full: 503, then served once a slot frees
        for _ in range(limits.max_queue):
            assert slots.acquire(blocking=False)
        assert_json_error(upload(slow, jpeg), 503, "busy")
        for _ in range(limits.max_queue):
            slots.release()
        assert_good_prediction(slow, jpeg)
        _wait_until(lambda: queue.spare is not None, "the next spare worker")
        pids |= {queue.worker.pid, queue.spare.pid}
    for pid in pids:
        _wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"worker {pid} to stop", 30)


# A stand-in worker speaking the worker protocol, to test the server's side deterministically and cheaply.
FAKE_WORKER = r"""
import json, sys, time
from multiprocessing.connection import Connection
from crossderm.serve.worker import limit_cpu
conn = Connection(int(sys.argv[-1]))
try:
    json.loads(conn.recv_bytes())
    conn.send_bytes(json.dumps(["ready", {"info": {}, "image_size": 32, "display_size": 384, "threads": 1,
                                          "cpu_budget_s": 1}]).encode())
    while request := conn.recv_bytes():  # {"metadata": ...}, then the image bytes
        json.loads(request)
        data = conn.recv_bytes()
        if data == b"grow":
            hog = b"x" * (300 * 2**20)  # resident at once
            time.sleep(60)
        elif data == b"spin":
            limit_cpu(1)
            while True:
                pass
        elif data == b"sleep":
            time.sleep(60)
        elif data == b"crash":
            sys.exit(3)
        else:
            conn.send_bytes(json.dumps(["ok", {"echo": len(data)}]).encode())
except (EOFError, OSError):
    pass
"""


def test_worker_stopped_on_memory_cpu_time_and_crash() -> None:
    limits = ServeLimits(max_memory_bytes=100 * MiB, max_work_s=20, timeout_s=60)
    worker = ModelWorker(Path("."), "cpu", 1, limits, command=(sys.executable, "-c", FAKE_WORKER))
    assert WORKER_CODE not in worker.command
    worker.start()

    def call(data: bytes, timeout_s: float = 30) -> tuple:
        return worker.call(data, time.monotonic() + timeout_s)

    try:
        assert call(b"ping") == ("ok", {"echo": 4})
        expected = {
            b"grow": (413, "needed more than the 100 MiB a request may use and was stopped", "memory"),
            b"spin": (504, "used more than 1 CPU seconds and was stopped", "cpu"),
            b"crash": (500, "the model worker stopped (exit code 3)", "exit 3"),
        }
        for data, (status, message, why) in expected.items():
            pid = worker.pid
            started = time.perf_counter()
            kind, got_status, got_message = call(data)
            assert (kind, got_status) == ("error", status) and message in got_message, got_message
            assert worker.stopped[-1] == why and time.perf_counter() - started < 15
            _assert_gone(pid)
            assert call(b"ping") == ("ok", {"echo": 4}), "restarted for the next request"
        pid = worker.pid
        kind, status, message = call(b"sleep", timeout_s=0.5)
        assert status == 504 and "did not finish within 60 s" in message and worker.stopped[-1] == "timeout"
        _assert_gone(pid)
        assert worker.starts == 4  # the first and one restart after each stop but the last
    finally:
        worker.close()


def _children() -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_serve_cli_refuses_bad_setups(synth_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["serve", "--model", str(synth_run), "--max-pixels", str(10**9)]) == 2
    assert "decompression-bomb limit" in capsys.readouterr().err
    assert main(["serve", "--model", str(synth_run), "--allow-host", "user@evil"]) == 2
    assert "--allow-host 'user@evil'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a range error is argparse's: exit 2 before the run is opened
        main(["serve", "--model", str(synth_run), "--max-work-s", "0"])
    assert usage.value.code == 2 and "--max-work-s: expected a finite number > 0" in capsys.readouterr().err
    before = _children()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(synth_run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert _children() <= before, "the model worker started for the run was stopped"


def test_deadline_includes_queueing() -> None:
    """Two requests, one worker: the first is stopped at its deadline, the second's deadline passed while queued."""
    limits = ServeLimits(timeout_s=1.0, max_work_s=20)
    worker = ModelWorker(Path("."), "cpu", 1, limits, command=(sys.executable, "-c", FAKE_WORKER))
    worker.start()
    queue = InferenceQueue(worker, limits, spare_worker=False)

    async def both() -> list:
        return await asyncio.gather(queue.run(b"sleep"), queue.run(b"ping"), return_exceptions=True)

    try:
        first, second = asyncio.run(both())
        assert isinstance(first, HTTPException) and first.status_code == 504 and "did not finish" in first.detail
        assert isinstance(second, HTTPException) and second.status_code == 504 and "waited longer" in second.detail
    finally:
        queue.close()
