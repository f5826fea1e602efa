"""Base runs (pre-training a fine-tune's base model) in the store: dependents wait for them, start
when they complete, and fail or are cancelled, naming them, when they do not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from backend import store
from backend.db import Database
from backend.tables import Run, utcnow
from velora_core.contract.presets.comparisons import comparison_preset
from velora_core.contract.result import RunResult, RunStatus


def create(db: Database, **overrides) -> list[Run]:
    """cpu-smoke with two methods and two seeds: one base run, four fine-tunes waiting for it."""
    spec = comparison_preset("cpu-smoke", {"methods": ["lora", "velora+lora"], "seeds": [0, 1], **overrides})
    with db.write_session() as session:
        comparison = store.create_comparison(session, spec=spec, queue="cpu")
        return [(r.id, r.role, r.status, r.depends_on, r.method) for r in comparison.runs]


def finish(db: Database, run_id: int, status: RunStatus, error: str | None = None, path: str | None = None):
    with db.write_session() as session:
        claim_id = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
        assert claim_id is not None
        result = RunResult(method="full", status=status, error=error, artifact_path=path)
        assert store.finish_run(session, run_id=run_id, claim_id=claim_id, result=result)


def settle(db: Database) -> list[tuple[int, str]]:
    with db.write_session() as session:
        return store.settle_waiting_runs(session)


def rows(db: Database, ids: list[int]) -> list[Run]:
    with db.session() as session:
        return [store.get_run(session, run_id=i) for i in ids]


def test_one_base_run_for_every_method_and_seed(db: Database) -> None:
    runs = create(db)
    (base,) = [r for r in runs if r[1] == "base"]
    dependents = [r for r in runs if r[1] == "method"]
    assert runs[0] == base and base[2] == "queued" and base[3] == [] and base[4] == "full"
    assert len(dependents) == 4
    assert all(status == "waiting" and needs == [base[0]] for _, _, status, needs, _ in dependents)
    with db.session() as session:
        base_row = store.get_run(session, run_id=base[0])
        assert base_row.spec["workload"] == "pretrain" and base_row.spec["save_artifact"] is True
        assert store.dispatchable(store.get_comparison(session, comparison_id=1).runs) == [(base[0], "cpu")]
        # a waiting run cannot be claimed, however often its message arrives
        assert store.claim_run(session, run_id=dependents[0][0], worker_host="w", worker_device=None) is None
    assert settle(db) == []  # nothing to decide while the base runs


def test_dependents_are_queued_when_the_base_completed(db: Database) -> None:
    runs = create(db)
    base_id, dependent_ids = runs[0][0], [r[0] for r in runs[1:]]
    finish(db, base_id, RunStatus.COMPLETED, path="/artifacts/abc")
    assert settle(db) == [(i, "cpu") for i in dependent_ids]
    assert settle(db) == []  # decided once
    assert {r.status for r in rows(db, dependent_ids)} == {"queued"}
    with db.session() as session:
        assert store.base_artifacts(session, run_id=dependent_ids[0]) == [
            (base_id, "completed", "/artifacts/abc")
        ]
        # the reaper sends them if the worker could not
        later = utcnow() + timedelta(hours=1)
        assert [i for i, _ in store.runs_to_dispatch(session, created_before=later)] == dependent_ids


@pytest.mark.parametrize(
    ("ending", "error", "expected"),
    [
        (RunStatus.FAILED, "ValueError: no data", "failed"),
        (RunStatus.OUT_OF_MEMORY, "CUDA out of memory", "failed"),
        (RunStatus.CANCELLED, "cancelled on request", "cancelled"),
    ],
)
def test_a_base_that_did_not_complete_ends_its_dependents(db, ending, error, expected) -> None:
    runs = create(db)
    base_id, dependent_ids = runs[0][0], [r[0] for r in runs[1:]]
    finish(db, base_id, ending, error=error)
    assert settle(db) == []
    for run in rows(db, dependent_ids):
        assert run.status == expected and run.finished_at is not None
        assert f"its base model's pre-training, run {base_id} (full), " in run.error
        assert error in run.error


def test_cancelling_a_queued_base_cancels_the_waiting_runs(db: Database) -> None:
    runs = create(db)
    base_id, dependent_ids = runs[0][0], [r[0] for r in runs[1:]]
    with db.write_session() as session:
        store.request_cancel(session, run_id=base_id)
        store.settle_waiting_runs(session)
    assert {r.status for r in rows(db, dependent_ids)} == {"cancelled"}
    assert "cancelled before it started" in rows(db, dependent_ids)[0].error


def test_a_waiting_run_can_be_cancelled_and_the_others_still_start(db: Database) -> None:
    runs = create(db)
    base_id, dependent_ids = runs[0][0], [r[0] for r in runs[1:]]
    with db.write_session() as session:
        store.request_cancel(session, run_id=dependent_ids[0])
    finish(db, base_id, RunStatus.COMPLETED, path="/a")
    assert [i for i, _ in settle(db)] == dependent_ids[1:]
    assert rows(db, dependent_ids[:1])[0].status == "cancelled"


def lose_worker(session, run_id: int, *, max_attempts: int) -> store.AbandonOutcome:
    """Claim ``run_id`` on a worker that then goes silent, and let the reaper see it."""
    store.claim_run(session, run_id=run_id, worker_host="gone@h", worker_device="cpu")
    session.execute(
        update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=120))
    )
    return store.reap_lost_runs(session, heartbeat_timeout_s=30, requeue=True, max_attempts=max_attempts)


def test_a_base_whose_worker_is_lost_fails_its_dependents_once_given_up(db: Database) -> None:
    runs = create(db)
    base_id, dependent_ids = runs[0][0], [r[0] for r in runs[1:]]
    with db.write_session() as session:
        outcome = lose_worker(session, base_id, max_attempts=1)
        assert outcome.failed == [base_id]
        store.settle_waiting_runs(session)
    run = rows(db, dependent_ids)[0]
    assert run.status == "failed" and f"run {base_id} (full), failed: worker lost: gone@h" in run.error


def test_a_requeued_base_keeps_its_dependents_waiting(db: Database) -> None:
    runs = create(db)
    base_id, dependent_ids = runs[0][0], [r[0] for r in runs[1:]]
    with db.write_session() as session:
        assert lose_worker(session, base_id, max_attempts=3).requeued
        assert store.settle_waiting_runs(session) == []
    assert {r.status for r in rows(db, dependent_ids)} == {"waiting"}


def test_a_comparison_without_pre_training_has_no_base_run(db: Database) -> None:
    spec = comparison_preset("c4-60m", {"steps": 2})
    with db.write_session() as session:
        comparison = store.create_comparison(session, spec=spec, queue="cpu")
        assert {(r.role, r.status, tuple(r.depends_on)) for r in comparison.runs} == {
            ("method", "queued", ())
        }
