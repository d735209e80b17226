"""The outermost layers of the web app: which requests are served at all, and the headers every response carries.

:class:`RequestGuard` answers a ``Host`` header that is not on the allow-list (loopback names by default) with
421, which closes DNS rebinding (a page on ``evil.example`` that resolves to 127.0.0.1 still sends
``Host: evil.example``), and a state-changing request from another origin (``Origin`` not this server, or
``Sec-Fetch-Site: cross-site``/``same-site``) with 403, which closes cross-site form posts. It also puts the
security headers (CSP, nosniff, no referrer, no framing, same-origin resources, ``Cache-Control: no-store``
outside ``/static``) on every response, errors and static files included. :class:`UploadLimit` refuses an
oversized body before reading it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossderm.errors import CrossdermError
from crossderm.serve.limits import mib

MULTIPART_SLACK = 64 * 1024  # multipart boundaries and part headers around the file itself
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")
OTHER_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {  # on every response; Content-Security-Policy and Cache-Control are added by path and type
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def json_error(status: int, message: str) -> JSONResponse:
    """The one shape of every error the server sends: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``v6``, ``[v6]:port`` -> (lower-case name, IPs in canonical form, port); None if
    malformed."""
    value = value.strip()
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"  # a bare IPv6 address
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    with suppress(ValueError):
        name = str(ipaddress.ip_address(name))
    return name, port


@dataclass(frozen=True)
class HostAllowList:
    """Names (any port) or ``name:port`` entries a request's Host may be. ``extra`` are the configured ones."""

    loopback: tuple[tuple[str, int | None], ...] = tuple((name, None) for name in LOOPBACK_HOSTS)
    extra: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def of(cls, hosts: Iterable[str]) -> HostAllowList:
        extra = []
        for host in hosts:
            parsed = _split_host(host)
            if parsed is None:
                raise CrossdermError(f"--allow-host {host!r}: expected a host name or address, optionally with :port")
            extra.append(parsed)
        return cls(extra=tuple(extra))

    @staticmethod
    def _matches(entries: Iterable[tuple[str, int | None]], name: str, port: int | None) -> bool:
        return any(name == allowed and allowed_port in (None, port) for allowed, allowed_port in entries)

    def allows_host(self, host: str | None) -> bool:
        parsed = _split_host(host) if host else None
        return parsed is not None and self._matches((*self.loopback, *self.extra), *parsed)

    def allows_origin(self, origin: str, host: str, scheme: str) -> bool:
        """Same origin as the request's Host, or a configured (``extra``) host; never ``null`` or other schemes."""
        try:
            parts = urlsplit(origin)
            origin_port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        default_port = {"http": 80, "https": 443}
        origin_host = _split_host(parts.netloc)
        if origin_host is None:
            return False
        origin_at = (origin_host[0], origin_port or default_port[parts.scheme])
        request_host = _split_host(host)
        if request_host is not None and origin_at == (request_host[0], request_host[1] or default_port.get(scheme)):
            return True
        return self._matches(self.extra, *origin_at)

    def describe(self) -> list[str]:
        shown = [f"[{n}]" if ":" in n else n for n, _ in self.loopback]
        shown += [(f"[{n}]" if ":" in n else n) + (f":{p}" if p else "") for n, p in self.extra]
        return shown


class RequestGuard:
    """Outermost ASGI layer: Host allow-list (421), cross-origin POSTs (403), security headers on every response."""

    def __init__(self, app: ASGIApp, hosts: HostAllowList) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                html = headers.get("content-type", "").startswith("text/html")
                headers.setdefault("Content-Security-Policy", PAGE_CSP if html else OTHER_CSP)
                if not path.startswith("/static/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        request_headers = Headers(scope=scope)
        host = request_headers.get("host")
        if not self.hosts.allows_host(host):
            shown = f"host {host!r}" if host else "a request without a Host header"
            response = json_error(421, f"{shown} is not served here (allowed: {', '.join(self.hosts.describe())}; "
                                   "add a name with crossderm serve --allow-host NAME)")
        elif scope["method"] not in SAFE_METHODS and (problem := self._cross_site(request_headers, scope)):
            response = json_error(403, problem)
        else:
            await self.app(scope, receive, send_with_headers)
            return
        await response(scope, receive, send_with_headers)

    def _cross_site(self, headers: Headers, scope: Scope) -> str | None:
        fetch_site = headers.get("sec-fetch-site", "").lower()
        if fetch_site in ("cross-site", "same-site"):
            return f"cross-origin request refused (Sec-Fetch-Site: {fetch_site}); use the page this server serves"
        origin = headers.get("origin")
        if origin is not None and not self.hosts.allows_origin(origin, headers.get("host", ""), scope["scheme"]):
            return f"cross-origin request refused (Origin: {origin}); use the page this server serves"
        return None


class UploadLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` without reading (or buffering) the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"upload too large: the limit is {mib(self.max_bytes - MULTIPART_SLACK)}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await json_error(413, self._message())(scope, receive, send)
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
