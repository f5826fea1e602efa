"""95 % confidence intervals of an evaluation, and what they allow a view to say.

The one definition of: the Wilson score interval of a proportion (:func:`wilson`), the t interval of
a mean over evaluation blocks (:func:`mean_interval`, :func:`perplexity_interval`), the interval of a
method run with several seeds (:func:`seeds_interval`), when two results are distinguishable
(:func:`distinguishable`), the difference of two methods that answered the same items
(:func:`paired_difference`, :func:`shared_items`), the Pareto front that never ranks a method ahead of another it cannot be
told from (:func:`pareto_front`) and the sentence about chance level (:func:`chance_sentence`).
The CLI table, the API summary, the dashboard and every workload's evaluation call these.

Standard library only (no torch, no scipy), so the backend and the dashboard can import it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Two-sided 95 %: the standard normal's 0.975 quantile.
Z95 = statistics.NormalDist().inv_cdf(0.975)

Interval = tuple[float, float]


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of ``k`` successes in ``n`` trials (Wilson 1927; Agresti & Coull 1998).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not empty at 0/n or n/n:
    ``wilson(0, 10)`` is (0, 0.278). ``z`` is the normal quantile (1.96 for 95 %).

    Raises:
        ValueError: ``n < 1`` or ``k`` outside [0, n].
    """
    if n < 1:
        raise ValueError(f"an interval needs at least one trial, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got k={k}")
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0/n and n/n the bound is exactly 0 (or 1); the formula gives it only up to rounding.
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom.

    Exact for ``df`` 1 and 2; otherwise the Cornish-Fisher expansion about the normal quantile
    (Abramowitz & Stegun 26.7.5): at ``p = 0.975`` within 0.004 of the tables for ``df = 3`` and
    within 0.001 from ``df = 4`` on.

    Raises:
        ValueError: ``p`` outside (0, 1) or ``df < 1``.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (power + 1) for power, term in enumerate(terms))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, Interval]:
    """The mean of ``values`` and its t interval, ``mean ± t·s/√n`` (``s`` the sample deviation).

    Raises:
        ValueError: fewer than two values (no spread to estimate).
    """
    if len(values) < 2:
        raise ValueError(f"an interval of a mean needs at least two values, got {len(values)}")
    mean = statistics.fmean(values)
    half = (
        t_quantile(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    )
    return mean, (mean - half, mean + half)


def perplexity_interval(block_nlls: Sequence[float]) -> Interval:
    """95 % interval of a perplexity, from each evaluation block's mean next-token NLL.

    The t interval of the mean NLL over blocks, through ``exp``: the blocks are the independent
    units (tokens within a block are not), so the interval widens when blocks disagree. Blocks of
    adjacent text from one file are still correlated, so read it as a lower bound on the
    uncertainty. Raises ValueError for fewer than two blocks.
    """
    _, (low, high) = mean_interval(block_nlls)
    return math.exp(min(low, 700.0)), math.exp(min(high, 700.0))


def seeds_interval(intervals: Sequence[Interval | None]) -> Interval | None:
    """One method's interval over several seeds: the envelope of the seeds' intervals (the lowest
    low, the highest high), None when a seed has none. Two methods' envelopes are disjoint only when
    every seed of one lies clear of every seed of the other, so no ranking rests on a lucky seed."""
    known = [i for i in intervals if i is not None]
    if not known or len(known) < len(intervals):
        return None
    return min(low for low, _ in known), max(high for _, high in known)


def distinguishable(a: Interval | None, b: Interval | None) -> bool:
    """Whether two results can be told apart: both have an interval and the intervals do not overlap.
    A result without an interval is never distinguishable (nothing says how far it may be off)."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> tuple[float, Interval]:
    """Accuracy of ``a`` minus that of ``b`` on the same items (``a[i]``, ``b[i]``: item ``i`` right),
    with Newcombe's 95 % interval for paired proportions (Newcombe 1998, method 10: Wilson
    intervals of both accuracies, combined with their correlation over items).

    Two methods scored on the same items disagree only on some of them; the interval reflects those
    items, so it is much narrower than the two accuracies' separate intervals suggest (their overlap
    says nothing when the methods agree on most items). It excludes 0 when the difference is real.

    Raises:
        ValueError: no items, or sequences of different lengths.
    """
    if len(a) != len(b):
        raise ValueError(f"paired results need the same items: {len(a)} against {len(b)}")
    n = len(a)
    if n < 1:
        raise ValueError("a paired difference needs at least one item")
    both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson(both + only_a, n, z), wilson(both + only_b, n, z)
    spread = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(spread) if spread else 0.0
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, (max(-1.0, low), min(1.0, high))


def shared_items(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> tuple[list[bool], list[bool]]:
    """The correctness of two evaluations' item records (``EvalResult.items`` as dumped) on the items
    both scored, matched by prompt hash and answer, in ``a``'s order; empty lists when either has
    no records. What :func:`paired_difference` takes."""
    if not a or not b:
        return [], []
    theirs = {(h, ans): ok for h, ans, ok in zip(b["prompt_hash"], b["answer"], b["correct"], strict=True)}
    mine: list[bool] = []
    other: list[bool] = []
    for key, ok in zip(zip(a["prompt_hash"], a["answer"], strict=True), a["correct"], strict=True):
        if key in theirs:
            mine.append(bool(ok))
            other.append(bool(theirs[key]))
    return mine, other


@dataclass(frozen=True)
class FrontPoint:
    """One method on the accuracy-against-memory chart: its memory, its metric and the metric's interval."""

    memory: float
    value: float
    ci95: Interval | None


