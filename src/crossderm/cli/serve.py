"""``crossderm serve``: a local web page + JSON API to try a trained run on one image, with Grad-CAM.

torch, FastAPI and uvicorn are imported inside the handlers so ``crossderm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from crossderm.defaults import SERVE_MAX_PIXELS
from crossderm.errors import CrossdermError

SERVE_EPILOG = """examples:
  crossderm serve --model runs/b_joint
  crossderm serve --model runs/b_joint --port 8080 --max-upload-mb 20 --timeout-s 60
  crossderm serve --model runs/b_joint --port 0 --threads 1    # any free port, one CPU thread

Open http://127.0.0.1:8000 (or the --port given) in a browser: upload or drop a dermoscopic image to see
the class probabilities, the Grad-CAM overlay and the run's provenance and metrics. JSON API:
  POST /api/predict  (multipart/form-data, field "file")  -> probabilities, predicted, gradcam_png
  GET  /api/model    provenance (experiment, model, folds, metrics with 95 % CIs, limits)
  GET  /healthz
Bad uploads get a 4xx JSON {"error": "..."}: 413 too large / too many pixels, 415 not an image,
422 undecodable or truncated, 503 queue full, 504 timeout. Research use only, not a diagnosis.
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
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MiB")
    serve.add_argument("--max-pixels", type=int, default=SERVE_MAX_PIXELS, help="largest accepted width x height")
    serve.add_argument("--timeout-s", type=float, default=30.0, help="per-request limit, queueing included")
    serve.add_argument("--device", default="cpu", help="torch device for the models (cpu, cuda, cuda:1, ...)")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
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
        raise CrossdermError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.max_upload_mb <= 0 or args.timeout_s <= 0 or args.max_pixels <= 0:
        raise CrossdermError("--max-upload-mb, --max-pixels and --timeout-s must be positive")
    if Image.MAX_IMAGE_PIXELS and args.max_pixels > Image.MAX_IMAGE_PIXELS:
        raise CrossdermError(f"--max-pixels must be at most Pillow's decompression-bomb limit {Image.MAX_IMAGE_PIXELS}")

    import torch
    import uvicorn

    from crossderm.serve.app import ServeLimits, create_app

    if args.threads:
        torch.set_num_threads(args.threads)  # one request at a time: on a busy CPU fewer threads can be much faster

    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels, timeout_s=args.timeout_s
    )
    app = create_app(args.model, limits, device=args.device)
    sock = _listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"crossderm serve: {args.model} on http://{shown}:{port}  (Ctrl+C stops)", flush=True)
    if not ipaddress.ip_address(host).is_loopback:
        print(f"crossderm serve: warning: {host} is reachable from other machines and the server has no authentication")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
