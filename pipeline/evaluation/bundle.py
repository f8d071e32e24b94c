"""What ``bundle/configs/evaluate.json`` (bundle id ``evaluating``) calls: the evaluation plan and the run.

``evaluate.json`` is not a standalone file: it is merged over ``train.json``, the model-zoo way, so that evaluation
reuses the training config's network definition, device, class names and, above all, its evaluation chain
``validate#preprocessing`` / ``validate#postprocessing`` with the same ``roi_size`` / ``spacing`` / ``hu_window``
keys (pass the same overrides you trained with)::

    python -m monai.bundle run evaluating \\
        --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']" \\
        --meta_file bundle/configs/metadata.json --bundle_root bundle \\
        --datalist runs/demo/manifest.datalist.json --output_dir runs/demo \\
        [--split test|val|external] [--fold 0] [--checkpoint runs/demo/models/model.pt] [--threshold 0.4]

What a run writes, under ``--output_dir``:

* ``eval_<split>/``: ``predictions.csv`` (one row per case of the split, failed cases with ``status=error``) and the
  full report (``report.html``, ``metrics.json``, ``metrics.csv``, ``per_site.csv``, ``misclassified.csv``,
  ``figures/``);
* ``models/operating_point.json`` (beside the checkpoint): the decision threshold, chosen on the fold's validation
  cases (Youden's J by default) the first time the checkpoint is evaluated and frozen from then on, so test,
  external, inference and export all use the same one; chosen again only for a different checkpoint (its SHA-256 is
  recorded). Evaluating ``--split val`` chooses it on that split directly; ``--threshold T`` fixes it instead;
* ``eval_val/``: the report on the validation fold, a by-product of choosing the threshold;
* ``metrics.json``: the headline numbers (``auc``, ``auc_ci``, ``threshold``, sensitivity, specificity) of the test
  split (or of the split evaluated when there is no test split yet), and every evaluated split under ``splits``.

User mistakes (a missing checkpoint or datalist, an unknown split, an empty split, a validation fold without both
classes) end the run with one ``aamct: error: ...`` line instead of a MONAI traceback.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.contracts.datalist import SELECTIONS, load_datalist, resolve_datalist, select
from pipeline.contracts.failure import fail
from pipeline.contracts.operating_point import operating_point_path, read_operating_point
from pipeline.errors import UserError

__all__ = ["EvaluationPlan", "file_sha256", "prepare_evaluation", "run_evaluators"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvaluationPlan:
    """What an ``evaluating`` run does, decided before any network or dataset is built.

    Attributes:
        datalist_path: the datalist JSON used.
        split: the evaluated selection (``test``, ``val``, ``external``, ``train``, ``train_all``).
        fold: the run's fold (its validation cases choose the threshold).
        class_names: class names, index = integer label.
        entries: datalist entries of the evaluated split.
        threshold_entries: the fold's validation entries when the threshold must be chosen first, else empty.
        needs_threshold_run: whether the validation fold is evaluated first to choose the threshold.
        choose_on_split: whether the threshold is chosen on the evaluated split itself (``split == "val"``).
        threshold: a fixed threshold given by the user, or ``None``.
        checkpoint: the weights evaluated.
        checkpoint_sha256: their digest.
        operating_point_file: where the frozen operating point is read from / written to.
        eval_dir: report folder of the evaluated split.
        threshold_dir: report folder of the validation run that chooses the threshold.
        summary_file: the run's ``metrics.json``.
        provenance: facts stored with the operating point and the summary.
    """

    datalist_path: Path
    split: str
    fold: int
    class_names: list[str]
    entries: list[dict[str, Any]]
    threshold_entries: list[dict[str, Any]] = field(default_factory=list)
    needs_threshold_run: bool = False
    choose_on_split: bool = False
    threshold: float | None = None
    checkpoint: Path
    checkpoint_sha256: str
    operating_point_file: Path
    eval_dir: Path
    threshold_dir: Path
    summary_file: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike, *, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (checkpoints can be hundreds of MB).

    Args:
        path: the file.
        chunk_bytes: read size.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _optional_threshold(value: Any) -> float | None:
    """``--threshold`` as a float in [0, 1], or ``None`` for unset (``null``, ``none`` or an empty string)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--threshold must be a probability between 0 and 1, got {value!r}") from None
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be a probability between 0 and 1, got {value!r}")
    return threshold


