"""The store's run lifecycle: claims, heartbeats, progress, results and the reaper's decisions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from backend import store
from backend.db import Database
from backend.tables import Run, RunMetric, utcnow
from velora_core.contract.result import LossPoint, ProgressEvent, RunResult, RunStatus
from velora_core.contract.spec import RunSpec

SPEC = RunSpec.model_validate(
    {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "dataset": {"source": "builtin", "name": "stdlib-corpus"},
        "steps": 10,
        "device": "cpu",
    }
)


def new_run(db: Database) -> int:
    with db.write_session() as session:
        return store.add_planned_runs(session, specs=[SPEC], queue="cpu")[-1].id


def claim(db: Database, run_id: int, worker: str = "w1@host") -> str | None:
    with db.write_session() as session:
        return store.claim_run(session, run_id=run_id, worker_host=worker, worker_device="cpu")


def run_row(db: Database, run_id: int) -> Run:
    with db.session() as session:
        return store.get_run(session, run_id=run_id)


def age_heartbeat(db: Database, run_id: int, seconds: float) -> None:
    with db.write_session() as session:
        session.execute(
            update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def reap(db: Database, *, requeue: bool, max_attempts: int = 3) -> store.AbandonOutcome:
    with db.write_session() as session:
        return store.reap_lost_runs(
            session, heartbeat_timeout_s=30, requeue=requeue, max_attempts=max_attempts
        )


def test_claim_is_exclusive(db: Database) -> None:
    run_id = new_run(db)
    first = claim(db, run_id)
    assert first is not None
    assert claim(db, run_id, worker="w2@host") is None  # a duplicate delivery does nothing
    run = run_row(db, run_id)
    assert (run.status, run.worker_host, run.attempts, run.claim_id) == ("running", "w1@host", 1, first)
    assert run.started_at is not None and run.heartbeat_at is not None


def test_claim_of_cancelled_queued_run_finishes_it(db: Database) -> None:
    run_id = new_run(db)
    with db.write_session() as session:
        session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
    assert claim(db, run_id) is None
    assert run_row(db, run_id).status == "cancelled"


def test_progress_records_points_once(db: Database) -> None:
    run_id = new_run(db)
    claim_id = claim(db, run_id)
    points = [ProgressEvent(phase="train", step=s, total_steps=10, loss=1.0 / s, lr=0.1) for s in (1, 5)]
    with db.write_session() as session:
        assert (
            store.record_progress(session, run_id=run_id, claim_id=claim_id, state=points[-1], points=points)
            is False
        )
        # a retried flush writes the same steps again: no duplicates, no error
        store.record_progress(session, run_id=run_id, claim_id=claim_id, state=points[-1], points=points)
    with db.session() as session:
        assert [
            m["step"] for m in store.list_metrics(session, run_id=run_id, after_step=-1, limit=100)[1]
        ] == [
            1,
            5,
        ]
    result = RunResult(
        method="full",
        status=RunStatus.COMPLETED,
        steps_done=10,
        loss_curve=[LossPoint(step=s, loss=0.5, lr=0.1) for s in (1, 5, 10)],
    )
    with db.write_session() as session:
        assert store.finish_run(
            session, run_id=run_id, claim_id=claim_id, result=result, worker_device="cpu (x86)"
        )
    with db.session() as session:
        status, metrics = store.list_metrics(session, run_id=run_id, after_step=-1, limit=100)
        assert status == "completed"
        assert [m["step"] for m in metrics] == [1, 5, 10]  # the final curve fills in what was not streamed
        assert metrics[0]["loss"] == 1.0  # streamed points are kept as recorded
    run = run_row(db, run_id)
    assert (run.status, run.step, run.phase, run.worker_device) == ("completed", 10, "done", "cpu (x86)")
    assert run.result["status"] == "completed" and run.finished_at is not None


def test_lost_claim_cannot_write(db: Database) -> None:
    run_id = new_run(db)
    claim_id = claim(db, run_id)
    age_heartbeat(db, run_id, 60)
    assert reap(db, requeue=True).requeued == [run_id]
    event = ProgressEvent(phase="train", step=3, total_steps=10, loss=1.0)
    with db.write_session() as session:
        assert store.heartbeat_run(session, run_id=run_id, claim_id=claim_id) is None
        assert (
            store.record_progress(session, run_id=run_id, claim_id=claim_id, state=event, points=[event])
            is None
        )
        result = RunResult(method="full", status=RunStatus.COMPLETED)
        assert store.finish_run(session, run_id=run_id, claim_id=claim_id, result=result) is False
    assert run_row(db, run_id).status == "queued"


def test_reaper_fails_lost_runs_with_reason(db: Database) -> None:
    lost, alive = new_run(db), new_run(db)
    claim(db, lost, worker="gone@host")
    claim(db, alive)
    age_heartbeat(db, lost, 45)
    outcome = reap(db, requeue=False)
    assert (outcome.failed, outcome.requeued) == ([lost], [])
    run = run_row(db, lost)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error.startswith("worker lost: gone@host (no heartbeat for over 30 s)")
    assert run_row(db, alive).status == "running"
    assert reap(db, requeue=False).failed == []  # nothing twice


def test_reaper_requeues_until_max_attempts(db: Database) -> None:
    run_id = new_run(db)
    for attempt in (1, 2):
        assert claim(db, run_id) is not None
        age_heartbeat(db, run_id, 45)
        assert reap(db, requeue=True, max_attempts=3).requeued == [run_id]
        run = run_row(db, run_id)
        assert run.status == "queued" and run.dispatched_at is None and run.claim_id is None
        assert f"requeued after attempt {attempt} of 3" in run.message
        with db.session() as session:  # the reaper re-sends requeued runs at once
            assert store.runs_to_dispatch(session, created_before=utcnow() - timedelta(hours=1)) == [
                (run_id, "cpu")
            ]
    assert claim(db, run_id) is not None
    age_heartbeat(db, run_id, 45)
    assert reap(db, requeue=True, max_attempts=3).failed == [run_id]
    run = run_row(db, run_id)
    assert run.status == "failed" and "gave up after 3 attempts" in run.error


def test_requeued_run_restarts_its_curve(db: Database) -> None:
    run_id = new_run(db)
    claim_id = claim(db, run_id)
    event = ProgressEvent(phase="train", step=2, total_steps=10, loss=1.0)
    with db.write_session() as session:
        store.record_progress(session, run_id=run_id, claim_id=claim_id, state=event, points=[event])
    age_heartbeat(db, run_id, 45)
    reap(db, requeue=True)
    claim(db, run_id)
    with db.session() as session:
        assert session.query(RunMetric).filter_by(run_id=run_id).count() == 0


def test_reaper_finishes_cancel_requested_runs_as_cancelled(db: Database) -> None:
    run_id = new_run(db)
    claim(db, run_id)
    with db.write_session() as session:
        store.request_cancel(session, run_id=run_id)
    age_heartbeat(db, run_id, 45)
    assert reap(db, requeue=True).cancelled == [run_id]
    assert run_row(db, run_id).status == "cancelled"


def test_slow_worker_result_still_counts_after_reaping(db: Database) -> None:
    # A worker that stalled past the timeout (not dead) still gets to record its real result.
    run_id = new_run(db)
    claim_id = claim(db, run_id)
    age_heartbeat(db, run_id, 45)
    assert reap(db, requeue=False).failed == [run_id]
    with db.write_session() as session:
        result = RunResult(method="full", status=RunStatus.COMPLETED, steps_done=10)
        assert store.finish_run(session, run_id=run_id, claim_id=claim_id, result=result)
    assert run_row(db, run_id).status == "completed"


def test_release_worker_runs(db: Database) -> None:
    mine, other = new_run(db), new_run(db)
    claim(db, mine, worker="up1@host")
    claim(db, other, worker="gpu0@elsewhere")
    with db.write_session() as session:
        outcome = store.release_worker_runs(
            session, worker_name="up1@host", reason="(stopped)", requeue=False, max_attempts=3
        )
    assert outcome.failed == [mine]
    assert run_row(db, mine).error == "worker lost: up1@host (stopped)"
    assert run_row(db, other).status == "running"


def test_never_dispatched_runs_are_found(db: Database) -> None:
    sent, unsent = new_run(db), new_run(db)
    with db.write_session() as session:
        store.mark_dispatched(session, run_ids=[sent])
    with db.session() as session:
        assert store.runs_to_dispatch(session, created_before=utcnow() - timedelta(seconds=30)) == []
        assert store.runs_to_dispatch(session, created_before=utcnow() + timedelta(seconds=1)) == [
            (unsent, "cpu")
        ]


def test_workers_liveness(db: Database) -> None:
    with db.write_session() as session:
        store.upsert_worker(session, name="a@h", host="h", pid=1, queues="gpu", device=None)
        store.upsert_worker(session, name="b@h", host="h", pid=2, queues="cpu", device=None)
        store.stop_worker(session, name="b@h")
    with db.session() as session:
        assert [w.name for w in store.live_workers(session, seen_within_s=30)] == ["a@h"]


def test_finish_run_refuses_a_result_the_state_machine_does_not_allow(db: Database) -> None:
    run_id = new_run(db)
    claim_id = claim(db, run_id)
    result = RunResult(method="full", status=RunStatus.RUNNING)
    with db.write_session() as session:
        try:
            store.finish_run(session, run_id=run_id, claim_id=claim_id, result=result)
        except ValueError as exc:
            assert "'running'" in str(exc)
        else:
            raise AssertionError("finish_run stored a run as still running")
    assert run_row(db, run_id).status == RunStatus.RUNNING


def test_a_finished_run_is_not_finished_again(db: Database) -> None:
    run_id = new_run(db)
    claim_id = claim(db, run_id)
    done = RunResult(method="full", status=RunStatus.COMPLETED)
    with db.write_session() as session:
        assert store.finish_run(session, run_id=run_id, claim_id=claim_id, result=done)
    with db.write_session() as session:  # completed is final: a second result changes nothing
        failed = RunResult(method="full", status=RunStatus.FAILED, error="late")
        assert not store.finish_run(session, run_id=run_id, claim_id=claim_id, result=failed)
    assert run_row(db, run_id).status == RunStatus.COMPLETED
