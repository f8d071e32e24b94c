"""Calibration and clinical utility: reliability curve, Brier score, expected calibration error, decision curve.

The reliability bins come from MONAI's ``monai.metrics.calibration.calibration_binning`` (equal-width bins) and the
Brier score from scikit-learn's ``brier_score_loss``. Decision-curve net benefit (Vickers & Elkin 2006) has no
implementation in MONAI, scikit-learn, scipy or statsmodels, so it is written here.

Reference:
    Vickers AJ, Elkin EB. Decision curve analysis: a novel method for evaluating prediction models. Medical
    Decision Making 2006;26:565-574.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics.calibration import calibration_binning
from sklearn.metrics import brier_score_loss

from pipeline.errors import UserError
from pipeline.evaluation.checks import finite_scores

__all__ = [
    "DecisionCurve",
    "ReliabilityCurve",
    "brier_score",
    "decision_curve",
    "reliability_curve",
]


def _probabilities(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise UserError("labels must be one 0 (negative) or 1 (positive) per case")
    p = finite_scores(probabilities, source="probabilities", expected_length=y.size)
    if p.ndim != 1:
        raise UserError("calibration takes one probability per case")
    if y.size == 0:
        raise UserError("no cases: calibration needs at least one case")
    if (p < 0.0).any() or (p > 1.0).any():
        raise UserError(
            f"probabilities must lie in [0, 1] for calibration (found {p.min():.4g} to {p.max():.4g}); "
            "pass probabilities, not logits"
        )
    return y.astype(np.float64), p


def brier_score(labels, probabilities) -> float:
    """Mean squared difference between probability and outcome (scikit-learn ``brier_score_loss``; lower is better).

    Raises:
        UserError: probabilities outside [0, 1], NaN, or mismatched lengths.
    """
    y, p = _probabilities(labels, probabilities)
    return float(brier_score_loss(y, p, pos_label=1))


@dataclass(frozen=True, kw_only=True)
class ReliabilityCurve:
    """Observed fraction of positives against the mean predicted probability, per equal-width bin.

    Attributes:
        bin_edges: ``n_bins + 1`` edges from 0 to 1.
        mean_predicted: mean probability in each bin (NaN for an empty bin).
        observed_fraction: fraction of positive cases in each bin (NaN for an empty bin).
        counts: cases per bin.
        expected_calibration_error: count-weighted mean of ``|observed - predicted|`` over the bins.
        brier: the Brier score.
        brier_reference: Brier score of always predicting the prevalence (a model should beat it).
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    observed_fraction: np.ndarray
    counts: np.ndarray
    expected_calibration_error: float
    brier: float
    brier_reference: float

    def to_dict(self) -> dict:
        """Plain-JSON form (empty bins become ``null``)."""
        return {
            "bin_edges": self.bin_edges.tolist(),
            "mean_predicted": [None if np.isnan(v) else float(v) for v in self.mean_predicted],
            "observed_fraction": [None if np.isnan(v) else float(v) for v in self.observed_fraction],
            "counts": self.counts.astype(int).tolist(),
            "expected_calibration_error": self.expected_calibration_error,
            "brier": self.brier,
            "brier_reference": self.brier_reference,
        }


def reliability_curve(labels, probabilities, *, n_bins: int = 10) -> ReliabilityCurve:
    """Reliability (calibration) curve over ``n_bins`` equal-width bins, with ECE and Brier score.

    Args:
        labels: 0/1 ground truth.
        probabilities: predicted probabilities of the positive class, in [0, 1].
        n_bins: number of equal-width bins.

    Returns:
        The :class:`ReliabilityCurve`.

    Raises:
        UserError: probabilities outside [0, 1], NaN, mismatched lengths, or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise UserError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _probabilities(labels, probabilities)
    # MONAI wants (batch, channel, spatial...): one batch item, one channel, the cases along the spatial axis
    mean_p, mean_gt, counts = calibration_binning(
        torch.tensor(p, dtype=torch.float64).view(1, 1, -1),
        torch.tensor(y, dtype=torch.float64).view(1, 1, -1),
        num_bins=n_bins,
    )
    mean_p, mean_gt, counts = (t.view(-1).numpy() for t in (mean_p, mean_gt, counts))
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(mean_gt[filled] - mean_p[filled])) / counts.sum())
    prevalence = float(y.mean())
    return ReliabilityCurve(
        bin_edges=np.linspace(0.0, 1.0, n_bins + 1),
        mean_predicted=mean_p,
        observed_fraction=mean_gt,
        counts=counts,
        expected_calibration_error=ece,
        brier=float(brier_score_loss(y, p, pos_label=1)),
        brier_reference=prevalence * (1.0 - prevalence),
    )


@dataclass(frozen=True, kw_only=True)
class DecisionCurve:
    """Net benefit of acting on the model against treating everyone or no one, over threshold probabilities.

    Attributes:
        thresholds: threshold probabilities ``pt`` in (0, 1).
        net_benefit_model: ``TP/N - FP/N · pt/(1 - pt)`` when acting on ``probability >= pt``.
        net_benefit_treat_all: the same when everyone is treated (treat-none is 0 everywhere).
        prevalence: fraction of positive cases.
    """

    thresholds: np.ndarray
    net_benefit_model: np.ndarray
    net_benefit_treat_all: np.ndarray
    prevalence: float

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {
            "thresholds": self.thresholds.tolist(),
            "net_benefit_model": self.net_benefit_model.tolist(),
            "net_benefit_treat_all": self.net_benefit_treat_all.tolist(),
            "prevalence": self.prevalence,
        }


def decision_curve(labels, probabilities, *, thresholds: np.ndarray | None = None) -> DecisionCurve:
    """Decision-curve analysis (Vickers & Elkin 2006), vectorised over the thresholds.

    Args:
        labels: 0/1 ground truth.
        probabilities: predicted probabilities in [0, 1].
        thresholds: threshold probabilities in (0, 1); default 0.01, 0.02, ..., 0.99.

    Returns:
        The :class:`DecisionCurve`.

    Raises:
        UserError: probabilities outside [0, 1], thresholds outside (0, 1), NaN or mismatched lengths.
    """
    y, p = _probabilities(labels, probabilities)
    pt = np.round(np.arange(1, 100) / 100.0, 2) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if pt.ndim != 1 or pt.size == 0 or (pt <= 0.0).any() or (pt >= 1.0).any():
        raise UserError("decision-curve thresholds must be probabilities strictly between 0 and 1")
    n = y.size
    calls = p[None, :] >= pt[:, None]
    true_positive = (calls & (y[None, :] == 1)).sum(axis=1) / n
    false_positive = (calls & (y[None, :] == 0)).sum(axis=1) / n
    odds = pt / (1.0 - pt)
    prevalence = float(y.mean())
    return DecisionCurve(
        thresholds=pt,
        net_benefit_model=true_positive - false_positive * odds,
        net_benefit_treat_all=prevalence - (1.0 - prevalence) * odds,
        prevalence=prevalence,
    )
