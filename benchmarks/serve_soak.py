"""Soak test of ``crossderm serve`` on loopback: several clients for a while, good JPEGs mixed with hostile uploads.

Starts ``crossderm serve`` on a trained run (``--model RUN_DIR``, or a tiny run trained here once with the demo
preset at 32 px, kept under ``benchmarks/_work/``), then ``--clients`` threads send requests for ``--seconds``:
good JPEGs (must all be 200) and hostile ones, each with the status it must get:

  too_large      11 MiB body (Content-Length over the limit)            413
  wrong_type     text/plain upload                                        415
  not_image      random bytes declared image/jpeg                         415
  truncated      first half of a JPEG                                     422
  huge_aspect    141-byte 20000 x 1 PNG, 2000 x 1 PNG                     422
  bomb           PNG header declaring 30000 x 30000 (Pillow's bomb limit) 413
  over_pixels    PNG header declaring 8000 x 8000 (over the pixel cap)    413
  foreign_host   Host: evil.example (DNS rebinding)                       421
  cross_origin   POST with Origin: http://evil.example                    403
  slow_upload    a good JPEG sent in pieces over ~2 s (slow client)       200
  slow_compute   valid 49-megapixel RGBA PNG, ~4 CPU s of decoding        504 (stopped at --max-work-s)

``slow_compute`` is rate-limited (one every ``--slow-every`` seconds, one at a time, across all clients): each one
costs the server ``--max-work-s`` plus a worker restart, during which good requests queue. The server's RSS and
its model worker's (psutil if installed, else /proc) are sampled every 0.5 s. A JSON summary (per-kind status
counts, good-request latency percentiles, memory over time, machine) is printed and written to ``--out``; the
exit status is 1 if any request got a status other than its kind's, or memory grew past the stated bounds.

  python benchmarks/serve_soak.py                       # 4 clients, 120 s, tiny run trained once
  python benchmarks/serve_soak.py --model runs/b_joint --seconds 30
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

WORK = Path(__file__).resolve().parent / "_work" / "serve_soak"
MiB = 2**20
EXPECTED = {
    "good": {200}, "too_large": {413}, "wrong_type": {415}, "not_image": {415}, "truncated": {422},
    "huge_aspect": {422}, "bomb": {413}, "over_pixels": {413}, "foreign_host": {421}, "cross_origin": {403},
    "slow_upload": {200}, "slow_compute": {504},
}
WEIGHTS = {  # relative frequency of each kind a client picks (slow_compute is also rate-limited)
    "good": 50, "too_large": 2, "wrong_type": 4, "not_image": 4, "truncated": 5, "huge_aspect": 6, "bomb": 4,
    "over_pixels": 4, "foreign_host": 4, "cross_origin": 4, "slow_upload": 3, "slow_compute": 10,
}
SERVER_MEMORY_GROWTH_BOUND = 64 * MiB  # the server process (uploads are at most 10 MiB and never kept)


# ---------------------------------------------------------------------------------------------------------------
# Payloads


def good_jpegs(count: int = 8, seed: int = 0) -> list[bytes]:
    """Dermoscopy-like 600 x 450 JPEGs: a skin-tone background with a darker irregular blob."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        background = rng.normal([200, 160, 140], 12, (450, 600, 3)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            cx, cy, r = rng.integers(220, 380), rng.integers(150, 300), rng.integers(40, 120)
            colour = tuple(int(c) for c in rng.integers([60, 30, 20], [140, 90, 70]))
            draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` RGB, with one tiny (truncated) data chunk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def png_of(width: int, height: int, mode: str = "RGB", colour: Any = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class Payloads:
    def __init__(self) -> None:
        self.jpegs = good_jpegs()
        self.wide = [png_of(20000, 1), png_of(2000, 1)]
        self.bomb = png_header_only(30000, 30000)
        self.over_pixels = png_header_only(8000, 8000)
        self.slow = png_of(7000, 7000, "RGBA", (10, 20, 30, 200))
        self.noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()

    def jpeg(self, rng: random.Random) -> bytes:
        return rng.choice(self.jpegs)


def _slowly(data: bytes, pieces: int = 8, seconds: float = 2.0) -> Iterator[bytes]:
    """A multipart body with the file sent in ``pieces`` over ``seconds`` (no Content-Length: chunked)."""
    yield (b'--soak\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n'
           b"Content-Type: image/jpeg\r\n\r\n")
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        time.sleep(seconds / pieces)
        yield data[start:start + step]
    yield b"\r\n--soak--\r\n"


def send(http: httpx.Client, kind: str, payloads: Payloads, rng: random.Random) -> httpx.Response:
    def files(data: bytes, name: str = "a.jpg", content_type: str = "image/jpeg") -> dict:
        return {"files": {"file": (name, data, content_type)}}

    if kind == "good":
        request = files(payloads.jpeg(rng))
    elif kind == "too_large":
        request = {"content": b"\xff" * (11 * MiB), "headers": {"content-type": "image/jpeg"}}
    elif kind == "wrong_type":
        request = files(b"just some text\n" * 20, "notes.txt", "text/plain")
    elif kind == "not_image":
        request = files(payloads.noise)
    elif kind == "truncated":
        jpeg = payloads.jpeg(rng)
        request = files(jpeg[: len(jpeg) // 2])
    elif kind == "huge_aspect":
        request = files(rng.choice(payloads.wide), "wide.png", "image/png")
    elif kind == "bomb":
        request = files(payloads.bomb, "bomb.png", "image/png")
    elif kind == "over_pixels":
        request = files(payloads.over_pixels, "big.png", "image/png")
    elif kind == "foreign_host":
        request = {**files(payloads.jpeg(rng)), "headers": {"host": "evil.example"}}
    elif kind == "cross_origin":
        request = {**files(payloads.jpeg(rng)), "headers": {"origin": "http://evil.example"}}
    elif kind == "slow_upload":
        request = {"content": _slowly(payloads.jpeg(rng)),
                   "headers": {"content-type": "multipart/form-data; boundary=soak"}}
    elif kind == "slow_compute":
        request = files(payloads.slow, "huge.png", "image/png")
    else:  # pragma: no cover
        raise ValueError(kind)
    return http.post("/api/predict", **request)


# ---------------------------------------------------------------------------------------------------------------
# The server and its memory


def _memory(pid: int) -> tuple[int, int] | None:
    """(RSS, anonymous RSS) in bytes: psutil if installed, else /proc; None once the process is gone. The anonymous
    part is the process's own; the rest (shared libraries) is shared with the other crossderm processes."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            info = psutil.Process(pid).memory_info()
            return int(info.rss), int(info.rss - getattr(info, "shared", 0))
        except psutil.Error:
            return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = {key: re.search(rf"{key}:\s+(\d+) kB", status) for key in ("VmRSS", "RssAnon")}
    if not found["VmRSS"]:
        return None
    rss = int(found["VmRSS"].group(1)) * 1024
    return rss, int(found["RssAnon"].group(1)) * 1024 if found["RssAnon"] else rss


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [child.pid for child in psutil.Process(pid).children()]
    except ImportError:
        pass
    except Exception:
        return []
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


class MemorySampler(threading.Thread):
    """Every ``interval`` s: (seconds since start, server RSS, model workers' RSS, their anonymous RSS) in bytes;
    the model workers are the server's child processes (one, two while a spare is kept)."""

    def __init__(self, server_pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self.stop = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            server = (_memory(self.server_pid) or (0, 0))[0]
            workers = [m for m in map(_memory, _children(self.server_pid)) if m]
            self.samples.append((round(time.monotonic() - self.started_at, 2), server,
                                 sum(m[0] for m in workers), sum(m[1] for m in workers)))


def train_tiny_run(work: Path = WORK) -> Path:
    """A 5-fold demo run of timm's tiny test_efficientnet at 32 px (about a minute on 2 cores), made once."""
    run = work / "run"
    if (run / "metrics.json").is_file():
        return run
    crossderm = [sys.executable, "-m", "crossderm"]
    if not (work / "raw").is_dir():
        subprocess.run([*crossderm, "synth", "--out", str(work / "raw"), "--ham-lesions", "120", "--isic-lesions",
                        "120", "--image-scale", "0.5"], check=True)
    if not (work / "data").is_dir():
        subprocess.run([*crossderm, "prepare", "--ham", str(work / "raw" / "HAM10000"), "--isic",
                        str(work / "raw" / "ISIC2019"), "--out", str(work / "data"), "--image-size", "32",
                        "--workers", "1"], check=True)
    settings = ["model=test_efficientnet", "epochs=1", "batch_size=32", "eval_batch_size=128", "lr=3e-3",
                "channels_last=false"]
    subprocess.run([*crossderm, "cv", "--config", "demo_b_joint", "--data", str(work / "data"), "--out", str(run),
                    *[arg for s in settings for arg in ("--set", s)], "--device", "cpu", "--threads", "1",
                    "--bootstrap", "200", "--no-tensorboard"], check=True)
    return run


def start_server(model: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "crossderm", "serve", "--model", str(model), "--port", "0",
               "--threads", str(args.threads), "--timeout-s", str(args.timeout_s), "--max-work-s",
               str(args.max_work_s)]
    handle = open(log, "w")  # noqa: SIM115 (the server writes to it until it stops)
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"crossderm serve did not start:\n{log.read_text()}")
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            url = found.group(1)
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return process, url
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"crossderm serve did not answer within 300 s:\n{log.read_text()}")


# ---------------------------------------------------------------------------------------------------------------
# The soak


class SlowGate:
    """At most one slow_compute request at a time, and at most one every ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.lock = threading.Lock()
        self.busy = False
        self.last = time.monotonic() - every + 2.0  # the first one after ~2 s

    def enter(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self.busy or now - self.last < self.every:
                return False
            self.busy, self.last = True, now
            return True

    def leave(self) -> None:
        with self.lock:
            self.busy = False


def client(index: int, url: str, deadline: float, payloads: Payloads, gate: SlowGate, request_timeout: float,
           results: list) -> None:
    rng = random.Random(index)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    with httpx.Client(base_url=url, timeout=request_timeout) as http:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            if kind == "slow_compute" and not gate.enter():
                kind = "good"
            started = time.perf_counter()
            try:
                response = send(http, kind, payloads, rng)
                status, detail = response.status_code, response.text[:200]
            except httpx.HTTPError as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"
            finally:
                if kind == "slow_compute":
                    gate.leave()
            results.append((kind, status, time.perf_counter() - started, detail, time.monotonic()))


def soak(url: str, server_pid: int, clients: int, seconds: float, slow_every: float, request_timeout: float
         ) -> dict[str, Any]:
    payloads = Payloads()
    for _ in range(3):  # warm: the first requests pay one-off costs that are not the soak's
        httpx.post(f"{url}/api/predict", files={"file": ("a.jpg", payloads.jpegs[0], "image/jpeg")}, timeout=120)
    sampler = MemorySampler(server_pid)
    sampler.start()
    time.sleep(1.0)
    results: list = []
    gate = SlowGate(slow_every)
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(i, url, deadline, payloads, gate, request_timeout, results))
               for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    health = httpx.get(f"{url}/healthz", timeout=30).status_code
    return summarise(results, sampler.samples, wall, health)


def summarise(results: list, samples: list, wall: float, health: int) -> dict[str, Any]:
    counts: dict[str, Counter] = defaultdict(Counter)
    unexpected = []
    for kind, status, seconds, detail, _ in results:
        counts[kind][status] += 1
        if status not in EXPECTED[kind]:
            unexpected.append({"kind": kind, "status": status, "seconds": round(seconds, 2), "detail": detail})
    good = np.array([s for kind, status, s, _, _ in results if kind == "good" and status == 200])
    percentiles = {f"p{q}": round(1000 * float(np.percentile(good, q)), 1) for q in (50, 90, 95, 99)} if len(good) \
        else {}
    server = np.array([sample[1] for sample in samples], dtype=np.int64)
    worker = np.array([sample[2] for sample in samples], dtype=np.int64)
    anon = np.array([sample[3] for sample in samples], dtype=np.int64)
    tenth = max(1, len(samples) // 10)

    def mib(value: float) -> float:
        return round(float(value) / MiB, 1)

    memory = {
        "samples": len(samples),
        "interval_s": 0.5,
        "server_rss_mib": {"first": mib(server[:tenth].mean()), "last": mib(server[-tenth:].mean()),
                           "max": mib(server.max())} if len(samples) else {},
        "workers_rss_mib": {"first": mib(np.median(worker[:tenth])), "last": mib(np.median(worker[-tenth:])),
                            "max": mib(worker.max())} if len(samples) else {},
        "workers_anon_rss_mib": {"first": mib(np.median(anon[:tenth])), "last": mib(np.median(anon[-tenth:])),
                                 "max": mib(anon.max())} if len(samples) else {},
        "timeline_s_server_workers_anon_mib": [(t, mib(s), mib(w), mib(a))
                                               for t, s, w, a in samples[:: max(1, len(samples) // 60)]],
    }
    growth = (server[-tenth:].mean() - server[:tenth].mean()) if len(samples) else 0.0
    origin = min((end - seconds for _, _, seconds, _, end in results), default=0.0)
    slowest = sorted(((seconds, end - seconds - origin) for kind, status, seconds, _, end in results
                      if kind == "good"), reverse=True)[:5]
    stops = sorted(round(end - seconds - origin, 1) for kind, status, seconds, _, end in results
                   if kind == "slow_compute")
    memory["server_growth_mib"] = mib(growth)
    memory["server_growth_bound_mib"] = mib(SERVER_MEMORY_GROWTH_BOUND)
    return {
        "wall_s": round(wall, 1),
        "requests": len(results),
        "requests_per_s": round(len(results) / wall, 2) if wall else None,
        "status_counts": {kind: dict(sorted(counter.items())) for kind, counter in sorted(counts.items())},
        "expected": {kind: sorted(statuses) for kind, statuses in EXPECTED.items()},
        "good_errors": sum(n for status, n in counts["good"].items() if status != 200),
        "unexpected": unexpected[:50],
        "unexpected_count": len(unexpected),
        "good_latency_ms": {"n": int(len(good)), **percentiles,
                            "max": round(1000 * float(good.max()), 1) if len(good) else None,
                            "slowest_ms_at_s": [(round(1000 * s), round(t, 1)) for s, t in slowest]},
        "slow_compute_sent_at_s": stops,
        "memory": memory,
        "healthz_after": health,
        "ok": bool(not unexpected and health == 200 and growth <= SERVER_MEMORY_GROWTH_BOUND),
    }


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1_5_15": [round(x, 2) for x in load] if load else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="run folder to serve (default: a tiny run trained once here)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--slow-every", type=float, default=20.0, help="seconds between slow_compute requests")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="the server's --timeout-s")
    parser.add_argument("--max-work-s", type=float, default=2.0, help="the server's --max-work-s")
    parser.add_argument("--out", type=Path, default=WORK / "soak.json", help="JSON summary")
    args = parser.parse_args(argv)

    model = args.model or train_tiny_run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".server.log")
    before = machine()
    process, url = start_server(model, args, log)
    try:
        summary = soak(url, process.pid, args.clients, args.seconds, args.slow_every,
                       request_timeout=args.timeout_s + 30)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    summary = {
        "benchmark": "serve_soak",
        "settings": {"model": str(model), "clients": args.clients, "seconds": args.seconds,
                     "slow_every_s": args.slow_every, "server_threads": args.threads, "timeout_s": args.timeout_s,
                     "max_work_s": args.max_work_s},
        "machine_before": before,
        **summary,
        "machine_after": machine(),
        "server_log": str(log),
    }
    text = json.dumps(summary, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
