"""Publication-quality PNG figures: ROC with CI band, cross-validated mean ROC, confusion matrices, calibration, DCA.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through ``pyplot``: no global
state, no GUI backend, safe in worker threads and on headless machines. Every file is written atomically. The
confusion-matrix panels use scikit-learn's ``ConfusionMatrixDisplay``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve

from pipeline.errors import UserError
from pipeline.evaluation.calibration import DecisionCurve, ReliabilityCurve
from pipeline.evaluation.checks import finite_scores, require_both_classes
from pipeline.evaluation.operating_point import BinaryMetrics, ConfusionCounts
from pipeline.evaluation.roc import AUCResult, RocBand, roc_auc
from pipeline.io import atomic_path

__all__ = [
    "CONFUSION_DISPLAY_WIDTH_PX",
    "CONFUSION_FIGURE_INCHES",
    "confusion_matrix_figure",
    "plot_calibration",
    "plot_confusion_matrix",
    "plot_cv_roc",
    "plot_cv_roc_comparison",
    "plot_decision_curve",
    "plot_roc",
]

_DPI = 200
#: the confusion-matrix figure's size, and the width the HTML report displays it at (text sizes follow from both)
CONFUSION_FIGURE_INCHES = (7.0, 3.3)
CONFUSION_DISPLAY_WIDTH_PX = 760
_CURVE = "#1f4e9c"
_BAND = "#8fb3e8"
_REFERENCE = "#7f7f7f"
_MARKER = "#c0392b"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return Path(path)


def _roc_axes(axes, title: str | None) -> None:
    axes.plot([0, 1], [0, 1], linestyle="--", color=_REFERENCE, linewidth=1, label="Chance")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("1 \u2212 Specificity (false-positive rate)")
    axes.set_ylabel("Sensitivity (true-positive rate)")
    axes.grid(True, linewidth=0.4, alpha=0.5)
    if title:
        axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8, frameon=True)


def plot_roc(
    path: str | os.PathLike,
    labels,
    scores,
    *,
    auc: AUCResult | None = None,
    band: RocBand | None = None,
    operating_point: BinaryMetrics | None = None,
    name: str = "Model",
    title: str | None = None,
) -> Path:
    """ROC curve with its AUC (and DeLong CI) in the legend, an optional bootstrap band and operating point.

    Args:
        path: PNG to write.
        labels: 0/1 ground truth.
        scores: one score per case.
        auc: the :class:`AUCResult` shown in the legend (computed without CI when absent).
        band: pointwise bootstrap band from :func:`~pipeline.evaluation.roc.roc_band`.
        operating_point: metrics at the frozen threshold, marked on the curve.
        name: legend name of the curve.
        title: axes title.

    Returns:
        The written path.

    Raises:
        UserError: NaN scores or mismatched lengths.
        UndefinedStatisticError: a class is absent (no ROC curve exists).
    """
    y = np.asarray(labels)
    s = finite_scores(scores, expected_length=y.size)
    require_both_classes(y, what="an ROC curve")
    fpr, tpr, _ = roc_curve(y, s)
    text = auc.format() if auc is not None else f"{roc_auc(y, s):.3f}"
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    if band is not None:
        axes.fill_between(
            band.fpr,
            band.tpr_lower,
            band.tpr_upper,
            color=_BAND,
            alpha=0.45,
            linewidth=0,
            step=None,
            label=f"{band.confidence * 100:g}% bootstrap band",
        )
    axes.plot(fpr, tpr, color=_CURVE, linewidth=2, label=f"{name}: AUC {text}")
    if (
        operating_point is not None
        and operating_point.sensitivity.value is not None
        and operating_point.specificity.value is not None
    ):
        axes.plot(
            1.0 - operating_point.specificity.value,
            operating_point.sensitivity.value,
            marker="o",
            markersize=7,
            color=_MARKER,
            linestyle="none",
            label=f"Threshold {operating_point.threshold:.3g}",
        )
    _roc_axes(axes, title)
    return _save(figure, path)


def plot_cv_roc(
    path: str | os.PathLike,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    name: str = "Model",
    title: str | None = None,
    grid_points: int = 101,
) -> Path:
    """Cross-validated mean ROC: each fold thin, the mean bold, ± 1 sd of the folds shaded (scikit-learn's recipe).

    Args:
        path: PNG to write.
        folds: ``(labels, scores)`` of each fold's held-out cases.
        name: model name in the legend.
        title: axes title.
        grid_points: FPR grid on which fold curves are interpolated.

    Returns:
        The written path.

    Raises:
        UserError: fewer than two folds with both classes.
    """
    grid = np.linspace(0.0, 1.0, grid_points)
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    curves, aucs = [], []
    for index, (labels, scores) in enumerate(folds):
        y = np.asarray(labels)
        s = finite_scores(scores, source=f"fold {index} scores", expected_length=y.size)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        interpolated = np.interp(grid, fpr, tpr)
        interpolated[0] = 0.0
        curves.append(interpolated)
        aucs.append(roc_auc(y, s))
        axes.plot(fpr, tpr, linewidth=0.9, alpha=0.55, label=f"Fold {index}: AUC {aucs[-1]:.3f}")
    if len(curves) < 2:
        raise UserError("a cross-validated ROC needs at least two folds that contain both classes")
    mean, sd = np.mean(curves, axis=0), np.std(curves, axis=0, ddof=1)
    mean[-1] = 1.0
    axes.fill_between(
        grid, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color=_BAND, alpha=0.45, label="\u00b1 1 SD"
    )
    axes.plot(
        grid,
        mean,
        color=_CURVE,
        linewidth=2.2,
        label=f"{name} mean: AUC {np.mean(aucs):.3f} \u00b1 {np.std(aucs, ddof=1):.3f}",
    )
    _roc_axes(axes, title)
    return _save(figure, path)


def plot_cv_roc_comparison(
    path: str | os.PathLike,
    models: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    *,
    title: str | None = "Cross-validated mean ROC",
    grid_points: int = 101,
) -> Path:
    """Several models' cross-validated mean ROC curves on one axes, each with its ± 1 sd band over the folds.

    Args:
        path: PNG to write.
        models: model name -> ``(labels, scores)`` of each fold's held-out cases.
        title: axes title.
        grid_points: FPR grid on which fold curves are interpolated.

    Returns:
        The written path.

    Raises:
        UserError: a model with fewer than two folds that contain both classes.
    """
    grid = np.linspace(0.0, 1.0, grid_points)
    figure = _figure(5.5, 5.5)
    axes = figure.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    for index, (name, folds) in enumerate(models.items()):
        curves, aucs = [], []
        for fold, (labels, scores) in enumerate(folds):
            y = np.asarray(labels)
            s = finite_scores(scores, source=f"{name} fold {fold} scores", expected_length=y.size)
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, s)
            curve = np.interp(grid, fpr, tpr)
            curve[0] = 0.0
            curves.append(curve)
            aucs.append(roc_auc(y, s))
        if len(curves) < 2:
            raise UserError(f"{name}: a cross-validated ROC needs at least two folds that contain both classes")
        mean, sd = np.mean(curves, axis=0), np.std(curves, axis=0, ddof=1)
        mean[-1] = 1.0
        colour = colours[index % len(colours)]
        axes.fill_between(
            grid, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color=colour, alpha=0.15, linewidth=0
        )
        axes.plot(
            grid,
            mean,
            color=colour,
            linewidth=2.0,
            label=f"{name}: AUC {np.mean(aucs):.3f} \u00b1 {np.std(aucs, ddof=1):.3f}",
        )
    _roc_axes(axes, title)
    return _save(figure, path)


def confusion_matrix_figure(
    counts: ConfusionCounts | np.ndarray,
    *,
    class_names: Sequence[str] = ("Negative", "Positive"),
    title: str | None = None,
) -> Figure:
    """The confusion-matrix figure of :func:`plot_confusion_matrix`, not yet saved (for tests and callers that embed
    it elsewhere).

    Sized for :data:`CONFUSION_DISPLAY_WIDTH_PX`: the report shows it at that width, where its smallest text
    (tick labels) is about 11 px and the cell counts about 17 px (earlier a 9-inch figure squeezed into a 520 px
    column made the text about 5 px).

    Raises:
        UserError: a matrix that is not square or does not match ``class_names``.
    """
    matrix = counts.matrix() if isinstance(counts, ConfusionCounts) else np.asarray(counts)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise UserError(f"confusion matrix of shape {matrix.shape} does not match {len(class_names)} class names")
    row_totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(row_totals > 0, matrix / np.maximum(row_totals, 1), np.nan)
    figure = _figure(*CONFUSION_FIGURE_INCHES)
    left, right = figure.subplots(1, 2)
    cell_font = {"fontsize": 15}
    ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(
        ax=left, cmap="Blues", values_format="d", colorbar=False, text_kw=cell_font
    )
    left.set_title("Counts", fontsize=12)
    ConfusionMatrixDisplay(normalised, display_labels=list(class_names)).plot(
        ax=right,
        cmap="Blues",
        values_format=".1%",
        colorbar=False,
        im_kw={"vmin": 0.0, "vmax": 1.0},
        text_kw=cell_font,
    )
    right.set_title("Normalised by true class", fontsize=12)
    for axes in (left, right):
        axes.set_xlabel("Predicted class", fontsize=11)
        axes.set_ylabel("True class", fontsize=11)
        axes.tick_params(labelsize=10)
    if title:
        figure.suptitle(title, fontsize=12)
    return figure


def plot_confusion_matrix(
    path: str | os.PathLike,
    counts: ConfusionCounts | np.ndarray,
    *,
    class_names: Sequence[str] = ("Negative", "Positive"),
    title: str | None = None,
) -> Path:
    """Two heatmaps side by side: counts, and proportions normalised over each true class (row).

    Args:
        path: PNG to write.
        counts: the 2x2 table, or a square count matrix (rows = truth, columns = call).
        class_names: names of the classes in row order.
        title: figure title.

    Returns:
        The written path.

    Raises:
        UserError: a matrix that is not square or does not match ``class_names``.
    """
    return _save(confusion_matrix_figure(counts, class_names=class_names, title=title), path)


def plot_calibration(
    path: str | os.PathLike,
    curve: ReliabilityCurve,
    *,
    name: str = "Model",
    title: str | None = None,
) -> Path:
    """Reliability diagram (observed fraction against mean predicted probability) over a histogram of predictions.

    Args:
        path: PNG to write.
        curve: the :class:`ReliabilityCurve`.
        name: model name in the legend.
        title: axes title.

    Returns:
        The written path.
    """
    figure = _figure(5.0, 6.2)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3.2, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color=_REFERENCE, linewidth=1, label="Perfect calibration")
    filled = curve.counts > 0
    top.plot(
        curve.mean_predicted[filled],
        curve.observed_fraction[filled],
        marker="o",
        color=_CURVE,
        linewidth=1.8,
        label=f"{name} (Brier {curve.brier:.3f}, ECE {curve.expected_calibration_error:.3f})",
    )
    top.set_xlim(-0.01, 1.01)
    top.set_ylim(-0.01, 1.01)
    top.set_ylabel("Observed fraction of positives")
    top.grid(True, linewidth=0.4, alpha=0.5)
    top.legend(loc="upper left", fontsize=8)
    if title:
        top.set_title(title)
    widths = np.diff(curve.bin_edges)
    bottom.bar(curve.bin_edges[:-1], curve.counts, width=widths, align="edge", color=_BAND, edgecolor=_CURVE)
    bottom.set_xlabel("Mean predicted probability")
    bottom.set_ylabel("Cases")
    bottom.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    return _save(figure, path)


def plot_decision_curve(
    path: str | os.PathLike,
    curve: DecisionCurve,
    *,
    name: str = "Model",
    title: str | None = None,
) -> Path:
    """Decision curve: net benefit of the model, treat-all and treat-none over threshold probabilities.

    Args:
        path: PNG to write.
        curve: the :class:`DecisionCurve`.
        name: model name in the legend.
        title: axes title.

    Returns:
        The written path.
    """
    figure = _figure(5.5, 4.2)
    axes = figure.add_subplot()
    axes.plot(curve.thresholds, curve.net_benefit_model, color=_CURVE, linewidth=2, label=name)
    axes.plot(curve.thresholds, curve.net_benefit_treat_all, color=_MARKER, linewidth=1.2, label="Treat all")
    axes.axhline(0.0, color=_REFERENCE, linewidth=1.2, linestyle="--", label="Treat none")
    top = max(curve.prevalence, float(np.max(curve.net_benefit_model)), 0.01)
    axes.set_ylim(-0.1 * top - 0.01, 1.1 * top)
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("Threshold probability")
    axes.set_ylabel("Net benefit")
    axes.grid(True, linewidth=0.4, alpha=0.5)
    axes.legend(loc="upper right", fontsize=8)
    if title:
        axes.set_title(title)
    return _save(figure, path)
