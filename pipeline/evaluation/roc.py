"""Discrimination: ROC AUC with DeLong and stratified-bootstrap confidence intervals, and the paired DeLong test.

The AUC itself and the ROC curve come from scikit-learn (``roc_auc_score``, ``roc_curve``). What no maintained Python
library provides is DeLong's variance: this module implements the fast midrank algorithm of Sun & Xu (2014), which
costs O(k·N log N) for k scores on N cases, and keeps the naive O(m·n) placement-value version
(:func:`delong_covariance_naive`) as the reference it is tested against. The bootstrap is scipy's
``scipy.stats.bootstrap`` given positives and negatives as two independent samples, which makes it stratified: each
resample keeps the observed number of positive and negative cases.

References:
    DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more correlated receiver operating
    characteristic curves: a nonparametric approach. Biometrics 1988;44:837-845.
    Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
    operating characteristic curves. IEEE Signal Processing Letters 2014;21:1389-1393.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import special, stats
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.errors import UserError
from pipeline.evaluation.checks import UndefinedStatisticError, finite_scores, require_both_classes

#: where DeLong's normal approximation is applied: ``logit`` (default, inside (0, 1)) or ``auc`` (pROC's AUC ± z·SE)
DeLongScale = Literal["logit", "auc"]
DELONG_SCALES: tuple[str, ...] = ("logit", "auc")

__all__ = [
    "DELONG_SCALES",
    "AUCResult",
    "DeLongScale",
    "PairedDeLongResult",
    "RocBand",
    "auc_summary",
    "bootstrap_auc_ci",
    "delong_ci",
    "delong_covariance",
    "delong_covariance_naive",
    "delong_test",
    "delong_test_row",
    "format_auc",
    "roc_auc",
    "roc_band",
]


def _as_inputs(labels, scores, *, minimum: int = 1, what: str = "the AUC") -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints and scores as a ``(k, N)`` float array, both checked."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UserError(f"labels must be one value per case, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise UserError("labels must be 0 (negative) or 1 (positive); convert them with binary_truth()")
    y = y.astype(np.int64)
    s = np.atleast_2d(finite_scores(scores, expected_length=y.size))
    require_both_classes(y, minimum=minimum, what=what)
    return y, s


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``; ties count one half).

    Args:
        labels: 0/1 ground truth, one per case.
        scores: one score per case, higher meaning more likely positive.

    Returns:
        The AUC in [0, 1].

    Raises:
        UserError: NaN/infinite scores or mismatched lengths.
        UndefinedStatisticError: a class is absent.
    """
    y, s = _as_inputs(labels, scores)
    return float(roc_auc_score(y, s[0]))


