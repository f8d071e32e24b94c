"""AUC, fast vs naive DeLong, DeLong vs bootstrap intervals, paired DeLong test, and undefined cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.errors import UserError
from pipeline.evaluation.checks import UndefinedStatisticError
from pipeline.evaluation.roc import (
    auc_summary,
    bootstrap_auc_ci,
    delong_ci,
    delong_covariance,
    delong_covariance_naive,
    delong_test,
    format_auc,
    roc_auc,
    roc_band,
)


def _tied_cases(seed: int, n: int, *, models: int = 1, levels: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and integer-rated scores (a 1..levels scale, so ties are everywhere), correlated across models."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2], labels[2:4] = 1, 0  # at least two of each class
    latent = labels * 1.0 + rng.normal(0.0, 1.0, n)
    scores = np.clip(np.round(latent[None, :] + rng.normal(0.0, 0.7, (models, n)) + 2), 0, levels - 1)
    return labels, scores if models > 1 else scores[0]


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    labels, scores = _tied_cases(seed, 57)
    expected = roc_auc_score(labels, scores)
    assert abs(roc_auc(labels, scores) - expected) < 1e-9
    assert abs(delong_covariance(labels, scores)[0][0] - expected) < 1e-9


@pytest.mark.parametrize("seed,n", [(0, 10), (1, 33), (2, 120), (3, 251)])
def test_fast_delong_equals_naive_on_tied_scores(seed, n):
    labels, scores = _tied_cases(seed, n, models=3)
    fast_aucs, fast_cov = delong_covariance(labels, scores)
    naive_aucs, naive_cov = delong_covariance_naive(labels, scores)
    np.testing.assert_allclose(fast_aucs, naive_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_cov, naive_cov, rtol=1e-9, atol=1e-15)
    assert fast_cov.shape == (3, 3)
    assert np.all(np.linalg.eigvalsh(fast_cov) > -1e-15)  # a covariance matrix is positive semi-definite


def test_fast_delong_equals_naive_on_continuous_scores():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(labels * 0.8, 1.0, (2, 300))
    np.testing.assert_allclose(
        delong_covariance(labels, scores)[1], delong_covariance_naive(labels, scores)[1], rtol=1e-9
    )


def test_delong_and_bootstrap_ci_agree_on_200_cases():
    rng = np.random.default_rng(2024)
    labels = np.r_[np.ones(100, dtype=int), np.zeros(100, dtype=int)]
    scores = np.r_[rng.normal(1.1, 1.0, 100), rng.normal(0.0, 1.0, 100)]
    delong = delong_ci(labels, scores)
    boot = bootstrap_auc_ci(labels, scores, n_resamples=2000, seed=0)
    auc = roc_auc(labels, scores)
    assert delong[0] < auc < delong[1] and boot[0] < auc < boot[1]
    assert abs(delong[0] - boot[0]) < 0.02
    assert abs(delong[1] - boot[1]) < 0.02


def test_bootstrap_is_seeded_and_bca_close_to_percentile():
    labels, scores = _tied_cases(11, 150)
    first = bootstrap_auc_ci(labels, scores, n_resamples=500, seed=3)
    assert first == bootstrap_auc_ci(labels, scores, n_resamples=500, seed=3)
    assert first != bootstrap_auc_ci(labels, scores, n_resamples=500, seed=4)
    bca = bootstrap_auc_ci(labels, scores, n_resamples=500, seed=3, method="bca")
    assert abs(bca[0] - first[0]) < 0.03 and abs(bca[1] - first[1]) < 0.03


def test_logit_ci_stays_inside_unit_interval_near_perfect_auc():
    rng = np.random.default_rng(5)
    labels = np.r_[np.ones(30, dtype=int), np.zeros(30, dtype=int)]
    scores = np.r_[rng.normal(3.0, 1.0, 30), rng.normal(0.0, 1.0, 30)]
    auc = roc_auc(labels, scores)
    assert auc > 0.95
    for scale in ("logit", "auc"):
        lower, upper = delong_ci(labels, scores, scale=scale)
        assert 0.0 <= lower < auc <= upper <= 1.0
    lower, upper = delong_ci(labels, scores, scale="logit")
    assert upper < 1.0  # the logit interval is asymmetric and never touches the boundary


def test_auc_scale_is_auc_plus_minus_z_se_as_proc_reports_it():
    """pROC's ``ci.auc(method = "delong")``: AUC ± z·SE with the DeLong SE, clipped to [0, 1]."""
    from scipy import stats

    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 150)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounded: ties, as real scores have
    auc = roc_auc(labels, scores)
    x, z = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    se = np.sqrt(psi.mean(axis=1).var(ddof=1) / x.size + psi.mean(axis=0).var(ddof=1) / z.size)
    for confidence in (0.9, 0.95):
        half = stats.norm.ppf(0.5 + confidence / 2) * se
        assert delong_ci(labels, scores, scale="auc", confidence=confidence) == pytest.approx(
            (auc - half, auc + half), abs=1e-12
        )
    summary = auc_summary(labels, scores, n_resamples=0, delong_scale="auc")
    assert summary.delong_scale == "auc" and summary.delong_ci == pytest.approx((auc - half, auc + half))
    assert summary.delong_se == pytest.approx(se, rel=1e-9)
    logit = auc_summary(labels, scores, n_resamples=0)
    assert logit.delong_scale == "logit" and logit.delong_ci != pytest.approx(summary.delong_ci, abs=1e-4)
    with pytest.raises(UserError, match="DeLong scale"):
        auc_summary(labels, scores, delong_scale="wald")


