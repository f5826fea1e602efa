"""Initial schema: comparisons, runs, run metrics, workers, API tokens, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        ts("created_at", nullable=False),
        ts("last_used_at"),
        ts("revoked_at"),
    )
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("preset", sa.String(100), nullable=True),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        ts("created_at", nullable=False),
    )
    op.create_index("ix_comparisons_created_at", "comparisons", ["created_at"])
    op.create_index("ix_comparisons_spec_hash", "comparisons", ["spec_hash"])
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("scope", sa.String(100), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=False),
        ts("created_at", nullable=False),
        sa.UniqueConstraint("scope", "key", name="uq_idempotency_scope_key"),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.String(255), nullable=False),
        sa.Column("device", sa.String(255), nullable=True),
        ts("started_at", nullable=False),
        ts("last_seen_at", nullable=False),
        ts("stopped_at"),
    )
    op.create_index("ix_workers_last_seen_at", "workers", ["last_seen_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "comparison_id", sa.Integer(), sa.ForeignKey("comparisons.id", ondelete="CASCADE"), nullable=True
        ),
        sa.Column("method", sa.String(50), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(50), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        ts("created_at", nullable=False),
        ts("dispatched_at"),
        ts("started_at"),
        ts("heartbeat_at"),
        ts("finished_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(64), nullable=True),
        sa.Column("worker_host", sa.String(255), nullable=True),
        sa.Column("worker_device", sa.String(255), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("phase", sa.String(20), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("artifact_path", sa.Text(), nullable=True),
    )
    op.create_index("ix_runs_comparison_id", "runs", ["comparison_id"])
    op.create_index("ix_runs_method", "runs", ["method"])
    op.create_index("ix_runs_spec_hash", "runs", ["spec_hash"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_status_heartbeat", "runs", ["status", "heartbeat_at"])
    op.create_table(
        "run_metrics",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("step_time_s", sa.Float(), nullable=True),
        sa.Column("memory_allocated_bytes", sa.BigInteger(), nullable=True),
        ts("recorded_at", nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_metrics")
    op.drop_table("runs")
    op.drop_table("workers")
    op.drop_table("idempotency_keys")
    op.drop_table("comparisons")
    op.drop_table("api_tokens")
