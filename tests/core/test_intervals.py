"""95 % intervals against published values, and the rules the views follow with them: when two
results are distinguishable, the Pareto front that never ranks overlapping methods, the chance sentence."""

from __future__ import annotations

import math

import pytest

from velora_core.contract.intervals import (
    FrontPoint,
    chance_sentence,
    distinguishable,
    mean_and_spread,
    mean_interval,
    paired_difference,
    pareto_front,
    perplexity_interval,
    seeds_interval,
    shared_items,
    t_quantile,
    wilson,
)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), Table I, and the usual worked examples of the Wilson score interval.
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (81, 263, 0.2553, 0.3662),  # Newcombe's 81/263
    ],
)
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson(k, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="at least one trial"):
        wilson(0, 0)
    with pytest.raises(ValueError, match=r"lie in \[0, n=10\]"):
        wilson(11, 10)


@pytest.mark.parametrize(
    ("df", "table"),
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (10, 2.2281), (30, 2.0423)],
)
def test_t_quantile_matches_the_tables(df: int, table: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(table, abs=0.004 if df == 3 else 0.001)


def test_mean_interval_is_the_t_interval() -> None:
    mean, (low, high) = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), t(0.975, 4) = 2.7764: 3 ± 1.9632
    assert mean == 3.0
    assert (low, high) == pytest.approx((3 - 1.9632, 3 + 1.9632), abs=2e-3)
    with pytest.raises(ValueError, match="at least two values"):
        mean_interval([1.0])


def test_perplexity_interval_brackets_the_perplexity_of_equal_blocks() -> None:
    nlls = [2.0, 2.2, 1.8, 2.1, 1.9]
    low, high = perplexity_interval(nlls)
    assert low < math.exp(2.0) < high
    assert math.log(high) - 2.0 == pytest.approx(2.0 - math.log(low))  # symmetric in log space


def test_seeds_interval_is_the_envelope_and_mean_and_spread() -> None:
    assert seeds_interval([(0.3, 0.5), (0.35, 0.6)]) == (0.3, 0.6)
    assert seeds_interval([(0.3, 0.5), None]) is None
    assert mean_and_spread([0.5, 0.3, None]) == (pytest.approx(0.4), pytest.approx(0.1414213, rel=1e-5))
    assert mean_and_spread([0.5]) == (0.5, None)


def test_distinguishable_needs_disjoint_intervals() -> None:
    assert distinguishable((0.1, 0.2), (0.21, 0.3))
    assert not distinguishable((0.1, 0.25), (0.2, 0.3))
    assert not distinguishable((0.1, 0.2), None)


def test_pareto_front_never_ranks_overlapping_methods() -> None:
    points = [
        FrontPoint(memory=10, value=0.40, ci95=(0.36, 0.44)),  # cheapest
        FrontPoint(memory=20, value=0.43, ci95=(0.39, 0.47)),  # better, but overlaps the cheapest
        FrontPoint(memory=30, value=0.60, ci95=(0.56, 0.64)),  # clearly better: on the front
        FrontPoint(memory=40, value=0.30, ci95=(0.26, 0.34)),  # clearly worse and dearer
    ]
    places = pareto_front(points, higher_better=True)
    assert [p.on_front for p in places] == [True, False, True, False]
    assert places[1].not_distinguishable_from == (0,)
    assert places[3].behind == (0, 1, 2) and places[3].not_distinguishable_from == ()
    # Without intervals nothing can be ranked: only the cheapest stays on the front.
    bare = [FrontPoint(p.memory, p.value, None) for p in points]
    assert [p.on_front for p in pareto_front(bare, higher_better=True)] == [True, False, False, False]


def test_pareto_front_for_perplexity_and_equal_memory() -> None:
    points = [
        FrontPoint(memory=10, value=12.0, ci95=(11.5, 12.5)),
        FrontPoint(memory=10, value=9.0, ci95=(8.5, 9.5)),  # same memory, clearly lower perplexity
        FrontPoint(memory=10, value=9.2, ci95=(8.8, 9.6)),  # same memory, overlaps: both stay
    ]
    assert [p.on_front for p in pareto_front(points, higher_better=False)] == [False, True, True]


def test_chance_sentence() -> None:
    none = chance_sentence(["full", "lora"], [(0.2, 0.3), (0.22, 0.33)], 0.25)
    assert none.startswith("No method is distinguishable from chance (25.0 %)")
    some = chance_sentence(["full", "lora"], [(0.3, 0.4), (0.22, 0.33)], 0.25)
    assert some == (
        "Above chance (25.0 %) by more than the 95 % interval: full; not distinguishable from chance: lora."
    )
    assert chance_sentence(["full"], [(8.0, 9.0)], None) is None


def test_paired_difference_is_tighter_than_two_separate_intervals():
    # Two methods agree on 740 of 800 items; A is right on 40 of the others, B on 20.
    a = [True] * 440 + [False] * 300 + [True] * 40 + [False] * 20
    b = [True] * 440 + [False] * 300 + [False] * 40 + [True] * 20
    diff, (low, high) = paired_difference(a, b)
    assert diff == pytest.approx(20 / 800)
    assert distinguishable(wilson(sum(a), 800), wilson(sum(b), 800)) is False  # separately: overlap
    assert 0 < low < diff < high  # paired: the difference is real
    assert high - low < (wilson(sum(a), 800)[1] - wilson(sum(a), 800)[0])


def test_paired_difference_of_equal_results_contains_zero_and_is_antisymmetric():
    a, b = [True, False, True, True, False], [False, True, True, True, False]
    diff, (low, high) = paired_difference(a, b)
    assert diff == 0 and low < 0 < high
    back, (low2, high2) = paired_difference(b, a)
    assert back == 0 and (low2, high2) == pytest.approx((-high, -low))
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="at least one item"):
        paired_difference([], [])


def test_shared_items_match_by_prompt_hash_and_answer():
    a = {"prompt_hash": ["p1", "p2", "p3"], "answer": [0, 1, 2], "correct": [True, False, True]}
    b = {"prompt_hash": ["p3", "p1", "p9"], "answer": [2, 1, 0], "correct": [False, True, True]}
    assert shared_items(a, b) == ([True], [False])  # p1's answer differs: not the same item
    assert shared_items(a, None) == ([], [])
