"""Comparisons: create one with its queued runs, read one, list them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from backend.store.runs import add_planned_runs
from backend.tables import Comparison, Run
from velora_core.contract.hashing import content_hash
from velora_core.contract.spec import ComparisonSpec


def create_comparison(
    session: Session,
    *,
    spec: ComparisonSpec,
    queue: str,
    preset: str | None = None,
    submitted_by: str | None = None,
) -> Comparison:
    """Add a comparison, one run per (method, seed), and a base run for each pre-training they need."""
    payload = spec.model_dump(mode="json")
    comparison = Comparison(
        name=spec.name,
        preset=preset,
        spec=payload,
        spec_hash=content_hash(payload),
    )
    session.add(comparison)
    session.flush()
    add_planned_runs(
        session, specs=spec.runs(), queue=queue, comparison_id=comparison.id, submitted_by=submitted_by
    )
    session.refresh(comparison, ["runs"])
    return comparison


def get_comparison(session: Session, *, comparison_id: int) -> Comparison | None:
    """A comparison with its runs loaded."""
    return session.get(Comparison, comparison_id, options=[selectinload(Comparison.runs)])


def list_comparisons(session: Session, *, offset: int, limit: int) -> tuple[Sequence[Comparison], int]:
    count = session.scalar(select(func.count()).select_from(Comparison)) or 0
    rows = session.scalars(
        select(Comparison)
        .options(selectinload(Comparison.runs).load_only(Run.id, Run.status, Run.method))
        .order_by(Comparison.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return rows, count