def test_paired_delong_test_matches_naive_covariance_and_detects_a_better_model():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 200)
    strong = rng.normal(labels * 1.5, 1.0)
    weak = strong + rng.normal(0.0, 2.0, 200)
    result = delong_test(labels, strong, weak)
    aucs, cov = delong_covariance_naive(labels, np.vstack([strong, weak]))
    expected_z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert result.z == pytest.approx(expected_z, rel=1e-9)
    assert result.auc_a > result.auc_b and result.p_value < 0.01
    assert result.difference_ci[0] < result.difference < result.difference_ci[1]
    swapped = delong_test(labels, weak, strong)
    assert swapped.p_value == pytest.approx(result.p_value) and swapped.z == pytest.approx(-result.z)


def test_paired_delong_identical_rankings_is_undefined():
    labels, scores = _tied_cases(1, 40)
    with pytest.raises(UndefinedStatisticError, match="identically"):
        delong_test(labels, scores, 2 * scores + 1)  # a monotone transform ranks the cases identically


def test_class_absent_is_marked_undefined_not_a_number():
    labels = np.ones(12, dtype=int)
    scores = np.linspace(0, 1, 12)
    with pytest.raises(UndefinedStatisticError, match="no negative"):
        roc_auc(labels, scores)
    summary = auc_summary(labels, scores, n_resamples=50)
    assert summary.auc is None and summary.delong_ci is None and summary.bootstrap_ci is None
    assert "no negative" in summary.reason
    assert summary.format() == "undefined"


def test_constant_score_gives_auc_half_with_degenerate_ci_marked():
    labels = np.r_[np.ones(20, dtype=int), np.zeros(20, dtype=int)]
    summary = auc_summary(labels, np.full(40, 0.3), n_resamples=100)
    assert summary.auc == 0.5
    assert summary.delong_se == 0.0
    assert summary.delong_ci is None and summary.bootstrap_ci is None
    assert "zero" in summary.reason and "degenerate" in summary.reason
    assert "CI undefined" in summary.format()
    with pytest.raises(UndefinedStatisticError, match="zero"):
        delong_ci(labels, np.full(40, 0.3))


def test_single_case_of_a_class_has_auc_but_no_interval():
    labels = np.array([1, 0, 0, 0, 0])
    summary = auc_summary(labels, np.array([0.9, 0.1, 0.5, 0.95, 0.2]), n_resamples=50)
    assert summary.auc == pytest.approx(0.75)
    assert summary.delong_ci is None and "at least 2" in summary.reason


def test_nan_scores_and_mismatched_lengths_raise_clear_errors():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(UserError, match="NaN"):
        auc_summary(labels, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(UserError, match="lengths must match"):
        roc_auc(labels, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(UserError, match="lengths must match"):
        delong_test(labels, np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.1, 0.2]))
    with pytest.raises(UserError, match="0 \\(negative\\) or 1"):
        auc_summary(np.array([0, 2, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]))


def test_roc_band_brackets_the_curve_level_and_is_ordered():
    labels, scores = _tied_cases(4, 120)
    band = roc_band(labels, scores, n_resamples=200, seed=1)
    assert np.all(band.tpr_lower <= band.tpr_upper)
    assert band.tpr_lower[0] == 0.0 and band.tpr_upper[-1] == 1.0
    assert np.all(np.diff(band.tpr_lower) >= -1e-12)  # pointwise quantiles of monotone curves stay monotone
    # the band's mean area is close to the AUC of the data
    area = np.trapezoid((band.tpr_lower + band.tpr_upper) / 2, band.fpr)
    assert abs(area - roc_auc(labels, scores)) < 0.05


def test_format_auc_journal_style():
    assert format_auc(0.91234, (0.87, 0.953)) == "0.912 (95% CI 0.870\u20130.953)"
    assert format_auc(0.5, None, confidence=0.9) == "0.500 (90% CI undefined)"
