"""What ``run_benchmark`` does, step by step (kept apart from Celery so it reads top to bottom).

1. Claim the run (an atomic update: only a *queued* run is taken; anything else is a duplicate
   delivery and is left alone), and check its local files again (``backend.local_paths``: a file
   swapped for a symlink since submission fails the run, unread). A run that depends on a base run is only queued once that completed
   (the store's rule, ``settle_waiting_runs``); it gets the base's artifact folder.
2. While the engine runs: a heartbeat thread proves the worker alive and picks up cancellation;
   progress events are buffered and written every ``VELORA_METRICS_FLUSH_S`` (one metrics row per
   ``spec.progress_every`` steps); the ``on_progress`` answer stops the engine within a step.
   Before the engine, a run predicted not to fit its device is stored as ``out_of_memory`` without
   allocating, and the rest train under a memory limit (``worker.memory_guard``).
3. Store the result (an out-of-memory is a result too), guarded by the claim; then settle the runs
   waiting for this one (queue and dispatch them, or fail/cancel them naming it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from backend import store
from backend.db import Database
from backend.local_paths import run_path_problem
from backend.settings import Settings, get_settings
from velora_core.contract.plan import ROLE_BASE
from velora_core.contract.result import ProgressEvent, RunResult, RunStatus
from velora_core.contract.spec import RunSpec
from worker.memory_guard import apply_memory_limit, refuse_if_too_large

#: Sends (run id, queue) pairs to the broker; returns the ids sent (``backend.broker.Dispatcher.dispatch``).
DispatchFunction = Callable[[Sequence[tuple[int, str]]], list[int]]

log = logging.getLogger(__name__)

_process_db: tuple[int, Database] | None = None


def process_db(settings: Settings) -> Database:
    """This process's database handle (a forked pool process makes its own)."""
    global _process_db
    if _process_db is None or _process_db[0] != os.getpid():
        _process_db = (os.getpid(), Database(settings.sqlalchemy_url))
    return _process_db[1]


class ProgressRecorder:
    """The engine's ``on_progress`` callback plus a heartbeat thread, for one claimed run."""

    def __init__(
        self, db: Database, settings: Settings, *, run_id: int, claim_id: str, spec: RunSpec
    ) -> None:
        self.db, self.settings, self.run_id, self.claim_id = db, settings, run_id, claim_id
        self.progress_every = spec.progress_every
        self.stop = threading.Event()  # cancellation requested, claim lost, or time limit
        self.claim_lost = False
        self.timed_out = False
        self._points: list[ProgressEvent] = []
        self._state: ProgressEvent | None = None
        self._last_flush = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"velora-heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> ProgressRecorder:
        self._heartbeat.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._heartbeat_stop.set()
        self._heartbeat.join(timeout=10)

    def _answer(self, cancel: bool | None) -> None:
        if cancel is None:
            self.claim_lost = True
            self.stop.set()
        elif cancel:
            self.stop.set()

    def _beat(self) -> None:
        while not self._heartbeat_stop.wait(self.settings.heartbeat_interval_s):
            try:
                with self.db.write_session() as session:
                    self._answer(store.heartbeat_run(session, run_id=self.run_id, claim_id=self.claim_id))
            except Exception:  # the database may be briefly away; the reaper's timeout is generous
                log.exception("heartbeat for run %s failed", self.run_id)

    def on_progress(self, event: ProgressEvent) -> bool:
        """Called by the engine after every step and at phase changes; True asks it to stop."""
        is_point = (
            event.phase == "train"
            and event.loss is not None
            and (event.step % self.progress_every == 0 or event.step in (1, event.total_steps))
        )
        with self._lock:
            if is_point:
                self._points.append(event)
            phase_changed = self._state is None or self._state.phase != event.phase
            self._state = event
        if phase_changed or time.monotonic() - self._last_flush >= self.settings.metrics_flush_s:
            self.flush()
        if time.monotonic() - self._started > self.settings.run_time_limit_s:
            self.timed_out = True
            self.stop.set()
        return self.stop.is_set()

    def flush(self) -> None:
        with self._lock:
            state, points = self._state, self._points
            self._points = []
        if state is None:
            return
        try:
            with self.db.write_session() as session:
                self._answer(
                    store.record_progress(
                        session, run_id=self.run_id, claim_id=self.claim_id, state=state, points=points
                    )
                )
            self._last_flush = time.monotonic()
        except Exception:
            log.exception("could not record progress of run %s; will retry", self.run_id)
            with self._lock:
                self._points = points + self._points


def _device_label(result: RunResult) -> str | None:
    env = result.environment or {}
    if not env.get("device"):
        return None
    name = env.get("device_name")
    return f"{env['device']} ({name})" if name else str(env["device"])


