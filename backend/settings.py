"""Service settings, read once from the environment (``Settings`` singleton, as fastapi's template).

Everything has a default that makes one machine work with nothing but the Python packages:
an SQLite database and an SQLite-backed Celery broker under ``VELORA_DATA_DIR``. ``DATABASE_URL``
(PostgreSQL) and ``REDIS_URL`` switch to the cluster shape.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from velora_core.contract.spec import MAX_MICRO_BATCH, MAX_SEQ_LEN, MAX_STEPS

TASK_RUN_BENCHMARK = "velora.run_benchmark"
#: Host names the API always answers to: a DNS-rebinding page's Host header is its own domain, never these.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class Settings(BaseSettings):
    """Read from ``VELORA_*`` variables (plus ``DATABASE_URL`` and ``REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="VELORA_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default=Path(".velora-bench"), description="Embedded database, broker and artifacts."
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "VELORA_DATABASE_URL"),
        description="SQLAlchemy URL; default: SQLite file <data_dir>/velora.db.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "VELORA_REDIS_URL"),
        description="Redis broker (cluster shape); default: kombu's SQLAlchemy transport on SQLite.",
    )
    redis_key_prefix: str = Field(default="", description="Prefix for every broker key in Redis (isolation).")
    artifact_dir: Path | None = Field(default=None, description="Where workers keep run artifacts.")

    # Authentication.
    api_token: SecretStr | None = Field(default=None, description="Provisioned at start (scripts, compose).")
    auth_reads: bool = Field(default=True, description="Reads need a token too (except trusted localhost).")
    token_cache_s: float = Field(
        default=5.0, ge=0, description="How long a checked token is trusted before it is looked up again."
    )
    trust_localhost: bool = Field(
        default=False,
        description="Opt-out for a single-user laptop: loopback clients without proxy headers need no token. "
        "Then every local process, and any web page that gets a browser to send to 127.0.0.1, may write.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names the API answers to besides localhost, 127.0.0.1 and ::1 (a guard "
        "against DNS rebinding); comma-separated, `*.example.com` matches subdomains, `*` any host. A "
        "browser write whose Origin is one of these names (or the request's own host) is accepted.",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    # Request limits (tighter than the spec's own bounds if a deployment wants).
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    max_steps: int = Field(default=MAX_STEPS, ge=1, le=MAX_STEPS)
    max_micro_batch: int = Field(default=MAX_MICRO_BATCH, ge=1, le=MAX_MICRO_BATCH)
    max_seq_len: int = Field(default=MAX_SEQ_LEN, ge=8, le=MAX_SEQ_LEN)
    max_runs_per_comparison: int = Field(default=64, ge=1, le=256)
    fit_timeout_s: float = Field(
        default=600.0, gt=0, le=3600, description="Longest a POST /fit prediction may run (then 504)."
    )
    fit_warm_spare: bool = Field(
        default=True,
        description="Keep one POST /fit prediction process started, its libraries imported, waiting for "
        "the next request (from the first POST /fit on), so a request does not wait ~9 s for torch "
        "and transformers to import (docs/service.md). It costs the waiting process's memory, 469 MiB "
        "resident with the CPU build of torch 2.13, and with each prediction a CPU core for ~10 s: "
        "the next spare's start. false: each request starts its own process.",
    )
    # The HTTP server (backend.api.serve): bounds on what a client sends before it is authenticated.
    http_max_head_bytes: int = Field(
        default=16_384, ge=1024, le=1_048_576, description="Largest request head (request line + headers)."
    )
    http_max_headers: int = Field(
        default=100, ge=10, le=10_000, description="Most headers a request may have."
    )
    http_head_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="A connection sends a complete request head within this."
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="A request's body arrives within this of its head."
    )
    http_max_connections: int = Field(
        default=1000,
        ge=1,
        description="Connections served at once (uvicorn's limit_concurrency; 503 beyond).",
    )
    http_keep_alive_s: int = Field(
        default=5, ge=1, le=600, description="Idle keep-alive connections close after this."
    )
    max_queued_runs_per_token: int = Field(
        default=1000,
        ge=1,
        description="Runs one token (or trusted localhost) may have queued or waiting at once; a "
        "submission past it gets 429 with Retry-After.",
    )
    max_submissions_per_minute: int = Field(
        default=60,
        ge=1,
        description="Accepted POST /comparisons and POST /runs per token per minute, per API process "
        "(429 with Retry-After beyond).",
    )
    health_cache_s: float = Field(
        default=1.5,
        ge=0,
        le=10,
        description="/health answers from a check at most this old: probes cannot make it expensive.",
    )
    api_threads: int = Field(
        default=4,
        ge=1,
        le=200,
        description="Requests handled at once; more only contend for the GIL (tail latency), fewer queue.",
    )

    # Workers, heartbeats and the reaper.
    default_queue: Literal["gpu", "cpu"] = Field(default="gpu", description="Queue for device='auto' runs.")
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    reaper_interval_s: float = Field(default=10.0, gt=0)
    reaper_enabled: bool = True
    requeue_lost_runs: bool = Field(
        default=False, description="Requeue a run whose worker was lost, else fail it."
    )
    max_attempts: int = Field(default=3, ge=1, le=100)
    redispatch_after_s: float = Field(
        default=30.0, gt=0, description="Re-send runs never handed to the broker."
    )
    redeliver_after_s: float = Field(
        default=300.0,
        gt=0,
        description="Re-send runs sent to the broker this long ago and still unclaimed, when the broker "
        "holds fewer messages than there are such runs (a flushed, evicted or failed-over broker).",
    )
    metrics_flush_s: float = Field(default=1.0, ge=0)
    run_time_limit_s: float = Field(default=48 * 3600.0, gt=0)
    worker_max_tasks_per_child: int = Field(
        default=1, ge=0, description="1: every run in a fresh process (clean memory peaks); 0: reuse."
    )
    worker_check_fit: bool = Field(
        default=True,
        description="Predict each run's peak memory before it starts (the fit machinery) and store a run "
        "that cannot fit its device as out_of_memory, unallocated.",
    )
    worker_host_reserve_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="Host RAM a CPU run leaves to everything else (database, services, the runtime).",
    )
    worker_max_rss: int | None = Field(
        default=None,
        ge=64 * 1024**2,
        description="Data-segment limit (RLIMIT_DATA) of a training process, in bytes; default: for CPU "
        "runs the host's RAM minus worker_host_reserve_bytes, none for GPU runs.",
    )
    worker_max_restarts: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="`velora-bench up` restarts a worker that died at most this often within "
        "worker_restart_window_s (with back-off), then stops everything.",
    )
    worker_restart_window_s: float = Field(default=600.0, gt=0)
    auto_migrate: bool = Field(default=True, description="Apply Alembic migrations when a process starts.")

    # Local files named by specs submitted through the API (the in-process CLI reads any path).
    local_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders (separated by the OS path separator, ':') under which local models and "
        "datasets of submitted specs must lie; default: <data_dir>/models and <data_dir>/datasets.",
    )
    max_dataset_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Largest local dataset (a file, or a folder's files) a spec may name.",
    )

    @field_validator("database_url", "redis_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, with ``postgresql://`` mapped to the psycopg 3 driver."""
        url = self.database_url or f"sqlite:///{self.resolved_data_dir / 'velora.db'}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url

    @property
    def broker_url(self) -> str:
        return self.redis_url or f"sqla+sqlite:///{self.resolved_data_dir / 'broker.sqlite'}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.resolved_data_dir / "artifacts").expanduser().resolve()

    def queue_for_device(self, device: str) -> str:
        """The Celery queue (device class) a run with ``spec.device`` goes to."""
        if device == "cpu":
            return "cpu"
        if device.startswith("cuda"):
            return "gpu"
        return self.default_queue

    @field_validator("local_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @property
    def resolved_local_roots(self) -> list[Path]:
        """The folders local paths must lie under, with symlinks resolved."""
        roots = self.local_roots or [self.resolved_data_dir / "models", self.resolved_data_dir / "datasets"]
        return [root.expanduser().resolve() for root in roots]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
