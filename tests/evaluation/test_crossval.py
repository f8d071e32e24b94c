"""Cross-validation tests: the seed paper's numbers, the Nadeau-Bengio correction, per-fold metrics, comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.errors import UserError
from pipeline.evaluation.crossval import (
    INDEPENDENT_TEST_NOTE,
    compare_cross_validated_models,
    compare_fold_scores,
    corrected_resampled_t_test,
    fold_metrics,
    independent_t_test,
    paired_t_test,
    summarise_folds,
)
from pipeline.evaluation.roc import delong_test

# the seed paper's 5-fold accuracies (AAM-ResNet vs U-Net)
OURS = [96.1, 96.5, 97.0, 96.3, 96.8]
UNET = [84.0, 83.7, 84.5, 84.2, 84.8]


def test_seed_paper_numbers():
    tests = compare_fold_scores(OURS, UNET, test_train_ratio=1 / 4, include_independent=True)
    assert (round(tests["independent"].t, 2), tests["independent"].df) == (48.93, 8)
    assert (round(tests["paired"].t, 2), tests["paired"].df) == (81.10, 4)
    assert (round(tests["nadeau_bengio"].t, 2), tests["nadeau_bengio"].df) == (54.07, 4)
    # the paper's printed t = 18.74 is none of these
    assert all(abs(t.t - 18.74) > 1 for t in tests.values())
    assert tests["independent"].note == INDEPENDENT_TEST_NOTE
    assert "independent" not in compare_fold_scores(OURS, UNET)


def test_tests_agree_with_scipy_and_one_sided_p_is_half_two_sided():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.85, 0.02, 10), rng.normal(0.83, 0.02, 10)
    assert paired_t_test(a, b).t == pytest.approx(stats.ttest_rel(a, b).statistic)
    assert independent_t_test(a, b).t == pytest.approx(stats.ttest_ind(a, b).statistic)
    for result in (paired_t_test(a, b), independent_t_test(a, b), corrected_resampled_t_test(a, b)):
        if result.t > 0:
            assert result.p_one_sided == pytest.approx(result.p_two_sided / 2)
        else:
            assert result.p_one_sided == pytest.approx(1 - result.p_two_sided / 2)


def test_nadeau_bengio_is_the_paired_t_shrunk_by_the_variance_correction():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.03, 5), rng.normal(0.78, 0.03, 5)
    paired = paired_t_test(a, b)
    for ratio in (0.25, 0.5):
        corrected = corrected_resampled_t_test(a, b, test_train_ratio=ratio)
        assert corrected.t == pytest.approx(paired.t * np.sqrt((1 / 5) / (1 / 5 + ratio)))
        assert abs(corrected.t) < abs(paired.t) and corrected.p_two_sided > paired.p_two_sided
    # the default ratio is what J-fold cross-validation gives: 1 / (J - 1)
    assert corrected_resampled_t_test(a, b).t == pytest.approx(
        corrected_resampled_t_test(a, b, test_train_ratio=0.25).t
    )


def test_undefined_and_bad_inputs():
    zero_variance = paired_t_test([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])  # every difference is 0.1
    assert zero_variance.t is None and zero_variance.p_two_sided is None and "zero variance" in zero_variance.reason
    with pytest.raises(UserError, match="one score per fold"):
        paired_t_test([0.9, 0.8, 0.7], [0.8, 0.7])
    with pytest.raises(UserError, match="NaN"):
        corrected_resampled_t_test([0.9, float("nan")], [0.8, 0.7])
    with pytest.raises(UserError, match="at least two"):
        independent_t_test([0.9], [0.8, 0.7])
    with pytest.raises(UserError, match="positive"):
        corrected_resampled_t_test([0.9, 0.8], [0.8, 0.75], test_train_ratio=0)


def _oof(seed: int, *, signal: float, n: int = 150, folds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.random.default_rng(100).integers(0, 2, n)  # same cases and labels for every model
    return pd.DataFrame(
        {
            "case_id": [f"case-{i:03d}" for i in range(n)],
            "label": labels,
            "probability": 1 / (1 + np.exp(-rng.normal(signal * (labels - 0.5), 1.0))),
            "fold": np.arange(n) % folds,
        }
    )


def test_fold_metrics_and_summary():
    frame = _oof(0, signal=2.0)
    per_fold = fold_metrics(frame)
    assert list(per_fold["fold"]) == [0, 1, 2, 3, 4] and per_fold["n"].sum() == 150
    for fold, part in frame.groupby("fold"):
        assert per_fold.loc[per_fold["fold"] == fold, "auc"].item() == pytest.approx(
            roc_auc_score(part["label"], part["probability"])
        )
    summary = summarise_folds(per_fold).set_index("metric")
    assert summary.loc["auc", "mean"] == pytest.approx(per_fold["auc"].mean())
    assert summary.loc["auc", "sd"] == pytest.approx(per_fold["auc"].std(ddof=1))


def test_fold_with_one_class_is_nan_not_a_number():
    frame = _oof(1, signal=2.0)
    frame.loc[frame["fold"] == 2, "label"] = 1
    per_fold = fold_metrics(frame)
    assert np.isnan(per_fold.loc[per_fold["fold"] == 2, "auc"].item())
    assert np.isnan(per_fold.loc[per_fold["fold"] == 2, "specificity"].item())
    summary = summarise_folds(per_fold).set_index("metric")
    assert summary.loc["auc", "n_folds_defined"] == 4 and summary.loc["auc", "n_folds"] == 5


def test_compare_cross_validated_models_pools_out_of_fold_predictions():
    strong, weak = _oof(2, signal=3.0), _oof(3, signal=1.0)
    comparison = compare_cross_validated_models(strong, weak.sample(frac=1.0, random_state=0), names=("aam", "unet"))
    assert list(comparison.per_fold.columns) == ["fold", "aam", "unet"]
    assert comparison.tests["paired"].t > 0 and comparison.tests["nadeau_bengio"].df == 4
    expected = delong_test(strong["label"].to_numpy(), strong["probability"], weak["probability"])
    assert comparison.pooled_delong.z == pytest.approx(expected.z)
    assert comparison.to_dict()["tests"]["paired"]["t"] == comparison.tests["paired"].t
    with pytest.raises(UserError, match="different cases"):
        compare_cross_validated_models(strong, weak.iloc[:-1])
