"""A real service stack per test: the API under uvicorn and Celery worker processes, on either
SQLite + the embedded SQLite broker, or PostgreSQL + Redis. Processes are always cleaned up."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend import store
from backend.db import Database
from backend.migrate import upgrade
from backend.settings import Settings
from tests.backend.harness import (
    ServiceProcess,
    free_port,
    postgres_schema,
    redis_prefix,
    service_env,
    start_api,
    start_worker,
    wait_for_worker,
    wait_until,
)

#: Fast heartbeats so that a lost worker is noticed within seconds, not a minute.
FAST = {
    "VELORA_HEARTBEAT_INTERVAL_S": "1",
    "VELORA_HEARTBEAT_TIMEOUT_S": "6",
    "VELORA_REAPER_INTERVAL_S": "1",
    "VELORA_REDISPATCH_AFTER_S": "2",
    "VELORA_METRICS_FLUSH_S": "0.2",
}


class Stack:
    """An API process, any number of workers, an authenticated HTTP client and the database."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.settings = Settings(
            **{
                k.removeprefix("VELORA_").lower(): v
                for k, v in env.items()
                if k.startswith("VELORA_") and k != "VELORA_API_TOKEN"
            },
            database_url=env.get("DATABASE_URL"),
            redis_url=env.get("REDIS_URL"),
        )
        self.db = Database(self.settings.sqlalchemy_url)
        upgrade(self.db)
        with self.db.write_session() as session:
            _, self.token = store.create_token(session, name="tests")
        self.processes: list[ServiceProcess] = []
        self.port = free_port()
        self.api = start_api(env, self.port, tmp_path)
        self.processes.append(self.api)
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def worker(self, **env: str) -> tuple[ServiceProcess, str]:
        """Start a worker and wait until it reports in /health."""
        name = f"w{uuid.uuid4().hex[:6]}@test"
        process = start_worker({**self.env, **env}, name, self.tmp_path)
        self.processes.append(process)
        wait_for_worker(self.client, name, process)
        return process, name

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path.name}) ---\n{p.log_tail(3000)}" for p in self.processes)

    def run(self, run_id: int) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_run(self, run_id: int, predicate: Any, *, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if predicate(run) else None

        return wait_until(
            check, timeout=timeout, message=lambda: f"run {run_id} {what}: {self.run(run_id)}\n{self.logs()}"
        )

    def close(self) -> None:
        self.client.close()
        for process in reversed(self.processes):
            process.stop()
        self.db.dispose()


@contextlib.contextmanager
def stack(kind: str, tmp_path: Path, **env: str) -> Iterator[Stack]:
    """``kind``: ``sqlite`` (embedded default) or ``postgres`` (PostgreSQL + Redis)."""
    base = service_env(VELORA_DATA_DIR=str(tmp_path / "data"), **FAST, **env)
    with contextlib.ExitStack() as exits:
        if kind == "postgres":
            base["DATABASE_URL"] = exits.enter_context(postgres_schema())
            base.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
            base["VELORA_REDIS_KEY_PREFIX"] = exits.enter_context(redis_prefix(base["REDIS_URL"]))
        services = Stack(tmp_path, base)
        try:
            yield services
        finally:
            services.close()


def long_run(steps: int = 100_000, **changes: Any) -> dict[str, Any]:
    """A run of the tiny model long enough to be interrupted (a step takes milliseconds)."""
    body: dict[str, Any] = {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "dataset": {"source": "builtin", "name": "stdlib-corpus"},
        "method": "full",
        "seq_len": 32,
        "micro_batch": 2,
        "steps": steps,
        "device": "cpu",
        "eval": {"metric": "none"},
        "save_artifact": False,
        "progress_every": 1,
    }
    body.update(changes)
    return body


@pytest.fixture
def engine_available() -> None:
    try:
        import velora_core.bench.engine  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the benchmark engine is not importable: {exc}")
