"""Threshold choice on validation data, frozen application, proportions with intervals, the 2x2 table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix, f1_score
from statsmodels.stats.proportion import proportion_confint

from pipeline.errors import UserError
from pipeline.evaluation.checks import UndefinedStatisticError
from pipeline.evaluation.operating_point import (
    binary_metrics,
    choose_threshold,
    confusion_counts,
    fixed_threshold,
    proportion_with_ci,
)


def _cases(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.round(1 / (1 + np.exp(-rng.normal(labels * 2.0 - 1.0, 1.2))), 2)


def _sens_spec(labels, scores, threshold):
    calls = scores >= threshold
    return calls[labels == 1].mean(), 1 - calls[labels == 0].mean()


@pytest.mark.parametrize("seed", range(4))
def test_youden_threshold_maximises_j_over_every_candidate(seed):
    labels, scores = _cases(seed, 90)
    point = choose_threshold(labels, scores)
    sens, spec = _sens_spec(labels, scores, point.threshold)
    best = max(sum(_sens_spec(labels, scores, t)) - 1 for t in np.unique(scores))
    assert sens + spec - 1 == pytest.approx(best)
    assert (point.validation_sensitivity, point.validation_specificity) == pytest.approx((sens, spec))
    assert point.threshold not in set(scores)  # placed between two validation scores
    assert point.chosen_on == "validation" and point.n_validation == 90


def test_target_sensitivity_is_the_most_specific_threshold_reaching_it():
    labels, scores = _cases(8, 120)
    point = choose_threshold(labels, scores, method="target_sensitivity", target_sensitivity=0.9)
    sens, _ = _sens_spec(labels, scores, point.threshold)
    assert sens >= 0.9
    # the chosen ROC vertex is the lowest score above the threshold; every stricter vertex misses the target
    higher = np.unique(scores[scores > point.threshold])[1:]
    assert higher.size and all(_sens_spec(labels, scores, t)[0] < 0.9 for t in higher)


def test_threshold_choice_errors():
    labels, scores = _cases(1, 30)
    with pytest.raises(UndefinedStatisticError, match="no positive"):
        choose_threshold(np.zeros(30, dtype=int), scores)
    with pytest.raises(UserError, match="target sensitivity"):
        choose_threshold(labels, scores, method="target_sensitivity", target_sensitivity=1.5)
    with pytest.raises(UserError, match="NaN"):
        choose_threshold(labels, np.where(np.arange(30) == 3, np.nan, scores))
    with pytest.raises(UserError, match="finite"):
        fixed_threshold(float("nan"))


def test_frozen_threshold_is_applied_unchanged_to_test_data():
    val_labels, val_scores = _cases(2, 100)
    test_labels, test_scores = _cases(3, 80)
    point = choose_threshold(val_labels, val_scores)
    metrics = binary_metrics(test_labels, test_scores, threshold=point, n_resamples=200)
    assert metrics.threshold == point.threshold
    calls = (test_scores >= point.threshold).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(test_labels, calls)
    assert (metrics.counts.tp, metrics.counts.fp, metrics.counts.fn, metrics.counts.tn) == (tp, fp, fn, tn)
    assert metrics.sensitivity.value == pytest.approx(tp / (tp + fn))
    assert metrics.specificity.value == pytest.approx(tn / (tn + fp))
    assert metrics.ppv.value == pytest.approx(tp / (tp + fp))
    assert metrics.npv.value == pytest.approx(tn / (tn + fn))
    assert metrics.accuracy.value == pytest.approx((tp + tn) / 80)
    assert metrics.f1.value == pytest.approx(f1_score(test_labels, calls))
    assert metrics.f1.ci[0] <= metrics.f1.value <= metrics.f1.ci[1]
    np.testing.assert_array_equal(metrics.counts.matrix(), confusion_matrix(test_labels, calls))


def test_wilson_interval_matches_the_closed_form():
    successes, total = 17, 23
    z = stats.norm.ppf(0.975)
    p = successes / total
    centre = (p + z**2 / (2 * total)) / (1 + z**2 / total)
    half = z / (1 + z**2 / total) * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2))
    estimate = proportion_with_ci(successes, total)
    assert estimate.ci == pytest.approx((centre - half, centre + half), abs=1e-12)
    exact = proportion_with_ci(successes, total, method="clopper-pearson")
    assert exact.ci == pytest.approx(proportion_confint(successes, total, method="beta"))
    assert exact.ci[0] < estimate.ci[0]  # the exact interval is the wider, conservative one here
    assert (
        estimate.format()
        == f"{p * 100:.1f}% (95% CI {estimate.ci[0] * 100:.1f}\u2013{estimate.ci[1] * 100:.1f}; 17/23)"
    )


def test_zero_denominators_are_undefined_not_zero():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    nobody_positive = binary_metrics(labels, scores, threshold=0.99, n_resamples=50)
    assert nobody_positive.ppv.value is None and "denominator is zero" in nobody_positive.ppv.reason
    assert nobody_positive.sensitivity.value == 0.0  # defined: 0 of 2 positives found
    assert nobody_positive.f1.value == 0.0
    no_positive_case = binary_metrics(np.zeros(6, dtype=int), scores, threshold=0.35, n_resamples=50)
    assert no_positive_case.sensitivity.value is None
    assert no_positive_case.f1.value is None and "undefined" in no_positive_case.f1.reason
    assert no_positive_case.specificity.value == pytest.approx(0.5)
    assert no_positive_case.to_dict()["sensitivity"]["value"] is None


def test_binary_metrics_input_errors():
    with pytest.raises(UserError, match="lengths must match"):
        binary_metrics(np.array([0, 1, 1]), np.array([0.2, 0.4]), threshold=0.5)
    with pytest.raises(UserError, match="NaN"):
        binary_metrics(np.array([0, 1]), np.array([0.2, np.nan]), threshold=0.5)
    with pytest.raises(UserError, match="unknown CI method"):
        binary_metrics(np.array([0, 1]), np.array([0.2, 0.7]), threshold=0.5, ci_method="wald")
    with pytest.raises(UserError, match="lengths must match"):
        confusion_counts(np.array([0, 1]), np.array([1]))
