"""The store: every read and write of comparisons, runs, metrics, workers and tokens.

Used by the API and the worker alike. Functions take the session first and everything else by
keyword; they flush but never commit (the caller owns the transaction). Worker-side writes are
guarded by the run's ``claim_id``, so a worker that lost its claim (reaped, requeued) can no longer
change the run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, or_, select, true, update
from sqlalchemy.orm import Session, selectinload

from backend.models import ApiToken, Comparison, IdempotencyKey, Run, RunMetric, Worker, utcnow
from velora_core.result import LossPoint, ProgressEvent, RunResult, RunStatus
from velora_core.spec import ComparisonSpec, RunSpec

QUEUED, RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value
FINISHED_STATUSES = tuple(s.value for s in RunStatus if s.finished)
TOKEN_PREFIX = "vb_"


class StoreError(Exception):
    """A request the store refuses (the message says why, for a person)."""


# --- comparisons and runs ----------------------------------------------------------------------


def _new_run(*, spec: RunSpec, queue: str) -> Run:
    return Run(
        method=spec.method,
        seed=spec.seed,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.spec_hash(),
        queue=queue,
        status=QUEUED,
        attempts=0,
        cancel_requested=False,
        step=0,
        total_steps=spec.steps or 0,
    )


def create_comparison(
    session: Session, *, spec: ComparisonSpec, queue: str, preset: str | None = None
) -> Comparison:
    """Add a comparison and one queued run per (method, seed)."""
    payload = spec.model_dump(mode="json")
    comparison = Comparison(
        name=spec.name,
        preset=preset,
        spec=payload,
        spec_hash=hashlib.sha256(_canonical_json(payload).encode()).hexdigest()[:16],
    )
    comparison.runs = [_new_run(spec=run_spec, queue=queue) for run_spec in spec.runs()]
    session.add(comparison)
    session.flush()
    return comparison


def create_run(session: Session, *, spec: RunSpec, queue: str) -> Run:
    """Add one queued run outside any comparison."""
    run = _new_run(spec=spec, queue=queue)
    session.add(run)
    session.flush()
    return run


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


def get_run(session: Session, *, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def get_run_status(session: Session, *, run_id: int) -> str | None:
    return session.scalar(select(Run.status).where(Run.id == run_id))


#: Everything about a run but its (large) spec and result: what lists and polls need.
RUN_SUMMARY_COLUMNS = tuple(c for c in Run.__table__.columns if c.name not in ("spec", "result", "claim_id"))
METRIC_COLUMNS = tuple(c for c in RunMetric.__table__.columns if c.name not in ("run_id", "recorded_at"))


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
    where = []
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


def _plain_rows(session: Session, statement: Select, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a column ``statement`` as dicts, through the session's connection: a Core result
    skips the ORM's row processing, and dicts are what pydantic validates fastest."""
    result = session.connection().execute(statement, params)
    keys = tuple(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def list_metrics(
    session: Session, *, run_id: int, after_step: int, limit: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """The run's status (None: no such run) and its metrics after ``after_step``, in step order, as
    dicts of :data:`METRIC_COLUMNS`: one query."""
    rows = _plain_rows(session, _METRICS_PAGE, {"run_id": run_id, "after_step": after_step, "limit": limit})
    if not rows:
        return None, []
    status = rows[0]["run_status"]
    return status, [row for row in rows if row.pop("run_status") and row["step"] is not None]


def mark_dispatched(session: Session, *, run_ids: Sequence[int]) -> None:
    if run_ids:
        session.execute(
            update(Run).where(Run.id.in_(run_ids), Run.status == QUEUED).values(dispatched_at=utcnow())
        )


def runs_to_dispatch(
    session: Session, *, created_before: datetime, limit: int = 500
) -> list[tuple[int, str]]:
    """Queued runs that never reached the broker: (id, queue). Requeued runs qualify at once."""
    rows = session.execute(
        select(Run.id, Run.queue)
        .where(
            Run.status == QUEUED,
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
    if run.status == QUEUED:
        run.status = RunStatus.CANCELLED.value
        run.finished_at = utcnow()
        run.error = "cancelled before it started"
    session.flush()
    return run


# --- worker side -------------------------------------------------------------------------------


def claim_run(session: Session, *, run_id: int, worker_host: str, worker_device: str | None) -> str | None:
    """Atomically take a queued run for this worker; returns the claim id, or None if it is not queued.

    A queued run whose cancellation was requested is finished as cancelled instead.
    """
    claim_id = uuid.uuid4().hex
    now = utcnow()
    claimed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED, Run.cancel_requested.is_(False))
        .values(
            status=RUNNING,
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
    if claimed.rowcount != 1:
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == QUEUED, Run.cancel_requested.is_(True))
            .values(status=RunStatus.CANCELLED.value, finished_at=now, error="cancelled before it started")
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
        .where(Run.id == run_id, Run.claim_id == claim_id, Run.status == RUNNING)
        .values(heartbeat_at=utcnow())
        .returning(Run.cancel_requested)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()


def _insert_metrics(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
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
        .where(Run.id == run_id, Run.claim_id == claim_id, Run.status == RUNNING)
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
        "status": result.status.value,
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
        .where(Run.id == run_id, Run.claim_id == claim_id, Run.status.in_([RUNNING, RunStatus.FAILED.value]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
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
        .where(Run.id == run_id, Run.claim_id == claim_id, Run.status == RUNNING)
        .values(status=RunStatus.FAILED.value, error=error, finished_at=utcnow(), phase="done")
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


@dataclass
class AbandonOutcome:
    """What became of runs whose worker is gone."""

    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def _abandon(
    session: Session,
    *,
    candidates: Select[Any],
    guard: list[Any],
    reason: str,
    requeue: bool,
    max_attempts: int,
) -> AbandonOutcome:
    outcome = AbandonOutcome()
    now = utcnow()
    for row in session.execute(candidates).all():
        where = [Run.id == row.id, Run.status == RUNNING, Run.claim_id == row.claim_id, *guard]
        lost = f"worker lost: {row.worker_host or 'unknown worker'} {reason}"
        if row.cancel_requested:
            values, bucket = (
                {"status": "cancelled", "error": f"cancelled ({lost})", "finished_at": now},
                "cancelled",
            )
        elif requeue and row.attempts < max_attempts:
            values = {
                "status": QUEUED,
                "claim_id": None,
                "dispatched_at": None,
                "heartbeat_at": None,
                "phase": None,
                "message": f"requeued after attempt {row.attempts} of {max_attempts}: {lost}",
            }
            bucket = "requeued"
        else:
            suffix = f" (gave up after {row.attempts} attempts)" if requeue else ""
            values, bucket = {"status": "failed", "error": lost + suffix, "finished_at": now}, "failed"
        changed = session.execute(
            update(Run).where(*where).values(**values).execution_options(synchronize_session=False)
        )
        if changed.rowcount == 1:
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
    candidates = select(*_ABANDON_COLUMNS).where(Run.status == RUNNING, Run.heartbeat_at < stale_before)
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
    candidates = select(*_ABANDON_COLUMNS).where(Run.status == RUNNING, Run.worker_host == worker_name)
    return _abandon(
        session, candidates=candidates, guard=[], reason=reason, requeue=requeue, max_attempts=max_attempts
    )


def stop_worker_runs(session: Session, *, worker_name: str, reason: str) -> list[int]:
    """Ask the running runs of a worker that is shutting down to stop; they finish as cancelled
    with ``reason`` as their error (within a training step of the worker noticing)."""
    return list(
        session.execute(
            update(Run)
            .where(Run.status == RUNNING, Run.worker_host == worker_name, Run.cancel_requested.is_(False))
            .values(cancel_requested=True, error=reason)
            .returning(Run.id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )


# --- workers -----------------------------------------------------------------------------------


def upsert_worker(
    session: Session, *, name: str, host: str, pid: int, queues: str, device: str | None
) -> None:
    worker = session.get(Worker, name)
    now = utcnow()
    if worker is None:
        session.add(
            Worker(
                name=name, host=host, pid=pid, queues=queues, device=device, started_at=now, last_seen_at=now
            )
        )
    else:
        worker.host, worker.pid, worker.queues, worker.device = host, pid, queues, device
        worker.started_at, worker.last_seen_at, worker.stopped_at = now, now, None
    session.flush()


def touch_worker(session: Session, *, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(last_seen_at=utcnow(), stopped_at=None))


def stop_worker(session: Session, *, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(stopped_at=utcnow()))


def live_workers(session: Session, *, seen_within_s: float) -> Sequence[Worker]:
    seen_after = utcnow() - timedelta(seconds=seen_within_s)
    return session.scalars(
        select(Worker)
        .where(Worker.last_seen_at >= seen_after, Worker.stopped_at.is_(None))
        .order_by(Worker.name)
    ).all()


# --- API tokens --------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str) -> tuple[ApiToken, str]:
    """A new random bearer token; the plain text is returned once and never stored."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return add_token(session, name=name, token=plain), plain


def add_token(session: Session, *, name: str, token: str) -> ApiToken:
    """Store ``token`` (hashed) under ``name``; an already stored token is returned as it is."""
    token_hash = hash_token(token)
    existing = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))
    if existing is not None:
        if existing.revoked_at is not None:
            raise StoreError(f"token {existing.prefix}… was revoked; provision a new one")
        return existing
    row = ApiToken(name=name[:100], token_hash=token_hash, prefix=token[:10])
    session.add(row)
    session.flush()
    return row


def find_token(session: Session, *, token: str) -> ApiToken | None:
    """The active token row for a presented bearer token, or None."""
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )


def touch_token(session: Session, *, token_id: int) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow()))


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id)).all()


def revoke_token(session: Session, *, token_id: int) -> bool:
    done = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return done.rowcount == 1


def count_active_tokens(session: Session) -> int:
    return (
        session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_(None))) or 0
    )


# --- idempotency -------------------------------------------------------------------------------


def _canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def request_hash(payload: Any) -> str:
    return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()


def find_idempotency_key(session: Session, *, scope: str, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    )


def add_idempotency_key(
    session: Session, *, scope: str, key: str, payload_hash: str, resource_id: int
) -> None:
    """Remember a POST's answer. Flushes, so a concurrent twin fails here with IntegrityError."""
    session.add(IdempotencyKey(scope=scope, key=key, request_hash=payload_hash, resource_id=resource_id))
    session.flush()
