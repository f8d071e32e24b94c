"""MONAI / ignite handlers of the evaluation stage: the per-case report of an evaluator run, and the per-epoch AUC
with its DeLong interval during training.

What MONAI already has, and what is added here:

* MONAI's ``ROCAUC`` handler computes the plain AUC of an epoch, and for a two-channel softmax output with a one-hot
  label its ``"macro"`` average *is* the positive-class AUC (the negative channel's AUC is the same number, because
  ``p_neg = 1 - p_pos`` and ``y_neg = 1 - y_pos``). It stays the key metric of ``train.json``. What it lacks is an
  uncertainty: :class:`DeLongAUCHandler` collects the same ``(pred, label)`` pairs and adds the DeLong standard error
  and confidence interval to ``engine.state.metrics`` (``<name>_se``, ``<name>_ci_lower``, ``<name>_ci_upper``), where
  MONAI's ``TensorBoardStatsHandler`` and ``StatsHandler`` pick them up, and logs one line per epoch.
* MONAI's ``ClassificationSaver`` writes a CSV of raw outputs keyed by *file name* (which may carry patient names in a
  DICOM tree) and knows nothing about labels, sites or thresholds. :class:`EvaluationReportHandler` collects, per case,
  the pseudonymous ``case_id``, the label, the positive-class probability, the site and the fold; at the end of the run
  it writes ``predictions.csv`` (one row per expected case, failed cases with ``status=error`` and a reason), chooses
  or reads the frozen operating point, and writes the full report through
  :func:`~pipeline.evaluation.report.evaluate_predictions` / :func:`~pipeline.evaluation.report.write_report`.

Both gather their rows across ranks (``torch.distributed`` through ignite), so they work under ``torchrun`` too; only
``save_rank`` writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ignite.distributed as idist
import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.handlers import from_engine
from monai.utils import evenly_divisible_all_gather, string_list_all_gather

from pipeline.contracts.operating_point import OperatingPoint, read_operating_point, write_operating_point
from pipeline.errors import UserError
from pipeline.evaluation.checks import UndefinedStatisticError, binary_truth
from pipeline.evaluation.operating_point import choose_threshold, fixed_threshold
from pipeline.evaluation.report import EvaluationReport, evaluate_predictions, write_report
from pipeline.evaluation.roc import DELONG_SCALES, DeLongScale, delong_ci, delong_covariance, format_auc, roc_auc
from pipeline.io import write_csv_atomic, write_json_atomic

__all__ = [
    "CasePredictionCollector",
    "DeLongAUCHandler",
    "EvaluationReportHandler",
    "PREDICTION_COLUMNS",
    "Proportion",
    "RunSummary",
    "SplitSummary",
    "read_run_summary",
    "update_run_summary",
]

logger = logging.getLogger(__name__)

#: columns of the ``predictions.csv`` an :class:`EvaluationReportHandler` writes
PREDICTION_COLUMNS = ("case_id", "label", "probability", "predicted", "site", "split", "fold", "status", "reason")


def _plain(value: Any) -> Any:
    """A batch value as a plain Python scalar (collation turns ints into tensors, decollation into 0-d tensors)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _positive_score(pred: Any, positive_index: int) -> float:
    """The positive-class score of one case's prediction: ``(C,)`` probabilities, or ``(1,)`` for a sigmoid output."""
    scores = torch.as_tensor(pred).detach().float().cpu()
    if scores.ndim > 1 and all(size == 1 for size in scores.shape[1:]):
        scores = scores.reshape(scores.shape[0])
    if scores.ndim != 1:
        raise ValueError(
            f"expected one score per class for each case, got a prediction of shape {tuple(scores.shape)} "
            "(is the evaluator's inferer producing a dense map?)"
        )
    return float(scores[0] if scores.numel() == 1 else scores[positive_index])


def _label_index(label: Any) -> int | None:
    """The class index of one case's label: an index ``(1,)`` / scalar, or a one-hot ``(C,)``; ``None`` if absent."""
    if label is None:
        return None
    values = torch.as_tensor(label).detach().reshape(-1)
    if values.numel() == 0:
        return None
    if values.numel() == 1:
        index = int(values.item())
        return index if index >= 0 else None
    return int(values.argmax().item())


