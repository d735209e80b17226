"""The model worker: one child process that loads the ensemble once and does all model work, one request at a time.

A thread can only stop *waiting* for a timed-out job; a process can be stopped. So decoding, prediction with the
run's TTA views, the out-of-distribution scores, Grad-CAM and the PNG encoding all run here, and the server
(:class:`ModelWorker`, its side) watches the worker while a request runs and kills it (SIGKILL) when the request
has kept it busy longer than ``max_work_s`` or its deadline (``timeout_s`` from arrival, queueing included)
passes (504), or when its resident memory grows more than ``max_memory_bytes`` over its idle size (413). The
kernel bounds it from inside too: ``RLIMIT_AS`` (idle address space + ``max_memory_bytes``, CPU devices) turns an
oversized allocation into a ``MemoryError`` (413), and ``RLIMIT_CPU`` (reset before each request to
``max_cpu_s`` more CPU seconds) stops a runaway (504).

The worker is ``python -c WORKER_CODE FD`` (not a ``multiprocessing`` child, which would re-import the caller's
``__main__``), connected to the server by a socket pair; its death reads as EOF there. Every message is JSON,
never a pickle, so a worker subverted by an image cannot run code in the server. A request is two frames: JSON
``{"metadata": [age, sex, anatom_site] | null}`` (the form's strings, encoded here with
:func:`crossderm.patient.encode_metadata`), then the image bytes; an empty frame asks the worker to exit. The
answer is ``["ok", body]`` or ``["error", status, message]``. docs/reliability.md has the design and the costs.
"""

from __future__ import annotations

import base64
import ctypes
import io
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossderm.errors import CrossdermError
from crossderm.imaging import ImageError
from crossderm.labels import CLASS_DESCRIPTIONS, CLASSES
from crossderm.patient import METADATA_FIELDS, MetadataError, encode_metadata
from crossderm.serve.limits import STATUS_OF_IMAGE_ERROR, ServeLimits, mib
from crossderm.serve.provenance import provenance

if TYPE_CHECKING:
    from crossderm.predict.ensemble import Ensemble

WORKER_CODE = "from crossderm.serve.worker import worker_entry; worker_entry()"
WORKER_START_TIMEOUT_S = 300.0  # importing torch and loading the folds on a busy machine
WATCH_INTERVAL_S = 0.02  # how often the server looks at the worker's memory while a request runs
TRIM_ABOVE_IDLE_BYTES = 64 * 2**20  # the worker returns freed heap to the OS once it holds this much over idle
MAX_MESSAGE_BYTES = 64 * 2**20  # one worker answer (the overlay PNG as base64 is ~0.2 MiB)
# crossderm.models.ood: Mahalanobis 1.0 = the 95th percentile of the fold's inner-validation images
UNLIKE_TRAINING_ABOVE = 1.0
MetadataStrings = Sequence[str] | None  # age, sex, anatom_site as the form sent them (blank = missing); None: none


