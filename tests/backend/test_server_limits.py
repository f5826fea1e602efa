"""Bounds before authentication (issue 22.5), on the API as ``velora-bench up`` starts it: a large or
crowded request head is refused at once, and half-sent requests do not hold connections for ever."""

from __future__ import annotations

import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.worker.conftest import stack

DEADLINES = {"VELORA_HTTP_HEAD_TIMEOUT_S": "2", "VELORA_HTTP_BODY_TIMEOUT_S": "2"}


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within_s``, reading what it sends."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def _send_huge_header(port: int, size: int) -> bytes:
    """Send a request whose one header is ``size`` bytes; what the server answered (b"" if nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        with contextlib.suppress(OSError):  # the server may close while the header is still going out
            sock.sendall(head + b"a" * size + b"\r\n\r\n")
        with contextlib.suppress(OSError):
            return sock.recv(65536)
    return b""


def test_a_huge_header_is_refused_at_once_and_others_are_served(tmp_path: Path) -> None:
    """A 100 MB header took 15.5 s to parse and an authenticated request waited 10.5 s behind it."""
    with stack("sqlite", tmp_path, **DEADLINES) as services:
        with ThreadPoolExecutor(3) as pool:
            started = time.monotonic()
            huge = [pool.submit(_send_huge_header, services.port, 20_000_000) for _ in range(3)]
            time.sleep(0.1)
            read = services.client.get("/api/v1/runs")
            read_s = time.monotonic() - started
            answers = [f.result() for f in huge]
            huge_s = time.monotonic() - started
        assert read.status_code == 200 and read_s < 1.0, read_s
        assert all(a == b"" or a.startswith(b"HTTP/1.1 400") for a in answers), [a[:40] for a in answers]
        assert huge_s < 5.0, huge_s
        crowded = {f"X-H{i}": "1" for i in range(150)}
        response = services.client.get("/api/v1/runs", headers=crowded)
        assert response.status_code == 431 and "VELORA_HTTP_MAX_HEADERS" in response.json()["detail"]


def test_half_sent_requests_are_closed_after_their_deadline(tmp_path: Path) -> None:
    """1,100 half-sent requests were still open after 30 s; now each closes after its deadline."""
    with stack("sqlite", tmp_path, **DEADLINES) as services:
        port = services.port
        sockets: list[socket.socket] = []
        try:
            for i in range(60):
                sock = socket.create_connection(("127.0.0.1", port))
                if i % 3 == 0:  # nothing at all
                    pass
                elif i % 3 == 1:  # half a request head, never finished
                    sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                else:  # a complete head, but a body that never arrives in full
                    head = b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                    sock.sendall(head + b'Content-Type: application/json\r\n\r\n{"workload"')
                sockets.append(sock)
            started = time.monotonic()
            # Meanwhile, a complete request is served at once.
            assert services.client.get("/api/v1/runs").status_code == 200
            closed = [_closed_by_server(sock, within_s=8.0) for sock in sockets]
            assert all(closed), f"{closed.count(False)} of {len(closed)} connections still open"
            assert time.monotonic() - started < 10
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
