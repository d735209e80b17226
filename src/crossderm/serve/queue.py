"""The queue in front of the model worker: a bounded number of requests wait, one runs, a stopped worker is replaced.

Model work is serialised on one executor thread that talks to one :class:`~crossderm.serve.worker.ModelWorker`:
the models and Grad-CAM's hooks are not thread-safe, and one process at a time keeps memory bounded. Uploads are
still handled concurrently by the event loop; only the model work waits here.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from fastapi import HTTPException

from crossderm.errors import CrossdermError
from crossderm.serve.limits import ServeLimits
from crossderm.serve.worker import WORKER_START_TIMEOUT_S, MetadataStrings, ModelWorker

DEADLINE_GRACE_S = 0.5  # the worker thread answers at the deadline; the event loop waits this much longer


class InferenceQueue:
    """One worker process owns the ensemble; a bounded number of requests may wait for it.

    When a request is stopped, its worker is replaced before the next request: by the warm spare if one is ready
    (no wait), else by a fresh start that the queued requests wait for. After the first stop (a sign of hostile or
    oversized input) a spare is kept warm in the background, unless ``spare_worker`` is off.
    """

    def __init__(self, worker: ModelWorker, limits: ServeLimits, spare_worker: bool = True) -> None:
        self.worker = worker
        self.limits = limits
        self.spare_worker = spare_worker
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossderm-infer")
        self.slots = threading.BoundedSemaphore(limits.max_queue)
        self.closed = False
        self.stopped: list[str] = []  # why each stopped request's worker was stopped, oldest first
        self.spare: ModelWorker | None = None
        self._spare_lock = threading.Lock()
        self._spare_starting = False

    async def run(self, data: bytes, metadata: MetadataStrings = None) -> dict[str, Any]:
        """The worker's answer body for one image (and, for a metadata model, its age, sex and anatom_site), or
        the refusal as an :class:`HTTPException` (503 queue full, 504 past the deadline, the worker's status)."""
        if not self.slots.acquire(blocking=False):
            raise HTTPException(503, f"server busy: {self.limits.max_queue} requests already waiting; retry shortly")
        deadline = time.monotonic() + self.limits.timeout_s
        future = self.executor.submit(self._call, data, deadline, metadata)
        future.add_done_callback(lambda _: self.slots.release())
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), self.limits.timeout_s + DEADLINE_GRACE_S)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"waited longer than {self.limits.timeout_s:g} s for the model; retry later") \
                from None
        if answer[0] == "ok":
            return answer[1]
        raise HTTPException(answer[1], answer[2])

    def _call(self, data: bytes, deadline: float, metadata: MetadataStrings) -> tuple:
        if self.closed:
            return ("error", 503, "the server is shutting down")
        self._replace()  # after a stop: the first request queued behind it waits for the replacement
        worker = self.worker
        answer = worker.call(data, deadline, metadata)
        if not worker.alive() and not self.closed:  # stopped: replace it now, not when the next request comes
            self.stopped.append(worker.stopped[-1] if worker.stopped else "unknown")
            with suppress(RuntimeError):  # the executor shut down meanwhile
                self.executor.submit(self._replace)  # at once if the spare is ready; when idle, else
        return answer

    def _replace(self) -> None:
        """If the worker is gone, put the spare in its place: the ready one, or the one starting already (a second
        start beside it would only slow both on a small machine); else start a fresh worker. Then start a spare.
        Runs on the executor thread, the only one that changes ``self.worker``."""
        if self.worker.alive() or self.closed:
            return
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while self._spare_starting and not self.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._spare_lock:
            spare, self.spare = self.spare, None
        if spare is not None and spare.alive() and not self.closed:
            self.worker = spare
        else:
            try:
                self.worker.ensure_started()
            except CrossdermError as exc:
                if not self.closed:
                    print(f"crossderm serve: the model worker cannot restart ({exc})", file=sys.stderr, flush=True)
                return
        if self.spare_worker and not self.closed:
            self._start_spare()

    def _start_spare(self) -> None:
        with self._spare_lock:
            if self._spare_starting or self.spare is not None:
                return
            self._spare_starting = True
        threading.Thread(target=self._spare_main, name="crossderm-spare", daemon=True).start()

    def _spare_main(self) -> None:
        spare = self.worker.clone()
        try:
            spare.start()
        except CrossdermError as exc:
            print(f"crossderm serve: no spare model worker ({exc})", file=sys.stderr, flush=True)
            spare = None
        with self._spare_lock:
            self._spare_starting = False
            if spare is not None and not self.closed:
                self.spare, spare = spare, None
        if spare is not None:  # closed meanwhile
            spare.close()

    def close(self) -> None:
        self.closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.worker.close()
        with self._spare_lock:
            spare, self.spare = self.spare, None
        if spare is not None:
            spare.close()
