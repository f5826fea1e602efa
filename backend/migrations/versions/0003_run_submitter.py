"""Who submitted each run (per-token quotas, issue 22.7).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("submitted_by", sa.String(100), nullable=True))
        batch.create_index("ix_runs_submitted_by_status", ["submitted_by", "status"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_submitted_by_status")
        batch.drop_column("submitted_by")