def _base_model(db: Database, run_id: int) -> str | None:
    """The artifact folder of the run's base run (None when it has none).

    Raises:
        ValueError: a base run that did not complete or saved no artifact (the store only queues a
            run whose bases completed, so this means the row was changed by hand or by another version).
    """
    with db.session() as session:
        bases = store.base_artifacts(session, run_id=run_id)
    for base_id, status, path in bases:
        if status != RunStatus.COMPLETED.value or not path:
            raise ValueError(f"its base run {base_id} is {status} with no saved model; it cannot start")
    return bases[0][2] if bases else None


def _settle_dependents(db: Database, dispatch: DispatchFunction | None) -> None:
    """Queue (and send) or fail the runs that waited for the run just finished."""
    try:
        with db.write_session() as session:
            ready = store.settle_waiting_runs(session)
        if ready and dispatch is not None:
            sent = dispatch(ready)
            with db.write_session() as session:
                store.mark_dispatched(session, run_ids=sent)
    except Exception:  # the reaper settles them on its next pass
        log.exception("could not settle the runs waiting for a finished run")


def execute_run(
    run_id: int,
    *,
    worker_name: str,
    device: str | None,
    settings: Settings | None = None,
    dispatch: DispatchFunction | None = None,
) -> str:
    """Run ``run_id`` if it is still queued; returns what happened, in a word or two (for logs)."""
    settings = settings or get_settings()
    db = process_db(settings)
    outcome = _execute_claimed(run_id, worker_name=worker_name, device=device, settings=settings, db=db)
    if outcome != "claim lost" and not outcome.startswith("skipped"):
        _settle_dependents(db, dispatch)
    return outcome


def _allocation_failure_is_oom(result: RunResult) -> RunResult:
    """A CPU allocation refused under the worker's memory limit is an out-of-memory, not a failure."""
    error = result.error or ""
    if result.status == RunStatus.FAILED and (
        error.startswith("MemoryError") or "can't allocate memory" in error
    ):
        return result.model_copy(
            update={"status": RunStatus.OUT_OF_MEMORY, "error": f"over the worker's memory limit: {error}"}
        )
    return result


def _fail(db: Database, run_id: int, claim_id: str, error: str) -> None:
    with db.write_session() as session:
        store.fail_run(session, run_id=run_id, claim_id=claim_id, error=error)


def _execute_claimed(
    run_id: int, *, worker_name: str, device: str | None, settings: Settings, db: Database
) -> str:
    with db.write_session() as session:
        claim_id = store.claim_run(session, run_id=run_id, worker_host=worker_name, worker_device=device)
        if claim_id is None:
            status = store.get_run_status(session, run_id=run_id)
            log.info("run %s not taken: %s", run_id, status or "no such run")
            return f"skipped ({status or 'missing'})"
        row = store.get_run(session, run_id=run_id)
        assert row is not None  # claimed just now, in this transaction
        spec_json, role = row.spec, row.role
    try:
        spec = RunSpec.model_validate(spec_json)
    except ValueError as exc:  # stored by another version of the code, say
        _fail(db, run_id, claim_id, f"invalid stored spec: {exc}")
        return "failed (invalid spec)"
    problem = run_path_problem(spec, settings)  # again: files may have changed since submission
    if problem is not None:
        _fail(db, run_id, claim_id, f"refused when the run started: {problem}")
        return "failed (local path)"
    try:
        base_model = _base_model(db, run_id)
    except ValueError as exc:
        _fail(db, run_id, claim_id, str(exc))
        return "failed (no base model)"
    artifact_dir = Path(settings.resolved_artifact_dir)
    with ProgressRecorder(db, settings, run_id=run_id, claim_id=claim_id, spec=spec) as recorder:
        try:
            # torch is imported here, in the pool process only
            from velora_core.bench.engine import execute, execute_base

            result = refuse_if_too_large(spec, settings)  # predicted, before anything is allocated
            if result is None:
                apply_memory_limit(spec, settings)
                if role == ROLE_BASE:
                    result = execute_base(spec, recorder.on_progress, artifact_dir)
                else:
                    result = execute(spec, recorder.on_progress, artifact_dir, base_model=base_model)
                result = _allocation_failure_is_oom(result)
        except Exception as exc:  # a programming error in the engine: record it, keep the worker alive
            log.exception("engine raised on run %s", run_id)
            recorder.flush()
            _fail(
                db,
                run_id,
                claim_id,
                f"engine error: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}",
            )
            return "failed (engine error)"
        recorder.flush()
    if recorder.timed_out and result.status == RunStatus.CANCELLED:
        result = result.model_copy(
            update={
                "status": RunStatus.FAILED,
                "error": f"time limit of {settings.run_time_limit_s:g} s exceeded (VELORA_RUN_TIME_LIMIT_S)",
            }
        )
    with db.write_session() as session:
        stored = store.finish_run(
            session, run_id=run_id, claim_id=claim_id, result=result, worker_device=_device_label(result)
        )
    if not stored:
        log.warning("run %s finished as %s but its claim was lost; result discarded", run_id, result.status)
        return "claim lost"
    return result.status.value
