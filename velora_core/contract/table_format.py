"""How the comparison table's numbers are written, for every view that shows them (the CLI table,
the dashboard): byte sizes, a metric with its spread and interval, a delta in points, a ratio to full.
One definition, so a number reads the same wherever it is shown. Standard library only.
"""

from __future__ import annotations

from velora_core.contract.workload_registry import PERCENT_METRICS

MIB = 1024**2
GIB = 1024**3
DASH = "–"


def format_bytes(value: float | None) -> str:
    """``12.34 MiB``, or GiB from one GiB up."""
    if value is None:
        return DASH
    if abs(value) >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.2f} MiB"


def format_metric(metric: str | None, value: float | None, spread: float | None = None) -> str:
    """``61.2 %`` (a percentage metric, with ``± 1.3`` over seeds) or ``12.345``."""
    if value is None:
        return DASH
    if metric in PERCENT_METRICS:
        text = f"{100 * value:.1f} %"
        return f"{text} ± {100 * spread:.1f}" if spread is not None else text
    text = f"{value:.3f}"
    return f"{text} ± {spread:.3f}" if spread is not None else text


def format_interval(metric: str | None, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return DASH
    if metric in PERCENT_METRICS:
        return f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f} %"
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


def format_delta(metric: str | None, value: float | None) -> str:
    """A delta of the table (already in points for a percentage metric): ``+2.5 pts`` or ``-0.120``."""
    if value is None:
        return DASH
    if metric in PERCENT_METRICS:
        return f"{value:+.1f} pts"
    return f"{value:+.3f}"


def format_ratio(value: float | None) -> str:
    """Memory against full's: ``0.34×``."""
    return DASH if value is None else f"{value:.2f}×"
