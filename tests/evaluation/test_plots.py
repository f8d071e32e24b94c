"""Every figure is written as a real PNG with content; bad input fails clearly."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.calibration import decision_curve, reliability_curve
from pipeline.evaluation.checks import UndefinedStatisticError
from pipeline.evaluation.operating_point import binary_metrics
from pipeline.evaluation.plots import (
    plot_calibration,
    plot_confusion_matrix,
    plot_cv_roc,
    plot_decision_curve,
    plot_roc,
)
from pipeline.evaluation.roc import auc_summary, roc_band


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    return labels, 1 / (1 + np.exp(-rng.normal(2.0 * labels - 1.0, 1.0)))


def _assert_png(path, *, min_width: int = 500):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[1] >= min_width and image.shape[0] >= 400
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert not list(path.parent.glob(".*.png"))  # no temporary file left behind by the atomic write


def test_roc_with_band_and_operating_point(tmp_path, cases):
    labels, scores = cases
    path = plot_roc(
        tmp_path / "roc.png",
        labels,
        scores,
        auc=auc_summary(labels, scores, n_resamples=100),
        band=roc_band(labels, scores, n_resamples=50),
        operating_point=binary_metrics(labels, scores, threshold=0.5, n_resamples=10),
        title="Test split",
    )
    _assert_png(path)


def test_roc_without_both_classes_is_undefined(tmp_path):
    with pytest.raises(UndefinedStatisticError):
        plot_roc(tmp_path / "roc.png", np.ones(5, dtype=int), np.linspace(0, 1, 5))
    assert not (tmp_path / "roc.png").exists()


def test_cv_roc(tmp_path, cases):
    labels, scores = cases
    folds = [(labels[k::4], scores[k::4]) for k in range(4)]
    _assert_png(plot_cv_roc(tmp_path / "cv.png", folds))
    with pytest.raises(UserError, match="at least two folds"):
        plot_cv_roc(tmp_path / "cv1.png", folds[:1])


def test_confusion_matrix_counts_and_normalised(tmp_path, cases):
    labels, scores = cases
    counts = binary_metrics(labels, scores, threshold=0.5, n_resamples=10).counts
    _assert_png(plot_confusion_matrix(tmp_path / "cm.png", counts, title="Test"), min_width=1200)
    with pytest.raises(UserError, match="does not match"):
        plot_confusion_matrix(tmp_path / "bad.png", np.ones((2, 3)))


def test_calibration_and_decision_curve(tmp_path, cases):
    labels, scores = cases
    _assert_png(plot_calibration(tmp_path / "cal.png", reliability_curve(labels, scores)))
    _assert_png(plot_decision_curve(tmp_path / "dca.png", decision_curve(labels, scores)))


def test_confusion_matrix_text_is_readable_at_the_reports_display_width(cases):
    """Every text of the figure, scaled to the width the HTML report shows it at, is at least 10 px high."""
    from matplotlib.text import Text

    from pipeline.evaluation.plots import _DPI, CONFUSION_DISPLAY_WIDTH_PX, confusion_matrix_figure

    labels, scores = cases
    counts = binary_metrics(labels, scores, threshold=0.5).counts
    figure = confusion_matrix_figure(counts, class_names=["Negative", "Positive"], title="test split")
    figure.canvas.draw()
    png_width = figure.get_figwidth() * _DPI
    scale = min(1.0, CONFUSION_DISPLAY_WIDTH_PX / png_width)
    texts = [t for t in figure.findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert {"Counts", "Normalised by true class", "Predicted class", "True class"} <= {t.get_text() for t in texts}
    assert str(counts.tp) in {t.get_text() for t in texts}
    sizes = {t.get_text(): t.get_fontsize() * _DPI / 72 * scale for t in texts}
    assert min(sizes.values()) >= 10, sorted(sizes.items(), key=lambda kv: kv[1])[:3]
