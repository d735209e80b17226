"""A local publisher on 127.0.0.1 that speaks the protocols ``crossderm download`` meets in the wild.

``Publisher`` is a real HTTP server (``http.server`` in a thread, port 0) serving byte ranges (206 +
Content-Range, 416 past the end), redirects (Harvard Dataverse hands large files on to S3), ETags, JSON error
bodies, and on request: a connection dropped mid-file, a server that ignores Range, transient 503s. The data
are a tiny synthetic download (``crossderm.synth``) zipped the way the publishers ship it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

HAM_PID = "doi:10.7910/DVN/DBW86T"
RECORD_PATH = f"/api/datasets/:persistentId/?persistentId={HAM_PID}"
HAM_LICENCE = {"name": "CC BY-NC 4.0", "uri": "http://creativecommons.org/licenses/by-nc/4.0"}


@dataclass
class Served:
    """One URL's behaviour. ``drop_at``: close the connection after that absolute byte, ``drops`` times."""

    body: bytes = b""
    etag: str | None = None
    drop_at: int | None = None
    drops: int = 0
    ignore_range: bool = False
    redirect_to: str | None = None
    fail_first: int = 0  # answer 503 this many times first
    content_type: str = "application/octet-stream"


class Publisher:
    """A threaded HTTP server with a route table and a log of ``(method, path, Range)`` per request."""

    def __init__(self) -> None:
        self.routes: dict[str, Served] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                publisher.answer(self, head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                publisher.answer(self, head=True)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self, path: str) -> list[str | None]:
        """The Range header of every GET of ``path`` (None: no Range)."""
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]

    def answer(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(handler.path)
        requested = handler.headers.get("Range")
        self.requests.append(("HEAD" if head else "GET", path, requested))
        served = self.routes.get(path)
        if served is None or served.fail_first:
            code = 404 if served is None else 503
            if served is not None:
                served.fail_first -= 1
            body = json.dumps({"status": "ERROR", "message": f"{path}: {'not found' if code == 404 else 'busy'}"})
            self._send(handler, code, body.encode(), {"Content-Type": "application/json"}, head)
            return
        if served.redirect_to:
            self._send(handler, 303, b"", {"Location": self.url + served.redirect_to}, head)
            return
        body, start, status = served.body, 0, 200
        headers = {"Content-Type": served.content_type, "Accept-Ranges": "bytes"}
        if served.etag:
            headers["ETag"] = served.etag
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and not served.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self._send(handler, 416, b"", {"Content-Range": f"bytes */{len(body)}"}, head)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        if not head and served.drops and served.drop_at is not None and served.drop_at > start:
            served.drops -= 1  # promise the whole body, send part of it, hang up
            self._send(handler, status, payload, headers, head, cut=served.drop_at - start)
            return
        self._send(handler, status, payload, headers, head)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], head: bool,
              cut: int | None = None) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body if cut is None else body[:cut])
            handler.wfile.flush()
        handler.close_connection = True


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def zip_folder(folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    """The folder's files as a zip, each named ``prefix + name`` (flat, or inside one folder)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.writestr(prefix + path.name, path.read_bytes())
        for name, data in (extra or {}).items():
            archive.writestr(prefix + name, data)
    return buffer.getvalue()


@dataclass
class Archives:
    """The synthetic download (``raw``) and its files as the publishers serve them."""

    raw: Path
    ham_part_1: bytes
    ham_part_2: bytes
    ham_csv: bytes
    ham_tab: bytes
    isic_input: bytes
    isic_truth: bytes
    isic_meta: bytes


def data_file(file_id: int, name: str, body: bytes, **extra: object) -> dict:
    entry = {"id": file_id, "filename": name, "contentType": "application/zip", "filesize": len(body),
             "md5": md5(body), "checksum": {"type": "MD5", "value": md5(body)}}
    return {"label": name, "restricted": False, "dataFile": {**entry, **extra}}


def dataverse_record(a: Archives, *, md5_part_2: str | None = None) -> dict:
    """``GET /api/datasets/:persistentId/`` as Harvard Dataverse answers it (the fields we rely on)."""
    part_2 = data_file(2, "HAM10000_images_part_2.zip", a.ham_part_2)
    if md5_part_2:
        part_2["dataFile"]["md5"] = md5_part_2
        part_2["dataFile"]["checksum"]["value"] = md5_part_2
    metadata = data_file(
        3, "HAM10000_metadata.tab", a.ham_tab, contentType="text/tab-separated-values",
        originalFileFormat="text/csv", originalFormatLabel="Comma Separated Values",
        originalFileSize=len(a.ham_csv), originalFileName="HAM10000_metadata.csv", UNF="UNF:6:synthetic==",
        tabularData=True, md5=md5(a.ham_csv), checksum={"type": "MD5", "value": md5(a.ham_csv)},
    )
    segmentations = data_file(4, "HAM10000_segmentations_lesion_tschandl.zip", b"not fetched")
    files = [data_file(1, "HAM10000_images_part_1.zip", a.ham_part_1), part_2, metadata, segmentations]
    return {"status": "OK", "data": {"id": 3172582, "latestVersion": {
        "versionNumber": 4, "versionMinorNumber": 0, "license": HAM_LICENCE, "files": files}}}
