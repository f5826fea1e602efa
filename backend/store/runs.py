"""Runs from the API's side: create, read, list, dispatch to the broker and cancel."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from backend.store.base import FINISHED_STATUSES, StoreError, _plain_rows
from backend.tables import Run, utcnow
from velora_core.contract.plan import plan_runs
from velora_core.contract.result import RunStatus, allowed_sources
from velora_core.contract.spec import RunSpec


def add_planned_runs(
    session: Session,
    *,
    specs: Sequence[RunSpec],
    queue: str,
    comparison_id: int | None = None,
    submitted_by: str | None = None,
) -> list[Run]:
    """Add the runs of ``specs`` and a base run for each pre-training they need (``plan_runs``),
    flushed, in plan order (bases first). A run with dependencies starts ``waiting``; the rest ``queued``.
    ``submitted_by``: the caller (``Principal.scope``), counted by :func:`count_unstarted_runs`.
    """
    rows: list[Run] = []
    for planned in plan_runs(specs):
        spec = planned.spec
        needs = [rows[i].id for i in planned.depends_on]
        run = Run(
            comparison_id=comparison_id,
            method=spec.method,
            seed=spec.seed,
            spec=spec.model_dump(mode="json"),
            spec_hash=spec.spec_hash(),
            queue=queue,
            status=RunStatus.WAITING if needs else RunStatus.QUEUED,
            role=planned.role,
            depends_on=needs,
            submitted_by=submitted_by,
            attempts=0,
            cancel_requested=False,
            step=0,
            total_steps=spec.steps or 0,
        )
        session.add(run)
        session.flush()  # its id, for the runs that depend on it
        rows.append(run)
    return rows


def dispatchable(runs: Sequence[Run]) -> list[tuple[int, str]]:
    """(id, queue) of the ``runs`` that may go to the broker now (queued, not waiting)."""
    return [(run.id, run.queue) for run in runs if run.status == RunStatus.QUEUED]


def get_run(session: Session, *, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def get_run_status(session: Session, *, run_id: int) -> str | None:
    return session.scalar(select(Run.status).where(Run.id == run_id))


#: Everything about a run but its (large) spec and result: what lists and polls need.
RUN_SUMMARY_COLUMNS = tuple(
    c for c in Run.__table__.columns if c.name not in ("spec", "result", "claim_id", "submitted_by")
)


def list_runs(
    session: Session,
    *,
    offset: int,
    limit: int,
    status: Sequence[str] | None = None,
    method: str | None = None,
    comparison_id: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Runs, newest first, as dicts of :data:`RUN_SUMMARY_COLUMNS` (no ORM objects: this is polled)."""
    count_statement, page_statement = _run_list_statements(
        bool(status), bool(method), comparison_id is not None
    )
    params: dict[str, Any] = {"status": list(status or ()), "method": method, "comparison_id": comparison_id}
    count = session.connection().execute(count_statement, params).scalar_one()
    rows = _plain_rows(session, page_statement, {**params, "offset": offset, "limit": limit})
    return rows, count


# The polled statements are built once, with bound parameters: building a select and its cache key
# on every request cost as much as running it (benchmarks/api_load.py).


@functools.cache
def _run_list_statements(by_status: bool, by_method: bool, by_comparison: bool) -> tuple[Select, Select]:
    where: list[ColumnElement[bool]] = []
    if by_status:
        where.append(Run.status.in_(bindparam("status", expanding=True)))
    if by_method:
        where.append(Run.method == bindparam("method"))
    if by_comparison:
        where.append(Run.comparison_id == bindparam("comparison_id"))
    count = select(func.count()).select_from(Run).where(*where)
    page = (
        select(*RUN_SUMMARY_COLUMNS)
        .where(*where)
        .order_by(Run.id.desc())
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )
    return count, page


def mark_dispatched(session: Session, *, run_ids: Sequence[int]) -> None:
    if run_ids:
        session.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.status == RunStatus.QUEUED)
            .values(dispatched_at=utcnow())
        )


def runs_to_dispatch(
    session: Session, *, created_before: datetime, limit: int = 500
) -> list[tuple[int, str]]:
    """Queued runs that never reached the broker: (id, queue). Requeued runs qualify at once."""
    rows = session.execute(
        select(Run.id, Run.queue)
        .where(
            Run.status == RunStatus.QUEUED,
            Run.dispatched_at.is_(None),
            or_(Run.created_at < created_before, Run.attempts > 0),
        )
        .order_by(Run.id)
        .limit(limit)
    ).all()
    return [(row.id, row.queue) for row in rows]


def request_cancel(session: Session, *, run_id: int) -> Run:
    """Cancel a queued run at once; ask a running one to stop (its worker does, within a step).

    Raises:
        LookupError: no such run.
        StoreError: the run has already finished.
    """
    run = session.get(Run, run_id, with_for_update=True)
    if run is None:
        raise LookupError(run_id)
    if run.status in FINISHED_STATUSES:
        raise StoreError(f"Run {run_id} has already finished ({run.status}); there is nothing to cancel")
    run.cancel_requested = True
    if run.status in allowed_sources(RunStatus.CANCELLED, [RunStatus.QUEUED, RunStatus.WAITING]):
        run.status = RunStatus.CANCELLED
        run.finished_at = utcnow()
        run.error = "cancelled before it started"
    session.flush()
    return run


def plan_size(specs: Sequence[RunSpec]) -> int:
    """How many runs ``add_planned_runs`` would add for ``specs`` (base runs included)."""
    return len(plan_runs(specs))


def count_unstarted_runs(session: Session, *, submitted_by: str) -> int:
    """Runs ``submitted_by`` queued that have not started yet (queued or waiting): its queue quota."""
    count = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.submitted_by == submitted_by, Run.status.in_((RunStatus.QUEUED, RunStatus.WAITING)))
    )
    return count or 0


def sent_queued_counts(session: Session) -> dict[str, int]:
    """Per queue, the runs handed to the broker and not yet claimed: what the broker should hold."""
    rows = session.execute(
        select(Run.queue, func.count())
        .where(Run.status == RunStatus.QUEUED, Run.dispatched_at.is_not(None))
        .group_by(Run.queue)
    ).all()
    return {queue: count for queue, count in rows}


def runs_to_redeliver(
    session: Session, *, queues: Sequence[str], sent_before: datetime, limit: int = 500
) -> list[tuple[int, str]]:
    """Queued runs of ``queues`` sent to the broker before ``sent_before`` and still unclaimed: (id, queue)."""
    rows = session.execute(
        select(Run.id, Run.queue)
        .where(Run.status == RunStatus.QUEUED, Run.queue.in_(queues), Run.dispatched_at < sent_before)
        .order_by(Run.id)
        .limit(limit)
    ).all()
    return [(row.id, row.queue) for row in rows]
