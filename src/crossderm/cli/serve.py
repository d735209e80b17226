"""``crossderm serve``: a local web page + JSON API to try a trained run on one image, with Grad-CAM.

torch, FastAPI and uvicorn are imported inside the handlers so ``crossderm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from crossderm.cli.options import add_threads_option, count, number
from crossderm.defaults import SERVE_MAX_PIXELS
from crossderm.errors import CrossdermError

SERVE_EPILOG = """examples:
  crossderm serve --model runs/b_joint
  crossderm serve --model runs/b_joint --port 8080 --max-upload-mb 20 --timeout-s 60
  crossderm serve --model runs/b_joint --port 0 --threads 1    # any free port, one CPU thread
  crossderm serve --model runs/b_joint --host 0.0.0.0 --allow-host derm-box.local   # other machines, by name

Open http://127.0.0.1:8000 (or the --port given) in a browser: upload or drop a dermoscopic image to see
the class probabilities, the Grad-CAM overlay and the run's provenance and metrics. JSON API:
  POST /api/predict  (multipart/form-data, field "file")  -> probabilities, predicted, gradcam_png
  GET  /api/model    provenance (experiment, model, folds, metrics with 95 % CIs, limits)
  GET  /healthz
Bad uploads get a 4xx JSON {"error": "..."}: 413 too large / too many pixels / too much memory, 415 not an
image, 422 undecodable, truncated or an aspect ratio over 10:1, 503 queue full, 504 timeout (the work is
stopped). The model runs in a worker process limited per request in time, CPU and memory, restarted when
stopped. Requests must name this server in their Host header (loopback names, the --host address and
--allow-host names); POSTs from other origins get 403. Research use only, not a diagnosis.
"""

def register(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="local web page + JSON API to try a trained run on one image, with Grad-CAM",
        description="Serve a run's fold ensemble on this computer: a page to upload an image and see its class "
        "probabilities, Grad-CAM overlay and the model's provenance, and the JSON API behind it.",
        epilog=SERVE_EPILOG,
        formatter_class=formatter_class,
    )
    serve.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="finished run folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: this computer only)")
    serve.add_argument("--port", type=count(0, 65535), default=8000, help="TCP port")
    serve.add_argument("--max-upload-mb", type=number(0.0, above=True), default=10.0,
                       help="largest accepted upload in MiB")
    serve.add_argument("--max-pixels", type=count(1), default=SERVE_MAX_PIXELS, help="largest accepted width x height")
    serve.add_argument("--timeout-s", type=number(0.0, above=True), default=30.0,
                       help="per-request limit, queueing included; past it the work is stopped")
    serve.add_argument("--max-work-s", type=number(0.0, above=True), default=10.0,
                       help="how long one image may keep the model worker busy; past it the work is stopped")
    serve.add_argument("--max-memory-mb", type=number(0.0, above=True), default=1024.0,
                       help="memory one request may use in the model worker (decode + model), in MiB")
    serve.add_argument("--no-spare-worker", dest="spare_worker", action="store_false",
                       help="after a stopped request, do not keep a warm spare model worker (saves its memory; each "
                       "later stop then waits for a restart)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                       help="also serve requests whose Host header is NAME (repeatable; loopback names always are)")
    serve.add_argument("--device", default="cpu", help="torch device for the models (cpu, cuda, cuda:1, ...)")
    add_threads_option(serve)
    serve.set_defaults(handler=run)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a busy port or bad address is one clear error."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CrossdermError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    if not 0 <= args.port <= 65535:
        raise CrossdermError(f"--port must be 0..65535, got {args.port}")
    if args.threads < 0:
        raise CrossdermError(f"--threads must be 0 (auto) or more, got {args.threads}")
    if min(args.max_upload_mb, args.timeout_s, args.max_pixels, args.max_memory_mb, args.max_work_s) <= 0:
        raise CrossdermError("--max-upload-mb, --max-pixels, --max-memory-mb, --max-work-s and --timeout-s must be "
                             "positive")
    if Image.MAX_IMAGE_PIXELS and args.max_pixels > Image.MAX_IMAGE_PIXELS:
        raise CrossdermError(f"--max-pixels must be at most Pillow's decompression-bomb limit {Image.MAX_IMAGE_PIXELS}")

    import uvicorn

    from crossderm.runtime import configure_threads
    from crossderm.serve.app import create_app
    from crossderm.serve.limits import ServeLimits

    configure_threads(args.threads)  # the model worker takes this count; on a busy CPU fewer threads are faster

    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels, timeout_s=args.timeout_s,
        max_memory_bytes=int(args.max_memory_mb * 2**20), max_work_s=args.max_work_s,
    )
    wildcard = args.host in ("0.0.0.0", "::", "")
    allowed = ([] if wildcard else [args.host]) + list(args.allow_host)
    app = create_app(args.model, limits, device=args.device, allowed_hosts=allowed, spare_worker=args.spare_worker)
    try:
        sock = _listening_socket(args.host, args.port)
    except CrossdermError:
        app.state.queue.close()  # stop the model worker that create_app started
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"crossderm serve: {args.model} on http://{shown}:{port}  (Ctrl+C stops)", flush=True)
    if not ipaddress.ip_address(host).is_loopback:
        print(f"crossderm serve: warning: {host} is reachable from other machines and the server has no authentication")
        if wildcard and not args.allow_host:
            print("crossderm serve: only loopback Host names are served; add --allow-host NAME for the names "
                  "other machines use to reach this one")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
