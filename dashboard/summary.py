"""What the pages show, computed from API responses: per-method rows (mean ± spread over seeds, 95 %
intervals, deltas against full fine-tuning and chance), the Pareto front judged with the intervals
and the sentence about chance, downloads, run status in words,
progress and ETA. Pure functions of plain dicts, no Streamlit, so they are tested directly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from velora_core.contract.intervals import (
    FrontPlace,
    FrontPoint,
    chance_sentence,
    mean_and_spread,
    pareto_front,
    seeds_interval,
)
from velora_core.contract.plan import ROLE_BASE
from velora_core.contract.result import (
    ACTIVE_STATUSES,
    ComparisonStatus,
    headline_memory_bytes,
    measured_peak_bytes,
    memory_vs_full,
    total_memory_bytes,
)
from velora_core.contract.workloads import CLASSIFICATION_METRICS, PERCENT_METRICS

MIB = 1024**2
GIB = 1024**3

#: Memory components in stacking order (bottom to top), with the words the charts use.
COMPONENTS: list[tuple[str, str]] = [
    ("weight_bytes", "Frozen weights"),
    ("trainable_bytes", "Trainable weights"),
    ("gradient_bytes", "Gradients"),
    ("optimizer_bytes", "Optimizer state"),
    ("activation_bytes", "Activations"),
]

METRIC_LABELS = {
    "mc_accuracy": "Accuracy",
    "perplexity": "Perplexity",
    **CLASSIFICATION_METRICS,
    "none": "No evaluation",
}
STATUS_WORDS = {
    "waiting": "Waiting for its base model",
    "queued": "Waiting for a worker",
    "running": "Running",
    "completed": "Completed",
    "failed": "Failed",
    "out_of_memory": "Out of memory",
    "cancelled": "Cancelled",
}

COMPARISON_STATUS_WORDS = {
    ComparisonStatus.QUEUED: "Waiting for a worker",
    ComparisonStatus.RUNNING: "Running",
    ComparisonStatus.COMPLETED: "Completed",
    ComparisonStatus.PARTIAL: "Partly completed",
    ComparisonStatus.FAILED: "Failed",
    ComparisonStatus.CANCELLED: "Cancelled",
}


def comparison_status_words(comparison: dict[str, Any]) -> str:
    """A comparison's state as a person would say it (``ComparisonStatus`` in velora_core.contract.result)."""
    status = comparison["status"]
    words = COMPARISON_STATUS_WORDS.get(status, status)
    if status in (ComparisonStatus.PARTIAL, ComparisonStatus.FAILED):
        completed = comparison["status_counts"].get("completed", 0)
        words += f": {completed} of {sum(comparison['status_counts'].values())} runs completed"
    return words


#: Largest id a page accepts from its address: the browser's number inputs hold no larger integer.
MAX_QUERY_ID = 2**53 - 1


def query_number(
    params: Mapping[str, str],
    name: str,
    *,
    minimum: float,
    maximum: float,
    integer: bool = False,
    what: str,
) -> tuple[float | int | None, str | None]:
    """``?name=`` of the address as a number in [minimum, maximum]: ``(value, None)``, ``(None, None)``
    when absent, or ``(None, message)`` when it is not such a number (the page then uses its default)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None, None
    try:
        value: float | int = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not minimum <= value <= maximum:
        return None, f"Ignored {name}={raw!r} in the address: expected {what}. Showing the default instead."
    return value, None


# --- runs: words, progress, ETA ---------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def progress_fraction(run: dict[str, Any]) -> float:
    """0..1: a finished run is 1 (whatever its step counter says), a queued one 0."""
    if run["status"] not in ACTIVE_STATUSES:
        return 1.0
    total, step = run.get("total_steps") or 0, run.get("step") or 0
    return min(1.0, step / total) if total > 0 else 0.0


def eta_seconds(run: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds until a running run finishes training, from its pace so far; None if unknown."""
    if run["status"] != "running":
        return None
    total, step = run.get("total_steps") or 0, run.get("step") or 0
    started = _parse_time(run.get("started_at"))
    if started is None or step <= 0 or total <= step:
        return None
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
    return max(0.0, elapsed / step * (total - step))


