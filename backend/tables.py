"""SQLAlchemy 2.0 models: comparisons, runs, per-step metrics, workers, API tokens, idempotency keys.

Status lives here, not in the broker: a run's row says whether it is queued, running or finished,
which worker holds it (``claim_id``) and when that worker last proved it was alive (``heartbeat_at``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSONType}


class Comparison(Base):
    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str | None] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    runs: Mapped[list[Run]] = relationship(back_populates="comparison", order_by="Run.id")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_runs_comparison_id", "comparison_id"),
        Index("ix_runs_submitted_by_status", "submitted_by", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int | None] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(50), index=True)
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    queue: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), index=True)
    #: ``method`` (a run of the request) or ``base`` (it makes a base model for others; plan.py).
    role: Mapped[str] = mapped_column(String(20), default="method", server_default="method")
    #: Ids of the runs this one needs completed first (its base model's pre-training); a run waits
    #: for them in status ``waiting``. A short list, read with the run: no join on the polled reads.
    depends_on: Mapped[list[int] | None] = mapped_column(JSONType, default=list)
    #: Who queued it (``token:<id>``, or ``localhost`` for a trusted local client): per-token quotas.
    submitted_by: Mapped[str | None] = mapped_column(String(100))

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_id: Mapped[str | None] = mapped_column(String(64))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_device: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    phase: Mapped[str | None] = mapped_column(String(20))
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)

    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    artifact_path: Mapped[str | None] = mapped_column(Text)

    comparison: Mapped[Comparison | None] = relationship(back_populates="runs")


class RunMetric(Base):
    """One point of a run's training curve (one row per recorded step, unique per run)."""

    __tablename__ = "run_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    step_time_s: Mapped[float | None] = mapped_column(Float)
    memory_allocated_bytes: Mapped[int | None] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker process's liveness record (works with every broker, unlike Celery's pidbox)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stopped_at: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 (tokens are 256-bit random, so no slow hash is needed)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class IdempotencyKey(Base):
    """A POST already answered: a retry with the same key and body gets the same resource back."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotency_scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(100))  # "POST /comparisons" and the caller's identity
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
