"""The store: every read and write of comparisons, runs, metrics, workers and tokens.

Used by the API and the worker alike, as ``from backend import store`` and ``store.<function>(...)``;
each aggregate lives in a module of its own and is re-exported here. Functions take the session
first and everything else by keyword; they flush but never commit (the caller owns the transaction).
Worker-side writes (:mod:`backend.store.run_lifecycle`) are guarded by the run's ``claim_id``, so a
worker that lost its claim (reaped, requeued) can no longer change the run.
"""

from backend.store.base import FINISHED_STATUSES, StoreError, status_moves
from backend.store.comparisons import create_comparison, get_comparison, list_comparisons
from backend.store.idempotency import add_idempotency_key, find_idempotency_key, request_hash
from backend.store.metrics import METRIC_COLUMNS, list_metrics
from backend.store.run_lifecycle import (
    AbandonOutcome,
    base_artifacts,
    claim_run,
    fail_run,
    finish_run,
    heartbeat_run,
    reap_lost_runs,
    record_progress,
    release_worker_runs,
    settle_waiting_runs,
    stop_worker_runs,
)
from backend.store.runs import (
    RUN_SUMMARY_COLUMNS,
    add_planned_runs,
    count_unstarted_runs,
    dispatchable,
    get_run,
    get_run_status,
    list_runs,
    mark_dispatched,
    plan_size,
    request_cancel,
    runs_to_dispatch,
    runs_to_redeliver,
    sent_queued_counts,
)
from backend.store.tokens import (
    TOKEN_PREFIX,
    add_token,
    count_active_tokens,
    create_token,
    find_token,
    hash_token,
    list_tokens,
    revoke_token,
    touch_token,
)
from backend.store.workers import live_workers, stop_worker, touch_worker, upsert_worker
from backend.tables import utcnow  # the store's clock, as callers compare with it

__all__ = [
    "FINISHED_STATUSES",
    "METRIC_COLUMNS",
    "RUN_SUMMARY_COLUMNS",
    "TOKEN_PREFIX",
    "AbandonOutcome",
    "StoreError",
    "add_idempotency_key",
    "add_planned_runs",
    "add_token",
    "base_artifacts",
    "claim_run",
    "count_active_tokens",
    "count_unstarted_runs",
    "create_comparison",
    "create_token",
    "dispatchable",
    "fail_run",
    "find_idempotency_key",
    "find_token",
    "finish_run",
    "get_comparison",
    "get_run",
    "get_run_status",
    "hash_token",
    "heartbeat_run",
    "list_comparisons",
    "list_metrics",
    "list_runs",
    "list_tokens",
    "live_workers",
    "mark_dispatched",
    "plan_size",
    "reap_lost_runs",
    "record_progress",
    "release_worker_runs",
    "request_cancel",
    "request_hash",
    "revoke_token",
    "runs_to_dispatch",
    "runs_to_redeliver",
    "sent_queued_counts",
    "settle_waiting_runs",
    "status_moves",
    "stop_worker",
    "stop_worker_runs",
    "touch_token",
    "touch_worker",
    "upsert_worker",
    "utcnow",
]
