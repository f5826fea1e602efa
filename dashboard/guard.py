"""The dashboard behind a Host and Origin check: ``python -m dashboard.guard --host H --port P -- ARGV``.

The dashboard acts with the API token it was given, so a web page that reaches it acts with that
token too. Streamlit answers any ``Host`` and admits a websocket whose ``Origin`` is the page's own
host, so a page on ``evil.example`` whose name is re-pointed at 127.0.0.1 (DNS rebinding) was
same-origin with it. This guard listens on the dashboard's address, starts Streamlit (``ARGV``) on a
free loopback port, and forwards a connection only if its first request names an allowed ``Host`` —
``localhost``, ``127.0.0.1``, ``::1``, the address it listens on (unless a wildcard) and
``VELORA_ALLOWED_HOSTS`` — and carries no ``Origin`` of another host (400 and 403 otherwise, before
any byte reaches Streamlit). It checks the first request of each connection: a browser sends one
``Host`` per connection, and the websocket is a connection of its own. Streamlit runs with its XSRF
protection and CORS checks on. A request head must arrive within 10 s and fit in 64 KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from backend.api.hosts import host_matches, hostname_of
from backend.settings import LOOPBACK_HOSTS

HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_S = 10.0
STREAMLIT_GUARDS = ["--server.enableXsrfProtection", "true", "--server.enableCORS", "true"]


def _headers(head: bytes) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return headers


def refusal(head: bytes, allowed: Sequence[str]) -> tuple[int, str] | None:
    """(status, reason) if the request ``head`` must not reach the dashboard, else None."""
    headers = _headers(head)
    hosts = headers.get("host", [])
    host = hosts[0].lower() if len(hosts) == 1 else ""
    hostname = hostname_of(host)
    if hostname is None or not host_matches(hostname, list(allowed)):
        return 400, f"Host {host[:200]!r} is not one this dashboard answers to (VELORA_ALLOWED_HOSTS)"
    origins = headers.get("origin", [])
    if origins:
        origin = origins[0]
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        origin_host = hostname_of(netloc) if netloc else None
        names = [name for name in allowed if name != "*"]
        if len(origins) > 1 or not (netloc == host or (origin_host and host_matches(origin_host, names))):
            return (
                403,
                f"Origin {origin[:200]!r} is not this dashboard's own (cross-site requests are refused)",
            )
    return None


def _answer(status: int, reason: str) -> bytes:
    body = (reason + "\n").encode()
    phrase = {
        400: "Bad Request",
        403: "Forbidden",
        408: "Request Timeout",
        431: "Request Header Fields Too Large",
    }
    head = f"HTTP/1.1 {status} {phrase[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Guard:
    def __init__(self, allowed: Sequence[str], upstream_port: int) -> None:
        self.allowed, self.upstream_port = list(allowed), upstream_port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            writer.close()
            return
        except TimeoutError:
            await self._refuse(writer, 408, "No complete request head in time")
            return
        except asyncio.LimitOverrunError:
            await self._refuse(writer, 431, "Request head too large")
            return
        problem = refusal(head, self.allowed)
        if problem is not None:
            await self._refuse(writer, *problem)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            writer.write(_answer(status, reason))
            await writer.drain()
        writer.close()


def allowed_hosts(bind_host: str) -> list[str]:
    """The Host names answered: loopback, the bind address (unless a wildcard), VELORA_ALLOWED_HOSTS."""
    extra = [
        name.strip().lower() for name in os.environ.get("VELORA_ALLOWED_HOSTS", "").split(",") if name.strip()
    ]
    bound = [] if bind_host in ("0.0.0.0", "::", "") else [bind_host.strip("[]").lower()]
    return [*LOOPBACK_HOSTS, *bound, *extra]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve(host: str, port: int, streamlit: list[str]) -> int:
    upstream = _free_port()
    argv = [*streamlit, *STREAMLIT_GUARDS, "--server.address", "127.0.0.1", "--server.port", str(upstream)]
    child = subprocess.Popen(argv)
    guard = Guard(allowed_hosts(host), upstream)
    server = await asyncio.start_server(guard.handle, host, port, limit=HEAD_LIMIT)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set() and child.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        server.close()
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    return child.returncode or 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.guard", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("streamlit", nargs=argparse.REMAINDER, help="-- then the streamlit command line")
    args = parser.parse_args(argv)
    streamlit = args.streamlit[1:] if args.streamlit[:1] == ["--"] else args.streamlit
    if not streamlit:
        parser.error("give the streamlit command line after --")
    return asyncio.run(serve(args.host, args.port, streamlit))


if __name__ == "__main__":
    sys.exit(main())
