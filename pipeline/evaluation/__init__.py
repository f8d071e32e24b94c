"""Evaluation: discrimination (AUC, DeLong, bootstrap), operating point, calibration, cross-validation tests,
figures and the report.

Modules: :mod:`~pipeline.evaluation.roc`, :mod:`~pipeline.evaluation.operating_point`,
:mod:`~pipeline.evaluation.calibration`, :mod:`~pipeline.evaluation.crossval`, :mod:`~pipeline.evaluation.plots`,
:mod:`~pipeline.evaluation.report`, :mod:`~pipeline.evaluation.checks`; the MONAI handlers in
:mod:`~pipeline.evaluation.handlers`, the support of ``bundle/configs/evaluate.json`` in
:mod:`~pipeline.evaluation.bundle` and the cross-validation report in :mod:`~pipeline.evaluation.crossval_report`
(the fold runs it reports on are training's, :mod:`pipeline.training.crossval`). The names below are imported
lazily, so that ``aamct --help`` (which imports this package's ``cli``) does not pay for torch, MONAI and
matplotlib.
"""

from __future__ import annotations

from pipeline._lazy import lazy_exports

__all__ = [
    "AUCResult",
    "BinaryMetrics",
    "DeLongAUCHandler",
    "EvaluationReport",
    "EvaluationReportHandler",
    "OperatingPoint",
    "TTestResult",
    "UndefinedStatisticError",
    "auc_summary",
    "binary_metrics",
    "bootstrap_auc_ci",
    "brier_score",
    "choose_threshold",
    "compare_cross_validated_models",
    "compare_fold_scores",
    "corrected_resampled_t_test",
    "decision_curve",
    "delong_ci",
    "delong_covariance",
    "delong_test",
    "evaluate_predictions",
    "fold_metrics",
    "paired_t_test",
    "reliability_curve",
    "roc_auc",
    "write_report",
]

_HOME = {
    "UndefinedStatisticError": "checks",
    "AUCResult": "roc",
    "auc_summary": "roc",
    "bootstrap_auc_ci": "roc",
    "delong_ci": "roc",
    "delong_covariance": "roc",
    "delong_test": "roc",
    "roc_auc": "roc",
    "BinaryMetrics": "operating_point",
    "OperatingPoint": "operating_point",
    "binary_metrics": "operating_point",
    "choose_threshold": "operating_point",
    "brier_score": "calibration",
    "decision_curve": "calibration",
    "reliability_curve": "calibration",
    "TTestResult": "crossval",
    "compare_cross_validated_models": "crossval",
    "compare_fold_scores": "crossval",
    "corrected_resampled_t_test": "crossval",
    "fold_metrics": "crossval",
    "paired_t_test": "crossval",
    "EvaluationReport": "report",
    "evaluate_predictions": "report",
    "write_report": "report",
    "DeLongAUCHandler": "handlers",
    "EvaluationReportHandler": "handlers",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOME)
