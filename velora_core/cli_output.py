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

    from velora_core.contract.table import summary_rows
    from velora_core.contract.workloads import PERCENT_METRICS

    def fmt(value: Any, pattern: str = "{:.1f}") -> str:
        return "–" if value is None else pattern.format(value)

    table = Table(
        title="VeLoRA Bench comparison (memory in MiB; total = weights+trainable+grads+optimizer+activations)"
    )
    for column in (
        "method",
        "status",
        "peak",
        "weights",
        "activations",
        "total",
        "metric",
        "value",
        "chance",
        "Δ vs full",
        "mem vs full",
        "tok/s",
    ):
        table.add_column(column, justify="left" if column in ("method", "status", "metric") else "right")
    for row in summary_rows(results):
        percent = row["metric"] in PERCENT_METRICS
        value_fmt = "{:.1%}" if percent else "{:.2f}"
        delta_fmt = "{:+.1%}" if percent else "{:+.2f}"
        interval = row.get("ci95_low") is not None and row.get("value") is not None
        if interval:  # the value with its 95% interval
            value_fmt += f" [{value_fmt.format(row['ci95_low'])}, {value_fmt.format(row['ci95_high'])}]"
        table.add_row(
            row["method"] + (f" s{row['seed']}" if row["seed"] else ""),
            row["status"],
            fmt(row["peak_mb"]),
            fmt(row["weight_mb"], "{:.2f}"),
            fmt(row["activation_mb"], "{:.2f}"),
            fmt(row["total_mb"], "{:.2f}"),
            row["metric"],
            fmt(row["value"], value_fmt),
            fmt(row["chance"], "{:.0%}"),
            fmt(row["delta_vs_full"], delta_fmt),
            fmt(row["memory_vs_full"], "{:.2f}x"),
            fmt(row["tokens_per_s"], "{:.0f}"),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # logs and pipes: the whole table, not an 80-column squeeze
    console.print(table)
    for row in summary_rows(results):
        if row["error"]:
            print(f"{row['method']}: {row['error']}", file=sys.stderr)
