"""The classification metrics and intervals against scikit-learn, SciPy and worked examples."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, matthews_corrcoef

from velora_core.bench.evaluate.classification_metrics import (
    accuracy,
    classification_metric,
    fisher_z_interval,
    matthews_correlation,
    pearson_correlation,
    wilson_interval,
)


@pytest.mark.parametrize("classes", [2, 5])
def test_accuracy_and_matthews_match_sklearn(classes):
    rng = random.Random(classes)
    labels = [rng.randrange(classes) for _ in range(300)]
    predictions = [y if rng.random() < 0.6 else rng.randrange(classes) for y in labels]
    assert accuracy(predictions, labels) == pytest.approx(accuracy_score(labels, predictions))
    assert matthews_correlation(predictions, labels) == pytest.approx(matthews_corrcoef(labels, predictions))


def test_matthews_is_zero_for_a_constant_answer_and_one_for_perfect():
    labels = [0, 1, 1, 0, 1]
    assert matthews_correlation([1] * 5, labels) == 0.0 == matthews_corrcoef(labels, [1] * 5)
    assert matthews_correlation(labels, labels) == pytest.approx(1.0)


def test_pearson_matches_scipy():
    rng = random.Random(0)
    targets = [rng.uniform(0, 5) for _ in range(200)]
    predictions = [t + rng.gauss(0, 1) for t in targets]
    assert pearson_correlation(predictions, targets) == pytest.approx(
        pearsonr(predictions, targets).statistic
    )


def test_wilson_interval_worked_example():
    # Wilson (1927) for 8 of 10 at 95%: the textbook (0.490, 0.943).
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_fisher_z_interval_worked_example():
    # r = 0.5 from 28 pairs: z = atanh(0.5) = 0.5493, standard error 1/5, so tanh(0.5493 ± 0.392).
    low, high = fisher_z_interval(0.5, 28)
    assert low == pytest.approx(math.tanh(math.atanh(0.5) - 1.959963984540054 / 5))
    assert (round(low, 3), round(high, 3)) == (0.156, 0.736)
    assert fisher_z_interval(0.5, 3) is None


def test_classification_metric_gives_value_and_interval():
    value, (low, high) = classification_metric("accuracy", [1, 1, 0, 0], [1, 0, 0, 0])
    assert value == 0.75 and low < 0.75 < high
    with pytest.raises(ValueError, match="unknown classification metric"):
        classification_metric("f1", [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        classification_metric("accuracy", [1, 0], [1])
