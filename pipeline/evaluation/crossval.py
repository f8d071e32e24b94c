"""Cross-validation statistics: per-fold metrics, mean ± sd, and model-vs-model tests across folds.

Folds share training data, so per-fold scores of one model are not independent and the two models' scores on the
same fold are paired. The paired t-test (scipy ``ttest_rel``) respects the pairing but still treats folds as
independent, which makes it too liberal; the corrected resampled t-test of Nadeau & Bengio (2003) inflates the
variance of the fold differences by ``(1/J + n_test/n_train)`` for that, and is written here because neither scipy
nor statsmodels has it. The independent two-sample t-test (scipy ``ttest_ind``, pooled variance) ignores the
pairing and is the wrong test for shared folds; it is computed only when asked for, with a note saying so. On the
pooled out-of-fold predictions the two models can also be compared case by case with the paired DeLong test.

Reference:
    Nadeau C, Bengio Y. Inference for the generalization error. Machine Learning 2003;52:239-281.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.errors import UserError
from pipeline.evaluation.calibration import brier_score
from pipeline.evaluation.checks import UndefinedStatisticError
from pipeline.evaluation.operating_point import binary_metrics
from pipeline.evaluation.roc import PairedDeLongResult, delong_test, roc_auc

__all__ = [
    "INDEPENDENT_TEST_NOTE",
    "CrossValComparison",
    "TTestResult",
    "compare_cross_validated_models",
    "compare_fold_scores",
    "corrected_resampled_t_test",
    "fold_metrics",
    "independent_t_test",
    "paired_t_test",
    "summarise_folds",
]

INDEPENDENT_TEST_NOTE = (
    "note: the independent two-sample t-test treats the two models' fold scores as unrelated samples; cross-validation "
    "folds are shared by both models (paired) and overlap in training data, so it is the wrong test here. "
    "Use the paired or, better, the Nadeau-Bengio corrected test."
)


@dataclass(frozen=True, kw_only=True)
class TTestResult:
    """A t-test of model A against model B; ``None`` values are undefined and ``reason`` says why.

    Attributes:
        name: which test.
        t: the t statistic (positive when A scores higher).
        df: degrees of freedom.
        p_two_sided: two-sided p-value.
        p_one_sided: one-sided p-value for H1: A > B.
        mean_difference: mean of A minus mean of B.
        note: a caveat to print beside the result.
        reason: why ``t`` or the p-values are ``None``.
    """

    name: str
    t: float | None
    df: int
    p_two_sided: float | None
    p_one_sided: float | None
    mean_difference: float
    note: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def _fold_scores(values: Sequence[float], what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what}: fold scores must be numbers") from None
    if array.ndim != 1 or array.size < 2:
        raise UserError(f"{what}: need at least two fold scores, got {array.size}")
    if not np.isfinite(array).all():
        raise UserError(f"{what}: fold scores contain NaN or infinite values")
    return array


def _paired_scores(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _fold_scores(a, "model A"), _fold_scores(b, "model B")
    if a.size != b.size:
        raise UserError(f"paired tests need one score per fold for both models: got {a.size} and {b.size}")
    return a, b


def _negligible_spread(spread: float, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a standard deviation is zero up to rounding (0.9 - 0.8 and 0.8 - 0.7 differ in the last bits)."""
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), np.finfo(np.float64).tiny)
    return not spread > 1e-9 * scale


def _result(
    name: str, t: float, df: int, mean_difference: float, *, zero_spread: bool = False, note: str | None = None
) -> TTestResult:
    if zero_spread or not np.isfinite(t):
        return TTestResult(
            name=name,
            t=None,
            df=int(df),
            p_two_sided=None,
            p_one_sided=None,
            mean_difference=mean_difference,
            note=note,
            reason="undefined: zero variance (the fold scores or their differences are all equal), t would be 0/0 or infinite",
        )
    return TTestResult(
        name=name,
        t=float(t),
        df=int(df),
        p_two_sided=float(2.0 * stats.t.sf(abs(t), df)),
        p_one_sided=float(stats.t.sf(t, df)),
        mean_difference=mean_difference,
        note=note,
    )


def independent_t_test(a: Sequence[float], b: Sequence[float]) -> TTestResult:
    """Independent two-sample t-test with pooled variance (scipy ``ttest_ind``); wrong for shared folds, see note.

    Raises:
        UserError: fewer than two scores per model, or non-finite scores.
    """
    a, b = _fold_scores(a, "model A"), _fold_scores(b, "model B")
    df = a.size + b.size - 2
    pooled_sd = np.sqrt(((a.size - 1) * np.var(a, ddof=1) + (b.size - 1) * np.var(b, ddof=1)) / df)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision-loss warning: zero spread is handled below
        result = stats.ttest_ind(a, b, equal_var=True)
    return _result(
        "independent (pooled variance)",
        float(result.statistic),
        df,
        float(a.mean() - b.mean()),
        zero_spread=_negligible_spread(float(pooled_sd), a, b),
        note=INDEPENDENT_TEST_NOTE,
    )


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TTestResult:
    """Paired t-test over folds (scipy ``ttest_rel``).

    Raises:
        UserError: unequal numbers of folds, fewer than two, or non-finite scores.
    """
    a, b = _paired_scores(a, b)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision-loss warning: zero spread is handled below
        result = stats.ttest_rel(a, b)
    spread = float(np.std(a - b, ddof=1))
    return _result(
        "paired",
        float(result.statistic),
        a.size - 1,
        float(np.mean(a - b)),
        zero_spread=_negligible_spread(spread, a, b),
    )


