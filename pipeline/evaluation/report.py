"""The evaluation report: every number of a predictions table, as HTML (self-contained), JSON and CSV.

:func:`evaluate_predictions` computes (no files) and :func:`write_report` writes; a MONAI handler can call both at
the end of an evaluator run with a DataFrame of the cases it has seen. The predictions table has one row per input
case: ``case_id, label, probability`` and optionally ``site, split, status, reason, fold`` (``label`` may be an
integer or a class name, and empty when unknown; ``status`` other than ``ok`` marks a case inference rejected).

Privacy: only ``case_id`` (pseudonymous by the manifest contract), ``site``, ``split``, ``fold``, the label and the
probability are copied into outputs; other columns are ignored, and rejection reasons are reduced to their leading
phrase with anything that looks like a path dropped.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.contracts.operating_point import OperatingPoint
from pipeline.errors import UserError
from pipeline.evaluation.calibration import DecisionCurve, ReliabilityCurve, decision_curve, reliability_curve
from pipeline.evaluation.checks import UndefinedStatisticError, binary_truth
from pipeline.evaluation.crossval import fold_metrics, summarise_folds
from pipeline.evaluation.operating_point import (
    BinaryMetrics,
    Estimate,
    binary_metrics,
    choose_threshold,
    fixed_threshold,
)
from pipeline.evaluation.roc import DELONG_SCALES, AUCResult, DeLongScale, RocBand, auc_summary, format_auc, roc_band
from pipeline.io import write_csv_atomic, write_json_atomic, write_text_atomic

__all__ = [
    "EvaluationReport",
    "FlowCounts",
    "SplitEvaluation",
    "evaluate_predictions",
    "read_predictions",
    "run_title",
    "write_report",
]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("case_id", "label", "probability")
#: reporting order of splits; any other split name follows in alphabetical order
SPLIT_ORDER = ("test", "external", "val", "validation", "train", "all")


def _source_name(source: str | os.PathLike | pd.DataFrame, default: str) -> str:
    return default if isinstance(source, pd.DataFrame) else str(source)


def read_predictions(source: str | os.PathLike | pd.DataFrame, *, what: str = "predictions") -> pd.DataFrame:
    """Read and check a predictions table.

    Args:
        source: a CSV path or an already loaded DataFrame.
        what: name used in error messages for a DataFrame source.

    Returns:
        A DataFrame with string columns ``case_id, label, site, split, status, reason, fold`` (empty where absent)
        and a float column ``probability`` (NaN for rejected cases).

    Raises:
        UserError: a missing file or column, a duplicate case id, or an accepted case without a numeric probability.
    """
    name = _source_name(source, what)
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{path}: predictions file not found")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{name}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
    out = pd.DataFrame({"case_id": frame["case_id"].astype(str).str.strip()})
    for column, default in (("label", ""), ("site", ""), ("split", ""), ("status", "ok"), ("reason", ""), ("fold", "")):
        values = frame[column] if column in frame.columns else pd.Series(default, index=frame.index)
        out[column] = values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        out[column] = out[column].str.strip()
    out["status"] = out["status"].replace("", "ok").str.lower()
    out["split"] = out["split"].str.lower()
    out["fold"] = out["fold"].map(lambda v: v[:-2] if v.endswith(".0") else v)
    duplicated = out["case_id"].duplicated()
    if duplicated.any():
        raise UserError(f"{name}: case_id {out['case_id'][duplicated].iloc[0]!r} appears more than once")
    raw = frame["probability"].map(lambda v: "" if v is None else str(v).strip())
    probability = pd.to_numeric(raw.replace("", np.nan), errors="coerce")
    ok = out["status"] == "ok"
    bad = ok & ~np.isfinite(probability.to_numpy(dtype=np.float64))
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(
            f"{name}: case {out['case_id'].iloc[first]!r} has status ok but probability {raw.iloc[first]!r} "
            "is missing or not a finite number"
        )
    out["probability"] = probability.astype(np.float64)
    return out.reset_index(drop=True)


def _reason_category(reason: str) -> str:
    """Leading phrase of a rejection reason, or ``other`` when it might carry a path (privacy)."""
    phrase = reason.split(":", 1)[0].strip()
    if not phrase:
        return "unspecified"
    if "/" in phrase or "\\" in phrase or len(phrase) > 60:
        return "other"
    return phrase


@dataclass(frozen=True, kw_only=True)
class FlowCounts:
    """Case flow for a STARD-style diagram: cases in -> rejected -> unlabelled -> evaluated.

    Attributes:
        upstream_rejected: series rejected before inference (from the manifest's rejections file), if given.
        upstream_reasons: their reason categories.
        cases_in: rows of the predictions table.
        rejected: cases whose status is not ``ok``.
        rejected_reasons: reason categories of those.
        unlabelled: accepted cases without a label (scored, not evaluable).
        evaluated: cases that enter the statistics.
        evaluated_by_split: evaluated cases per split.
    """

    upstream_rejected: int | None
    upstream_reasons: dict[str, int]
    cases_in: int
    rejected: int
    rejected_reasons: dict[str, int]
    unlabelled: int
    evaluated: int
    evaluated_by_split: dict[str, int]

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class SplitEvaluation:
    """All numbers of one split (test, external, ...) at the frozen operating point.

    Attributes:
        split: split name.
        labels: 0/1 truth of the evaluated cases.
        probabilities: their scores.
        auc: AUC with both intervals.
        metrics: threshold metrics and the 2x2 table.
        reliability: reliability curve, or ``None`` with ``calibration_reason``.
        decision: decision curve, or ``None``.
        calibration_reason: why calibration is missing.
        band: ROC bootstrap band for the figure, or ``None`` when a class has fewer than two cases.
        per_site: one row per site.
        misclassified: misclassified cases at the frozen threshold.
    """

    split: str
    labels: np.ndarray
    probabilities: np.ndarray
    auc: AUCResult
    metrics: BinaryMetrics
    reliability: ReliabilityCurve | None
    decision: DecisionCurve | None
    calibration_reason: str | None
    band: RocBand | None
    per_site: pd.DataFrame
    misclassified: pd.DataFrame

    @property
    def n(self) -> int:
        """Evaluated cases."""
        return int(self.labels.size)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {
            "n": self.n,
            "n_positive": int(self.labels.sum()),
            "n_negative": int(self.n - self.labels.sum()),
            "auc": self.auc.to_dict(),
            "threshold_metrics": self.metrics.to_dict(),
            "calibration": self.reliability.to_dict() if self.reliability else None,
            "decision_curve": self.decision.to_dict() if self.decision else None,
            "calibration_reason": self.calibration_reason,
            "per_site": _records(self.per_site),
            "n_misclassified": int(len(self.misclassified)),
        }


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


@dataclass(frozen=True, kw_only=True)
class EvaluationReport:
    """The result of :func:`evaluate_predictions`.

    Attributes:
        source: where the predictions came from.
        class_names: negative and positive class names.
        operating_point: the frozen threshold and how it was chosen.
        flow: case flow counts.
        splits: per-split evaluations in reporting order.
        cross_validation: per-fold metrics of out-of-fold rows (``None`` when there are no folds).
        cross_validation_summary: mean ± sd over folds.
        cv_folds: ``(labels, probabilities)`` per fold, for the figure.
        settings: statistical settings used.
        notes: warnings a reader must see (e.g. a default threshold).
    """

    source: str
    class_names: tuple[str, str]
    operating_point: OperatingPoint
    flow: FlowCounts
    splits: dict[str, SplitEvaluation]
    cross_validation: pd.DataFrame | None
    cross_validation_summary: pd.DataFrame | None
    cv_folds: list[tuple[int, np.ndarray, np.ndarray]]
    settings: dict
    notes: list[str] = field(default_factory=list)

    @property
    def primary_split(self) -> str | None:
        """``test`` if evaluated, else ``external``, else the first split."""
        for name in ("test", "external"):
            if name in self.splits:
                return name
        return next(iter(self.splits), None)

    def to_dict(self) -> dict:
        """Every number, as plain JSON; top-level ``auc``/``auc_ci`` are the primary split's (DeLong CI)."""
        primary = self.splits.get(self.primary_split) if self.primary_split else None
        return {
            "source": self.source,
            "primary_split": self.primary_split,
            "auc": primary.auc.auc if primary else None,
            "auc_ci": list(primary.auc.delong_ci) if primary and primary.auc.delong_ci else None,
            "auc_bootstrap_ci": list(primary.auc.bootstrap_ci) if primary and primary.auc.bootstrap_ci else None,
            "threshold": self.operating_point.threshold,
            "class_names": list(self.class_names),
            "operating_point": self.operating_point.to_dict(),
            "flow": self.flow.to_dict(),
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
            "cross_validation": {
                "per_fold": _records(self.cross_validation),
                "summary": _records(self.cross_validation_summary),
            }
            if self.cross_validation is not None
            else None,
            "settings": self.settings,
            "notes": list(self.notes),
        }

    def metrics_table(self) -> pd.DataFrame:
        """Every number in long form: ``split, subgroup, metric, value, ci_lower, ci_upper, numerator, denominator,
        method, note``."""
        rows: list[dict] = []

        def add(split, subgroup, metric, value, ci=None, numerator=None, denominator=None, method="", note=None):
            rows.append(
                {
                    "split": split,
                    "subgroup": subgroup,
                    "metric": metric,
                    "value": value,
                    "ci_lower": ci[0] if ci else None,
                    "ci_upper": ci[1] if ci else None,
                    "numerator": numerator,
                    "denominator": denominator,
                    "method": method,
                    "note": note,
                }
            )

        add("all", "all", "threshold", self.operating_point.threshold, method=self.operating_point.method)
        for name, split in self.splits.items():
            auc = split.auc
            add(name, "all", "n", split.n)
            add(name, "all", "n_positive", auc.n_positive)
            add(name, "all", "n_negative", auc.n_negative)
            add(
                name, "all", "auc", auc.auc, auc.delong_ci, method=f"DeLong ({auc.delong_scale} scale)", note=auc.reason
            )
            add(name, "all", "auc_bootstrap", auc.auc, auc.bootstrap_ci, method="stratified bootstrap", note=auc.reason)
            add(name, "all", "auc_se", auc.delong_se, method="DeLong")
            for metric, estimate in split.metrics.estimates().items():
                add(
                    name,
                    "all",
                    metric,
                    estimate.value,
                    estimate.ci,
                    estimate.numerator,
                    estimate.denominator,
                    estimate.method,
                    estimate.reason,
                )
            for cell, count in split.metrics.counts.to_dict().items():
                add(name, "all", cell, count)
            if split.reliability is not None:
                add(name, "all", "brier", split.reliability.brier)
                add(name, "all", "brier_reference", split.reliability.brier_reference, method="prevalence only")
                add(name, "all", "ece", split.reliability.expected_calibration_error, method="equal-width bins")
            else:
                add(name, "all", "brier", None, note=split.calibration_reason)
            for row in split.per_site.to_dict(orient="records"):
                site = f"site={row['site']}"
                add(name, site, "n", row["n"])
                add(name, site, "auc", row["auc"], _ci(row, "auc"), method="DeLong", note=row["auc_note"] or None)
                for metric in ("sensitivity", "specificity", "accuracy"):
                    add(
                        name,
                        site,
                        metric,
                        row[metric],
                        _ci(row, metric),
                        row[f"{metric}_numerator"],
                        row[f"{metric}_denominator"],
                        self.settings["ci_method"],
                    )
        if self.cross_validation is not None:
            for row in self.cross_validation.to_dict(orient="records"):
                for metric in ("n", "auc", "sensitivity", "specificity", "accuracy", "brier"):
                    add("cv", f"fold={row['fold']}", metric, row[metric])
            for row in self.cross_validation_summary.to_dict(orient="records"):
                add("cv", "mean", row["metric"], row["mean"], method="mean over folds")
                add("cv", "sd", row["metric"], row["sd"], method="sd over folds (ddof 1)")
        # object dtype keeps counts as integers next to real-valued metrics in the same column
        frame = pd.DataFrame(rows, dtype=object)
        return frame.where(frame.notna(), None)


def _ci(row: dict, metric: str) -> tuple[float, float] | None:
    lower, upper = row.get(f"{metric}_ci_lower"), row.get(f"{metric}_ci_upper")
    if lower is None or upper is None or (isinstance(lower, float) and np.isnan(lower)):
        return None
    return (lower, upper)


def _split_order(names: Sequence[str]) -> list[str]:
    known = [n for n in SPLIT_ORDER if n in names]
    return known + sorted(n for n in names if n not in SPLIT_ORDER)


def _count_upstream(rejections: str | os.PathLike | None) -> tuple[int | None, dict[str, int]]:
    if rejections is None:
        return None, {}
    path = Path(rejections)
    if not path.is_file():
        raise UserError(f"{path}: rejections file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return 0, {}
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    reasons = Counter(_reason_category(r) for r in frame["reason"]) if "reason" in frame.columns else Counter()
    return int(len(frame)), dict(reasons.most_common())


def _discrimination(
    part: pd.DataFrame, operating_point: OperatingPoint, settings: dict
) -> tuple[np.ndarray, np.ndarray, AUCResult, BinaryMetrics]:
    """Truth, scores, AUC with its CIs and the thresholded metrics of one group of cases (a split or a site)."""
    y, p = part["y"].to_numpy(dtype=np.int64), part["probability"].to_numpy(dtype=np.float64)
    auc = auc_summary(
        y,
        p,
        confidence=settings["confidence"],
        n_resamples=settings["n_resamples"],
        bootstrap_method=settings["bootstrap_method"],
        delong_scale=settings["delong_scale"],
        seed=settings["seed"],
    )
    metrics = binary_metrics(
        y,
        p,
        threshold=operating_point,
        ci_method=settings["ci_method"],
        confidence=settings["confidence"],
        n_resamples=settings["n_resamples"],
        seed=settings["seed"],
    )
    return y, p, auc, metrics


def _evaluate_site(part: pd.DataFrame, operating_point: OperatingPoint, settings: dict, site: str, split: str) -> dict:
    y, p, auc, metrics = _discrimination(part, operating_point, settings)
    row = {
        "split": split,
        "site": site,
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int(y.size - y.sum()),
        "auc": auc.auc,
        "auc_ci_lower": auc.delong_ci[0] if auc.delong_ci else None,
        "auc_ci_upper": auc.delong_ci[1] if auc.delong_ci else None,
        "auc_note": auc.reason or "",
    }
    for name in ("sensitivity", "specificity", "accuracy"):
        estimate: Estimate = getattr(metrics, name)
        row[name] = estimate.value
        row[f"{name}_ci_lower"] = estimate.ci[0] if estimate.ci else None
        row[f"{name}_ci_upper"] = estimate.ci[1] if estimate.ci else None
        row[f"{name}_numerator"] = estimate.numerator
        row[f"{name}_denominator"] = estimate.denominator
    return row


def _evaluate_split(
    name: str, part: pd.DataFrame, operating_point: OperatingPoint, settings: dict, class_names: tuple[str, str]
) -> SplitEvaluation:
    y, p, auc, metrics = _discrimination(part, operating_point, settings)
    reliability = decision = band = None
    calibration_reason = None
    try:
        reliability = reliability_curve(y, p, n_bins=settings["calibration_bins"])
        decision = decision_curve(y, p)
    except UserError as err:
        calibration_reason = str(err)
    try:
        band = roc_band(y, p, n_resamples=settings["roc_band_resamples"], seed=settings["seed"])
    except UndefinedStatisticError:
        band = None
    sites = part["site"].replace("", "unspecified")
    per_site = pd.DataFrame(
        [_evaluate_site(part[sites == site], operating_point, settings, site, name) for site in sorted(sites.unique())]
    )
    called = (p >= operating_point.threshold).astype(np.int64)
    wrong = called != y
    misclassified = pd.DataFrame(
        {
            "case_id": part["case_id"].to_numpy()[wrong],
            "split": name,
            "site": part["site"].to_numpy()[wrong],
            "true_class": [class_names[v] for v in y[wrong]],
            "probability": p[wrong],
            "error": np.where(y[wrong] == 1, "false negative", "false positive"),
        }
    )
    # the most confident mistakes first: those are the ones a reader wants to look at
    confidence_of_error = np.abs(misclassified["probability"] - operating_point.threshold)
    misclassified = misclassified.iloc[np.argsort(-confidence_of_error.to_numpy(), kind="stable")].reset_index(
        drop=True
    )
    return SplitEvaluation(
        split=name,
        labels=y,
        probabilities=p,
        auc=auc,
        metrics=metrics,
        reliability=reliability,
        decision=decision,
        calibration_reason=calibration_reason,
        band=band,
        per_site=per_site,
        misclassified=misclassified,
    )


def _labelled(frame: pd.DataFrame, *, classes, positive, name: str) -> pd.DataFrame:
    usable = frame[(frame["status"] == "ok") & (frame["label"] != "")].copy()
    usable["y"] = binary_truth(usable["label"], classes=classes, positive=positive, source=f"{name} column 'label'")
    return usable


def run_title(settings: object, run_dir: str | os.PathLike | None = None, *, prefix: str = "aamct evaluation") -> str:
    """A report title that names the run, so a teacher's and its student's reports differ.

    Args:
        settings: the run's settings (:class:`pipeline.contracts.run_record.RunSettings` or anything with
            ``network_name``, ``network_kwargs``, ``written_by`` and ``teacher``).
        run_dir: the run folder (its name is shown, e.g. ``distill``).
        prefix: leading words.

    Returns:
        e.g. ``"aamct evaluation: student aam_student_small (width 0.125) distilled from aam_student_small, run
        distill"`` or ``"aamct evaluation: aam_student_small trained on labels, run demo"``.
    """
    name = str(getattr(settings, "network_name", None) or "network")
    kwargs = dict(getattr(settings, "network_kwargs", None) or {})
    if kwargs:
        name += " (" + ", ".join(f"{k} {v}" for k, v in sorted(kwargs.items())) + ")"
    teacher = getattr(settings, "teacher", None)
    if getattr(settings, "written_by", None) == "distilling" or teacher:
        what = f"student {name} distilled from {teacher or 'a teacher'}"
    elif getattr(settings, "written_by", None) == "training":
        what = f"{name} trained on labels"
    else:
        what = name
    where = f", run {Path(run_dir).name}" if run_dir is not None and Path(run_dir).name else ""
    return f"{prefix}: {what}{where}"


def evaluate_predictions(
    predictions: str | os.PathLike | pd.DataFrame,
    *,
    threshold: float | OperatingPoint | None = None,
    validation: str | os.PathLike | pd.DataFrame | None = None,
    threshold_method: Literal["youden", "target_sensitivity"] = "youden",
    target_sensitivity: float | None = None,
    classes: Sequence[str] | None = None,
    positive: str | None = None,
    confidence: float = 0.95,
    ci_method: Literal["wilson", "clopper-pearson"] = "wilson",
    n_resamples: int = 2000,
    bootstrap_method: Literal["percentile", "bca"] = "percentile",
    roc_band_resamples: int = 1000,
    calibration_bins: int = 10,
    seed: int = 0,
    rejections: str | os.PathLike | None = None,
    delong_scale: DeLongScale = "logit",
    source: str | None = None,
) -> EvaluationReport:
    """Evaluate a predictions table split by split at one frozen operating point.

    The threshold is ``threshold`` when given; otherwise it is chosen on ``validation`` (by ``threshold_method``);
    with neither, it stays at 0.5 and the report says that it was not chosen on validation data.

    Args:
        predictions: predictions CSV path or DataFrame (see the module docstring for the columns).
        threshold: a frozen threshold (``probability >= threshold`` is positive), or an :class:`OperatingPoint`
            frozen earlier (e.g. read with :func:`~pipeline.contracts.read_operating_point`), which
            the report then describes as it was chosen.
        validation: validation predictions (same columns) on which to choose the threshold.
        threshold_method: ``"youden"`` or ``"target_sensitivity"``.
        target_sensitivity: target for ``"target_sensitivity"``.
        classes: the two class names, negative first (needed when labels are other class names).
        positive: alternatively, the label value of the positive class.
        confidence: level of every interval.
        ci_method: interval of the proportions, ``"wilson"`` or ``"clopper-pearson"``.
        n_resamples: bootstrap resamples (AUC and F1 intervals).
        bootstrap_method: ``"percentile"`` or ``"bca"``.
        roc_band_resamples: resamples of the ROC band in the figures.
        calibration_bins: equal-width bins of the reliability curve.
        seed: seed of every bootstrap.
        rejections: the manifest's rejections CSV, counted at the top of the flow.
        delong_scale: scale of the DeLong AUC interval: ``"logit"`` (default; stays inside (0, 1), asymmetric near
            1) or ``"auc"`` (AUC ± z·SE, R pROC's ``ci.auc(method = "delong")``); see
            :func:`~pipeline.evaluation.roc.delong_ci`.
        source: how the report names the predictions (default: the path, or ``predictions`` for a DataFrame);
            e.g. the ``predictions.csv`` an evaluator wrote beside the report.

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        UserError: unreadable input, bad labels, both ``threshold`` and ``validation``, no evaluable case, or a
            validation set lacking a class.
    """
    if threshold is not None and validation is not None:
        raise UserError("give either a frozen threshold or validation predictions to choose it on, not both")
    if validation is None and (threshold_method != "youden" or target_sensitivity is not None):
        raise UserError("a target-sensitivity threshold is chosen on validation predictions; give them")
    if delong_scale not in DELONG_SCALES:
        raise UserError(f"unknown DeLong scale {delong_scale!r} (use {' or '.join(DELONG_SCALES)})")
    name = source or _source_name(predictions, "predictions")
    frame = read_predictions(predictions, what=name)
    class_names: tuple[str, str] = tuple(classes) if classes is not None else ("negative", "positive")  # type: ignore[assignment]
    if classes is None and positive is not None:
        class_names = ("other", str(positive))
    evaluated = _labelled(frame, classes=classes, positive=positive, name=name)
    rejected = frame[frame["status"] != "ok"]
    unlabelled = frame[(frame["status"] == "ok") & (frame["label"] == "")]
    evaluated["split"] = evaluated["split"].replace("", "all")
    upstream, upstream_reasons = _count_upstream(rejections)
    flow = FlowCounts(
        upstream_rejected=upstream,
        upstream_reasons=upstream_reasons,
        cases_in=int(len(frame)),
        rejected=int(len(rejected)),
        rejected_reasons=dict(
            Counter(
                # out_of_scope rows (pipeline.data.scope) lead with the scan's path: counted by their status
                "out of scope (not a chest CT with lungs in view)" if status == "out_of_scope" else _reason_category(r)
                for status, r in zip(rejected["status"], rejected["reason"], strict=True)
            ).most_common()
        ),
        unlabelled=int(len(unlabelled)),
        evaluated=int(len(evaluated)),
        evaluated_by_split={s: int((evaluated["split"] == s).sum()) for s in _split_order(evaluated["split"].unique())},
    )
    if evaluated.empty:
        raise UserError(f"{name}: no case has status ok and a label, nothing to evaluate")
    notes: list[str] = []
    if isinstance(threshold, OperatingPoint):
        operating_point = threshold
    elif threshold is not None:
        operating_point = fixed_threshold(threshold)
    elif validation is not None:
        validation_name = _source_name(validation, "validation predictions")
        chosen_on = _labelled(
            read_predictions(validation, what=validation_name), classes=classes, positive=positive, name=validation_name
        )
        try:
            operating_point = choose_threshold(
                chosen_on["y"].to_numpy(),
                chosen_on["probability"].to_numpy(),
                method=threshold_method,
                target_sensitivity=target_sensitivity,
            )
        except UndefinedStatisticError as err:
            raise UserError(f"{validation_name}: cannot choose a threshold: {err}") from None
    else:
        operating_point = fixed_threshold(0.5, chosen_on="default")
        notes.append("No threshold or validation data was given: the threshold 0.5 was not chosen on validation data.")
        logger.warning(notes[-1])
    settings = {
        "confidence": confidence,
        "ci_method": ci_method,
        "n_resamples": n_resamples,
        "bootstrap_method": bootstrap_method,
        "delong_scale": delong_scale,
        "roc_band_resamples": roc_band_resamples,
        "calibration_bins": calibration_bins,
        "seed": seed,
    }
    splits = {
        split: _evaluate_split(split, evaluated[evaluated["split"] == split], operating_point, settings, class_names)
        for split in _split_order(evaluated["split"].unique())
    }
    for split_name, split in splits.items():
        if split.auc.reason:
            notes.append(f"{split_name}: {split.auc.reason}")
    cv = cv_summary = None
    cv_folds: list[tuple[int, np.ndarray, np.ndarray]] = []
    with_fold = evaluated[evaluated["fold"] != ""]
    if with_fold["fold"].nunique() >= 2:
        folds = with_fold.assign(fold=pd.to_numeric(with_fold["fold"], errors="coerce"), label=with_fold["y"])
        if folds["fold"].isna().any():
            raise UserError(f"{name}: column 'fold' holds a value that is not a fold number")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cv = fold_metrics(folds, threshold=operating_point.threshold)
        cv_summary = summarise_folds(cv)
        cv_folds = [
            (int(k), g["y"].to_numpy(dtype=np.int64), g["probability"].to_numpy()) for k, g in folds.groupby("fold")
        ]
    return EvaluationReport(
        source=name,
        class_names=class_names,
        operating_point=operating_point,
        flow=flow,
        splits=splits,
        cross_validation=cv,
        cross_validation_summary=cv_summary,
        cv_folds=cv_folds,
        settings=settings,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------------------- writing


def _software_versions() -> dict[str, str]:
    versions = {}
    for package in ("aamct", "monai", "torch", "scikit-learn", "scipy", "statsmodels", "numpy", "pandas", "matplotlib"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _figures(report: EvaluationReport, figure_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    from pipeline.evaluation import plots

    figures: dict[str, list[tuple[str, Path]]] = {}
    pretty = [name.capitalize() for name in report.class_names]
    for name, split in report.splits.items():
        items: list[tuple[str, Path]] = []
        if split.auc.auc is not None:
            items.append(
                (
                    "ROC curve",
                    plots.plot_roc(
                        figure_dir / f"roc_{name}.png",
                        split.labels,
                        split.probabilities,
                        auc=split.auc,
                        band=split.band,
                        operating_point=split.metrics,
                        title=f"ROC, {name} split (n = {split.n})",
                    ),
                )
            )
        items.append(
            (
                "Confusion matrix",
                plots.plot_confusion_matrix(
                    figure_dir / f"confusion_{name}.png",
                    split.metrics.counts,
                    class_names=pretty,
                    title=f"{name} split, threshold {split.metrics.threshold:.3g}",
                ),
            )
        )
        if split.reliability is not None:
            items.append(
                (
                    "Calibration",
                    plots.plot_calibration(
                        figure_dir / f"calibration_{name}.png", split.reliability, title=f"Calibration, {name} split"
                    ),
                )
            )
        if split.decision is not None:
            items.append(
                (
                    "Decision curve",
                    plots.plot_decision_curve(
                        figure_dir / f"decision_curve_{name}.png", split.decision, title=f"Decision curve, {name} split"
                    ),
                )
            )
        figures[name] = items
    if report.cv_folds:
        try:
            path = plots.plot_cv_roc(
                figure_dir / "cv_roc.png",
                [(y, p) for _, y, p in report.cv_folds],
                title="Cross-validation: out-of-fold ROC",
            )
            figures["cv"] = [("Cross-validated ROC", path)]
        except UserError as err:
            logger.warning("cross-validated ROC not drawn: %s", err)
    return figures


def write_report(
    report: EvaluationReport,
    out_dir: str | os.PathLike,
    *,
    title: str = "aamct evaluation report",
    gallery: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` (self-contained, images embedded), ``metrics.json``, ``metrics.csv``, ``per_site.csv``,
    ``misclassified.csv``, ``cv_folds.csv`` (when folds exist) and the PNGs under ``figures/``.

    Args:
        report: the :class:`EvaluationReport`.
        out_dir: output folder (created).
        title: HTML title.
        gallery: the cohort's heatmap gallery (:mod:`pipeline.inference.gallery`), linked (relative) from the top.

    Returns:
        ``{"html", "json", "csv", "per_site", "misclassified", ...}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(report, out / "figures")
    payload = report.to_dict()
    payload["software"] = _software_versions()
    paths = {
        "json": write_json_atomic(out / "metrics.json", payload),
        "csv": write_csv_atomic(out / "metrics.csv", report.metrics_table()),
        "per_site": write_csv_atomic(
            out / "per_site.csv", pd.concat([s.per_site for s in report.splits.values()], ignore_index=True)
        ),
        "misclassified": write_csv_atomic(
            out / "misclassified.csv", pd.concat([s.misclassified for s in report.splits.values()], ignore_index=True)
        ),
    }
    if report.cross_validation is not None:
        paths["cv_folds"] = write_csv_atomic(out / "cv_folds.csv", report.cross_validation)
    gallery_href = None if gallery is None else Path(os.path.relpath(Path(gallery).resolve(), out.resolve())).as_posix()
    paths["html"] = write_text_atomic(
        out / "report.html", _html(report, figures, title, payload["software"], gallery_href=gallery_href)
    )
    for split_figures in figures.values():
        paths.update({f"figure:{path.stem}": path for _, path in split_figures})
    return paths


# ------------------------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #1f4e9c;padding-bottom:.3em}h2{font-size:1.25em;margin-top:2em;color:#1f4e9c}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#eef3fb}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff6e0;border-left:4px solid #e0a800;padding:.5em .8em;margin:.6em 0}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{margin:0;flex:1 1 320px;max-width:520px}
.figs img{width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
.flow{font-size:1.05em}.muted{color:#666;font-size:.9em}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(v)}</td>' if i >= numeric_from else f"<td>{_e(v)}</td>" for i, v in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt_site_proportion(row: dict, metric: str) -> str:
    value = row[metric]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "undefined"
    text = f"{value * 100:.1f}%"
    ci = _ci(row, metric)
    if ci is not None:
        text += f" ({ci[0] * 100:.1f}\u2013{ci[1] * 100:.1f})"
    return f"{text}; {row[f'{metric}_numerator']}/{row[f'{metric}_denominator']}"


def _image(path: Path, caption: str, *, width_px: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    # a wide figure (the two-panel confusion matrix) gets its own row at the width its text sizes were chosen for
    style = f' style="flex:1 1 100%;max-width:{width_px}px"' if width_px else ""
    return (
        f'<figure{style}><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)} (<code>figures/{_e(path.name)}</code>)</figcaption></figure>"
    )


def _delong_scale_text(settings: dict) -> str:
    if settings.get("delong_scale", "logit") == "auc":
        return 'interval AUC ± z·SE clipped to [0, 1], as R pROC\'s ci.auc(method = "delong") reports it'
    return (
        "interval on the logit scale, which stays inside (0, 1) and is asymmetric near 1 like the AUC's sampling "
        "distribution; the plain AUC ± z·SE interval of R pROC is available with --delong-scale auc"
    )


def _methods(report: EvaluationReport) -> str:
    s = report.settings
    level = f"{s['confidence'] * 100:g}%"
    ci_name = "Wilson score" if s["ci_method"] == "wilson" else "Clopper-Pearson exact"
    boot = "percentile" if s["bootstrap_method"] == "percentile" else "bias-corrected and accelerated (BCa)"
    text = (
        f"Discrimination is the area under the ROC curve (AUC, scikit-learn) with {level} confidence intervals by "
        f"DeLong's method (fast midrank algorithm of Sun &amp; Xu 2014, {_delong_scale_text(s)}) and by a "
        f"stratified bootstrap ({s['n_resamples']} resamples of positive and negative cases separately, {boot} "
        f"interval, seed {s['seed']}). {_e(report.operating_point.describe())} A case is called positive when its "
        f"probability is at or above the threshold. Sensitivity, specificity, PPV, NPV and accuracy are given with "
        f"{ci_name} {level} intervals; F1 with a percentile bootstrap over cases. Calibration is shown as a "
        f"reliability curve over {s['calibration_bins']} equal-width bins with the Brier score and the expected "
        "calibration error; clinical utility as decision-curve net benefit (Vickers &amp; Elkin 2006). Per-site "
        "subgroup AUCs use the DeLong interval. The ROC figure's band is a pointwise stratified bootstrap band "
        f"({s['roc_band_resamples']} resamples). A statistic the data cannot support (a class absent, a zero "
        "variance) is reported as undefined with its reason, never as a number."
    )
    if report.cross_validation is not None:
        text += " Cross-validation metrics are per fold, summarised as mean \u00b1 SD (ddof 1) over folds."
    return f"<p>{text}</p>"


def _html(
    report: EvaluationReport, figures: dict, title: str, software: dict[str, str], *, gallery_href: str | None = None
) -> str:
    from pipeline.evaluation.plots import CONFUSION_DISPLAY_WIDTH_PX

    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>',
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Predictions: <code>{_e(report.source)}</code></p>',
    ]
    if gallery_href is not None:
        parts.append(
            f'<p>Heatmaps of every case, sorted by score: <a href="{_e(gallery_href)}">heatmap gallery</a> '
            "(where the network's evidence lies; not a segmentation).</p>"
        )
    primary = report.primary_split
    if primary is not None:
        split = report.splits[primary]
        parts.append(
            f"<p><b>{_e(primary.capitalize())} split</b> (n = {split.n}; {split.auc.n_positive} "
            f"{_e(report.class_names[1])}, {split.auc.n_negative} {_e(report.class_names[0])}): "
            f"AUC {_e(split.auc.format())}; sensitivity {_e(split.metrics.sensitivity.format())}, "
            f"specificity {_e(split.metrics.specificity.format())} at threshold {split.metrics.threshold:.3g}.</p>"
        )
    for note in report.notes:
        parts.append(f'<div class="note">{_e(note)}</div>')

    flow = report.flow
    steps = []
    if flow.upstream_rejected is not None:
        steps.append(f"{flow.upstream_rejected} series rejected at ingestion")
    steps += [
        f"{flow.cases_in} cases in",
        f"{flow.rejected} rejected at inference",
        f"{flow.unlabelled} without label",
        f"{flow.evaluated} evaluated (" + ", ".join(f"{k}: {v}" for k, v in flow.evaluated_by_split.items()) + ")",
    ]
    parts.append("<h2>Case flow</h2>")
    parts.append(f'<p class="flow">{" &rarr; ".join(_e(s) for s in steps)}</p>')
    reasons = {**{f"ingestion: {k}": v for k, v in flow.upstream_reasons.items()}, **flow.rejected_reasons}
    if reasons:
        parts.append(_table(["Rejection reason", "Cases"], list(reasons.items())))

    parts.append("<h2>Discrimination and operating point</h2>")
    names = list(report.splits)
    rows = [
        ["Cases (positive / negative)"]
        + [f"{s.n} ({s.auc.n_positive} / {s.auc.n_negative})" for s in report.splits.values()]
    ]
    scale = report.settings.get("delong_scale", "logit")
    rows.append([f"AUC (DeLong CI, {scale} scale)"] + [s.auc.format() for s in report.splits.values()])
    rows.append(
        ["AUC (bootstrap CI)"]
        + [format_auc(s.auc.auc, s.auc.bootstrap_ci, confidence=s.auc.confidence) for s in report.splits.values()]
    )
    labels = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}
    labels.update({"accuracy": "Accuracy", "f1": "F1"})
    for metric, label in labels.items():
        rows.append([label] + [getattr(s.metrics, metric).format() for s in report.splits.values()])
    rows.append(
        ["TP / FP / FN / TN"]
        + [
            f"{s.metrics.counts.tp} / {s.metrics.counts.fp} / {s.metrics.counts.fn} / {s.metrics.counts.tn}"
            for s in report.splits.values()
        ]
    )
    rows.append(
        ["Brier score (prevalence-only reference)"]
        + [
            f"{s.reliability.brier:.3f} ({s.reliability.brier_reference:.3f})" if s.reliability else "undefined"
            for s in report.splits.values()
        ]
    )
    rows.append(
        ["Expected calibration error"]
        + [
            f"{s.reliability.expected_calibration_error:.3f}" if s.reliability else "undefined"
            for s in report.splits.values()
        ]
    )
    parts.append(_table(["Metric"] + [n.capitalize() for n in names], rows))
    parts.append(f"<p class='muted'>{_e(report.operating_point.describe())}</p>")
    for name in names:
        reason = report.splits[name].auc.reason or report.splits[name].calibration_reason
        if reason:
            parts.append(f'<div class="note">{_e(name)}: {_e(reason)}</div>')

    parts.append("<h2>Per-site subgroups</h2>")
    site_rows = []
    for split in report.splits.values():
        for row in split.per_site.to_dict(orient="records"):
            ci = _ci(row, "auc")
            auc_text = format_auc(row["auc"], ci, confidence=report.settings["confidence"])
            if row["auc"] is None or (isinstance(row["auc"], float) and np.isnan(row["auc"])):
                auc_text = (
                    "undefined (one class only)" if min(row["n_positive"], row["n_negative"]) == 0 else "undefined"
                )
            site_rows.append(
                [
                    row["split"],
                    row["site"],
                    f"{row['n']} ({row['n_positive']} / {row['n_negative']})",
                    auc_text,
                    _fmt_site_proportion(row, "sensitivity"),
                    _fmt_site_proportion(row, "specificity"),
                    _fmt_site_proportion(row, "accuracy"),
                ]
            )
    parts.append(
        _table(
            ["Split", "Site", "Cases (pos / neg)", "AUC (DeLong CI)", "Sensitivity", "Specificity", "Accuracy"],
            site_rows,
            numeric_from=2,
        )
    )

    for name, items in figures.items():
        if name == "cv":
            continue
        parts.append(f"<h2>Figures: {_e(name)} split</h2><div class='figs'>")
        parts.extend(
            _image(path, caption, width_px=CONFUSION_DISPLAY_WIDTH_PX if caption == "Confusion matrix" else None)
            for caption, path in items
        )
        parts.append("</div>")

    if report.cross_validation is not None:
        parts.append("<h2>Cross-validation</h2>")
        cv_rows = [
            [
                int(r["fold"]),
                r["n"],
                *(
                    ("undefined" if pd.isna(r[m]) else f"{r[m]:.3f}")
                    for m in ("auc", "sensitivity", "specificity", "accuracy", "brier")
                ),
            ]
            for r in report.cross_validation.to_dict(orient="records")
        ]
        summary = {r["metric"]: r for r in report.cross_validation_summary.to_dict(orient="records")}
        cv_rows.append(
            ["mean \u00b1 SD", int(report.cross_validation["n"].sum())]
            + [
                "undefined"
                if pd.isna(summary[m]["mean"])
                else f"{summary[m]['mean']:.3f} \u00b1 {summary[m]['sd']:.3f}"
                for m in ("auc", "sensitivity", "specificity", "accuracy", "brier")
            ]
        )
        parts.append(_table(["Fold", "Cases", "AUC", "Sensitivity", "Specificity", "Accuracy", "Brier"], cv_rows))
        if "cv" in figures:
            parts.append("<div class='figs'>" + "".join(_image(p, c) for c, p in figures["cv"]) + "</div>")

    parts.append("<h2>Misclassified cases</h2>")
    wrong = pd.concat([s.misclassified for s in report.splits.values()], ignore_index=True)
    if wrong.empty:
        parts.append("<p>None at the frozen threshold.</p>")
    else:
        parts.append(
            f"<p class='muted'>{len(wrong)} cases, most confident errors first (full list in "
            "<code>misclassified.csv</code>).</p>"
        )
        parts.append(
            _table(
                ["Case", "Split", "Site", "True class", "Error", "Probability"],
                [
                    [r["case_id"], r["split"], r["site"], r["true_class"], r["error"], f"{r['probability']:.3f}"]
                    for r in wrong.head(200).to_dict(orient="records")
                ],
                numeric_from=5,
            )
        )

    parts.append("<h2>Methods</h2>")
    parts.append(_methods(report))
    parts.append(
        "<p class='muted'>Every number above is in <code>metrics.json</code> and <code>metrics.csv</code>; per-site "
        "rows in <code>per_site.csv</code>. Software: "
        + ", ".join(f"{_e(k)} {_e(v)}" for k, v in software.items())
        + ".</p>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)
