"""The local web app: one offline page plus a small JSON API over a run's fold ensemble.

Every request first meets :class:`~crossderm.serve.guard.RequestGuard`, the outermost layer (Host allow-list,
cross-origin POSTs, security headers on every response). Uploads are then checked cheapest first, in the server
process, so a bad one costs little and always gets a 4xx JSON ``{"error": ...}``: body size (from Content-Length
before anything is read, else while it streams), declared content type, patient metadata (for a model that uses
it), image header (format, pixel count, aspect ratio and the estimated memory of the decode, before any pixel is
decoded; see :mod:`crossderm.imaging`).

All model work runs in one worker process (:mod:`crossderm.serve.worker`), which the server can stop at any
moment; at most ``max_queue`` requests wait for it (:mod:`crossderm.serve.queue`, 503 beyond that).
docs/reliability.md has the design, the measured costs and the soak test.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp

from crossderm import __version__
from crossderm.imaging import ImageError, ImageHeader, check_cost, read_header
from crossderm.patient import METADATA_FIELDS, MetadataError, encode_metadata
from crossderm.runfolder import RunFolder
from crossderm.serve.guard import MULTIPART_SLACK, HostAllowList, RequestGuard, UploadLimit, json_error
from crossderm.serve.limits import STATUS_OF_IMAGE_ERROR, ServeLimits, mib
from crossderm.serve.queue import InferenceQueue
from crossderm.serve.worker import ModelWorker

STATIC = Path(__file__).parent / "static"
IMPUTE_YES = ("true", "1", "yes", "on")
IMPUTE_NO = ("", "false", "0", "no", "off")


def inspect_header(data: bytes, limits: ServeLimits, image_size: int, display_size: int) -> ImageHeader:
    """Format, size, aspect and decode memory from the image header alone (413 too many pixels or too much memory,
    415 not an image, 422 unreadable or an aspect ratio over the cap)."""
    try:
        header = read_header(data, limits.max_pixels, limits.max_aspect)
        check_cost(header, image_size, display_size, limits.max_memory_bytes)
    except ImageError as exc:
        raise HTTPException(STATUS_OF_IMAGE_ERROR[exc.kind], str(exc)) from None
    return header


def metadata_of_form(uses_metadata: bool, values: tuple[str, str, str], impute: str) -> list[str] | None:
    """What the worker gets for the form's age, sex and anatom_site (blank = missing): None for a model without
    metadata, which ignores the fields. A metadata model needs at least one of them, unless ``impute`` is true
    (then the blank ones, all of them if none was sent, are encoded as missing); 422 for a value outside the
    vocabulary (crossderm.patient), checked here so the request never waits for the worker in vain."""
    if not uses_metadata:
        return None
    if impute.strip().lower() not in IMPUTE_YES + IMPUTE_NO:
        raise HTTPException(422, f"impute_metadata must be true or false, got {impute!r}")
    strings = [value.strip() for value in values]
    if not any(strings) and impute.strip().lower() not in IMPUTE_YES:
        raise HTTPException(422, f"this model uses patient metadata ({', '.join(METADATA_FIELDS)}): send at least "
                                 "one of these form fields (blank = missing), or impute_metadata=true to predict "
                                 "with every field missing")
    try:
        encode_metadata(*([value] for value in strings))
    except MetadataError as exc:
        raise HTTPException(422, f"bad patient metadata: {exc}") from None
    return strings


class _GuardedApp(FastAPI):
    """FastAPI with :class:`RequestGuard` outside everything, even the 500 handler, so no response escapes it."""

    allowed_hosts: HostAllowList

    def build_middleware_stack(self) -> ASGIApp:
        return RequestGuard(super().build_middleware_stack(), self.allowed_hosts)


def _torch_threads() -> int:
    """The server process's torch thread count (``--threads``), for the worker; 0 when torch is not loaded."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def create_app(
    run_dir: Path,
    limits: ServeLimits | None = None,
    device: str = "cpu",
    allowed_hosts: Iterable[str] = (),
    threads: int | None = None,
    spare_worker: bool = True,
) -> FastAPI:
    """Start the worker process, which loads the run's ensemble once (errors surface here, before any port is
    bound), and build the app. ``allowed_hosts`` are Host names (or ``name:port``) served besides loopback;
    ``threads`` the worker's torch threads (default: this process's torch setting, e.g. ``--threads``);
    ``spare_worker`` keeps a warm spare worker after the first stopped request (see :class:`InferenceQueue`)."""
    limits = limits or ServeLimits()
    hosts = HostAllowList.of(allowed_hosts)
    RunFolder(run_dir).require()
    worker = ModelWorker(Path(run_dir), device, _torch_threads() if threads is None else threads, limits)
    ready = worker.start()
    model_info = ready["info"]
    image_size, display_size = ready["image_size"], ready["display_size"]
    uses_metadata = bool(model_info.get("metadata", {}).get("used"))
    queue = InferenceQueue(worker, limits, spare_worker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    app = _GuardedApp(title="crossderm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                      openapi_url=None)
    app.allowed_hosts = hosts
    app.state.queue = queue  # queue.worker: the model worker now serving
    app.add_middleware(UploadLimit, max_bytes=limits.max_upload_bytes + MULTIPART_SLACK)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return json_error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return json_error(422, f"expected multipart/form-data with the image in a field named 'file' ({fields})")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return json_error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_info["model"], "folds": model_info["gradcam"]["folds_averaged"]}

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return model_info

    @app.post("/api/predict")
    async def predict(
        file: UploadFile,
        age: Annotated[str, Form()] = "",
        sex: Annotated[str, Form()] = "",
        anatom_site: Annotated[str, Form()] = "",
        impute_metadata: Annotated[str, Form()] = "",
    ) -> dict[str, Any]:
        """Class probabilities, the predicted class, its Grad-CAM overlay and the out-of-distribution scores for
        one uploaded image; a metadata model also reads the patient's age, sex and anatom_site."""
        if not (file.content_type or "").startswith("image/"):
            raise HTTPException(415, f"content type {file.content_type!r} is not an image (send image/jpeg, image/png)")
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload too large: the limit is {mib(limits.max_upload_bytes)}")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        metadata = metadata_of_form(uses_metadata, (age, sex, anatom_site), impute_metadata)
        inspect_header(data, limits, image_size, display_size)
        return await queue.run(data, metadata)

    return app
