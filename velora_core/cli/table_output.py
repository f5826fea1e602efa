"""What a command line shows of a comparison: a run's progress-bar columns and the results table;
shared by ``velora-bench`` and the service's ``submit`` so both look alike. Imports no torch.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_columns() -> tuple:
    """The columns of a run's progress bar (label, bar, step/total, info, elapsed): shared with the
    service's ``submit`` command so both look alike."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )


def print_table(results: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from velora_core.contract.intervals import chance_sentence
    from velora_core.contract.table import summary_rows
    from velora_core.contract.workload_registry import PERCENT_METRICS

    def fmt(value: Any, pattern: str = "{:.1f}") -> str:
        return "–" if value is None else pattern.format(value)

    table = Table(
        title="VeLoRA Bench comparison (memory in MiB; peak: measured by the tracker, in its phase; "
        "total = weights+trainable+grads+optimizer+activations)"
    )
    for column in (
        "method",
        "status",
        "peak",
        "phase",
        "weights",
        "activations",
        "total",
        "metric",
        "value [95 % CI]",
        "n",
        "chance",
        "Δ vs full",
        "mem vs full",
        "tok/s",
    ):
        table.add_column(column, justify="left" if column in ("method", "status", "metric") else "right")
    rows = summary_rows(results)
    for row in rows:
        percent = row["metric"] in PERCENT_METRICS
        value_fmt = "{:.1%}" if percent else "{:.2f}"
        delta_fmt = "{:+.1%}" if percent else "{:+.2f}"
        value = fmt(row["value"], value_fmt)
        if row["ci95_low"] is not None:
            bounds = (row["ci95_low"], row["ci95_high"])
            value += " [" + "–".join(f"{100 * b:.1f}" if percent else f"{b:.2f}" for b in bounds) + "]"
        if row["seeds_spread"] is not None:
            value += f" (seeds {fmt(row['seeds_mean'], value_fmt)} ± {fmt(row['seeds_spread'], value_fmt)})"
        delta = fmt(row["delta_vs_full"], delta_fmt)
        if row["paired_delta_ci95_low"] is not None:  # over the items both runs scored
            bounds = (row["paired_delta_ci95_low"], row["paired_delta_ci95_high"])
            delta += " [" + "–".join(f"{100 * b:+.1f}" if percent else f"{b:+.2f}" for b in bounds) + "]"
        if row["distinguishable_from_full"] is False:
            delta += " ~"
        table.add_row(
            row["method"] + (f" s{row['seed']}" if row["seed"] else ""),
            row["status"],
            fmt(row["measured_peak_mb"]),
            row["peak_phase"] or "–",
            fmt(row["weight_mb"], "{:.2f}"),
            fmt(row["activation_mb"], "{:.2f}"),
            fmt(row["total_mb"], "{:.2f}"),
            row["metric"],
            value,
            fmt(row["num_examples"], "{}"),
            fmt(row["chance"], "{:.0%}"),
            delta,
            fmt(row["memory_vs_full"], "{:.2f}x"),
            fmt(row["tokens_per_s"], "{:.0f}"),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: the whole table, not an 80-column squeeze
    console.print(table)
    if any(row["distinguishable_from_full"] is False for row in rows):
        console.print(
            "~ : not distinguishable from full: the paired 95 % interval of the difference over the items "
            "both scored [in brackets] contains 0 (without item records: the two intervals overlap)"
        )
    completed = [r for r in rows if r["status"] == "completed" and r["chance"] is not None]
    sentence = chance_sentence(
        [r["method"] + (f" s{r['seed']}" if r["seed"] else "") for r in completed],
        [(r["ci95_low"], r["ci95_high"]) if r["ci95_low"] is not None else None for r in completed],
        completed[0]["chance"] if completed else None,
    )
    if sentence:
        console.print(sentence)
    for row in rows:
        if row["error"]:
            print(f"{row['method']}: {row['error']}", file=sys.stderr)


def base_run_line(result: Any) -> str:
    """One line for a base run (the pre-training of the fine-tunes' base model): status, metric, time."""
    spec = result.spec or {}
    model = (spec.get("model") or {}).get("name") or "?"
    parts = [
        f"base model: pre-training {result.method} on {model}, {result.steps_done} steps: {result.status}"
    ]
    if result.eval is not None and result.eval.value is not None:
        parts.append(f"{result.eval.metric} {result.eval.value:.2f}")
    if result.throughput is not None and result.throughput.train_time_s:
        parts.append(f"{result.throughput.train_time_s:.0f} s training")
    if (result.environment or {}).get("reused_artifact"):
        parts.append(f"reused {result.environment['reused_artifact']}")
    if result.error:
        parts.append(result.error)
    return "; ".join(parts)
