"""Serve the API: uvicorn with bounds on what a client may send before it is authenticated.

``python -m backend.api.serve --host 0.0.0.0 --port 8000`` (``backend.launcher.api_command`` writes
this command line for ``velora-bench up``, the tests and the benchmarks; docker-compose.yml runs it).

uvicorn's defaults leave the request head unbounded (its httptools parser takes a 100 MB header,
quadratically) and never time out a half-sent request. Here:

- the parser is h11, with the request head (request line and headers) bounded by
  ``VELORA_HTTP_MAX_HEAD_BYTES`` (a larger one is answered 400 and the connection closed);
- a connection must send a complete request head within ``VELORA_HTTP_HEAD_TIMEOUT_S`` of opening,
  or of its first byte after a keep-alive pause, and a request's body within
  ``VELORA_HTTP_BODY_TIMEOUT_S`` of its head; otherwise the connection is closed;
- at most ``VELORA_HTTP_MAX_CONNECTIONS`` connections are served at once (uvicorn's
  ``limit_concurrency``: requests beyond get 503), and idle keep-alive connections close after
  ``VELORA_HTTP_KEEP_ALIVE_S``;
- ``VELORA_HTTP_MAX_HEADERS`` headers at most (431, ``backend.api.edge``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from backend.settings import get_settings

log = logging.getLogger(__name__)

_HEAD, _BODY = "request head", "request body"


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for a request's head and body (see the module docstring).
    A class uvicorn imports by name (``--workers`` processes too); the deadlines come from the settings."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        settings = get_settings()
        self._timeouts = {_HEAD: settings.http_head_timeout_s, _BODY: settings.http_body_timeout_s}
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None
        super().connection_made(transport)
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, None

    def _track(self) -> None:
        """Arm the deadline of what the client owes now: a head (h11 IDLE), a body (SEND_BODY), or nothing."""
        state = self.conn.their_state
        waiting_for = _HEAD if state is h11.IDLE else _BODY if state is h11.SEND_BODY else None
        if waiting_for == self._waiting_for:
            return
        self._cancel()
        if waiting_for is not None and not self.transport.is_closing():
            timeout = self._timeouts[waiting_for]
            self._deadline = self.loop.call_later(timeout, self._expire, waiting_for, timeout)
            self._waiting_for = waiting_for

    def _expire(self, waiting_for: str, timeout: float) -> None:
        self._deadline, self._waiting_for = None, None
        state = self.conn.their_state
        still = state is h11.IDLE if waiting_for == _HEAD else state is h11.SEND_BODY
        if not still:
            self._track()
            return
        if waiting_for == _BODY and self.flow.read_paused:  # the app is not reading: not the client's fault
            self._track()
            return
        log.warning(
            "closing a connection from %s: no complete %s within %g s", self.client, waiting_for, timeout
        )
        self.transport.close()


def server_options() -> dict[str, Any]:
    """uvicorn's options for the bounds above, from the settings."""
    settings = get_settings()
    return {
        "http": BoundedH11Protocol,
        "h11_max_incomplete_event_size": settings.http_max_head_bytes,
        "limit_concurrency": settings.http_max_connections,
        "timeout_keep_alive": settings.http_keep_alive_s,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.api.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    parser.add_argument("--workers", type=int, default=None, help="server processes (default one)")
    args = parser.parse_args(argv)
    uvicorn.run(
        "backend.api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        workers=args.workers,
        **server_options(),
    )


if __name__ == "__main__":
    main()
