"""How the pages write numbers and words: byte sizes, metrics with their spread and interval, deltas,
durations, the memory components' and metrics' labels, and numbers read from a page's address.
Pure functions, no Streamlit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from velora_core.contract.table_format import (  # one way to write each number, shared with the CLI
    GIB,
    MIB,
    format_bytes,
    format_delta,
    format_interval,
    format_metric,
    format_ratio,
)
from velora_core.contract.workload_registry import CLASSIFICATION_METRICS

__all__ = ["GIB", "MIB", "format_bytes", "format_delta", "format_interval", "format_metric", "format_ratio"]

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


def duration_words(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


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