def corrected_resampled_t_test(
    a: Sequence[float], b: Sequence[float], *, test_train_ratio: float | None = None
) -> TTestResult:
    """Nadeau-Bengio corrected resampled t-test: ``t = mean(d) / sqrt((1/J + n_test/n_train) · var(d))``, df J-1.

    Args:
        a: model A's score on each of the J folds.
        b: model B's score on the same folds.
        test_train_ratio: ``n_test / n_train`` of one fold; default ``1 / (J - 1)``, which is what J-fold
            cross-validation gives.

    Returns:
        The :class:`TTestResult`.

    Raises:
        UserError: unequal numbers of folds, fewer than two, non-finite scores, or a ratio that is not positive.
    """
    a, b = _paired_scores(a, b)
    folds = a.size
    ratio = 1.0 / (folds - 1) if test_train_ratio is None else float(test_train_ratio)
    if not (np.isfinite(ratio) and ratio > 0.0):
        raise UserError(f"test/train ratio must be a positive number, got {test_train_ratio}")
    differences = a - b
    variance = float(np.var(differences, ddof=1))
    with np.errstate(all="ignore"):
        t = float(np.mean(differences) / np.sqrt((1.0 / folds + ratio) * variance))
    return _result(
        f"Nadeau-Bengio corrected (test/train {ratio:.4g})",
        t,
        folds - 1,
        float(differences.mean()),
        zero_spread=_negligible_spread(variance**0.5, a, b),
    )


def compare_fold_scores(
    a: Sequence[float],
    b: Sequence[float],
    *,
    test_train_ratio: float | None = None,
    include_independent: bool = False,
) -> dict[str, TTestResult]:
    """Paired and Nadeau-Bengio tests of A against B across folds, plus the independent test only when asked.

    Returns:
        ``{"paired": ..., "nadeau_bengio": ...}`` and ``"independent"`` first when ``include_independent``.
    """
    tests: dict[str, TTestResult] = {}
    if include_independent:
        tests["independent"] = independent_t_test(a, b)
    tests["paired"] = paired_t_test(a, b)
    tests["nadeau_bengio"] = corrected_resampled_t_test(a, b, test_train_ratio=test_train_ratio)
    return tests


def _required_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{what}: missing column(s) {', '.join(missing)}")