def duration_words(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def status_words(run: dict[str, Any]) -> str:
    """A run's state as a person would say it, with its error when it has one."""
    status = run["status"]
    words = STATUS_WORDS.get(status, status)
    if status == "running":
        phase = run.get("phase") or "starting"
        total = run.get("total_steps") or 0
        words = (
            f"Running ({phase}, step {run.get('step') or 0} of {total})" if total else f"Running ({phase})"
        )
    elif status == "waiting" and run.get("depends_on"):
        words = f"Waiting for its base model (run {', '.join(str(i) for i in run['depends_on'])})"
    elif status == "queued" and run.get("cancel_requested"):
        words = "Cancelling"
    if run.get("cancel_requested") and status == "running":
        words += ", cancelling"
    error = run.get("error") or (run.get("message") if status in ("failed", "out_of_memory") else None)
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


# --- memory and accuracy per method ---------------------------------------------------------------


def run_record(run: dict[str, Any], detail: dict[str, Any] | None) -> dict[str, Any]:
    """One run's numbers from ``GET /runs/{id}`` (``detail``; None while it has no result)."""
    result = (detail or {}).get("result") or {}
    memory = result.get("memory") or {}
    evaluation = result.get("eval") or {}
    throughput = result.get("throughput") or {}
    return {
        "run_id": run["id"],
        "method": run["method"],
        "seed": run["seed"],
        "status": run["status"],
        "error": run.get("error") or result.get("error"),
        "has_result": bool(memory),
        **{key: memory.get(key) for key, _ in COMPONENTS},
        "total_bytes": total_memory_bytes(memory) if memory else None,
        "peak_bytes": memory.get("peak_bytes"),
        "measured_peak_bytes": memory.get("measured_peak_bytes"),
        "predicted_activation_bytes": memory.get("predicted_activation_bytes"),
        "velora_measured_bytes": memory.get("velora_measured_bytes"),
        "trainable_params": memory.get("trainable_params"),
        "total_params": memory.get("total_params"),
        "metric": evaluation.get("metric"),
        "value": evaluation.get("value"),
        "ci95": tuple(evaluation["ci95"]) if evaluation.get("ci95") else None,
        "num_examples": evaluation.get("num_examples"),
        "chance": evaluation.get("chance"),
        "tokens_per_s": throughput.get("tokens_per_s"),
        "step_time_s": throughput.get("step_time_s"),
        "loss_curve": result.get("loss_curve") or [],
    }


def _mean(values: Sequence[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def memory_of(row: dict[str, Any]) -> float | None:
    """The memory a method is judged by (:func:`velora_core.contract.result.headline_memory_bytes`): the
    measured peak where there is one, else the total of the components."""
    if measured_peak_bytes(row) is None and row.get("total_bytes") is None:
        return None
    return headline_memory_bytes(row)


def method_rows(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method, in the comparison's order: means over the seeds that produced a result,
    the spread (sample standard deviation) when there are several, and deltas against ``full``
    (same metric) and against chance level."""
    rows = []
    for method in methods:
        own = [r for r in records if r["method"] == method]
        done = [r for r in own if r["has_result"]]
        statuses = sorted({r["status"] for r in own})
        row: dict[str, Any] = {
            "method": method,
            "runs": len(own),
            "seeds": sorted(r["seed"] for r in own),
            "results": len(done),
            "status": statuses[0] if len(statuses) == 1 else ", ".join(statuses),
            "error": next((r["error"] for r in own if r["error"]), None),
        }
        for key in (
            *(k for k, _ in COMPONENTS),
            "total_bytes",
            "predicted_activation_bytes",
            "velora_measured_bytes",
        ):
            row[key] = _mean([r[key] for r in done])
        row["peak_bytes"] = _mean([r["peak_bytes"] for r in done])
        row["measured_peak_bytes"] = _mean([r.get("measured_peak_bytes") for r in done])
        row["metric"] = next((r["metric"] for r in done if r["metric"]), None)
        values = [r["value"] for r in done]
        row["value"], row["value_spread"] = mean_and_spread(values)
        row["value_n"] = sum(v is not None for v in values)
        # One seed: its interval; several: the envelope of theirs (velora_core.contract.intervals).
        row["ci95"] = seeds_interval([r["ci95"] for r in done if r["value"] is not None])
        row["ci95_low"], row["ci95_high"] = row["ci95"] or (None, None)
        row["num_examples"] = _mean([r["num_examples"] for r in done])
        row["chance"] = _mean([r["chance"] for r in done])
        row["tokens_per_s"] = _mean([r["tokens_per_s"] for r in done])
        rows.append(row)
    full = next((r for r in rows if r["method"] == "full" and r["results"]), None)
    for row in rows:
        row["memory_bytes"] = memory_of(row)
        row["memory_vs_full"] = memory_vs_full(row["memory_bytes"], full["memory_bytes"] if full else None)
        same_metric = full is not None and full["metric"] == row["metric"]
        row["delta_vs_full"] = (
            row["value"] - full["value"]
            if same_metric and row["value"] is not None and full["value"] is not None
            else None
        )
        row["delta_vs_chance"] = (
            row["value"] - row["chance"] if row["value"] is not None and row["chance"] is not None else None
        )
    return rows


def higher_is_better(metric: str | None) -> bool:
    return metric != "perplexity"


def front_places(rows: Sequence[dict[str, Any]]) -> list[FrontPlace]:
    """Where :func:`velora_core.contract.intervals.pareto_front` puts each row (with a value and a
    memory): never ahead of a method whose 95 % interval overlaps its own."""
    metric = next((r["metric"] for r in rows if r["metric"]), None)
    points = [FrontPoint(r["memory_bytes"], r["value"], r["ci95"]) for r in rows]
    return pareto_front(points, higher_better=higher_is_better(metric))


def chance_words(rows: Sequence[dict[str, Any]]) -> str | None:
    """The sentence under the accuracy chart about chance level (None for perplexity)."""
    shown = [r for r in rows if r["value"] is not None]
    chance = next((r["chance"] for r in shown if r["chance"] is not None), None)
    return chance_sentence([r["method"] for r in shown], [r["ci95"] for r in shown], chance)


# --- formatting -----------------------------------------------------------------------------------


def format_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.2f} MiB"


def format_metric(metric: str | None, value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "–"
    if metric in PERCENT_METRICS:
        text = f"{100 * value:.1f} %"
        return f"{text} ± {100 * spread:.1f}" if spread is not None else text
    text = f"{value:.3f}"
    return f"{text} ± {spread:.3f}" if spread is not None else text


def format_interval(metric: str | None, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "–"
    if metric in PERCENT_METRICS:
        return f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f} %"
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


def metric_help(evaluation: Mapping[str, Any]) -> str | None:
    """A run's evaluation in words beside its value: the 95% interval, the examples and chance."""
    metric = evaluation.get("metric")
    parts = []
    if evaluation.get("ci95"):
        low, high = evaluation["ci95"]
        parts.append(f"95% interval {format_metric(metric, low)} to {format_metric(metric, high)}")
    if evaluation.get("num_examples"):
        parts.append(f"{evaluation['num_examples']} examples")
    if evaluation.get("chance"):
        parts.append(f"chance {format_metric(metric, evaluation['chance'])}")
    return "; ".join(parts) or None


def format_delta(metric: str | None, value: float | None) -> str:
    if value is None:
        return "–"
    if metric in PERCENT_METRICS:
        return f"{100 * value:+.1f} pts"
    return f"{value:+.3f}"


def display_table(
    rows: Sequence[dict[str, Any]], *, measured_peak: bool, gpu_budget_bytes: float | None = None
) -> list[dict[str, str]]:
    """The Compare page's table: one line per method, every number formatted for reading; with a GPU
    budget, whether each method's memory fits in it."""
    metric = next((r["metric"] for r in rows if r["metric"]), None)
    label = METRIC_LABELS.get(metric or "none", metric or "Metric")
    memory_label = "Peak memory" if measured_peak else "Memory (analytic)"
    table = []
    for row in rows:
        seeds = row["seeds"]
        table.append(
            {
                "Method": row["method"],
                "Seeds": ", ".join(str(s) for s in seeds),
                "Status": row["status"].replace("_", " "),
                memory_label: format_bytes(row["memory_bytes"]),
                "vs full": f"{row['memory_vs_full']:.2f}×" if row["memory_vs_full"] is not None else "–",
                "Activations": format_bytes(row["activation_bytes"]),
                label: format_metric(row["metric"], row["value"], row["value_spread"]),
                "95 % interval": format_interval(row["metric"], row["ci95"]),
                "Δ vs full": format_delta(row["metric"], row["delta_vs_full"]),
                "Δ vs chance": format_delta(row["metric"], row["delta_vs_chance"]),
                "Tokens/s": f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] is not None else "–",
            }
        )
        if gpu_budget_bytes:
            fits = None if row["memory_bytes"] is None else row["memory_bytes"] <= gpu_budget_bytes
            table[-1][f"Fits {gpu_budget_bytes / GIB:g} GiB"] = {True: "yes", False: "no", None: "–"}[fits]
    return table


# --- downloads ------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "method",
    "runs",
    "results",
    "status",
    *(k for k, _ in COMPONENTS),
    "total_bytes",
    "peak_bytes",
    "measured_peak_bytes",
    "memory_bytes",
    "memory_vs_full",
    "predicted_activation_bytes",
    "velora_measured_bytes",
    "metric",
    "value",
    "value_spread",
    "value_n",
    "ci95_low",
    "ci95_high",
    "num_examples",
    "chance",
    "delta_vs_full",
    "delta_vs_chance",
    "tokens_per_s",
    "error",
]


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The per-method table as CSV (raw numbers: bytes, fractions)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def comparison_json(
    comparison: dict[str, Any], records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]
) -> str:
    """Everything behind the view: the comparison (spec, runs, summary), each run's numbers and the
    per-method rows."""
    return json.dumps({"comparison": comparison, "runs": list(records), "methods": list(rows)}, indent=2)


# --- one run --------------------------------------------------------------------------------------


def memory_table(memory: dict[str, Any]) -> list[dict[str, str]]:
    """A run's memory report: each component, the predicted total, the measured peak, the bytes
    VeLoRA's wrapped layers were predicted to save and did save, and those offloading kept in host
    memory."""

    def line(label: str, value: int | None, missing: str = "–") -> dict[str, str]:
        return {
            "Component": label,
            "Bytes": missing if value is None else f"{value:,}",
            "Size": format_bytes(value),
        }

    return [
        *(line(label, memory.get(key) or 0) for key, label in COMPONENTS),
        line("Total (predicted)", total_memory_bytes(memory)),
        line("Measured peak (tracker)", memory.get("measured_peak_bytes"), missing="not tracked"),
        line("Temporaries at the peak", memory.get("temporary_bytes"), missing="not tracked"),
        line("CUDA peak allocated", memory.get("peak_bytes"), missing="not measured off CUDA"),
        line("CUDA peak reserved", memory.get("cuda_reserved_bytes"), missing="not measured off CUDA"),
        line("Allocator gap (reserved − tracked)", memory.get("allocator_gap_bytes"), missing="–"),
        line("VeLoRA layers, predicted", memory.get("predicted_activation_bytes") or 0),
        line("VeLoRA layers, measured", memory.get("velora_measured_bytes") or 0),
        line("Activations offloaded to host (not in the total)", memory.get("host_activation_bytes") or 0),
    ]


#: The metrics table's columns, in order, with the words it shows.
METRIC_COLUMNS = {
    "step": "Step",
    "loss": "Loss",
    "lr": "Learning rate",
    "tokens_per_s": "Tokens/s",
    "step_time_s": "Step time (s)",
    "memory_allocated_bytes": "Memory allocated (bytes)",
}


def metric_rows(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's training curve as table rows with readable column names, leaving out a column that no
    point has a value for (memory allocated is recorded on CUDA only, step time not by every engine)."""
    shown = {
        key: label for key, label in METRIC_COLUMNS.items() if any(p.get(key) is not None for p in points)
    }
    return [{label: point.get(key) for key, label in shown.items()} for point in points]


def run_facts(run: dict[str, Any]) -> list[dict[str, str]]:
    """Where and when a run ran, and where its artifact is."""
    result = run.get("result") or {}
    spec = run.get("spec") or result.get("spec") or {}
    evaluation = result.get("eval") or {}
    facts = [
        ("Workload", spec.get("workload")),
        ("Metric", METRIC_LABELS.get(evaluation.get("metric") or "", evaluation.get("metric"))),
        ("Artifact", run.get("artifact_path") or result.get("artifact_path") or "none"),
        ("Worker", run.get("worker_host")),
        ("Device", run.get("worker_device")),
        ("Queue", run.get("queue")),
        ("Spec hash", run.get("spec_hash")),
        ("Attempts", run.get("attempts")),
        ("Created", run.get("created_at")),
        ("Started", run.get("started_at")),
        ("Finished", run.get("finished_at")),
    ]
    return [{"Fact": name, "Value": "–" if value is None else str(value)} for name, value in facts]


def fit_rows(estimates: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The "Will it fit?" table: per method its predicted peak, when it happens, whether it fits the
    card and the largest micro-batch that does (``POST /fit``'s estimates)."""
    rows = []
    for e in estimates:
        fits = e.get("fits")
        largest = e.get("max_micro_batch")
        rows.append(
            {
                "Method": e["method"],
                "Peak": format_bytes(e["peak_bytes"]),
                "Peak during": e["peak_phase"],
                "Activations": format_bytes(e["activations"]),
                "Temporaries": format_bytes(e["temporary"]),
                "Fits": "–" if fits is None else ("yes" if fits else "no"),
                "Largest micro-batch": "–" if e.get("gpu_bytes") is None else str(largest or "none"),
            }
        )
    return rows