def _proc_status_kib(pid: int | str, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process (Linux /proc), None where it cannot be read."""
    kib = _proc_status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def limit_cpu(seconds: float) -> None:
    """Let this process use ``seconds`` more CPU time (whole seconds, rounded up); past it the kernel sends
    SIGXCPU, whose default action ends the process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so the worker's idle size stays where it started."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _send(conn: Connection, message: Any) -> None:
    conn.send_bytes(json.dumps(message).encode())


def _receive(conn: Connection) -> Any:
    """A worker's message: JSON, never a pickle, so a worker subverted by an image cannot run code here."""
    return json.loads(conn.recv_bytes(MAX_MESSAGE_BYTES))


# ---------------------------------------------------------------------------------------------------------------
# The child process (``worker_entry`` and what it calls)


def _warm_up_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((96, 72)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def ood_summary(scores: dict[str, float]) -> dict[str, Any]:
    """The OOD scores as JSON (None where a score cannot be computed, e.g. a run without OOD statistics) and
    ``unlike_training``: the Mahalanobis score is over :data:`UNLIKE_TRAINING_ABOVE`."""
    summary: dict[str, Any] = {name: value if math.isfinite(value) else None for name, value in scores.items()}
    mahalanobis = summary.get("ood_mahalanobis")
    summary["unlike_training"] = mahalanobis is not None and mahalanobis > UNLIKE_TRAINING_ABOVE
    return summary


def _predict_one(ensemble: Ensemble, data: bytes, metadata: MetadataStrings, limits: ServeLimits,
                 display_size: int) -> dict[str, Any]:
    from crossderm.imaging import decode
    from crossderm.predict.gradcam import explain_image

    started = time.perf_counter()
    encoded = None if metadata is None else encode_metadata(*([value] for value in metadata))[0]
    image = decode(data, ensemble.image_size, limits.max_pixels, display_size, limits.max_aspect,
                   limits.max_memory_bytes)
    result = explain_image(ensemble, image, metadata=encoded)
    predicted = CLASSES[result.predicted]
    header = image.header
    return {
        "probabilities": {name: float(p) for name, p in zip(CLASSES, result.probabilities, strict=True)},
        "predicted": predicted,
        "predicted_name": CLASS_DESCRIPTIONS[predicted],
        "ood": ood_summary(result.ood),
        "gradcam_class": result.explanation.class_name,
        "gradcam_png": "data:image/png;base64," + base64.b64encode(result.png).decode("ascii"),
        "image": {"format": header.format, "width": header.width, "height": header.height},
        "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
    }


def _answer(ensemble: Ensemble, data: bytes, metadata: MetadataStrings, limits: ServeLimits,
            display_size: int) -> tuple:
    """("ok", body) or ("error", status, message); never raises."""
    try:
        return ("ok", _predict_one(ensemble, data, metadata, limits, display_size))
    except ImageError as exc:
        return ("error", STATUS_OF_IMAGE_ERROR.get(exc.kind, 422), str(exc))
    except MetadataError as exc:  # the server checks the values first; this keeps the worker safe on its own
        return ("error", 422, f"bad patient metadata: {exc}")
    except MemoryError:
        return ("error", 413, f"the image needs more than the {mib(limits.max_memory_bytes)} a request may use")
    except Exception as exc:
        if "can't allocate memory" in str(exc):  # torch's allocator under RLIMIT_AS
            return ("error", 413, f"the image needs more than the {mib(limits.max_memory_bytes)} a request may use")
        print(f"crossderm serve worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return ("error", 500, f"internal error ({type(exc).__name__}); see the server log")


def worker_entry() -> None:
    """``python -c WORKER_CODE FD``: the worker process, talking to the server over the socket ``FD``."""
    _worker_main(Connection(int(sys.argv[1])))


def _worker_main(conn: Connection) -> None:
    """The child: load the ensemble once, warm up, set the kernel limits, then answer one request at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the server, which then stops this process
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a worker stopped by RLIMIT_CPU leaves no core file
    try:
        run_dir, device, threads, limit_fields = json.loads(conn.recv_bytes())
    except (EOFError, OSError):  # the server stopped before sending the settings
        return
    try:
        limits = ServeLimits(**limit_fields)
        import torch

        from crossderm.predict.ensemble import Ensemble
        from crossderm.predict.gradcam import DISPLAY_SIZE

        if threads:
            torch.set_num_threads(threads)
        ensemble = Ensemble(Path(run_dir), device=device)
        info = provenance(ensemble, limits)
        missing = [""] * len(METADATA_FIELDS) if ensemble.needs_metadata else None
        warm = _answer(ensemble, _warm_up_image(), missing, limits, DISPLAY_SIZE)  # starts threads, fills caches
        if warm[0] != "ok":
            raise CrossdermError(f"the model cannot predict a test image ({warm[2]})")
        _trim_heap()
        if torch.device(device).type == "cpu":  # CUDA maps far more address space than it uses: RSS watch only
            vm_kib = _proc_status_kib("self", "VmSize") or 0
            ceiling = vm_kib * 1024 + limits.max_memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (ceiling, resource.getrlimit(resource.RLIMIT_AS)[1]))
        cpu_budget = limits.max_cpu_s or limits.max_work_s * torch.get_num_threads()
        trim_above = (rss_bytes() or 0) + TRIM_ABOVE_IDLE_BYTES
    except Exception as exc:
        with suppress(OSError):  # the server may be gone already
            _send(conn, ("failed", str(exc) if isinstance(exc, CrossdermError) else f"{type(exc).__name__}: {exc}"))
        return
    try:
        _send(conn, ("ready", {"info": info, "image_size": ensemble.image_size, "display_size": DISPLAY_SIZE,
                               "threads": torch.get_num_threads(), "cpu_budget_s": cpu_budget}))
    except OSError:  # the server is gone
        return
    while True:
        try:
            request = conn.recv_bytes()
            if not request:  # the server's request to stop
                return
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the server is gone
            return
        limit_cpu(cpu_budget)
        try:
            _send(conn, _answer(ensemble, data, json.loads(request)["metadata"], limits, DISPLAY_SIZE))
        except OSError:  # the server is gone
            return
        # After a large image, give the heap back (after the answer: not on the request's time). Not after every
        # request: the next one would only fault the same pages in again.
        if (rss_bytes() or 0) > trim_above:
            _trim_heap()


# ---------------------------------------------------------------------------------------------------------------
# The server's side


def _exit_code(process: subprocess.Popen, wait_s: float = 5.0) -> int | None:
    try:
        return process.wait(wait_s)
    except subprocess.TimeoutExpired:
        return None


@dataclass
class ModelWorker:
    """The server's side of the worker process: start, send one request, watch it, kill and restart."""

    run_dir: Path
    device: str
    threads: int
    limits: ServeLimits
    process: subprocess.Popen | None = None
    conn: Connection | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    idle_rss: int = 0
    starts: int = 0
    stopped: list[str] = field(default_factory=list)  # why each killed or dead worker stopped, oldest first
    command: tuple[str, ...] = (sys.executable, "-c", WORKER_CODE)  # + the socket's fd; tests put a fake here
    closed: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> dict[str, Any]:
        """Start the worker and wait until it has loaded the ensemble; a failure is a :class:`CrossdermError`."""
        if self.closed:
            raise CrossdermError("the server is shutting down")
        self.ready = {}  # set again once the new worker has said it is ready
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # as multiprocessing does
        try:
            process = subprocess.Popen([*self.command, str(theirs.fileno())],
                                       pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()  # the worker holds the only other end: its death reads as EOF here
        self.process, self.conn = process, Connection(ours.detach())
        self.starts += 1
        try:
            _send(self.conn, (str(self.run_dir), self.device, self.threads, asdict(self.limits)))
            if not self.conn.poll(WORKER_START_TIMEOUT_S):
                raise CrossdermError(f"the model worker did not start within {WORKER_START_TIMEOUT_S:g} s")
            message = _receive(self.conn)
        except (EOFError, OSError, ValueError):
            message = ("failed", f"the model worker exited while starting (exit code {_exit_code(process)})")
        except CrossdermError as exc:
            message = ("failed", str(exc))
        if message[0] != "ready" or self.closed:  # closed: the server shut down while this one started
            self.kill()
            raise CrossdermError(message[1] if message[0] != "ready" else "the server is shutting down")
        self.ready = message[1]
        self.idle_rss = rss_bytes(process.pid) or 0
        return self.ready

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            with suppress(subprocess.TimeoutExpired):  # SIGKILL is not refused; only a stuck kernel waits longer
                self.process.wait(10)
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None

    def clone(self) -> ModelWorker:
        """A new, not yet started worker with the same settings."""
        return ModelWorker(self.run_dir, self.device, self.threads, self.limits, command=self.command)

    def ensure_started(self) -> None:
        if not self.alive():
            self.kill()
            self.start()

    def _stopped(self, why: str) -> None:
        self.stopped.append(why)
        self.kill()

    def call(self, data: bytes, deadline: float, metadata: MetadataStrings = None) -> tuple:
        """One request: ("ok", body) or ("error", status, message). ``metadata``: age, sex and anatom_site for a
        metadata model. Stops the worker past ``deadline`` or its memory budget; the next call (or the restart
        queued after this one) starts a fresh worker."""
        timeout_s = self.limits.timeout_s
        if time.monotonic() >= deadline:
            return ("error", 504, f"waited longer than {timeout_s:g} s for the model; retry later")
        try:
            self.ensure_started()
        except CrossdermError as exc:
            return ("error", 503, f"the model worker cannot start ({exc})")
        if time.monotonic() >= deadline:  # the deadline passed while a worker started: keep the worker
            return ("error", 504, f"waited longer than {timeout_s:g} s for the model; retry later")
        assert self.conn is not None and self.process is not None
        process = self.process
        memory_ceiling = self.idle_rss + self.limits.max_memory_bytes
        work_deadline = time.monotonic() + self.limits.max_work_s
        try:
            _send(self.conn, {"metadata": None if metadata is None else list(metadata)})
            self.conn.send_bytes(data)
            while True:
                now = time.monotonic()
                remaining = min(deadline, work_deadline) - now
                if remaining <= 0:
                    if now >= work_deadline:
                        self._stopped("work time")
                        return ("error", 504, f"the image took longer than {self.limits.max_work_s:g} s to process "
                                              "and was stopped")
                    self._stopped("timeout")
                    return ("error", 504, f"prediction did not finish within {timeout_s:g} s and was stopped; "
                                          "retry later")
                if self.conn.poll(min(remaining, WATCH_INTERVAL_S)):
                    return tuple(_receive(self.conn))
                rss = rss_bytes(process.pid)
                if rss is not None and rss > memory_ceiling:
                    self._stopped("memory")
                    return ("error", 413, f"the image needed more than the {mib(self.limits.max_memory_bytes)} "
                                          "a request may use and was stopped")
        except (EOFError, OSError, ValueError):  # ValueError: not JSON
            pass
        code = _exit_code(process)
        if code == -signal.SIGXCPU:
            self._stopped("cpu")
            return ("error", 504, f"prediction used more than {self.ready.get('cpu_budget_s', 0):g} CPU seconds "
                                  "and was stopped; retry later")
        self._stopped(f"exit {code}")
        return ("error", 500, f"the model worker stopped (exit code {code}) and is being restarted; retry")

    def close(self) -> None:
        self.closed = True
        if self.conn is not None and self.alive():
            try:
                self.conn.send_bytes(b"")
                self.process.wait(5)  # type: ignore[union-attr]
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self.kill()
