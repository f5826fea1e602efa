"""Real services for the service tests: PostgreSQL schemas, Redis prefixes, API and worker processes.

Nothing is mocked. PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) tests skip when the
service is unreachable, and fail instead when ``CI`` is set. Every test gets its own PostgreSQL
schema, Redis key prefix, data directory and ports, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

PG_ADMIN_URL = os.environ.get("VELORA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("VELORA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def unavailable(what: str) -> None:
    """Skip the test, or fail it on CI (where the services must be up)."""
    message = f"{what} is not reachable"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is an error, not a skip)")
    pytest.skip(message)


def _tcp_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the test database; yields a URL whose ``search_path`` is that schema."""
    from sqlalchemy import create_engine, text

    if not _tcp_open("127.0.0.1", 5432):
        unavailable("PostgreSQL on 127.0.0.1:5432")
    schema = f"vb_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # reachable port but unusable server
        admin.dispose()
        unavailable(f"PostgreSQL ({exc})")
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    try:
        yield f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def redis_prefix(url: str = REDIS_TEST_URL) -> Iterator[str]:
    """A unique key prefix on the test Redis; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        unavailable(f"Redis at {url}")
    prefix = f"vbtest-{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        with contextlib.suppress(redis.RedisError):  # a test may have stopped its private Redis
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_api_token() -> str:
    """A token for ``VELORA_API_TOKEN``: the API provisions it, and clients present it (every client
    must; loopback is not trusted)."""
    return f"vb_test-{secrets.token_urlsafe(24)}"


def service_env(**overrides: str) -> dict[str, str]:
    """The environment for a service process: ours without any ambient VELORA_* / DATABASE_URL / REDIS_URL."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VELORA_") and k not in ("DATABASE_URL", "REDIS_URL", "CUDA_VISIBLE_DEVICES")
    }
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ServiceProcess:
    """A child process in its own process group, logging to a file; :meth:`stop` always reaps it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (main process and its pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill(signal.SIGKILL)
        self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_api(env: dict[str, str], port: int, log_dir: Path) -> ServiceProcess:
    from backend.launcher import api_command

    argv = api_command(host="127.0.0.1", port=port)
    api = ServiceProcess("api", argv, env, log_dir / f"api-{port}.log")

    def ready() -> bool:
        if not api.alive():
            pytest.fail(f"API process died:\n{api.log_tail()}")
        return _health_answers(port)

    try:
        wait_until(
            ready, timeout=60, message=lambda: f"API on port {port} did not answer /health:\n{api.log_tail()}"
        )
    except BaseException:
        api.stop()
        raise
    return api


def _health_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def start_worker(env: dict[str, str], name: str, log_dir: Path, queues: str = "gpu,cpu") -> ServiceProcess:
    """A worker started as `velora-bench up` starts it."""
    from backend.launcher import worker_command

    argv = worker_command(name, queues)
    return ServiceProcess("worker", argv, env, log_dir / f"worker-{name.split('@')[0]}.log")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.25,
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail with ``message`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s: {message() if callable(message) else message}")
        time.sleep(interval)


def wait_for_worker(client: httpx.Client, name: str, worker: ServiceProcess, timeout: float = 60) -> None:
    def ready() -> bool:
        if not worker.alive():
            pytest.fail(f"worker {name} died:\n{worker.log_tail()}")
        body = client.get("/api/v1/health").json()
        return any(w["name"] == name for w in body["workers"].get("list", []))

    wait_until(ready, timeout=timeout, message=lambda: f"worker {name} never reported:\n{worker.log_tail()}")


def cpu_smoke_overrides(**extra: Any) -> dict[str, Any]:
    """``cpu-smoke`` shrunk for CI: a few steps, a small evaluation (the preset's own shape)."""
    overrides: dict[str, Any] = {
        "steps": 4,
        "seq_len": 64,
        "micro_batch": 4,
        "eval": {"max_examples": 8, "num_shots": 1},
        "pretrain": {"steps": 6, "seq_len": 64, "micro_batch": 4, "eval": {"max_examples": 4}},
    }
    overrides.update(extra)
    return overrides