class CasePredictionCollector:
    """Collect one row per case (id, site, fold, label, positive-class probability) over an evaluator epoch.

    Attach it to a MONAI ``SupervisedEvaluator``: after MONAI's decollation and postprocessing, ``engine.state.batch``
    is a list of the datalist entries (with ``case_id``, ``site``, ``fold``) and ``engine.state.output`` a list of
    dicts with ``pred`` (class probabilities after ``Activationsd(softmax=True)``) and ``label``.

    Args:
        positive_index: channel of the positive class in ``pred``.
        batch_transform: extracts the per-case entries from ``engine.state.batch`` (a list of dicts, or a dict of
            lists which is decollated).
        output_transform: extracts ``(preds, labels)`` from ``engine.state.output``.
        case_key: entry key of the pseudonymous case id (the manifest contract's ``case_id``); the image path is
            never used in its place, as DICOM folder names can carry patient names.

    Attributes:
        rows: the rows collected on this rank in the current epoch.
    """

    def __init__(
        self,
        *,
        positive_index: int = 1,
        batch_transform: Callable[[Any], Any] = lambda batch: batch,
        output_transform: Callable[[Any], Any] = from_engine(["pred", "label"]),
        case_key: str = "case_id",
    ) -> None:
        self.positive_index = int(positive_index)
        self.batch_transform = batch_transform
        self.output_transform = output_transform
        self.case_key = case_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator: reset at each epoch start, collect after each iteration, finish at epoch end."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the rows of a previous epoch."""
        self.rows = []

    def collect(self, engine: Engine) -> None:
        """Add the cases of the current iteration."""
        entries = self.batch_transform(engine.state.batch)
        if isinstance(entries, Mapping):
            entries = decollate_batch(entries, detach=True)
        preds, labels = self.output_transform(engine.state.output)
        if not (len(entries) == len(preds) == len(labels)):
            raise ValueError(f"batch has {len(entries)} entries but {len(preds)} predictions and {len(labels)} labels")
        for entry, pred, label in zip(entries, preds, labels, strict=True):
            case_id = _plain(entry.get(self.case_key)) if isinstance(entry, Mapping) else None
            if case_id in (None, ""):
                # positional stand-in: never the file name (privacy); a manifest-built datalist always has case_id
                case_id = f"case-{len(self.rows) + 1:05d}"
            fold = _plain(entry.get("fold")) if isinstance(entry, Mapping) else None
            self.rows.append(
                {
                    "case_id": str(case_id),
                    "site": str(_plain(entry.get("site")) or "") if isinstance(entry, Mapping) else "",
                    "fold": "" if fold is None or fold == "" else str(int(fold)),
                    "label_index": _label_index(label),
                    "probability": _positive_score(pred, self.positive_index),
                }
            )

    def gathered_rows(self) -> list[dict[str, Any]]:
        """Rows of every rank (all of them on each rank), in rank order."""
        if idist.get_world_size() <= 1:
            return list(self.rows)
        encoded = string_list_all_gather([json.dumps(row) for row in self.rows])
        return [json.loads(text) for text in encoded]

    def epoch_completed(self, engine: Engine) -> None:
        """Hook for subclasses; the collector alone keeps its rows for the caller."""


def _sanitise_reason(reason: str, entry: Mapping[str, Any] | None) -> str:
    """A failure reason without the case's image path (it may name the patient), on one line."""
    text = " ".join(str(reason).split())
    image = entry.get("image") if entry else None
    if isinstance(image, str) and image:
        text = text.replace(image, "<image>")
    return text


def _failed_reasons(failures: Any) -> dict[str, str]:
    """``case name -> reason`` from a ``SkipFailedCases`` dataset (``.failed``), a mapping, or a callable."""
    if failures is None:
        return {}
    if callable(failures) and not hasattr(failures, "failed"):
        failures = failures()
    if hasattr(failures, "failed"):
        failures = failures.failed
    return {str(k): str(v) for k, v in dict(failures).items()}