@dataclass(frozen=True)
class FrontPlace:
    """Where :func:`pareto_front` puts a point: on the front, or behind the points in ``behind``
    (indices), and the cheaper-or-equal points it is ``not_distinguishable_from``."""

    on_front: bool
    behind: tuple[int, ...]
    not_distinguishable_from: tuple[int, ...]


def _better(a: FrontPoint, b: FrontPoint, higher_better: bool) -> bool:
    """``a``'s metric is distinguishably better than ``b``'s."""
    if not distinguishable(a.ci95, b.ci95):
        return False
    return a.value > b.value if higher_better else a.value < b.value


def pareto_front(points: Sequence[FrontPoint], *, higher_better: bool) -> list[FrontPlace]:
    """The Pareto front of memory (lower is better) against a metric, judged with the metric's intervals.

    ``b`` is behind ``a`` when ``a`` needs no more memory and either its metric is distinguishably
    better, or ``a`` needs strictly less memory and the two metrics are not distinguishable (paying
    more memory for a difference the evaluation cannot see puts nothing on the front). The front is
    every point no other point is ahead of, so along it each step up in memory buys a metric whose
    interval lies clear of the cheaper front point's. ``not_distinguishable_from`` lists the points
    with no more memory whose interval overlaps this one's: what the chart says instead of a ranking.
    """
    places = []
    for j, b in enumerate(points):
        behind, overlapping = [], []
        for i, a in enumerate(points):
            if i == j or a.memory > b.memory:
                continue
            if not distinguishable(a.ci95, b.ci95):
                overlapping.append(i)
            if _better(a, b, higher_better) or (a.memory < b.memory and not distinguishable(a.ci95, b.ci95)):
                behind.append(i)
        places.append(FrontPlace(not behind, tuple(behind), tuple(overlapping)))
    return places


def chance_sentence(
    methods: Sequence[str], intervals: Sequence[Interval | None], chance: float | None, percent: bool = True
) -> str | None:
    """The sentence under the chart about chance level, or None without a chance level (perplexity).

    Says that no method is distinguishable from chance when every interval contains it (or none has
    an interval); otherwise names the methods whose interval lies above it, and those that do not.
    """
    if chance is None or not methods:
        return None
    shown = f"{100 * chance:.1f} %" if percent else f"{chance:.3g}"
    above = [m for m, ci in zip(methods, intervals, strict=True) if ci is not None and ci[0] > chance]
    below = [m for m, ci in zip(methods, intervals, strict=True) if ci is not None and ci[1] < chance]
    rest = [m for m in methods if m not in above and m not in below]
    if not above and not below:
        return (
            f"No method is distinguishable from chance ({shown}): every 95 % interval contains it, "
            "so these accuracies say nothing about the methods."
        )
    parts = []
    if above:
        parts.append(f"above chance ({shown}) by more than the 95 % interval: {', '.join(above)}")
    if below:
        parts.append(f"below chance: {', '.join(below)}")
    if rest:
        parts.append(f"not distinguishable from chance: {', '.join(rest)}")
    return "; ".join(parts).capitalize() + "."


def mean_and_spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """The mean of the values present and their spread (sample standard deviation; None under two):
    how several seeds of one method are summarised, beside :func:`seeds_interval`."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) >= 2 else None
