"""HTTP for downloads: JSON and HEAD requests, and file downloads that resume with Range after a drop.

Why the standard library (``urllib``) and not a new dependency: the protocol needed is small — GET with a
``Range: bytes=N-`` header, 200/206/416 and ``Content-Range``, redirects (Harvard Dataverse sends large files
on to S3; ``urllib`` keeps the Range header across the redirect) — and a download command should not pull in
a client stack for it. One subtlety drives the structure: ``http.client`` does *not* raise when a server
closes the connection before ``Content-Length`` bytes arrived (``read`` just returns ``b""``), so every
transfer counts its bytes and treats a short body as a dropped connection, to be resumed.

Bytes go to a ``.part`` file that only ever grows by what the server sent for exactly that offset; a server
that ignores Range (200 instead of 206) restarts the file from zero rather than appending the wrong bytes.
Transient failures (connection errors, short bodies, HTTP 429/5xx) are retried with a growing pause; the
count resets whenever a try made progress, so a flaky link still finishes. User-facing failures are one-line
:class:`CrossdermError`s naming the file and URL.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crossderm import __version__
from crossderm.errors import CrossdermError

USER_AGENT = f"crossderm/{__version__} (crossderm download)"
TIMEOUT_S = 60.0
RETRIES = 5
RETRY_WAIT_S = 2.0  # pause after the k-th consecutive failure: k * RETRY_WAIT_S, at most MAX_WAIT_S
MAX_WAIT_S = 30.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)

Echo = Callable[[str], None]


class TransientError(Exception):
    """A failure worth retrying (the connection, not the request, went wrong)."""


class HttpStatusError(Exception):
    """An HTTP error status, with the server's own message when it sent one (Dataverse sends JSON)."""

    def __init__(self, url: str, code: int, reason: str, detail: str, headers: Message) -> None:
        super().__init__(f"{url}: HTTP {code} {reason}" + (f" ({detail})" if detail else ""))
        self.url, self.code, self.headers = url, code, headers


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return " ".join(str(reason).split()) or type(exc).__name__


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(4096)
    except (OSError, http.client.HTTPException):
        return ""
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return ""
    return " ".join(str(message).split())[:200]


