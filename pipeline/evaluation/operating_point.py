"""Operating point: choose a threshold on validation data, freeze it, and report the 2x2 table and its proportions.

A case is called positive when its score is **at or above** the threshold (scikit-learn's ``roc_curve`` convention).
The threshold is chosen once, on validation data (Youden's J, or the most specific threshold that reaches a target
sensitivity), and then applied unchanged to test and external data; choosing it on the data it is evaluated on
would bias every number below. Proportion intervals come from statsmodels ``proportion_confint`` (Wilson score or
Clopper-Pearson exact). F1 is not a binomial proportion, so its interval is a percentile bootstrap over cases
(multinomial resampling of the four cells of the 2x2 table), written here because no library provides one.

The frozen operating point itself (:class:`~pipeline.contracts.OperatingPoint`, ``models/operating_point.json``) is
a contract between stages and lives in :mod:`pipeline.contracts.operating_point`; this module chooses it and
computes the metrics at it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve
from statsmodels.stats.proportion import proportion_confint

from pipeline.contracts.operating_point import OperatingPoint
from pipeline.errors import UserError
from pipeline.evaluation.checks import UndefinedStatisticError, finite_scores, require_both_classes

__all__ = [
    "BinaryMetrics",
    "ConfusionCounts",
    "Estimate",
    "binary_metrics",
    "choose_threshold",
    "confusion_counts",
    "fixed_threshold",
    "proportion_with_ci",
]

CIMethod = Literal["wilson", "clopper-pearson"]
_STATSMODELS_METHOD = {"wilson": "wilson", "clopper-pearson": "beta"}


def fixed_threshold(threshold: float, *, chosen_on: Literal["given", "default"] = "given") -> OperatingPoint:
    """An operating point fixed in advance (``"given"`` by the user, or a ``"default"`` nobody chose).

    Raises:
        UserError: the threshold is not a finite number.
    """
    if not np.isfinite(threshold):
        raise UserError(f"threshold must be a finite number, got {threshold}")
    return OperatingPoint(threshold=float(threshold), method="fixed", chosen_on=chosen_on)


def choose_threshold(
    labels,
    scores,
    *,
    method: Literal["youden", "target_sensitivity"] = "youden",
    target_sensitivity: float | None = None,
) -> OperatingPoint:
    """Choose the decision threshold on validation data.

    The threshold is placed midway between the chosen validation score and the next lower distinct one (as pROC
    does), so it classifies the validation cases exactly as the chosen vertex of the ROC curve but does not sit on a
    case's score.

    Args:
        labels: 0/1 validation ground truth.
        scores: validation scores.
        method: ``"youden"`` (maximise sensitivity + specificity - 1; ties go to the higher threshold) or
            ``"target_sensitivity"`` (highest threshold whose sensitivity is at least ``target_sensitivity``).
        target_sensitivity: required for ``"target_sensitivity"``, in (0, 1].

    Returns:
        The frozen :class:`OperatingPoint`.

    Raises:
        UserError: NaN scores, mismatched lengths, a bad method or target.
        UndefinedStatisticError: a class is absent from the validation data.
    """
    y = np.asarray(labels).astype(np.int64)
    s = finite_scores(scores, source="validation scores", expected_length=y.size)
    require_both_classes(y, what="choosing a threshold")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # index 0 is sklearn's "+inf" threshold that calls nobody positive: never a usable operating point
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        index = int(np.argmax(tpr - fpr))
    elif method == "target_sensitivity":
        if target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0:
            raise UserError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
        index = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    else:
        raise UserError(f"unknown threshold method {method!r} (use 'youden' or 'target_sensitivity')")
    if index + 1 < thresholds.size:
        threshold = float((thresholds[index] + thresholds[index + 1]) / 2.0)
    else:
        threshold = float(thresholds[index])
    return OperatingPoint(
        threshold=threshold,
        method=method,
        target_sensitivity=target_sensitivity if method == "target_sensitivity" else None,
        chosen_on="validation",
        validation_sensitivity=float(tpr[index]),
        validation_specificity=float(1.0 - fpr[index]),
        n_validation=int(y.size),
    )


@dataclass(frozen=True, kw_only=True)
class ConfusionCounts:
    """The 2x2 table.

    Attributes:
        tp: positives called positive.
        fp: negatives called positive.
        fn: positives called negative.
        tn: negatives called negative.
    """

    tp: int
    fp: int
    fn: int
    tn: int

    def matrix(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]``: rows are the truth (negative, positive), columns the call (scikit-learn order)."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def confusion_counts(labels, predictions) -> ConfusionCounts:
    """The 2x2 table of 0/1 labels against 0/1 calls (scikit-learn ``confusion_matrix``).

    Raises:
        UserError: mismatched lengths.
    """
    y, p = np.asarray(labels), np.asarray(predictions)
    if y.shape != p.shape:
        raise UserError(f"{p.size} predictions for {y.size} labels (lengths must match)")
    (tn, fp), (fn, tp) = confusion_matrix(y, p, labels=[0, 1])
    return ConfusionCounts(tp=int(tp), fp=int(fp), fn=int(fn), tn=int(tn))


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A proportion (or other rate) with its interval; ``None`` values are undefined and ``reason`` says why.

    Attributes:
        value: the point estimate.
        ci: the confidence interval.
        numerator: count in the numerator (for proportions).
        denominator: count in the denominator (for proportions).
        method: how the interval was computed.
        reason: why ``value`` or ``ci`` is ``None``.
    """

    value: float | None
    ci: tuple[float, float] | None
    numerator: int | None = None
    denominator: int | None = None
    method: str = ""
    reason: str | None = None

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out

    def format(self, *, percent: bool = True, confidence: float = 0.95) -> str:
        """Journal style, e.g. ``85.0% (95% CI 78.1–90.0; 68/80)``."""
        if self.value is None:
            return "undefined"
        scale, unit, digits = (100.0, "%", 1) if percent else (1.0, "", 3)
        text = f"{self.value * scale:.{digits}f}{unit}"
        parts = []
        if self.ci is not None:
            parts.append(
                f"{confidence * 100:g}% CI {self.ci[0] * scale:.{digits}f}\u2013{self.ci[1] * scale:.{digits}f}"
            )
        if self.numerator is not None and self.denominator is not None:
            parts.append(f"{self.numerator}/{self.denominator}")
        return f"{text} ({'; '.join(parts)})" if parts else text