def fold_metrics(
    frame: pd.DataFrame,
    *,
    threshold: float = 0.5,
    fold_column: str = "fold",
    label_column: str = "label",
    score_column: str = "probability",
) -> pd.DataFrame:
    """Per-fold metrics of out-of-fold predictions; an undefined metric (a class absent from a fold) is NaN.

    Args:
        frame: one row per case with 0/1 labels, scores and the fold each case was held out in.
        threshold: threshold for the threshold-dependent metrics (``score >= threshold`` is positive).
        fold_column: fold column.
        label_column: 0/1 label column.
        score_column: score column (probabilities, for the Brier score).

    Returns:
        One row per fold: ``fold, n, n_positive, n_negative, auc, sensitivity, specificity, accuracy, brier``.

    Raises:
        UserError: missing columns or no folds.
    """
    _required_columns(frame, (fold_column, label_column, score_column), "out-of-fold predictions")
    rows = []
    for fold, part in frame.dropna(subset=[fold_column]).groupby(fold_column, sort=True):
        y = part[label_column].to_numpy(dtype=np.int64)
        s = part[score_column].to_numpy(dtype=np.float64)
        row = {"fold": int(fold), "n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum())}
        try:
            row["auc"] = roc_auc(y, s)
        except UndefinedStatisticError:
            row["auc"] = np.nan
        metrics = binary_metrics(y, s, threshold=threshold, n_resamples=1)
        for name in ("sensitivity", "specificity", "accuracy"):
            value = getattr(metrics, name).value
            row[name] = np.nan if value is None else value
        try:
            row["brier"] = brier_score(y, s)
        except UserError:  # scores are not probabilities
            row["brier"] = np.nan
        rows.append(row)
    if not rows:
        raise UserError(f"out-of-fold predictions: no rows with a value in column {fold_column!r}")
    return pd.DataFrame(rows)


def summarise_folds(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd (ddof 1) of every metric over the folds where it is defined.

    Returns:
        One row per metric: ``metric, mean, sd, n_folds_defined, n_folds``.
    """
    rows = []
    for metric in [c for c in per_fold.columns if c not in ("fold", "n", "n_positive", "n_negative")]:
        values = per_fold[metric].to_numpy(dtype=np.float64)
        defined = values[np.isfinite(values)]
        rows.append(
            {
                "metric": metric,
                "mean": float(defined.mean()) if defined.size else np.nan,
                "sd": float(defined.std(ddof=1)) if defined.size > 1 else np.nan,
                "n_folds_defined": int(defined.size),
                "n_folds": int(values.size),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True, kw_only=True)
class CrossValComparison:
    """Model A against model B over the same cross-validation folds.

    Attributes:
        metric: the per-fold metric compared.
        names: the two models' names.
        per_fold: per-fold metric of both models (columns ``fold``, ``<name a>``, ``<name b>``).
        tests: the t-tests from :func:`compare_fold_scores`.
        pooled_delong: paired DeLong test on the pooled out-of-fold predictions, matched by case id.
        pooled_delong_reason: why ``pooled_delong`` is ``None``.
    """

    metric: str
    names: tuple[str, str]
    per_fold: pd.DataFrame
    tests: dict[str, TTestResult]
    pooled_delong: PairedDeLongResult | None
    pooled_delong_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {
            "metric": self.metric,
            "names": list(self.names),
            "per_fold": self.per_fold.to_dict(orient="records"),
            "tests": {key: test.to_dict() for key, test in self.tests.items()},
            "pooled_delong": self.pooled_delong.to_dict() if self.pooled_delong else None,
            "pooled_delong_reason": self.pooled_delong_reason,
            "notes": list(self.notes),
        }


def compare_cross_validated_models(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    *,
    names: tuple[str, str] = ("model_a", "model_b"),
    metric: str = "auc",
    threshold: float = 0.5,
    test_train_ratio: float | None = None,
    include_independent: bool = False,
    case_column: str = "case_id",
) -> CrossValComparison:
    """Compare two models' out-of-fold predictions: per-fold tests of ``metric`` and pooled DeLong.

    Both frames need ``case_id, label, probability, fold`` with the same cases in the same folds (they are matched
    by case id, so row order does not matter).

    Args:
        frame_a: model A's out-of-fold predictions.
        frame_b: model B's out-of-fold predictions.
        names: model names for the per-fold table.
        metric: per-fold metric to test (a column of :func:`fold_metrics`).
        threshold: threshold for threshold-dependent metrics.
        test_train_ratio: for the Nadeau-Bengio test; default ``1 / (J - 1)``.
        include_independent: also run the independent t-test (with its note).
        case_column: the case id column.

    Returns:
        The :class:`CrossValComparison`.

    Raises:
        UserError: missing columns, different case sets or folds, or a metric that is undefined in some fold.
    """
    for frame, name in ((frame_a, names[0]), (frame_b, names[1])):
        _required_columns(frame, (case_column, "label", "probability", "fold"), f"{name} predictions")
    merged = frame_a[[case_column, "label", "probability", "fold"]].merge(
        frame_b[[case_column, "label", "probability", "fold"]], on=case_column, how="outer", suffixes=("_a", "_b")
    )
    unmatched = merged[merged["probability_a"].isna() | merged["probability_b"].isna()]
    if len(unmatched):
        raise UserError(
            f"{names[0]} and {names[1]} predictions cover different cases ({len(unmatched)} unmatched, "
            f"e.g. {unmatched[case_column].iloc[0]})"
        )
    if (merged["fold_a"] != merged["fold_b"]).any() or (merged["label_a"] != merged["label_b"]).any():
        raise UserError(f"{names[0]} and {names[1]} predictions disagree on a case's fold or label")
    per_fold_a = fold_metrics(frame_a, threshold=threshold)
    per_fold_b = fold_metrics(frame_b, threshold=threshold)
    if metric not in per_fold_a.columns:
        raise UserError(f"unknown fold metric {metric!r} (use one of {', '.join(per_fold_a.columns[4:])})")
    per_fold = pd.DataFrame({"fold": per_fold_a["fold"], names[0]: per_fold_a[metric], names[1]: per_fold_b[metric]})
    if per_fold[[names[0], names[1]]].isna().any().any():
        raise UserError(f"{metric} is undefined in at least one fold (a class absent from the fold)")
    tests = compare_fold_scores(
        per_fold[names[0]],
        per_fold[names[1]],
        test_train_ratio=test_train_ratio,
        include_independent=include_independent,
    )
    labels = merged["label_a"].to_numpy(dtype=np.int64)
    try:
        pooled = delong_test(labels, merged["probability_a"].to_numpy(), merged["probability_b"].to_numpy())
        reason = None
    except UndefinedStatisticError as err:
        pooled, reason = None, str(err)
    notes = [INDEPENDENT_TEST_NOTE] if include_independent else []
    return CrossValComparison(
        metric=metric,
        names=names,
        per_fold=per_fold,
        tests=tests,
        pooled_delong=pooled,
        pooled_delong_reason=reason,
        notes=notes,
    )
