"""The worker's side of a run: claim, heartbeat, progress, finish or fail, and reaping runs whose
worker is gone.

Writes are guarded by the run's ``claim_id``, so a worker that lost its claim (reaped, requeued)
can no longer change the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from backend.store.base import FINISHED_STATUSES, changed_rows, status_moves
from backend.tables import Run, RunMetric, utcnow
from velora_core.contract.plan import dependency_outcome
from velora_core.contract.result import LossPoint, ProgressEvent, RunResult, RunStatus


def claim_run(session: Session, *, run_id: int, worker_host: str, worker_device: str | None) -> str | None:
    """Atomically take a queued run for this worker; returns the claim id, or None if it is not queued.

    A queued run whose cancellation was requested is finished as cancelled instead.
    """
    claim_id = uuid.uuid4().hex
    now = utcnow()
    claimed = session.execute(
        update(Run)
        .where(Run.id == run_id, status_moves(RunStatus.RUNNING), Run.cancel_requested.is_(False))
        .values(
            status=RunStatus.RUNNING,
            claim_id=claim_id,
            worker_host=worker_host,
            worker_device=worker_device,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            attempts=Run.attempts + 1,
            phase="setup",
            step=0,
            message=None,
            error=None,
            result=None,
        )
        .execution_options(synchronize_session=False)
    )
    if changed_rows(claimed) != 1:
        session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                status_moves(RunStatus.CANCELLED, sources=[RunStatus.QUEUED]),
                Run.cancel_requested.is_(True),
            )
            .values(status=RunStatus.CANCELLED, finished_at=now, error="cancelled before it started")
            .execution_options(synchronize_session=False)
        )
        return None
    # A fresh attempt starts its curve afresh (a requeued run's earlier points are discarded).
    session.execute(delete(RunMetric).where(RunMetric.run_id == run_id))
    return claim_id


def heartbeat_run(session: Session, *, run_id: int, claim_id: str) -> bool | None:
    """Prove the worker holding ``claim_id`` is alive. Returns whether cancellation was requested,
    or None when the claim is lost (the run was reaped or requeued)."""
    return session.execute(
        update(Run)
        .where(Run.id == run_id, Run.claim_id == claim_id, Run.status == RunStatus.RUNNING)
        .values(heartbeat_at=utcnow())
        .returning(Run.cancel_requested)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()


def _insert_metrics(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(RunMetric).values(rows).on_conflict_do_nothing(index_elements=["run_id", "step"]))


def record_progress(
    session: Session,
    *,
    run_id: int,
    claim_id: str,
    state: ProgressEvent,
    points: Sequence[ProgressEvent] = (),
) -> bool | None:
    """Store where a run is (``state``: phase, step, message) and its new training ``points``
    (one metrics row per step); also a heartbeat.

    Returns whether cancellation was requested, or None when the claim is lost.
    """
    cancel = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.claim_id == claim_id, Run.status == RunStatus.RUNNING)
        .values(
            heartbeat_at=utcnow(),
            phase=state.phase[:20],
            step=state.step,
            total_steps=state.total_steps,
            message=state.message or None,
        )
        .returning(Run.cancel_requested)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if cancel is None:
        return None
    now = utcnow()
    rows = {
        e.step: {
            "run_id": run_id,
            "step": e.step,
            "loss": e.loss,
            "lr": e.lr,
            "tokens_per_s": e.tokens_per_s,
            "step_time_s": e.step_time_s,
            "memory_allocated_bytes": e.memory_allocated_bytes,
            "recorded_at": now,
        }
        for e in points
    }
    _insert_metrics(session, list(rows.values()))
    return cancel


def finish_run(
    session: Session, *, run_id: int, claim_id: str, result: RunResult, worker_device: str | None = None
) -> bool:
    """Record a run's result. False when the claim was lost (requeued elsewhere); a run the reaper
    failed by mistake (its worker was slow, not dead) still takes its real result."""
    values: dict[str, Any] = {
        "status": result.status,
        # A stop asked for with a reason (the worker shutting down) keeps that reason.
        "error": func.coalesce(Run.error, result.error)
        if result.status == RunStatus.CANCELLED
        else result.error,
        "result": result.model_dump(mode="json"),
        "artifact_path": result.artifact_path,
        "finished_at": utcnow(),
        "heartbeat_at": utcnow(),
        "phase": "done",
        "step": result.steps_done,
    }
    if worker_device:
        values["worker_device"] = worker_device
    done = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            Run.claim_id == claim_id,
            status_moves(result.status, sources=[RunStatus.RUNNING, RunStatus.FAILED]),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if changed_rows(done) != 1:
        return False
    _insert_metrics(session, [_loss_point_row(run_id, p) for p in result.loss_curve])
    return True


def _loss_point_row(run_id: int, point: LossPoint) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": point.step,
        "loss": point.loss,
        "lr": point.lr,
        "tokens_per_s": None,
        "step_time_s": None,
        "memory_allocated_bytes": None,
        "recorded_at": utcnow(),
    }


def fail_run(session: Session, *, run_id: int, claim_id: str, error: str) -> bool:
    """Mark a claimed run failed (the engine raised, or the worker gave up on it)."""
    done = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            Run.claim_id == claim_id,
            status_moves(RunStatus.FAILED, sources=[RunStatus.RUNNING]),
        )
        .values(status=RunStatus.FAILED, error=error, finished_at=utcnow(), phase="done")
        .execution_options(synchronize_session=False)
    )
    return changed_rows(done) == 1


@dataclass
class AbandonOutcome:
    """What became of runs whose worker is gone."""

    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def _abandon(
    session: Session,
    *,
    candidates: Select,
    guard: list[Any],
    reason: str,
    requeue: bool,
    max_attempts: int,
) -> AbandonOutcome:
    outcome = AbandonOutcome()
    now = utcnow()
    for row in session.execute(candidates).all():
        lost = f"worker lost: {row.worker_host or 'unknown worker'} {reason}"
        values: dict[str, Any]
        if row.cancel_requested:
            values, bucket = (
                {"status": RunStatus.CANCELLED, "error": f"cancelled ({lost})", "finished_at": now},
                "cancelled",
            )
        elif requeue and row.attempts < max_attempts:
            values = {
                "status": RunStatus.QUEUED,
                "claim_id": None,
                "dispatched_at": None,
                "heartbeat_at": None,
                "phase": None,
                "message": f"requeued after attempt {row.attempts} of {max_attempts}: {lost}",
            }
            bucket = "requeued"
        else:
            suffix = f" (gave up after {row.attempts} attempts)" if requeue else ""
            values = {"status": RunStatus.FAILED, "error": lost + suffix, "finished_at": now}
            bucket = "failed"
        moved = status_moves(values["status"], sources=[RunStatus.RUNNING])
        where = [Run.id == row.id, moved, Run.claim_id == row.claim_id, *guard]
        changed = session.execute(
            update(Run).where(*where).values(**values).execution_options(synchronize_session=False)
        )
        if changed_rows(changed) == 1:
            getattr(outcome, bucket).append(row.id)
    return outcome


_ABANDON_COLUMNS = (
    Run.id,
    Run.claim_id,
    Run.worker_host,
    Run.attempts,
    Run.cancel_requested,
    Run.heartbeat_at,
)


def reap_lost_runs(
    session: Session, *, heartbeat_timeout_s: float, requeue: bool, max_attempts: int
) -> AbandonOutcome:
    """Fail (or requeue) running runs whose worker has not sent a heartbeat within the timeout.

    Safe to call from many processes at once: each change is conditional on the run still being
    stale and held by the same claim.
    """
    stale_before = utcnow() - timedelta(seconds=heartbeat_timeout_s)
    candidates = select(*_ABANDON_COLUMNS).where(
        Run.status == RunStatus.RUNNING, Run.heartbeat_at < stale_before
    )
    return _abandon(
        session,
        candidates=candidates,
        guard=[Run.heartbeat_at < stale_before],
        reason=f"(no heartbeat for over {heartbeat_timeout_s:g} s)",
        requeue=requeue,
        max_attempts=max_attempts,
    )


def release_worker_runs(
    session: Session, *, worker_name: str, reason: str, requeue: bool, max_attempts: int
) -> AbandonOutcome:
    """Fail (or requeue) the running runs of a worker known to be gone (e.g. stopped by ``up``)."""
    candidates = select(*_ABANDON_COLUMNS).where(
        Run.status == RunStatus.RUNNING, Run.worker_host == worker_name
    )
    return _abandon(
        session, candidates=candidates, guard=[], reason=reason, requeue=requeue, max_attempts=max_attempts
    )


def stop_worker_runs(session: Session, *, worker_name: str, reason: str) -> list[int]:
    """Ask the running runs of a worker that is shutting down to stop; they finish as cancelled
    with ``reason`` as their error (within a training step of the worker noticing)."""
    return list(
        session.execute(
            update(Run)
            .where(
                Run.status == RunStatus.RUNNING,
                Run.worker_host == worker_name,
                Run.cancel_requested.is_(False),
            )
            .values(cancel_requested=True, error=reason)
            .returning(Run.id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )


def settle_waiting_runs(session: Session) -> list[tuple[int, str]]:
    """Decide the waiting runs whose dependencies have all finished: queue those whose bases all
    completed, fail (or cancel) those with a base that did not, naming it. Returns (id, queue) of the
    runs now queued, for the caller to dispatch.

    Called after every run that may be a base finishes (by the worker, the API's cancel and every
    reaper pass); conditional on the run still waiting, so concurrent callers agree. Waiting runs are
    few (those of the comparisons in flight), so all are read at once rather than through an index.
    """
    waiting = session.execute(
        select(Run.id, Run.queue, Run.depends_on).where(Run.status == RunStatus.WAITING).order_by(Run.id)
    ).all()
    if not waiting:
        return []
    needed = {dep for row in waiting for dep in row.depends_on or ()}
    bases = {
        row.id: row
        for row in session.execute(
            select(Run.id, Run.method, Run.status, Run.error).where(Run.id.in_(needed))
        ).all()
    }
    ready: list[tuple[int, str]] = []
    now = utcnow()
    for row in waiting:
        values: dict[str, Any] | None = None
        for dep in row.depends_on or ():
            base = bases.get(dep)
            if base is None:
                values = {"status": RunStatus.FAILED, "error": f"its base run {dep} no longer exists"}
                break
            if base.status not in FINISHED_STATUSES:
                values = {}  # still waiting for this one
                break
            outcome = dependency_outcome(f"run {base.id} ({base.method})", base.status, base.error)
            if outcome is not None:
                values = {"status": outcome[0], "error": outcome[1]}
                break
        if values == {}:
            continue
        if values is None:  # every base completed
            values = {"status": RunStatus.QUEUED, "dispatched_at": None, "message": None}
        else:
            values |= {"finished_at": now, "phase": "done"}
        changed = session.execute(
            update(Run)
            .where(Run.id == row.id, status_moves(values["status"], sources=[RunStatus.WAITING]))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if changed_rows(changed) == 1 and values["status"] == RunStatus.QUEUED:
            ready.append((row.id, row.queue))
    return ready


def base_artifacts(session: Session, *, run_id: int) -> list[tuple[int, str, str | None]]:
    """(id, status, artifact path) of each run that ``run_id`` depends on, in its order."""
    needs = session.scalar(select(Run.depends_on).where(Run.id == run_id)) or []
    rows = {
        row.id: row
        for row in session.execute(
            select(Run.id, Run.status, Run.artifact_path).where(Run.id.in_(needs))
        ).all()
    }
    return [
        (dep, rows[dep].status, rows[dep].artifact_path) if dep in rows else (dep, "missing", None)
        for dep in needs
    ]