def _plan(
    *,
    datalist: str | os.PathLike,
    split: str,
    fold: Any,
    class_names: Sequence[str],
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    operating_point_file: str | os.PathLike | None,
    threshold: Any,
    network_name: str | None,
) -> EvaluationPlan:
    split = str(split).strip().lower()
    if split not in SELECTIONS:
        raise UserError(f"--split {split!r} is not one of {', '.join(SELECTIONS)}")
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise UserError(f"--fold must be a non-negative integer, got {fold!r}")
    fixed = _optional_threshold(threshold)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(
            f"{checkpoint}: checkpoint not found (train the run first, or point --checkpoint at a model.pt)"
        )
    datalist_path = resolve_datalist(datalist)
    data = load_datalist(datalist_path)
    classes = [str(name) for name in data["classes"]]
    if list(class_names) != classes:
        raise UserError(
            f"{datalist_path}: datalist classes {classes} differ from the bundle's class_names {list(class_names)}"
        )
    if len(classes) != 2:
        raise UserError(f"{datalist_path}: the evaluation report is binary, the datalist has classes {classes}")
    entries = select(data, split, fold)
    if not entries:
        raise UserError(f"{datalist_path}: no {split} cases to evaluate (fold {fold})")
    digest = file_sha256(checkpoint)
    op_file = Path(operating_point_file) if operating_point_file else operating_point_path(checkpoint)
    output = Path(output_dir)
    provenance = {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": digest,
        "datalist": str(Path(datalist_path).resolve()),
        "fold": fold,
        "network_name": network_name,
    }

    needs_threshold_run, choose_on_split, threshold_entries = False, False, []
    if fixed is not None:
        logger.info("fixed threshold %.4g given: no threshold is chosen or frozen", fixed)
    elif split == "val":
        choose_on_split = True
    else:
        frozen_for = None
        if op_file.is_file():
            _, frozen = read_operating_point(op_file)
            frozen_for = frozen.get("checkpoint_sha256", digest)
        if frozen_for == digest:
            logger.info("using the operating point frozen in %s", op_file)
        else:
            if frozen_for is not None:
                logger.warning("%s was chosen for another checkpoint: choosing the threshold again", op_file)
            threshold_entries = select(data, "val", fold)
            if not threshold_entries:
                raise UserError(
                    f"{datalist_path}: fold {fold} has no validation cases to choose the threshold on "
                    f"and {op_file} does not exist; give --threshold or --operating_point_file"
                )
            needs_threshold_run = True
    return EvaluationPlan(
        datalist_path=Path(datalist_path),
        split=split,
        fold=fold,
        class_names=classes,
        entries=entries,
        threshold_entries=threshold_entries,
        needs_threshold_run=needs_threshold_run,
        choose_on_split=choose_on_split,
        threshold=fixed,
        checkpoint=checkpoint,
        checkpoint_sha256=digest,
        operating_point_file=op_file,
        eval_dir=output / f"eval_{split}",
        threshold_dir=output / "eval_val",
        summary_file=output / "metrics.json",
        provenance=provenance,
    )


def prepare_evaluation(
    *,
    datalist: str | os.PathLike,
    split: str = "test",
    fold: int = 0,
    class_names: Sequence[str],
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    operating_point_file: str | os.PathLike | None = None,
    threshold: float | str | None = None,
    network_name: str | None = None,
) -> EvaluationPlan:
    """Check an ``evaluating`` run and decide what it does (``evaluate.json``'s ``evaluation`` item).

    Args:
        datalist: datalist JSON, or the manifest CSV it was written beside.
        split: ``test`` (default), ``val`` (the fold's validation cases), ``external``, ``train``, ``train_all``.
        fold: the run's fold.
        class_names: the bundle's class names; must equal the datalist's.
        checkpoint: the weights to evaluate.
        output_dir: the run folder.
        operating_point_file: the frozen operating point (default ``operating_point.json`` beside the checkpoint).
        threshold: a fixed threshold instead of the frozen one.
        network_name: recorded in the provenance.

    Returns:
        The :class:`EvaluationPlan`.

    Raises:
        SystemExit: (one ``aamct: error:`` line) for any problem the user has to fix.
    """
    try:
        return _plan(
            datalist=datalist,
            split=split,
            fold=fold,
            class_names=class_names,
            checkpoint=checkpoint,
            output_dir=output_dir,
            operating_point_file=operating_point_file,
            threshold=threshold,
            network_name=network_name,
        )
    except UserError as err:
        fail(str(err))


def run_evaluators(*evaluators: Any) -> None:
    """Run the given MONAI evaluators in order, skipping ``None`` (a disabled config item).

    Args:
        evaluators: ``SupervisedEvaluator`` objects (or anything with ``run()``), or ``None``.

    Raises:
        SystemExit: (one ``aamct: error:`` line) when a handler reports a user-facing problem (e.g. a validation
            fold lacking a class, so no threshold can be chosen).
    """
    for evaluator in evaluators:
        if evaluator is None:
            continue
        try:
            evaluator.run()
        except UserError as err:
            fail(str(err))
        except RuntimeError as err:  # MONAI's CheckpointLoader: weights of another network (or another width)
            if "Error(s) in loading state_dict" not in str(err):
                raise
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            fail(
                "the checkpoint does not fit the configured network"
                + (f" ({details[0][:160]})" if details else "")
                + "; evaluate it with the network it was trained with (its models/run.json, or --network_name)"
            )
