"""A live ``crossderm serve`` subprocess on loopback, shared by the browser and load tests of a module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CONFIGURED_HOST = "derm-box.test"  # served besides loopback (--allow-host)


@pytest.fixture(scope="session")
def configured_host() -> str:
    return CONFIGURED_HOST


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:  # bound but not listening yet
        return False


@pytest.fixture(scope="module")
def server(synth_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``crossderm serve --port 0 --allow-host derm-box.test`` in a subprocess; yields its base URL once /healthz
    answers."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "crossderm", "serve", "--model", str(synth_run), "--port", "0", "--threads", "1",
             "--allow-host", CONFIGURED_HOST],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None or not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"crossderm serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else None
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
