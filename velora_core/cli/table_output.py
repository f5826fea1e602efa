"""What a command line shows of a comparison: a run's progress-bar columns and the results table;
shared by ``velora-bench`` and the service's ``submit`` so both look alike. Imports no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
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


def print_table(rows: Sequence[Any]) -> None:
    """Print the comparison table: :class:`velora_core.contract.table.MethodRow` rows (as the API's
    ``table`` gives them, or :func:`~velora_core.contract.table.comparison_table` of local results),
    one line per method and, with several seeds, one indented line per seed."""
    from rich.console import Console
    from rich.table import Table

    from velora_core.contract.intervals import chance_sentence
    from velora_core.contract.table import MethodRow
    from velora_core.contract.table_format import (
        format_bytes,
        format_delta,
        format_interval,
        format_metric,
        format_ratio,
    )

    rows = [row if isinstance(row, MethodRow) else MethodRow.model_validate(row) for row in rows]
    table = Table(
        title="VeLoRA Bench comparison (peak: measured by the tracker, in its phase; total = "
        "weights+trainable+grads+optimizer+activations; Δ: method − full, in points for a percentage)"
    )
    columns = ("method", "seeds", "status", "peak", "phase", "vs full", "activations", "total", "metric")
    columns += ("value", "95 % interval", "n", "chance", "Δ vs full", "tok/s")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("method", "seeds", "status", "metric") else "right"
        )
    for row in rows:
        delta = format_delta(row.metric, row.delta_vs_full)
        if row.paired_delta_ci95 is not None:  # over the items both runs scored
            delta += " [" + "–".join(f"{b:+.1f}" for b in row.paired_delta_ci95) + "]"
        if row.distinguishable_from_full is False:
            delta += " ~"
        table.add_row(
            row.method,
            " ".join(str(s) for s in row.seeds),
            row.status,
            format_bytes(row.memory_bytes),
            row.peak_phase or "–",
            format_ratio(row.memory_vs_full),
            format_bytes(row.activation_bytes),
            format_bytes(row.total_bytes),
            row.metric or "–",
            format_metric(row.metric, row.value, row.value_spread),
            format_interval(row.metric, row.ci95),
            "–" if row.num_examples is None else str(row.num_examples),
            format_metric(row.metric, row.chance),
            delta,
            "–" if row.tokens_per_s is None else f"{row.tokens_per_s:.0f}",
        )
        for seed in row.per_seed if len(row.per_seed) > 1 else ():
            table.add_row(
                f"  seed {seed.seed}",
                "",
                str(seed.status),
                format_bytes(seed.memory_bytes),
                "",
                format_ratio(seed.memory_vs_full),
                *("", "", ""),
                format_metric(row.metric, seed.value),
                format_interval(row.metric, seed.ci95),
                *("", ""),
                format_delta(row.metric, seed.delta_vs_full),
                "",
            )
    console = Console()
    if not console.is_terminal:
        console = Console(width=220)  # logs and pipes: the whole table, not an 80-column squeeze
    console.print(table)
    if any(row.distinguishable_from_full is False for row in rows):
        console.print(
            "~ : not distinguishable from full: the paired 95 % interval of the difference over the items "
            "both scored [in brackets] contains 0 (without item records: the two intervals overlap)"
        )
    shown = [row for row in rows if row.value is not None and row.chance is not None]
    sentence = chance_sentence(
        [row.method for row in shown], [row.ci95 for row in shown], shown[0].chance if shown else None
    )
    if sentence:
        console.print(sentence)
    for row in rows:
        if row.error:
            print(f"{row.method}: {row.error}", file=sys.stderr)


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
