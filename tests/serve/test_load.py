"""Bounded load test of a live ``crossderm serve`` on loopback: 32 requests from 8 concurrent clients, all 200;
and the Host/Origin allow-list and security headers as uvicorn serves them.

The server runs as its own process (as users run it), so the clients' threads do not share its interpreter lock.
Latency figures print with ``pytest -s``; they are noisy on a shared CPU and are not asserted.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from crossderm.labels import CLASSES

CLIENTS = 8
REQUESTS = 32
REQUEST_TIMEOUT_S = 120


def test_concurrent_clients(server: str, synth_raw: Path) -> None:
    images = sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[:REQUESTS]
    payloads = [path.read_bytes() for path in images]

    def client(worker: int) -> list[tuple[int, float, dict]]:
        results = []
        with httpx.Client(base_url=server, timeout=REQUEST_TIMEOUT_S) as http:
            for index in range(worker, REQUESTS, CLIENTS):
                started = time.perf_counter()
                response = http.post("/api/predict", files={"file": (f"{index}.jpg", payloads[index % len(payloads)],
                                                                      "image/jpeg")})
                results.append((response.status_code, time.perf_counter() - started, response.json()))
        return results

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for batch in pool.map(client, range(CLIENTS)) for r in batch]
    wall = time.perf_counter() - started

    assert len(results) == REQUESTS
    failures = [body for status, _, body in results if status != 200]
    assert not failures, failures
    for _, _, body in results:
        assert list(body["probabilities"]) == list(CLASSES)
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    latencies = np.array([seconds for _, seconds, _ in results])
    print(
        f"\nload test: {REQUESTS} requests, {CLIENTS} concurrent clients, {wall:.2f} s: "
        f"{REQUESTS / wall:.1f} requests/s, latency p50 {1000 * np.percentile(latencies, 50):.0f} ms, "
        f"p95 {1000 * np.percentile(latencies, 95):.0f} ms, max {1000 * latencies.max():.0f} ms"
    )
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_live_host_allow_list_and_headers(server: str, synth_raw: Path, configured_host: str) -> None:
    port = server.rsplit(":", 1)[1]
    jpeg = sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[0].read_bytes()
    with httpx.Client(base_url=server, timeout=REQUEST_TIMEOUT_S) as http:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"{configured_host}:{port}", configured_host):
            assert http.get("/healthz", headers={"host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", f"{configured_host}.evil.example"):
            refused = http.get("/api/model", headers={"host": host})
            assert refused.status_code == 421 and "is not served here" in refused.json()["error"], host
        files = {"file": ("a.jpg", jpeg, "image/jpeg")}
        cross = http.post("/api/predict", files=files, headers={"origin": "http://evil.example"})
        assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
        configured = http.post("/api/predict", files=files, headers={"origin": f"http://{configured_host}:{port}"})
        assert configured.status_code == 200, configured.text
        responses = [http.get("/"), http.get("/static/app.js"), http.get("/healthz"), http.get("/api/model"),
                     http.get("/missing"), http.post("/api/predict", content=b"x" * (11 * 2**20),
                                                     headers={"content-type": "image/jpeg"}), refused, cross]
        assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 413, 421, 403]
        for response in responses:
            for name in ("content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options",
                         "cross-origin-resource-policy"):
                assert name in response.headers, (response.url, name)
            if "/static/" not in str(response.url):
                assert response.headers["cache-control"] == "no-store", response.url