def delong_covariance(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix by the fast midrank algorithm of Sun & Xu (2014).

    Written here because no maintained Python library implements it. With ``m`` positives and ``n`` negatives, the
    structural components are ``V10 = (Tz - Tx) / n`` for the positives and ``V01 = 1 - (Tz - Ty) / m`` for the
    negatives, where ``Tz``, ``Tx`` and ``Ty`` are midranks within all cases, the positives and the negatives; the
    covariance is ``S10 / m + S01 / n`` with ``S`` the unbiased sample covariances of those components.

    Args:
        labels: 0/1 ground truth, one per case.
        scores: ``(N,)`` or ``(k, N)`` scores; rows are models scored on the same cases.

    Returns:
        ``(aucs, covariance)``: shape ``(k,)`` and ``(k, k)``.

    Raises:
        UserError: NaN/infinite scores or mismatched lengths.
        UndefinedStatisticError: fewer than two positive or two negative cases (no variance estimate).
    """
    y, s = _as_inputs(labels, scores, minimum=2, what="DeLong's variance")
    positives, negatives = s[:, y == 1], s[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    tx = stats.rankdata(positives, method="average", axis=1)
    ty = stats.rankdata(negatives, method="average", axis=1)
    tz = stats.rankdata(np.concatenate([positives, negatives], axis=1), method="average", axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_covariance_naive(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Reference DeLong (1988) by explicit placement values, O(m·n) time and memory: for tests, not for use.

    Args:
        labels: 0/1 ground truth, one per case.
        scores: ``(N,)`` or ``(k, N)`` scores.

    Returns:
        ``(aucs, covariance)`` as :func:`delong_covariance`.

    Raises:
        UndefinedStatisticError: fewer than two positive or two negative cases.
    """
    y, s = _as_inputs(labels, scores, minimum=2, what="DeLong's variance")
    v10_rows, v01_rows, aucs = [], [], []
    for row in s:
        x, z = row[y == 1], row[y == 0]
        # psi(X, Y) = 1 if X > Y, 1/2 if X == Y, 0 otherwise
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10_rows.append(psi.mean(axis=1))
        v01_rows.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = len(v10_rows[0]), len(v01_rows[0])
    covariance = np.atleast_2d(np.cov(np.asarray(v10_rows))) / m + np.atleast_2d(np.cov(np.asarray(v01_rows))) / n
    return np.asarray(aucs), covariance


def delong_ci(
    labels,
    scores,
    *,
    confidence: float = 0.95,
    scale: DeLongScale = "logit",
) -> tuple[float, float]:
    """Confidence interval of the AUC from DeLong's variance.

    ``scale`` is where the normal approximation is applied:

    * ``"logit"`` (default): ``expit(logit(AUC) ± z·SE / (AUC·(1 - AUC)))`` (delta method). The AUC's sampling
      distribution is skewed near 1, where classifiers worth reporting live; on the logit scale the interval is
      asymmetric like it and always stays inside (0, 1), while the plain interval can reach past 1 and is clipped
      there (a zero-width upper side).
    * ``"auc"``: the Wald interval ``AUC ± z·SE`` clipped to [0, 1], which is what R's pROC reports
      (``ci.auc(roc, method = "delong")``), the reference of most radiology papers: use it to reconcile numbers.

    Args:
        labels: 0/1 ground truth.
        scores: one score per case.
        confidence: two-sided confidence level.
        scale: ``"logit"`` or ``"auc"`` (see above).

    Returns:
        ``(lower, upper)``.

    Raises:
        UndefinedStatisticError: a class has fewer than two cases, or the variance is zero (a constant score or a
            perfect separation), which would give a degenerate zero-width interval.
    """
    _check_confidence(confidence)
    aucs, covariance = delong_covariance(labels, scores)
    auc, variance = float(aucs[0]), float(covariance[0, 0])
    if not variance > 0.0:
        raise UndefinedStatisticError(_zero_variance_reason(auc, "DeLong variance"))
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    se = variance**0.5
    if scale == "logit":
        centre, half = special.logit(auc), z * se / (auc * (1.0 - auc))
        return float(special.expit(centre - half)), float(special.expit(centre + half))
    if scale == "auc":
        return max(0.0, auc - z * se), min(1.0, auc + z * se)
    raise ValueError(f"unknown DeLong scale {scale!r} (use 'logit' or 'auc')")


def _zero_variance_reason(auc: float, what: str) -> str:
    if auc in (0.0, 1.0):
        return f"{what} is zero: the score separates the classes perfectly (AUC {auc:.1f}), the interval is degenerate"
    return f"{what} is zero (e.g. a constant score), the interval is degenerate"


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise UndefinedStatisticError(f"confidence must be between 0 and 1, got {confidence}")


def _auc_of_resamples(positives: np.ndarray, negatives: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney AUC of each resample (vectorised over the leading axes, ties count one half)."""
    positives, negatives = np.moveaxis(positives, axis, -1), np.moveaxis(negatives, axis, -1)
    m, n = positives.shape[-1], negatives.shape[-1]
    ranks = stats.rankdata(np.concatenate([positives, negatives], axis=-1), method="average", axis=-1)
    return (ranks[..., :m].sum(axis=-1) - m * (m + 1) / 2.0) / (m * n)


def bootstrap_auc_ci(
    labels,
    scores,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: Literal["percentile", "bca"] = "percentile",
    seed: int = 0,
) -> tuple[float, float]:
    """Stratified bootstrap confidence interval of the AUC (seeded, vectorised).

    ``scipy.stats.bootstrap`` receives the positives' and the negatives' scores as two samples and resamples each
    separately, so every resample keeps the observed class sizes (stratified, as pROC does by default). ``"bca"`` is
    scipy's bias-corrected and accelerated interval with the jackknife taken over both samples.

    Args:
        labels: 0/1 ground truth.
        scores: one score per case.
        n_resamples: number of bootstrap resamples.
        confidence: two-sided confidence level.
        method: ``"percentile"`` or ``"bca"``.
        seed: seed of the resampling generator.

    Returns:
        ``(lower, upper)``.

    Raises:
        UndefinedStatisticError: a class has fewer than two cases, or every resample gives the same AUC (a constant
            score or a perfect separation).
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise UndefinedStatisticError(f"n_resamples must be positive, got {n_resamples}")
    y, s = _as_inputs(labels, scores, minimum=2, what="the bootstrap interval")
    positives, negatives = s[0, y == 1], s[0, y == 0]
    # bound the (batch, m + n) rank matrix to ~32 MB so large cohorts do not exhaust memory
    batch = int(min(n_resamples, max(16, 4_000_000 // y.size)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate distributions are detected below and reported with a reason
        result = stats.bootstrap(
            (positives, negatives),
            _auc_of_resamples,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa" if method == "bca" else "percentile",
            vectorized=True,
            paired=False,
            batch=batch,
            rng=np.random.default_rng(seed),
        )
    distribution = result.bootstrap_distribution
    lower, upper = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.ptp(distribution) == 0.0 or not (np.isfinite(lower) and np.isfinite(upper)):
        raise UndefinedStatisticError(_zero_variance_reason(float(distribution[0]), "the bootstrap spread"))
    return lower, upper


@dataclass(frozen=True, kw_only=True)
class PairedDeLongResult:
    """DeLong's test of two AUCs measured on the same cases (H0: equal AUCs).

    Attributes:
        auc_a: AUC of the first score.
        auc_b: AUC of the second score.
        difference: ``auc_a - auc_b``.
        se: standard error of the difference (uses the covariance of the two AUCs).
        z: ``difference / se``.
        p_value: two-sided p-value.
        difference_ci: Wald confidence interval of the difference.
    """

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    difference_ci: tuple[float, float]

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def delong_test(labels, scores_a, scores_b, *, confidence: float = 0.95) -> PairedDeLongResult:
    """Paired DeLong test comparing two scores (two models, or two readers) on the same cases.

    Args:
        labels: 0/1 ground truth.
        scores_a: first model's scores.
        scores_b: second model's scores, same cases in the same order.
        confidence: level of the interval of the difference.

    Returns:
        The :class:`PairedDeLongResult`.

    Raises:
        UserError: mismatched lengths or NaN scores.
        UndefinedStatisticError: a class has fewer than two cases, or the variance of the difference is zero (the
            two scores rank the cases identically), where a p-value would be meaningless.
    """
    _check_confidence(confidence)
    a = finite_scores(scores_a, source="first score", expected_length=len(labels))
    b = finite_scores(scores_b, source="second score", expected_length=len(labels))
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    difference = float(aucs[0] - aucs[1])
    # rounding can leave ~1e-18 where the exact value is 0 (identical rankings)
    if not variance > 1e-15:
        raise UndefinedStatisticError(
            "the variance of the AUC difference is zero (the two scores rank the cases identically); no p-value"
        )
    se = variance**0.5
    z = difference / se
    half = stats.norm.ppf(0.5 + confidence / 2.0) * se
    return PairedDeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        se=se,
        z=float(z),
        p_value=float(2.0 * stats.norm.sf(abs(z))),
        difference_ci=(difference - half, difference + half),
    )


def delong_test_row(labels, scores_a, scores_b, *, auc_keys: tuple[str, str] = ("auc_a", "auc_b")) -> dict[str, object]:
    """:func:`delong_test` as a results-table row: the two AUCs (under ``auc_keys``), the difference with its CI and
    the p-value, or ``p_value: None`` and a ``note`` where the test is undefined (no exception: a table keeps the row).
    """
    try:
        test = delong_test(labels, scores_a, scores_b)
    except UndefinedStatisticError as err:
        return {"p_value": None, "note": str(err)}
    return {
        auc_keys[0]: test.auc_a,
        auc_keys[1]: test.auc_b,
        "difference": test.difference,
        "difference_ci": list(test.difference_ci),
        "p_value": test.p_value,
    }


@dataclass(frozen=True, kw_only=True)
class AUCResult:
    """AUC of one score with both confidence intervals; ``None`` fields are undefined and ``reason`` says why.

    Attributes:
        auc: the AUC (scikit-learn), or ``None`` when a class is absent.
        delong_se: DeLong standard error.
        delong_ci: DeLong interval, on the scale ``delong_scale`` (see :func:`delong_ci`).
        bootstrap_ci: stratified bootstrap interval.
        n_positive: positive cases.
        n_negative: negative cases.
        confidence: confidence level of both intervals.
        reason: why any of the values above is ``None``; ``None`` when everything is defined.
        delong_scale: ``"logit"`` or ``"auc"``, the scale of ``delong_ci``.
    """

    auc: float | None
    delong_se: float | None
    delong_ci: tuple[float, float] | None
    bootstrap_ci: tuple[float, float] | None
    n_positive: int
    n_negative: int
    confidence: float
    reason: str | None = None
    delong_scale: str = "logit"

    def to_dict(self) -> dict:
        """Plain-JSON form (tuples become lists)."""
        out = asdict(self)
        for key in ("delong_ci", "bootstrap_ci"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out

    def format(self) -> str:
        """Journal style, e.g. ``0.912 (95% CI 0.871–0.953)`` (DeLong interval)."""
        return format_auc(self.auc, self.delong_ci, confidence=self.confidence)


def format_auc(auc: float | None, ci: tuple[float, float] | None, *, confidence: float = 0.95) -> str:
    """``0.912 (95% CI 0.871–0.953)``; ``undefined`` or ``(CI undefined)`` where values are missing."""
    if auc is None:
        return "undefined"
    level = f"{confidence * 100:g}%"
    if ci is None:
        return f"{auc:.3f} ({level} CI undefined)"
    return f"{auc:.3f} ({level} CI {ci[0]:.3f}\u2013{ci[1]:.3f})"


def auc_summary(
    labels,
    scores,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    bootstrap_method: Literal["percentile", "bca"] = "percentile",
    delong_scale: DeLongScale = "logit",
    seed: int = 0,
) -> AUCResult:
    """AUC, DeLong SE and CI, and stratified bootstrap CI, with undefined values marked instead of raised.

    Args:
        labels: 0/1 ground truth.
        scores: one score per case.
        confidence: two-sided level of both intervals.
        n_resamples: bootstrap resamples (0 skips the bootstrap, recorded as the reason).
        bootstrap_method: ``"percentile"`` or ``"bca"``.
        delong_scale: scale of the DeLong interval, see :func:`delong_ci`.
        seed: bootstrap seed.

    Returns:
        The :class:`AUCResult`.

    Raises:
        UserError: NaN/infinite scores, mismatched lengths or labels other than 0/1 (input mistakes, not undefined
            statistics).
    """
    if delong_scale not in DELONG_SCALES:
        raise UserError(f"unknown DeLong scale {delong_scale!r} (use {' or '.join(DELONG_SCALES)})")
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise UserError("labels must be one 0 (negative) or 1 (positive) per case; convert them with binary_truth()")
    finite_scores(scores, expected_length=y.size)
    n_positive = int(np.count_nonzero(y == 1))
    n_negative = int(y.size - n_positive)
    reasons: list[str] = []
    try:
        auc = roc_auc(y, scores)
    except UndefinedStatisticError as err:
        return AUCResult(
            auc=None,
            delong_se=None,
            delong_ci=None,
            bootstrap_ci=None,
            n_positive=n_positive,
            n_negative=n_negative,
            confidence=confidence,
            reason=str(err),
            delong_scale=delong_scale,
        )
    se = ci = boot = None
    try:
        variance = float(delong_covariance(y, scores)[1][0, 0])
        se = variance**0.5
        ci = delong_ci(y, scores, confidence=confidence, scale=delong_scale)
    except UndefinedStatisticError as err:
        reasons.append(f"DeLong CI: {err}")
    if n_resamples > 0:
        try:
            boot = bootstrap_auc_ci(
                y, scores, n_resamples=n_resamples, confidence=confidence, method=bootstrap_method, seed=seed
            )
        except UndefinedStatisticError as err:
            reasons.append(f"bootstrap CI: {err}")
    else:
        reasons.append("bootstrap CI: not computed (n_resamples = 0)")
    return AUCResult(
        auc=auc,
        delong_se=se,
        delong_ci=ci,
        bootstrap_ci=boot,
        n_positive=n_positive,
        n_negative=n_negative,
        confidence=confidence,
        reason="; ".join(reasons) or None,
        delong_scale=delong_scale,
    )


@dataclass(frozen=True, kw_only=True)
class RocBand:
    """Pointwise bootstrap confidence band of the ROC curve on a fixed false-positive-rate grid.

    Attributes:
        fpr: the grid, 0 to 1.
        tpr_lower: lower band edge at each grid point.
        tpr_upper: upper band edge.
        confidence: level of the band.
    """

    fpr: np.ndarray
    tpr_lower: np.ndarray
    tpr_upper: np.ndarray
    confidence: float


def roc_band(
    labels,
    scores,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    grid_points: int = 101,
    seed: int = 0,
) -> RocBand:
    """Pointwise stratified-bootstrap band of the ROC curve (for plotting; percentile at each FPR grid point).

    Each resample's ROC (scikit-learn ``roc_curve``) is interpolated at the grid, as scikit-learn's cross-validated
    ROC example does; the band is the percentile interval of the interpolated TPRs at each point.

    Args:
        labels: 0/1 ground truth.
        scores: one score per case.
        n_resamples: bootstrap resamples.
        confidence: level of the band.
        grid_points: points of the FPR grid.
        seed: resampling seed.

    Returns:
        The :class:`RocBand`.

    Raises:
        UndefinedStatisticError: a class has fewer than two cases.
    """
    _check_confidence(confidence)
    y, s = _as_inputs(labels, scores, minimum=2, what="the ROC band")
    positives, negatives = s[0, y == 1], s[0, y == 0]
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, grid_points)
    truth = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    tprs = np.empty((n_resamples, grid_points))
    for b in range(n_resamples):
        resampled = np.r_[
            positives[rng.integers(0, positives.size, positives.size)],
            negatives[rng.integers(0, negatives.size, negatives.size)],
        ]
        fpr, tpr, _ = roc_curve(truth, resampled)
        tprs[b] = np.interp(grid, fpr, tpr)
    tprs[:, 0] = 0.0
    alpha = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(tprs, [alpha, 1.0 - alpha], axis=0)
    return RocBand(fpr=grid, tpr_lower=lower, tpr_upper=upper, confidence=confidence)