def proportion_with_ci(
    successes: int, total: int, *, confidence: float = 0.95, method: CIMethod = "wilson", what: str = "proportion"
) -> Estimate:
    """A binomial proportion with its Wilson or Clopper-Pearson interval (statsmodels ``proportion_confint``).

    Args:
        successes: numerator.
        total: denominator; 0 gives an undefined estimate.
        confidence: two-sided level.
        method: ``"wilson"`` or ``"clopper-pearson"``.
        what: name used in the reason when undefined.

    Returns:
        The :class:`Estimate`.

    Raises:
        UserError: an unknown method.
    """
    if method not in _STATSMODELS_METHOD:
        raise UserError(f"unknown CI method {method!r} (use 'wilson' or 'clopper-pearson')")
    if total == 0:
        return Estimate(
            value=None,
            ci=None,
            numerator=int(successes),
            denominator=0,
            method=method,
            reason=f"{what} is undefined: its denominator is zero",
        )
    lower, upper = proportion_confint(successes, total, alpha=1.0 - confidence, method=_STATSMODELS_METHOD[method])
    return Estimate(
        value=successes / total,
        ci=(float(lower), float(upper)),
        numerator=int(successes),
        denominator=int(total),
        method=method,
    )


def _f1_with_bootstrap_ci(counts: ConfusionCounts, *, confidence: float, n_resamples: int, seed: int) -> Estimate:
    denominator = 2 * counts.tp + counts.fp + counts.fn
    if counts.tp + counts.fn == 0:
        # recall is 0/0 without positive cases; the formula's 0 would be a silent number
        return Estimate(value=None, ci=None, method="bootstrap", reason="F1 is undefined: no positive case")
    value = 2 * counts.tp / denominator
    total = counts.tp + counts.fp + counts.fn + counts.tn
    cells = np.array([counts.tp, counts.fp, counts.fn, counts.tn], dtype=np.float64) / total
    draws = np.random.default_rng(seed).multinomial(total, cells, size=n_resamples).astype(np.float64)
    tp, fp, fn = draws[:, 0], draws[:, 1], draws[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = 2 * tp / (2 * tp + fp + fn)
    resampled = resampled[np.isfinite(resampled)]
    alpha = (1.0 - confidence) / 2.0
    if resampled.size == 0 or np.ptp(resampled) == 0.0:
        return Estimate(
            value=value,
            ci=None,
            method="bootstrap",
            reason="F1 interval is degenerate: every resample gives the same F1",
        )
    lower, upper = np.quantile(resampled, [alpha, 1.0 - alpha])
    return Estimate(value=value, ci=(float(lower), float(upper)), method="bootstrap")


@dataclass(frozen=True, kw_only=True)
class BinaryMetrics:
    """Every threshold-dependent number at one frozen operating point.

    Attributes:
        threshold: the threshold applied (positive when ``score >= threshold``).
        counts: the 2x2 table.
        sensitivity: TP / (TP + FN).
        specificity: TN / (TN + FP).
        ppv: TP / (TP + FP).
        npv: TN / (TN + FN).
        accuracy: (TP + TN) / N.
        f1: 2TP / (2TP + FP + FN), bootstrap interval.
        ci_method: interval method of the proportions.
        confidence: interval level.
    """

    threshold: float
    counts: ConfusionCounts
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    accuracy: Estimate
    f1: Estimate
    ci_method: str
    confidence: float

    #: metric names in reporting order
    NAMES = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1")

    def estimates(self) -> dict[str, Estimate]:
        """``{name: Estimate}`` in reporting order."""
        return {name: getattr(self, name) for name in self.NAMES}

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        out: dict = {"threshold": self.threshold, "counts": self.counts.to_dict()}
        out.update({name: estimate.to_dict() for name, estimate in self.estimates().items()})
        out["ci_method"], out["confidence"] = self.ci_method, self.confidence
        return out


def binary_metrics(
    labels,
    scores,
    *,
    threshold: float | OperatingPoint,
    ci_method: CIMethod = "wilson",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> BinaryMetrics:
    """Sensitivity, specificity, PPV, NPV, accuracy and F1 with intervals, and the 2x2 table, at a frozen threshold.

    A proportion whose denominator is zero (e.g. PPV when nobody is called positive, sensitivity when no positive
    case exists) is returned as undefined with the reason, never as 0.

    Args:
        labels: 0/1 ground truth.
        scores: scores (probabilities or any monotone score).
        threshold: the frozen threshold or :class:`OperatingPoint`.
        ci_method: ``"wilson"`` or ``"clopper-pearson"``.
        confidence: interval level.
        n_resamples: bootstrap resamples for the F1 interval.
        seed: bootstrap seed.

    Returns:
        The :class:`BinaryMetrics`.

    Raises:
        UserError: NaN scores, mismatched lengths, labels other than 0/1.
    """
    if isinstance(threshold, OperatingPoint):
        threshold = threshold.threshold
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise UserError("labels must be one 0 (negative) or 1 (positive) per case")
    s = finite_scores(scores, expected_length=y.size)
    if s.ndim != 1:
        raise UserError("binary_metrics takes one score per case")
    if y.size == 0:
        raise UndefinedStatisticError("no cases to evaluate")
    counts = confusion_counts(y.astype(np.int64), (s >= threshold).astype(np.int64))
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn

    def proportion(successes: int, total: int, what: str) -> Estimate:
        return proportion_with_ci(successes, total, confidence=confidence, method=ci_method, what=what)

    return BinaryMetrics(
        threshold=float(threshold),
        counts=counts,
        sensitivity=proportion(tp, tp + fn, "sensitivity"),
        specificity=proportion(tn, tn + fp, "specificity"),
        ppv=proportion(tp, tp + fp, "PPV"),
        npv=proportion(tn, tn + fn, "NPV"),
        accuracy=proportion(tp + tn, tp + fp + fn + tn, "accuracy"),
        f1=_f1_with_bootstrap_ci(counts, confidence=confidence, n_resamples=n_resamples, seed=seed),
        ci_method=ci_method,
        confidence=confidence,
    )