def open_url(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """``urlopen`` with our User-Agent and timeout; errors become :class:`HttpStatusError` / :class:`TransientError`."""
    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        exc.close()
        raise HttpStatusError(url, exc.code, str(exc.reason), detail, exc.headers) from None
    except ValueError as exc:  # not a URL urllib can open
        raise CrossdermError(f"{url}: {exc}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise TransientError(f"{url}: {_reason(exc)}") from None


def _with_retries(url: str, attempt: Callable[[], Any], retries: int, echo: Echo) -> Any:
    failures = 0
    while True:
        try:
            return attempt()
        except HttpStatusError as exc:
            if exc.code not in RETRY_STATUSES or failures >= retries:
                raise CrossdermError(str(exc)) from None
            problem = str(exc)
        except TransientError as exc:
            if failures >= retries:
                raise CrossdermError(f"{exc} (gave up after {retries} retries)") from None
            problem = str(exc)
        failures += 1
        wait = min(RETRY_WAIT_S * failures, MAX_WAIT_S)
        echo(f"{problem}; retrying in {wait:.0f} s ({failures}/{retries})")
        time.sleep(wait)


def get_json(url: str, *, retries: int = RETRIES, echo: Echo = print) -> dict[str, Any]:
    """A JSON object from ``url`` (the Dataverse native API), with retries for transient failures."""

    def attempt() -> bytes:
        with open_url(url, headers={"Accept": "application/json"}) as response:
            try:
                return response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise TransientError(f"{url}: {_reason(exc)}") from None

    body = _with_retries(url, attempt, retries, echo)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise CrossdermError(f"{url}: the response is not JSON ({body[:60]!r})") from None
    if not isinstance(data, dict):
        raise CrossdermError(f"{url}: expected a JSON object")
    return data


def head(
    url: str, *, headers: dict[str, str] | None = None, retries: int = RETRIES, echo: Echo = print
) -> dict[str, str]:
    """The response headers of a HEAD request, names lower-cased (S3: Content-Length, ETag, checksums)."""

    def attempt() -> dict[str, str]:
        with open_url(url, method="HEAD", headers=headers) as response:
            return {key.lower(): value for key, value in response.headers.items()}

    return _with_retries(url, attempt, retries, echo)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``Content-Range: bytes a-b/total`` (or ``bytes */total`` on a 416)."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def download(
    url: str, part: Path, *, name: str, size: int | None, retries: int = RETRIES, echo: Echo = print
) -> int:
    """Fetch ``url`` into ``part``, resuming from what ``part`` already holds; return the file's size.

    ``size`` is what the publisher's metadata says (None when unknown). Raises :class:`CrossdermError` after
    ``retries`` consecutive failed tries without progress; ``part`` is kept so the next run resumes.
    """
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset == size:
            return size
        if size is not None and offset > size:
            echo(f"{name}: the partial download is longer than the file ({offset:,} > {size:,} bytes); starting again")
            part.unlink()
            offset = 0
        try:
            return _fetch_once(url, part, name=name, offset=offset, size=size, echo=echo)
        except TransientError as exc:
            reached = part.stat().st_size if part.exists() else 0
            failures = 1 if reached > offset else failures + 1
            if failures > retries:
                raise CrossdermError(
                    f"{name}: {exc} ({url}); gave up after {retries} retries, {reached:,} bytes kept in {part}: "
                    "run again to resume"
                ) from None
            wait = min(RETRY_WAIT_S * failures, MAX_WAIT_S)
            echo(f"{name}: {exc}; resuming from byte {reached:,} in {wait:.0f} s (retry {failures}/{retries})")
            time.sleep(wait)


def _fetch_once(url: str, part: Path, *, name: str, offset: int, size: int | None, echo: Echo) -> int:
    try:
        response = open_url(url, headers={"Range": f"bytes={offset}-"} if offset else None)
    except HttpStatusError as exc:
        if exc.code == 416 and offset:
            _start, total = _content_range(exc.headers.get("Content-Range"))
            if total == offset and size in (None, offset):
                return offset  # the partial file is already the whole file
            echo(f"{name}: the server cannot resume at byte {offset:,} (HTTP 416); starting again")
            part.unlink(missing_ok=True)
            return _fetch_once(url, part, name=name, offset=0, size=size, echo=echo)
        if exc.code in RETRY_STATUSES:
            raise TransientError(str(exc)) from None
        raise CrossdermError(str(exc)) from None
    with response:
        status = response.status
        if offset and status == 200:
            echo(f"{name}: the server ignored the request to resume at byte {offset:,} (HTTP 200, not 206); "
                 "downloading it again from the start")
            offset = 0
        elif status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise TransientError(f"asked for bytes from {offset:,}, the server sent a range from {start}")
            if total is not None and size is not None and total != size:
                raise CrossdermError(f"{name}: {url} is {total:,} bytes, but the publisher's metadata says {size:,}")
        elif status != 200:
            raise CrossdermError(f"{url}: unexpected HTTP {status} {response.reason}")
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else size
        written = _stream(response, part, name=name, offset=offset, expected=expected)
    if expected is not None and offset + written < expected:
        raise TransientError(f"connection dropped at byte {offset + written:,} of {expected:,}")
    return offset + written


def _stream(response: Any, part: Path, *, name: str, offset: int, expected: int | None) -> int:
    """Copy the body to ``part`` (appending at ``offset``, or truncating at 0); return the bytes written."""
    written = 0
    part.parent.mkdir(parents=True, exist_ok=True)
    # Unbuffered: a full disk then fails in write() itself, never later in close() outside our handler.
    with open(part, "ab" if offset else "wb", buffering=0) as handle, tqdm(
        total=expected, initial=offset, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=None,
    ) as progress:
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise TransientError(f"connection lost at byte {offset + written:,} ({_reason(exc)})") from None
            if not chunk:
                break
            try:
                view = memoryview(chunk)
                while view:
                    view = view[handle.write(view) :]
            except OSError as exc:
                raise _write_error(exc, part, name, offset + written) from None
            written += len(chunk)
            progress.update(len(chunk))
        try:
            os.fsync(handle.fileno())
        except OSError as exc:
            raise _write_error(exc, part, name, offset + written) from None
    return written


def _write_error(exc: OSError, part: Path, name: str, at: int) -> CrossdermError:
    if exc.errno == errno.ENOSPC:
        return CrossdermError(f"{part}: disk full after {at:,} bytes of {name}; free some space, run again to resume")
    return CrossdermError(f"{part}: cannot write ({exc.strerror or exc})")
