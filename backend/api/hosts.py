"""Refuse requests addressed to a host name the API does not answer to, and cross-site browser writes.

DNS rebinding: a web page on ``evil.example`` re-points its name at 127.0.0.1, and the browser then
lets the page talk to a local API as if it were same-origin. The request still carries
``Host: evil.example``, so only the loopback names and ``VELORA_ALLOWED_HOSTS`` are answered (400).

Cross-site writes: bearer tokens are never attached by a browser on its own (no cookies), which
already blocks most cross-site request forgery; but with ``VELORA_TRUST_LOCALHOST=true`` a page on
any site could make a browser POST to 127.0.0.1. A write (any method but GET, HEAD, OPTIONS) whose
``Sec-Fetch-Site`` says ``cross-site``, or whose ``Origin`` is neither the request's own host nor one
of ``VELORA_ALLOWED_HOSTS``, is refused (403). Clients that are not browsers send neither header.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.settings import LOOPBACK_HOSTS, Settings

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_matches(hostname: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """``hostname`` (lower case, no port) against names, ``*.example.com`` patterns and ``*``."""
    for pattern in patterns:
        if pattern == "*" or hostname == pattern:
            return True
        if pattern.startswith("*.") and hostname.endswith(pattern[1:]):
            return True
    return False


def hostname_of(netloc: str) -> str | None:
    """The host of ``name:port``, ``[v6]:port`` or ``name``, lower case; None if malformed."""
    try:
        parts = urlsplit(f"//{netloc}")
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    return parts.hostname or None


class HostGuardMiddleware:
    """Pure ASGI middleware: 400 for a Host not allowed, 403 for a cross-site browser write."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed = (*LOOPBACK_HOSTS, *settings.allowed_hosts)
        self.origins = tuple(name for name in settings.allowed_hosts if name != "*")  # `*`: any Host only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        hostname = hostname_of(host)
        if hostname is None or not host_matches(hostname, self.allowed):
            await _refuse(
                send,
                400,
                f"Host {host!r} is not one this API answers to (localhost, 127.0.0.1, ::1 and "
                "VELORA_ALLOWED_HOSTS): add the name clients use to VELORA_ALLOWED_HOSTS",
            )
            return
        if scope["method"] not in _SAFE_METHODS:
            problem = _cross_site(headers, host.lower(), self.origins)
            if problem:
                await _refuse(send, 403, f"Cross-site write refused: {problem}")
                return
        await self.app(scope, receive, send)


def _cross_site(headers: Headers, host: str, origins: tuple[str, ...]) -> str | None:
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "the browser says the request comes from another site (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is None:
        return None
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    hostname = hostname_of(netloc) if netloc else None
    if netloc == host or (hostname is not None and host_matches(hostname, origins)):
        return None
    return f"Origin {origin!r} is not this API's host nor in VELORA_ALLOWED_HOSTS"


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
