"""The classification metrics and their 95% intervals: accuracy (Wilson), Matthews correlation and
Pearson correlation (Fisher z). Plain Python and math, no torch.

MERGE NOTE: the interval functions below (:func:`wilson_interval`, :func:`fisher_z_interval`) are
local stand-ins for the shared torch-free interval module of ``velora_core/contract/`` (issue 12);
switch the two calls in :func:`classification_metric` to it when both have landed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n`` (to be replaced, see module note)."""
    if n <= 0:
        raise ValueError("an interval needs at least one example")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_z_interval(r: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Fisher-z interval of a correlation ``r`` from ``n`` pairs (None below 4 pairs); used for
    Pearson's r and, as the phi coefficient it generalises, for Matthews' (to be replaced, see note)."""
    if n < 4:
        return None
    r = min(max(r, -0.9999999), 0.9999999)
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to their label."""
    _check_lengths(predictions, labels)
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def matthews_correlation(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews' correlation coefficient, multi-class (Gorodkin's R_K from the confusion matrix):
    ``(c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))``; 0 when a side is constant."""
    _check_lengths(predictions, labels)
    classes = sorted(set(predictions) | set(labels))
    predicted = {k: 0 for k in classes}
    true = {k: 0 for k in classes}
    correct = 0
    for p, y in zip(predictions, labels, strict=True):
        predicted[p] += 1
        true[y] += 1
        correct += int(p == y)
    s = len(labels)
    cross = sum(predicted[k] * true[k] for k in classes)
    denominator = math.sqrt(
        (s * s - sum(v * v for v in predicted.values())) * (s * s - sum(v * v for v in true.values()))
    )
    return 0.0 if denominator == 0 else (correct * s - cross) / denominator


def pearson_correlation(predictions: Sequence[float], targets: Sequence[float]) -> float:
    """Pearson's r; 0 when a side is constant."""
    _check_lengths(predictions, targets)
    n = len(targets)
    mean_p, mean_t = sum(predictions) / n, sum(targets) / n
    cov = sum((p - mean_p) * (t - mean_t) for p, t in zip(predictions, targets, strict=True))
    var_p = sum((p - mean_p) ** 2 for p in predictions)
    var_t = sum((t - mean_t) ** 2 for t in targets)
    return 0.0 if var_p == 0 or var_t == 0 else cov / math.sqrt(var_p * var_t)


def classification_metric(
    metric: str, predictions: Sequence[float], labels: Sequence[float]
) -> tuple[float, tuple[float, float] | None]:
    """``metric`` (``accuracy``, ``matthews`` or ``pearson``) and its 95% interval.

    Raises:
        ValueError: an unknown metric, no examples, or predictions and labels of different lengths.
    """
    if metric == "accuracy":
        value = accuracy(predictions, labels)
        return value, wilson_interval(round(value * len(labels)), len(labels))
    if metric == "matthews":
        value = matthews_correlation(predictions, labels)
        return value, fisher_z_interval(value, len(labels))
    if metric == "pearson":
        value = pearson_correlation(predictions, labels)
        return value, fisher_z_interval(value, len(labels))
    raise ValueError(f"unknown classification metric {metric!r}; choose accuracy, matthews or pearson")


def _check_lengths(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("a metric needs at least one example")
