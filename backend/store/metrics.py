"""A run's training curve as the API reads it: a page of metric points with the run's status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, bindparam, select, true
from sqlalchemy.orm import Session

from backend.store.base import _plain_rows
from backend.tables import Run, RunMetric

METRIC_COLUMNS = tuple(c for c in RunMetric.__table__.columns if c.name not in ("run_id", "recorded_at"))


def _metrics_page_statement() -> Select:
    page = (
        select(*METRIC_COLUMNS)
        .where(RunMetric.run_id == bindparam("run_id"), RunMetric.step > bindparam("after_step"))
        .order_by(RunMetric.step)
        .limit(bindparam("limit"))
        .subquery()
    )
    # The run outer-joined to the page of its points: its status and the points in one query.
    return (
        select(Run.status.label("run_status"), *page.c)
        .select_from(Run)
        .outerjoin(page, true())
        .where(Run.id == bindparam("run_id"))
        .order_by(page.c.step)
    )


_METRICS_PAGE = _metrics_page_statement()


def list_metrics(
    session: Session, *, run_id: int, after_step: int, limit: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """The run's status (None: no such run) and its metrics after ``after_step``, in step order, as
    dicts of :data:`METRIC_COLUMNS`: one query."""
    rows = _plain_rows(session, _METRICS_PAGE, {"run_id": run_id, "after_step": after_step, "limit": limit})
    if not rows:
        return None, []
    status = rows[0]["run_status"]
    for row in rows:
        del row["run_status"]
    # A run without points after ``after_step`` comes back as one row of NULL point columns.
    return status, [row for row in rows if row["step"] is not None]
