"""What the Compare page shows of the comparison table that the API computed (``table`` of
``GET /comparisons/{id}``, rows of :class:`velora_core.contract.table.MethodRow`): the Pareto front
judged with the intervals, the sentence about chance, the display table and the downloads. Pure
functions of plain dicts, no Streamlit, so they are tested directly; nothing here recomputes a
number of the table. Words and formats: dashboard/formatting.py; run states: dashboard/run_status.py;
one run's tables: dashboard/run_tables.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboard.formatting import (
    GIB,
    METRIC_LABELS,
    format_bytes,
    format_delta,
    format_interval,
    format_metric,
    format_ratio,
)
from velora_core.contract.intervals import FrontPlace, FrontPoint, chance_sentence, pareto_front
from velora_core.contract.table import MethodRow, table_csv, table_json


def table_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison table's rows as the API sent them (one dict per method, in the spec's order)."""
    return [dict(row) for row in comparison.get("table") or []]


def higher_is_better(metric: str | None) -> bool:
    return metric != "perplexity"


def front_places(rows: Sequence[dict[str, Any]]) -> list[FrontPlace]:
    """Where :func:`velora_core.contract.intervals.pareto_front` puts each row (with a value and a
    memory): never ahead of a method whose 95 % interval overlaps its own."""
    metric = next((r["metric"] for r in rows if r["metric"]), None)
    points = [FrontPoint(r["memory_bytes"], r["value"], r["ci95"]) for r in rows]
    return pareto_front(points, higher_better=higher_is_better(metric))


def indistinguishable_list(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The short list under the accuracy chart: each method kept off the front because a method with
    no more memory cannot be told from it (their 95 % intervals overlap)."""
    shown = [r for r in rows if r["value"] is not None and r["memory_bytes"] is not None]
    items = [
        f"{row['method']} ≈ {', '.join(shown[k]['method'] for k in place.not_distinguishable_from)}"
        for row, place in zip(shown, front_places(shown), strict=True)
        if not place.on_front and place.not_distinguishable_from
    ]
    if not items:
        return []
    return [
        "Not distinguishable from a method with no more memory (95 % intervals overlap): "
        + "; ".join(items)
        + "."
    ]


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
        ci95 = tuple(row["ci95"]) if row["ci95"] else None
        table.append(
            {
                "Method": row["method"],
                "Seeds": ", ".join(str(s) for s in seeds),
                "Status": row["status"].replace("_", " "),
                memory_label: format_bytes(row["memory_bytes"]),
                "vs full": format_ratio(row["memory_vs_full"]),
                "Activations": format_bytes(row["activation_bytes"]),
                label: format_metric(row["metric"], row["value"], row["value_spread"]),
                "95 % interval": format_interval(row["metric"], ci95),
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


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The table as CSV: the one schema of :func:`velora_core.contract.table.table_csv`."""
    return table_csv([MethodRow.model_validate(row) for row in rows])


def comparison_json(comparison: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The table with its per-seed detail, and the comparison it belongs to (name, spec, runs)."""
    return table_json(
        [MethodRow.model_validate(row) for row in rows],
        id=comparison["id"],
        name=comparison["name"],
        spec=comparison["spec"],
        runs=comparison["runs"],
    )
