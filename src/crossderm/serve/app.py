"""The local web app: one offline page plus a small JSON API over a run's fold ensemble.

Uploads are checked cheapest first, so a bad one costs little and always gets a 4xx JSON ``{"error": ...}``:
body size (from Content-Length before anything is read, else while it streams), declared content type, image
header (format and pixel count, before any pixel is decoded), then the decode itself. All model work runs on
one worker thread that owns the ensemble (the models and Grad-CAM's hooks must not be shared between threads):
at most ``max_queue`` requests wait for it (503 beyond that) and each waits at most ``timeout_s`` (504).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossderm import __version__
from crossderm.evaluate.metrics import HEADLINE_METRICS
from crossderm.imaging import ImageError, ImageHeader, decode, read_header
from crossderm.labels import CLASS_DESCRIPTIONS, CLASSES
from crossderm.predict.ensemble import Ensemble
from crossderm.predict.gradcam import DISPLAY_SIZE, MIN_GRID, explain_image, target_layer_names
from crossderm.runfolder import RunFolder

STATIC = Path(__file__).parent / "static"
MULTIPART_SLACK = 64 * 1024  # multipart boundaries and part headers around the file itself
STATUS_OF_IMAGE_ERROR = {"too_large": 413, "unsupported": 415, "corrupt": 422, "missing": 422}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class ServeLimits:
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 50_000_000
    timeout_s: float = 30.0
    max_queue: int = 16


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.3g} MiB"


class UploadLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` without reading (or buffering) the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"upload too large: the limit is {_mib(self.max_bytes - MULTIPART_SLACK)}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _error(413, self._message())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked body that grew past the cap: stop reading it
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


def inspect_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Format and size from the image header alone (413 too many pixels, 415 not an image, 422 unreadable)."""
    try:
        return read_header(data, max_pixels)
    except ImageError as exc:
        raise HTTPException(STATUS_OF_IMAGE_ERROR[exc.kind], str(exc)) from None


def provenance(ensemble: Ensemble, limits: ServeLimits) -> dict[str, Any]:
    """What the page shows about the model: identity, size, folds and the run's metrics with 95 % CIs."""
    folder = RunFolder(ensemble.run_dir)
    run = folder.read_run_info() if folder.run_info.is_file() else {}
    metrics = folder.read_metrics() if folder.metrics.is_file() else {}
    card = ensemble.card
    sources = {
        name: {"n": summary.get("n"), **{key: summary.get(key) for key in HEADLINE_METRICS}}
        for name, summary in (metrics.get("sources") or {}).items()
    }
    gaps = {
        name: {key: gap.get(key) for key in HEADLINE_METRICS} for name, gap in (metrics.get("gaps") or {}).items()
    }
    environment = run.get("environment", {})
    return {
        "experiment": card.experiment,
        "run": ensemble.run_dir.name,
        "model": card.model,
        "parameters": card.parameters,
        "folds": ensemble.folds,
        "image_size": ensemble.image_size,
        "tta_views": card.tta,
        "classes": [{"id": c, "name": CLASS_DESCRIPTIONS[c]} for c in CLASSES],
        "metrics": sources or None,
        "gaps": gaps or None,
        "bootstrap": metrics.get("bootstrap"),
        "trained_with": {key: environment.get(key) for key in ("crossderm", "git_revision", "torch")},
        "gradcam": {
            "layers": target_layer_names(ensemble.members[0].model, ensemble.image_size),
            "min_grid": MIN_GRID,
            "folds_averaged": len(ensemble.members),
        },
        "served_by": f"crossderm {__version__}",
        "limits": asdict(limits),
    }


class InferenceQueue:
    """One worker thread owns the ensemble; a bounded number of requests may wait for it."""

    def __init__(self, ensemble: Ensemble, limits: ServeLimits) -> None:
        self.ensemble = ensemble
        self.limits = limits
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossderm-infer")
        self.slots = threading.BoundedSemaphore(limits.max_queue)

    async def run(self, data: bytes, header: ImageHeader) -> dict[str, Any]:
        if not self.slots.acquire(blocking=False):
            raise HTTPException(503, f"server busy: {self.limits.max_queue} requests already waiting; retry shortly")
        future = self.executor.submit(self._infer, data, header)
        future.add_done_callback(lambda _: self.slots.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"prediction took longer than {self.limits.timeout_s:g} s; retry later") from None

    def _infer(self, data: bytes, header: ImageHeader) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            image = decode(data, self.ensemble.image_size, self.limits.max_pixels, DISPLAY_SIZE)
        except ImageError as exc:
            raise HTTPException(STATUS_OF_IMAGE_ERROR[exc.kind], str(exc)) from None
        result = explain_image(self.ensemble, image)
        predicted = CLASSES[result.predicted]
        return {
            "probabilities": {name: float(p) for name, p in zip(CLASSES, result.probabilities, strict=True)},
            "predicted": predicted,
            "predicted_name": CLASS_DESCRIPTIONS[predicted],
            "gradcam_class": result.explanation.class_name,
            "gradcam_png": "data:image/png;base64," + base64.b64encode(result.png).decode("ascii"),
            "image": {"format": header.format, "width": header.width, "height": header.height},
            "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
        }

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def create_app(run_dir: Path, limits: ServeLimits | None = None, device: str = "cpu") -> FastAPI:
    """Load the run's ensemble once (errors surface here, before any port is bound) and build the app."""
    limits = limits or ServeLimits()
    ensemble = Ensemble(run_dir, device=device)
    model_info = provenance(ensemble, limits)
    queue = InferenceQueue(ensemble, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    app = FastAPI(title="crossderm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.queue = queue
    app.add_middleware(UploadLimit, max_bytes=limits.max_upload_bytes + MULTIPART_SLACK)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, f"expected multipart/form-data with the image in a field named 'file' ({fields})")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_info["model"], "folds": len(ensemble.members)}

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return model_info

    @app.post("/api/predict")
    async def predict(file: UploadFile) -> dict[str, Any]:
        """Class probabilities, the predicted class and its Grad-CAM overlay for one uploaded image."""
        if not (file.content_type or "").startswith("image/"):
            raise HTTPException(415, f"content type {file.content_type!r} is not an image (send image/jpeg, image/png)")
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload too large: the limit is {_mib(limits.max_upload_bytes)}")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        return await queue.run(data, inspect_header(data, limits.max_pixels))

    return app
