"""Reliability curve, Brier score, ECE and decision-curve net benefit."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.calibration import brier_score, decision_curve, reliability_curve


def _calibrated(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn with exactly the predicted probability: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.0, 1.0, n)
    return (rng.uniform(0.0, 1.0, n) < probabilities).astype(int), probabilities


def test_brier_score_is_the_mean_squared_error():
    labels, probabilities = _calibrated(0, 200)
    assert brier_score(labels, probabilities) == pytest.approx(np.mean((probabilities - labels) ** 2))


def test_reliability_curve_of_a_calibrated_model_follows_the_diagonal():
    labels, probabilities = _calibrated(1, 20000)
    curve = reliability_curve(labels, probabilities, n_bins=10)
    assert curve.counts.sum() == labels.size
    assert curve.expected_calibration_error < 0.02
    np.testing.assert_allclose(curve.observed_fraction, curve.mean_predicted, atol=0.04)
    assert curve.brier < curve.brier_reference  # informative probabilities beat the prevalence


def test_reliability_curve_detects_overconfidence():
    labels, probabilities = _calibrated(2, 5000)
    overconfident = np.clip((probabilities - 0.5) * 3 + 0.5, 0.0, 1.0)
    calibrated_ece = reliability_curve(labels, probabilities).expected_calibration_error
    assert reliability_curve(labels, overconfident).expected_calibration_error > calibrated_ece + 0.05


def test_empty_bins_are_nan_and_null_in_json():
    labels = np.array([0, 1, 0, 1])
    curve = reliability_curve(labels, np.array([0.05, 0.95, 0.02, 0.97]), n_bins=10)
    assert np.isnan(curve.mean_predicted[4]) and curve.counts[4] == 0
    assert curve.to_dict()["mean_predicted"][4] is None
    assert sum(curve.to_dict()["counts"]) == 4


def test_decision_curve_matches_the_net_benefit_formula():
    labels, probabilities = _calibrated(3, 400)
    curve = decision_curve(labels, probabilities, thresholds=np.array([0.1, 0.3, 0.5]))
    for pt, model, treat_all in zip(
        curve.thresholds, curve.net_benefit_model, curve.net_benefit_treat_all, strict=True
    ):
        calls = probabilities >= pt
        tp, fp = np.sum(calls & (labels == 1)), np.sum(calls & (labels == 0))
        assert model == pytest.approx(tp / 400 - fp / 400 * pt / (1 - pt))
        prevalence = labels.mean()
        assert treat_all == pytest.approx(prevalence - (1 - prevalence) * pt / (1 - pt))


def test_perfect_model_has_net_benefit_equal_to_prevalence():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1])
    curve = decision_curve(labels, labels.astype(float))
    np.testing.assert_allclose(curve.net_benefit_model, labels.mean())
    crossing = np.argmin(np.abs(curve.thresholds - labels.mean()))
    assert abs(curve.net_benefit_treat_all[crossing]) < 0.02  # treat-all crosses zero at the prevalence


def test_calibration_input_errors():
    labels = np.array([0, 1, 1])
    with pytest.raises(UserError, match="not logits"):
        reliability_curve(labels, np.array([-2.0, 0.5, 3.0]))
    with pytest.raises(UserError, match="NaN"):
        brier_score(labels, np.array([0.1, np.nan, 0.8]))
    with pytest.raises(UserError, match="lengths must match"):
        decision_curve(labels, np.array([0.1, 0.8]))
    with pytest.raises(UserError, match="strictly between"):
        decision_curve(labels, np.array([0.1, 0.5, 0.8]), thresholds=np.array([0.0, 0.5]))
