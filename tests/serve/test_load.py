"""Bounded load test of a live ``crossderm serve`` on loopback: 32 requests from 8 concurrent clients, all 200.

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