class EvaluationReportHandler(CasePredictionCollector):
    """At the end of an evaluator run, write ``predictions.csv`` and the full evaluation report.

    The operating threshold is decided in this order: ``choose_threshold`` (chosen on this run's cases, which must
    then be validation cases, and frozen into ``operating_point_file``); a fixed ``threshold``; the operating point
    frozen earlier in ``operating_point_file``; otherwise the report's default of 0.5, flagged in its notes.

    Args:
        output_dir: folder of ``predictions.csv``, ``report.html``, ``metrics.json`` ... (created).
        split: name of the evaluated split (``test``, ``val``, ``external``), written into every row.
        class_names: the two class names, negative first; ``label`` indices map onto them.
        positive_index: channel of the positive class in ``pred``.
        threshold: a fixed threshold (``probability >= threshold`` is positive).
        operating_point_file: the frozen operating point: written when ``choose_threshold``, read otherwise.
        choose_threshold: choose the threshold on this run's predictions and freeze it.
        threshold_method: ``"youden"`` or ``"target_sensitivity"`` (with ``target_sensitivity``).
        target_sensitivity: the sensitivity the chosen threshold must reach.
        expected_cases: the datalist entries the run was meant to score; any of them without a prediction (a case
            that failed to load) becomes a row with ``status=error``.
        failures: where the failure reasons come from: a ``SkipFailedCases`` dataset, a ``{case: reason}`` mapping,
            or a callable returning one.
        summary_file: the run's ``metrics.json``, updated with this split's headline numbers (see
            :func:`update_run_summary`).
        provenance: plain-JSON facts stored with the operating point and the summary (checkpoint digest, fold, ...).
        n_resamples: bootstrap resamples of the AUC and F1 intervals.
        roc_band_resamples: resamples of the ROC band in the figure.
        seed: seed of every bootstrap.
        title: report title (name the run: teacher and student reports of one experiment must differ).
        delong_scale: scale of the DeLong AUC interval, ``"logit"`` (default) or ``"auc"`` (R pROC's AUC ± z·SE);
            see :func:`~pipeline.evaluation.roc.delong_ci`.
        batch_transform: see :class:`CasePredictionCollector`.
        output_transform: see :class:`CasePredictionCollector`.
        save_rank: the rank that writes the files.

    Attributes:
        report: the :class:`~pipeline.evaluation.report.EvaluationReport` of the last run (``None`` before).
        paths: the files written by the last run.

    Raises:
        UserError: (at construction) not exactly two classes, an unknown threshold method, or
            ``choose_threshold`` without ``operating_point_file``; (at the end of the run) a validation split that
            cannot define a threshold, or no evaluable case.
    """

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike,
        split: str = "test",
        class_names: Sequence[str] = ("negative", "positive"),
        positive_index: int = 1,
        threshold: float | None = None,
        operating_point_file: str | os.PathLike | None = None,
        choose_threshold: bool = False,
        threshold_method: Literal["youden", "target_sensitivity"] = "youden",
        target_sensitivity: float | None = None,
        expected_cases: Sequence[Mapping[str, Any]] | None = None,
        failures: Any = None,
        summary_file: str | os.PathLike | None = None,
        provenance: Mapping[str, Any] | None = None,
        n_resamples: int = 2000,
        roc_band_resamples: int = 1000,
        seed: int = 0,
        title: str | None = None,
        delong_scale: DeLongScale = "logit",
        batch_transform: Callable[[Any], Any] = lambda batch: batch,
        output_transform: Callable[[Any], Any] = from_engine(["pred", "label"]),
        save_rank: int = 0,
    ) -> None:
        super().__init__(
            positive_index=positive_index, batch_transform=batch_transform, output_transform=output_transform
        )
        self.class_names = tuple(str(name) for name in class_names)
        if len(self.class_names) != 2:
            raise UserError(f"the evaluation report is binary: need two class names, got {list(self.class_names)}")
        if threshold_method not in ("youden", "target_sensitivity"):
            raise UserError(f"unknown threshold method {threshold_method!r} (use youden or target_sensitivity)")
        if choose_threshold and operating_point_file is None:
            raise UserError("choosing the threshold needs an operating_point_file to freeze it in")
        if delong_scale not in DELONG_SCALES:
            raise UserError(f"unknown DeLong scale {delong_scale!r} (use {' or '.join(DELONG_SCALES)})")
        self.delong_scale = delong_scale
        self.output_dir = Path(output_dir)
        self.split = str(split)
        self.threshold = None if threshold is None else float(threshold)
        self.operating_point_file = Path(operating_point_file) if operating_point_file is not None else None
        self.choose_threshold = bool(choose_threshold)
        self.threshold_method = threshold_method
        self.target_sensitivity = target_sensitivity
        self.expected_cases = [dict(entry) for entry in expected_cases] if expected_cases is not None else None
        self.failures = failures
        self.summary_file = Path(summary_file) if summary_file is not None else None
        self.provenance = dict(provenance or {})
        self.n_resamples = int(n_resamples)
        self.roc_band_resamples = int(roc_band_resamples)
        self.seed = int(seed)
        self.title = title or f"aamct evaluation report: {self.split} split"
        self.save_rank = int(save_rank)
        self.report: EvaluationReport | None = None
        self.paths: dict[str, Path] = {}

    def epoch_completed(self, engine: Engine) -> None:
        """Gather every rank's rows and, on ``save_rank``, write predictions, operating point, report, summary."""
        rows = self.gathered_rows()
        if idist.get_rank() == self.save_rank:
            self.write(rows)

    # -------------------------------------------------------------------------------------------------- writing
    def predictions_frame(self, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """The predictions table: the collected rows plus an error row for each expected case without one.

        Args:
            rows: collected rows (``case_id, site, fold, label_index, probability``).

        Returns:
            A DataFrame with :data:`PREDICTION_COLUMNS` (``predicted`` still empty), in datalist order when the
            expected cases are known.
        """
        scored = {}
        for row in rows:
            label = row.get("label_index")
            scored[str(row["case_id"])] = {
                "case_id": str(row["case_id"]),
                "label": self.class_names[label] if label is not None and 0 <= label < 2 else "",
                "probability": float(row["probability"]),
                "predicted": "",
                "site": row.get("site", ""),
                "split": self.split,
                "fold": row.get("fold", ""),
                "status": "ok",
                "reason": "",
            }
        if self.expected_cases is None:
            return pd.DataFrame(list(scored.values()), columns=list(PREDICTION_COLUMNS))
        reasons = _failed_reasons(self.failures)
        ordered = []
        for entry in self.expected_cases:
            case_id = str(entry.get("case_id") or "")
            if case_id in scored:
                ordered.append(scored.pop(case_id))
                continue
            label = entry.get("label")
            reason = (
                reasons.get(case_id) or reasons.get(str(entry.get("image"))) or "not scored: the case failed to load"
            )
            fold = entry.get("fold")
            ordered.append(
                {
                    "case_id": case_id,
                    "label": self.class_names[label] if isinstance(label, int) and 0 <= label < 2 else "",
                    "probability": float("nan"),
                    "predicted": "",
                    "site": str(entry.get("site") or ""),
                    "split": self.split,
                    "fold": "" if fold is None else str(fold),
                    "status": "error",
                    "reason": _sanitise_reason(reason, entry),
                }
            )
        ordered.extend(scored.values())  # scored cases the datalist did not list (should not happen), kept, not lost
        return pd.DataFrame(ordered, columns=list(PREDICTION_COLUMNS))

    def operating_point(self, frame: pd.DataFrame) -> OperatingPoint | None:
        """Decide the operating point for this run (see the class docstring for the order).

        Args:
            frame: the predictions table of this run.

        Returns:
            The operating point, or ``None`` for the report's flagged default.

        Raises:
            UserError: the validation cases cannot define a threshold (a class absent).
        """
        if self.choose_threshold:
            usable = frame[(frame["status"] == "ok") & (frame["label"] != "")]
            truth = binary_truth(usable["label"], classes=self.class_names, source=f"{self.split} predictions")
            try:
                chosen = choose_threshold(
                    truth,
                    usable["probability"].to_numpy(dtype=np.float64),
                    method=self.threshold_method,
                    target_sensitivity=self.target_sensitivity,
                )
            except UndefinedStatisticError as err:
                raise UserError(f"{self.split} split: cannot choose the operating threshold: {err}") from None
            provenance = {**self.provenance, "chosen_on_split": self.split, "class_names": list(self.class_names)}
            write_operating_point(self.operating_point_file, chosen, provenance=provenance)
            logger.info(
                "operating threshold %.4g chosen on %d %s cases (%s), frozen in %s",
                chosen.threshold,
                chosen.n_validation,
                self.split,
                chosen.method,
                self.operating_point_file,
            )
            return chosen
        if self.threshold is not None:
            return fixed_threshold(self.threshold)
        if self.operating_point_file is not None:
            return read_operating_point(self.operating_point_file)[0]
        return None

    def write(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
        """Write everything for the collected ``rows`` (what :meth:`epoch_completed` does on ``save_rank``).

        Args:
            rows: collected rows.

        Returns:
            The written paths (``predictions``, ``html``, ``json``, ...).

        Raises:
            UserError: see the class docstring.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        frame = self.predictions_frame(rows)
        predictions_path = self.output_dir / "predictions.csv"
        # written before the statistics, so the per-case scores survive whatever the statistics say
        write_csv_atomic(predictions_path, frame)
        operating_point = self.operating_point(frame)
        if operating_point is not None:
            ok = frame["status"] == "ok"
            called = frame.loc[ok, "probability"] >= operating_point.threshold
            frame.loc[ok, "predicted"] = np.where(called, self.class_names[1], self.class_names[0])
            write_csv_atomic(predictions_path, frame)
        report = evaluate_predictions(
            frame,
            threshold=operating_point,
            classes=self.class_names,
            n_resamples=self.n_resamples,
            roc_band_resamples=self.roc_band_resamples,
            seed=self.seed,
            delong_scale=self.delong_scale,
            source=predictions_path.name,  # the table beside the report, not "predictions" (a DataFrame has no name)
        )
        paths = write_report(report, self.output_dir, title=self.title)
        paths["predictions"] = predictions_path
        if self.summary_file is not None:
            paths["summary"] = update_run_summary(
                self.summary_file, report, split=self.split, report_dir=self.output_dir, provenance=self.provenance
            )
        self.report, self.paths = report, paths
        self._log(report, frame)
        return paths

    def _log(self, report: EvaluationReport, frame: pd.DataFrame) -> None:
        failed = int((frame["status"] != "ok").sum())
        for name, split in report.splits.items():
            logger.info(
                "%s: %d cases, AUC %s, sensitivity %s, specificity %s at threshold %.4g (%s)%s",
                name,
                split.n,
                split.auc.format(),
                split.metrics.sensitivity.format(),
                split.metrics.specificity.format(),
                report.operating_point.threshold,
                report.operating_point.chosen_on,
                f"; {failed} case(s) failed" if failed else "",
            )
        logger.info("evaluation report: %s", self.paths.get("html"))


#: the proportions a run summary carries per split (value, ``_ci``, ``_count`` = [numerator, denominator])
_SUMMARY_PROPORTIONS = ("sensitivity", "specificity", "accuracy", "ppv", "npv", "f1")
#: the top-level keys of a run summary copied from its headline split
_HEADLINE_KEYS = ("auc", "auc_ci", "auc_bootstrap_ci", "threshold", "sensitivity", "specificity")


def _headline(report: EvaluationReport, split: str) -> dict[str, Any]:
    """The numbers of one split a run summary carries."""
    evaluated = report.splits.get(split) or report.splits[report.primary_split]
    metrics = evaluated.metrics
    out: dict[str, Any] = {
        "n": evaluated.n,
        "n_positive": evaluated.auc.n_positive,
        "n_negative": evaluated.auc.n_negative,
        "auc": evaluated.auc.auc,
        "auc_ci": list(evaluated.auc.delong_ci) if evaluated.auc.delong_ci else None,
        "auc_bootstrap_ci": list(evaluated.auc.bootstrap_ci) if evaluated.auc.bootstrap_ci else None,
        "auc_note": evaluated.auc.reason,
        "confidence": evaluated.auc.confidence,
        "delong_scale": evaluated.auc.delong_scale,
        "threshold": report.operating_point.threshold,
        "threshold_chosen_on": report.operating_point.chosen_on,
    }
    for name in _SUMMARY_PROPORTIONS:
        estimate = getattr(metrics, name)
        out[name] = estimate.value
        out[f"{name}_ci"] = list(estimate.ci) if estimate.ci else None
        if estimate.numerator is not None and estimate.denominator is not None:
            out[f"{name}_count"] = [int(estimate.numerator), int(estimate.denominator)]
    out["cases_failed"] = report.flow.rejected
    return out


def update_run_summary(
    path: str | os.PathLike,
    report: EvaluationReport,
    *,
    split: str,
    report_dir: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Merge one split's headline numbers into a run's ``metrics.json`` (atomically).

    Layout: ``{"split": <headline split>, "auc": ..., "auc_ci": [lo, hi], "threshold": ..., "sensitivity": ...,
    "splits": {"val": {...}, "test": {...}}, "operating_point": {...}, "provenance": {...}}``. The top-level numbers
    are the ``test`` split's when it has been evaluated, else those of the split just written. Entries of other
    splits are kept unless they were computed with a different checkpoint (``provenance.checkpoint_sha256``).

    Args:
        path: the summary JSON.
        report: the report of ``split``.
        split: the evaluated split.
        report_dir: where the split's full report lives (stored relative to the summary when possible).
        provenance: checkpoint digest, fold, datalist ...

    Returns:
        The written path.
    """
    path = Path(path)
    provenance = dict(provenance or {})
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("%s: unreadable run summary, rewriting it", path)
            existing = {}
    splits = existing.get("splits") if isinstance(existing.get("splits"), dict) else {}
    digest = provenance.get("checkpoint_sha256")
    if digest is not None:
        splits = {k: v for k, v in splits.items() if v.get("checkpoint_sha256") in (None, digest)}
    entry = _headline(report, split)
    try:
        entry["report"] = os.path.relpath(Path(report_dir) / "report.html", path.parent)
    except ValueError:  # different drives on Windows
        entry["report"] = str(Path(report_dir) / "report.html")
    if digest is not None:
        entry["checkpoint_sha256"] = digest
    entry["operating_point"] = report.operating_point.to_dict()
    splits[split] = entry
    headline_split = "test" if "test" in splits else split
    headline = splits[headline_split]
    summary = {
        "split": headline_split,
        **{k: headline[k] for k in _HEADLINE_KEYS},
        "n": headline["n"],
        "report": headline["report"],
        "operating_point": headline["operating_point"],
        "provenance": provenance,
        "splits": splits,
    }
    return write_json_atomic(path, summary)


@dataclass(frozen=True, kw_only=True)
class Proportion:
    """One thresholded proportion of a run summary (sensitivity, specificity, ...).

    Attributes:
        value: the proportion, or ``None`` when undefined.
        ci: its confidence interval, or ``None``.
        numerator: cases counted (e.g. true positives), when recorded.
        denominator: cases it is a proportion of (e.g. positives), when recorded.
    """

    value: float | None
    ci: tuple[float, float] | None = None
    numerator: int | None = None
    denominator: int | None = None


@dataclass(frozen=True, kw_only=True)
class SplitSummary:
    """The headline numbers of one evaluated split, as :func:`update_run_summary` stores them.

    Attributes:
        split: split name (``test``, ``val``, ``external``).
        n: evaluated cases.
        n_positive: positive cases among them.
        n_negative: negative cases.
        auc: the AUC, or ``None`` when undefined.
        auc_ci: DeLong interval on the scale ``delong_scale``, or ``None`` (``auc_note`` says why).
        auc_bootstrap_ci: stratified bootstrap interval, or ``None``.
        auc_note: why an AUC value or interval is missing.
        confidence: level of every interval (0.95 in summaries written before it was recorded).
        delong_scale: ``"logit"`` or ``"auc"`` (``"logit"`` in summaries written before it was recorded).
        threshold: the operating threshold the proportions were computed at.
        threshold_chosen_on: ``validation``, ``given`` or ``default``.
        proportions: ``sensitivity, specificity, accuracy, ppv, npv, f1`` -> :class:`Proportion`.
        cases_failed: cases of the split that could not be scored.
        report: the split's ``report.html``, relative to the summary.
        operating_point: the operating point's plain-JSON form.
    """

    split: str
    n: int | None
    n_positive: int | None
    n_negative: int | None
    auc: float | None
    auc_ci: tuple[float, float] | None
    auc_bootstrap_ci: tuple[float, float] | None
    auc_note: str | None
    confidence: float
    delong_scale: str
    threshold: float | None
    threshold_chosen_on: str | None
    proportions: dict[str, Proportion]
    cases_failed: int | None
    report: str | None
    operating_point: dict[str, Any] | None

    def proportion(self, name: str) -> Proportion:
        """One of :data:`_SUMMARY_PROPORTIONS` (an undefined one when the summary lacks it)."""
        return self.proportions.get(name) or Proportion(value=None)

    def eval_metrics(self) -> dict[str, Any]:
        """The numbers as MONAI bundle metadata's ``eval_metrics`` carries them (the summary's own values)."""
        out: dict[str, Any] = {
            "split": self.split,
            "n": self.n,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "auc": self.auc,
            "auc_ci": list(self.auc_ci) if self.auc_ci else None,
            "auc_bootstrap_ci": list(self.auc_bootstrap_ci) if self.auc_bootstrap_ci else None,
            "confidence": self.confidence,
            "delong_scale": self.delong_scale,
            "threshold": self.threshold,
        }
        for name in ("sensitivity", "specificity"):
            estimate = self.proportion(name)
            out[name] = estimate.value
            out[f"{name}_ci"] = list(estimate.ci) if estimate.ci else None
        return out


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """A run's ``metrics.json`` (written by :func:`update_run_summary`), read by :func:`read_run_summary`.

    Attributes:
        source: the file it was read from (``None`` for a mapping).
        split: the headline split (``test`` when evaluated).
        splits: every evaluated split.
        operating_point: the headline split's operating point.
        provenance: checkpoint digest, datalist, network name ... (may hold local paths: never copy it into
            anything shared).
    """

    source: Path | None
    split: str
    splits: dict[str, SplitSummary]
    operating_point: dict[str, Any] | None
    provenance: dict[str, Any]

    @property
    def headline(self) -> SplitSummary:
        """The headline split's numbers."""
        return self.splits[self.split]


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _count(value: Any) -> int | None:
    return int(value) if _is_number(value) and float(value).is_integer() else None


def _split_summary(name: str, raw: Mapping[str, Any]) -> SplitSummary:
    proportions = {}
    for metric in _SUMMARY_PROPORTIONS:
        count = raw.get(f"{metric}_count")
        numerator = denominator = None
        if isinstance(count, (list, tuple)) and len(count) == 2:
            numerator, denominator = _count(count[0]), _count(count[1])
        proportions[metric] = Proportion(
            value=_number(raw.get(metric)),
            ci=_pair(raw.get(f"{metric}_ci")),
            numerator=numerator,
            denominator=denominator,
        )
    operating_point = raw.get("operating_point")
    return SplitSummary(
        split=name,
        n=_count(raw.get("n")),
        n_positive=_count(raw.get("n_positive")),
        n_negative=_count(raw.get("n_negative")),
        auc=_number(raw.get("auc")),
        auc_ci=_pair(raw.get("auc_ci")),
        auc_bootstrap_ci=_pair(raw.get("auc_bootstrap_ci")),
        auc_note=str(raw["auc_note"]) if raw.get("auc_note") else None,
        confidence=_number(raw.get("confidence")) or 0.95,
        delong_scale=str(raw.get("delong_scale") or "logit"),
        threshold=_number(raw.get("threshold")),
        threshold_chosen_on=str(raw["threshold_chosen_on"]) if raw.get("threshold_chosen_on") else None,
        proportions=proportions,
        cases_failed=_count(raw.get("cases_failed")),
        report=str(raw["report"]) if raw.get("report") else None,
        operating_point=dict(operating_point) if isinstance(operating_point, Mapping) else None,
    )


def read_run_summary(source: str | os.PathLike | Mapping[str, Any]) -> RunSummary:
    """Read a run's ``metrics.json``: the one reader of the format :func:`update_run_summary` writes.

    Args:
        source: the file, or its parsed content.

    Returns:
        The :class:`RunSummary`.

    Raises:
        UserError: a missing or unreadable file, or one that is not a run summary (e.g. the per-split
            ``eval_<split>/metrics.json`` of the full report, which is named in the message).
    """
    path = None if isinstance(source, Mapping) else Path(source)
    name = str(path) if path is not None else "run summary"
    if path is not None:
        if not path.is_file():
            raise UserError(f"{path}: run summary (metrics.json) not found; evaluate the run first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: run summary is not readable JSON ({err})") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise UserError(f"{name}: a run summary must be a JSON object")
    if "primary_split" in data and "split" not in data:
        raise UserError(
            f"{name}: this is the full report of one split (eval_<split>/metrics.json); pass the run's own "
            "metrics.json, which the evaluation writes in the run folder"
        )
    splits_raw = data.get("splits")
    if not isinstance(splits_raw, Mapping) or not splits_raw:
        raise UserError(f"{name}: not a run summary (no 'splits'); it is written by the evaluation of a run")
    splits = {str(k): _split_summary(str(k), v) for k, v in splits_raw.items() if isinstance(v, Mapping)}
    headline = str(data.get("split") or ("test" if "test" in splits else next(iter(splits))))
    if headline not in splits:
        raise UserError(f"{name}: headline split {headline!r} has no entry under 'splits'")
    provenance = data.get("provenance")
    operating_point = data.get("operating_point")
    return RunSummary(
        source=path,
        split=headline,
        splits=splits,
        operating_point=dict(operating_point) if isinstance(operating_point, Mapping) else None,
        provenance=dict(provenance) if isinstance(provenance, Mapping) else {},
    )


class DeLongAUCHandler:
    """Per-epoch validation AUC with its DeLong standard error and confidence interval.

    Put it in the validation evaluator's ``val_handlers`` *before* ``TensorBoardStatsHandler`` / ``StatsHandler``
    (handlers run in the order they are attached), so those log the added metrics too::

        {"_target_": "pipeline.evaluation.handlers.DeLongAUCHandler", "metric_name": "val_auc"}

    It adds ``<metric_name>_se``, ``<metric_name>_ci_lower`` and ``<metric_name>_ci_upper`` to
    ``engine.state.metrics`` (NaN when undefined, e.g. a class absent or a perfect separation) and
    ``<metric_name>`` itself when no ``ROCAUC`` has set it. The DeLong variance is
    :func:`~pipeline.evaluation.roc.delong_covariance` (Sun & Xu's fast algorithm); the interval is on the logit
    scale by default, as in the evaluation report (``delong_scale="auc"``: R pROC's AUC ± z·SE).

    Args:
        metric_name: name of the AUC metric (``val_auc`` in ``train.json``).
        positive_index: channel of the positive class in ``pred``.
        confidence: two-sided level of the interval.
        delong_scale: ``"logit"`` or ``"auc"``, see :func:`~pipeline.evaluation.roc.delong_ci`.
        output_transform: extracts ``(preds, labels)`` from ``engine.state.output`` (as for MONAI's ``ROCAUC``).
        history_path: JSON file rewritten (atomically) after every epoch with the AUC, SE and CI of each epoch.
        save_rank: the rank that logs and writes the history.

    Attributes:
        history: one dict per epoch: ``epoch, auc, se, ci_lower, ci_upper, n_positive, n_negative, reason``.
    """

    def __init__(
        self,
        *,
        metric_name: str = "val_auc",
        positive_index: int = 1,
        confidence: float = 0.95,
        delong_scale: DeLongScale = "logit",
        output_transform: Callable[[Any], Any] = from_engine(["pred", "label"]),
        history_path: str | os.PathLike | None = None,
        save_rank: int = 0,
    ) -> None:
        if delong_scale not in DELONG_SCALES:
            raise UserError(f"unknown DeLong scale {delong_scale!r} (use {' or '.join(DELONG_SCALES)})")
        self.delong_scale = delong_scale
        self.metric_name = metric_name
        self.positive_index = int(positive_index)
        self.confidence = float(confidence)
        self.output_transform = output_transform
        self.history_path = Path(history_path) if history_path is not None else None
        self.save_rank = int(save_rank)
        self.history: list[dict[str, Any]] = []
        self._scores: list[float] = []
        self._labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator's epoch and iteration events."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _reset(self, engine: Engine) -> None:
        self._scores, self._labels = [], []

    def _collect(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        for pred, label in zip(preds, labels, strict=True):
            index = _label_index(label)
            if index is None:
                continue
            self._scores.append(_positive_score(pred, self.positive_index))
            self._labels.append(int(index == self.positive_index))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        scores, labels = self._scores, self._labels
        if idist.get_world_size() > 1:
            # ranks hold different numbers of cases; MONAI pads, gathers and trims them back
            device = idist.device()
            scores = evenly_divisible_all_gather(torch.tensor(scores, dtype=torch.float64, device=device)).cpu()
            labels = evenly_divisible_all_gather(torch.tensor(labels, dtype=torch.int64, device=device)).cpu()
        return np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)

    def compute(self, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """AUC, DeLong SE and CI of one epoch's cases; undefined values are NaN and ``reason`` says why.

        Args:
            labels: 0/1 truth.
            scores: positive-class probabilities.

        Returns:
            ``{"auc", "se", "ci_lower", "ci_upper", "n_positive", "n_negative", "reason"}``.
        """
        n_positive = int(labels.sum())
        out: dict[str, Any] = {
            "auc": math.nan,
            "se": math.nan,
            "ci_lower": math.nan,
            "ci_upper": math.nan,
            "n_positive": n_positive,
            "n_negative": int(labels.size - n_positive),
            "reason": None,
        }
        try:
            out["auc"] = roc_auc(labels, scores)
            out["se"] = float(delong_covariance(labels, scores)[1][0, 0]) ** 0.5
            out["ci_lower"], out["ci_upper"] = delong_ci(
                labels, scores, confidence=self.confidence, scale=self.delong_scale
            )
        except UndefinedStatisticError as err:
            out["reason"] = str(err)
        return out

    def _completed(self, engine: Engine) -> None:
        labels, scores = self._gathered()
        result = self.compute(labels, scores)
        metrics = engine.state.metrics
        if self.metric_name not in metrics:
            metrics[self.metric_name] = result["auc"]
        for key in ("se", "ci_lower", "ci_upper"):
            metrics[f"{self.metric_name}_{key}"] = result[key]
        if idist.get_rank() != self.save_rank:
            return
        epoch = int(engine.state.epoch)
        ci = None if math.isnan(result["ci_lower"]) else (result["ci_lower"], result["ci_upper"])
        auc = None if math.isnan(result["auc"]) else result["auc"]
        logger.info(
            "epoch %d: %s %s, DeLong; %d positive, %d negative%s",
            epoch,
            self.metric_name,
            format_auc(auc, ci, confidence=self.confidence),
            result["n_positive"],
            result["n_negative"],
            f" ({result['reason']})" if result["reason"] else "",
        )
        # a resumed run re-validates from a later epoch: keep the earlier epochs, replace any repeated one
        self.history = [row for row in self.history if row["epoch"] < epoch]
        if not self.history and self.history_path is not None and self.history_path.is_file():
            try:
                saved = json.loads(self.history_path.read_text(encoding="utf-8")).get("epochs", [])
                self.history = [row for row in saved if int(row["epoch"]) < epoch]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.history = []
        self.history.append({"epoch": epoch, **{k: (None if _is_nan(v) else v) for k, v in result.items()}})
        if self.history_path is not None:
            write_json_atomic(
                self.history_path,
                {
                    "metric": self.metric_name,
                    "confidence": self.confidence,
                    "delong_scale": self.delong_scale,
                    "epochs": self.history,
                },
            )


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
