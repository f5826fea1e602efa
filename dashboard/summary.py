"""What the Compare page shows, computed from API responses: per-method rows (mean ± spread over
seeds, 95 % intervals, deltas against full fine-tuning and chance), the Pareto front judged with the
intervals, the sentence about chance, the display table and the downloads. Pure functions of plain
dicts, no Streamlit, so they are tested directly. Words and formats: dashboard/formatting.py; run
states: dashboard/run_status.py; one run's tables: dashboard/run_tables.py.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from typing import Any

from dashboard.formatting import (
    COMPONENTS,
    GIB,
    METRIC_LABELS,
    format_bytes,
    format_delta,
    format_interval,
    format_metric,
)
from velora_core.contract.intervals import (
    FrontPlace,
    FrontPoint,
    chance_sentence,
    mean_and_spread,
    pareto_front,
    seeds_interval,
)
from velora_core.contract.result import (
    headline_memory_bytes,
    measured_peak_bytes,
    memory_vs_full,
    total_memory_bytes,
)


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
