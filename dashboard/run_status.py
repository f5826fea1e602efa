"""A run's and a comparison's state in words, its progress and ETA, and the rows of the Runs page.
Pure functions of the API's run dicts, no Streamlit."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from dashboard.formatting import METRIC_LABELS, duration_words
from velora_core.contract.plan import ROLE_BASE
from velora_core.contract.result import ACTIVE_STATUSES, ComparisonStatus, RunStatus

STATUS_WORDS = {
    RunStatus.WAITING: "Waiting for its base model",
    RunStatus.QUEUED: "Waiting for a worker",
    RunStatus.RUNNING: "Running",
    RunStatus.COMPLETED: "Completed",
    RunStatus.FAILED: "Failed",
    RunStatus.OUT_OF_MEMORY: "Out of memory",
    RunStatus.CANCELLED: "Cancelled",
}

COMPARISON_STATUS_WORDS = {
    ComparisonStatus.QUEUED: "Waiting for a worker",
    ComparisonStatus.RUNNING: "Running",
    ComparisonStatus.COMPLETED: "Completed",
    ComparisonStatus.PARTIAL: "Partly completed",
    ComparisonStatus.FAILED: "Failed",
    ComparisonStatus.CANCELLED: "Cancelled",
}


#: How a base run's state is marked beside the methods' count.
BASE_MARKS = {"completed": "✓", "failed": "✗", "out_of_memory": "✗", "cancelled": "cancelled"}


def comparison_status_words(comparison: dict[str, Any]) -> str:
    """A comparison's state as a person would say it (``ComparisonStatus`` in velora_core.contract.result),
    counting the methods apart from the base run that pre-trains their model: "Running · 2 of 3
    methods completed · base ✓". A method counts as completed when every one of its runs (seeds) did."""
    status = comparison["status"]
    words = COMPARISON_STATUS_WORDS.get(status, status)
    runs, bases = split_roles(comparison.get("runs") or [])
    methods = list(dict.fromkeys(run["method"] for run in runs))
    if methods:
        completed = sum(
            all(run["status"] == RunStatus.COMPLETED for run in runs if run["method"] == method)
            for method in methods
        )
        words += f" · {completed} of {len(methods)} method{'s' if len(methods) != 1 else ''} completed"
    for base in bases:
        words += f" · base {BASE_MARKS.get(base['status'], STATUS_WORDS.get(base['status'], base['status']).lower())}"
    return words


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def progress_fraction(run: dict[str, Any]) -> float:
    """0..1: the steps done over the total (a cancelled or failed run stops where it stopped), a
    completed run 1, a queued one 0."""
    if run["status"] == "completed":
        return 1.0
    total, step = run.get("total_steps") or 0, run.get("step") or 0
    return min(1.0, step / total) if total > 0 else 0.0


def eta_seconds(run: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds until a running run finishes training, from its pace so far; None if unknown."""
    if run["status"] != RunStatus.RUNNING:
        return None
    total, step = run.get("total_steps") or 0, run.get("step") or 0
    started = _parse_time(run.get("started_at"))
    if started is None or step <= 0 or total <= step:
        return None
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
    return max(0.0, elapsed / step * (total - step))


def status_words(run: dict[str, Any]) -> str:
    """A run's state as a person would say it, with its error when it has one."""
    status = run["status"]
    words = STATUS_WORDS.get(status, status)
    if status == RunStatus.RUNNING:
        phase = run.get("phase") or "starting"
        if phase == "setup" and run.get("message"):
            phase = f"setup: {run['message']}"
        total = run.get("total_steps") or 0
        words = (
            f"Running ({phase}, step {run.get('step') or 0} of {total})" if total else f"Running ({phase})"
        )
    elif status == RunStatus.WAITING and run.get("depends_on"):
        words = f"Waiting for its base model (run {', '.join(str(i) for i in run['depends_on'])})"
    elif status == RunStatus.QUEUED and run.get("cancel_requested"):
        words = "Cancelling"
    if run.get("cancel_requested") and status == RunStatus.RUNNING:
        words += ", cancelling"
    error = run.get("error") or (
        run.get("message") if status in (RunStatus.FAILED, RunStatus.OUT_OF_MEMORY) else None
    )
    if error and status not in ACTIVE_STATUSES:
        words += f": {error}"
    return words


def run_rows(runs: Iterable[dict[str, Any]], now: datetime | None = None) -> list[dict[str, Any]]:
    """Rows of the runs table: id, what, state in words, progress and ETA."""
    rows = []
    for run in runs:
        total = run.get("total_steps") or 0
        rows.append(
            {
                "Run": run["id"],
                "Comparison": run.get("comparison_id"),
                "Method": run["method"] + (" (base model)" if run.get("role") == ROLE_BASE else ""),
                "Seed": run["seed"],
                "Status": run["status"],
                "Progress": progress_fraction(run),
                "Step": f"{run.get('step') or 0}/{total}" if total else str(run.get("step") or 0),
                "ETA": duration_words(eta_seconds(run, now)),
                "Worker": run.get("worker_host") or "",
                "Created": (run.get("created_at") or "")[:19].replace("T", " "),
                "State": status_words(run),
            }
        )
    return rows


def split_roles(runs: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A comparison's runs as (the methods' runs, the base runs that pre-train their base model)."""
    methods, bases = [], []
    for run in runs:
        (bases if run.get("role") == ROLE_BASE else methods).append(run)
    return methods, bases


def base_run_words(run: dict[str, Any], result: dict[str, Any] | None) -> str:
    """What a base run did, in a line: its state, then its evaluation and training time once done."""
    words = f"Run {run['id']}: pre-training {run['method']} · {status_words(run)}"
    result = result or {}
    evaluation = result.get("eval") or {}
    if evaluation.get("value") is not None:
        words += (
            f" · {METRIC_LABELS.get(evaluation['metric'], evaluation['metric'])} {evaluation['value']:.2f}"
        )
    train_time = (result.get("throughput") or {}).get("train_time_s")
    if train_time:
        words += f" · {duration_words(train_time)} training"
    if (result.get("environment") or {}).get("reused_artifact"):
        words += " · reused the model an earlier run saved"
    return words
