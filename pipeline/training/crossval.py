"""``aamct crossval``: k-fold cross-validation of the AAM-ResNet against baselines, through the bundle, resumable.

For every network (the reference AAM-ResNet first, then the baselines) and every fold ``k`` of the datalist:

1. train with the bundle, ``python -m monai.bundle run training --config_file bundle/configs/train.json --fold k
   --network_name NAME --output_dir OUT/NAME/fold_k`` (fold ``k`` is the validation fold that picks the best epoch);
2. evaluate the held-out fold with ``evaluate.json`` merged over ``train.json`` (``--split val``), which writes
   ``OUT/NAME/fold_k/eval_val/predictions.csv``, its report and the fold's frozen operating point.

Each step runs in a subprocess (the default: a crash or a memory leak stays in that fold, and its log goes to
``fold_k/training.log`` / ``evaluation.log``) or in this process (``--launcher inprocess``, which saves the interpreter
start-up on small runs). A step whose outputs exist is skipped, so an interrupted cross-validation continues where
it stopped: a finished training leaves ``fold_k/training_done.json``, an unfinished one with a last checkpoint is
resumed (``--resume true``), and an evaluation is redone only if the checkpoint is newer than its predictions.

Then the out-of-fold predictions of every network are pooled (``OUT/NAME/oof_predictions.csv``), each network gets
the full evaluation report over them (``OUT/NAME/cv_report/``: per-fold metrics, mean ± sd, cross-validated mean ROC
with the fold spread), and ``OUT/crossval_report/`` compares each baseline with the reference: per-fold AUCs, the
paired t-test and the Nadeau-Bengio corrected resampled t-test over folds, and the paired DeLong test on the pooled
out-of-fold predictions (``report.html``, ``crossval.json``, ``per_fold.csv``, ``summary.csv``,
``comparisons.csv``, ``figures/cv_roc_models.png``).

The statistics are :func:`~pipeline.evaluation.crossval.compare_cross_validated_models` and
:func:`~pipeline.evaluation.report.evaluate_predictions`; this module only orchestrates runs and files.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import UserError

__all__ = [
    "DEFAULT_NETWORKS",
    "CrossValResult",
    "CrossValSettings",
    "FoldRun",
    "bundle_command",
    "collect_out_of_fold",
    "register",
    "run_crossval",
    "write_crossval_report",
]

logger = logging.getLogger(__name__)

#: the reference AAM-ResNet (train.json's default network) first, then the baselines it is compared with
DEFAULT_NETWORKS: tuple[str, ...] = ("aam_resnet18", "densenet121", "unet_encoder", "resnet50")

_REPO_ROOT = Path(__file__).resolve().parents[2]
_TRAINING_MARKER = "training_done.json"
_OOF_SPLIT = "out-of-fold"


@dataclass(frozen=True, kw_only=True)
class CrossValSettings:
    """Everything a cross-validation run needs.

    Attributes:
        datalist: the datalist JSON (with ``n_folds`` and a ``fold`` per training entry).
        out_dir: root of the runs and reports.
        networks: registry names; the first is the reference unless ``reference`` says otherwise.
        reference: the network every other one is compared with.
        folds: folds to run (default all of the datalist's).
        bundle_root: the bundle folder (``configs/train.json``, ``configs/evaluate.json``, ``configs/metadata.json``).
        overrides: ``--key value`` pairs passed to training and evaluation alike (e.g. ``epochs``, ``roi_size``;
            the preprocessing settings must match between the two, which is why they share this dict).
        launcher: ``"subprocess"`` or ``"inprocess"``.
        n_resamples: bootstrap resamples of every report.
        seed: seed of the bootstraps.
    """

    datalist: Path
    out_dir: Path
    networks: tuple[str, ...] = DEFAULT_NETWORKS
    reference: str | None = None
    folds: tuple[int, ...] | None = None
    bundle_root: Path = _REPO_ROOT / "bundle"
    overrides: Mapping[str, str] = field(default_factory=dict)
    launcher: Literal["subprocess", "inprocess"] = "subprocess"
    n_resamples: int = 2000
    seed: int = 0

    @property
    def reference_network(self) -> str:
        """The reference network's name."""
        return self.reference or self.networks[0]

    @property
    def train_config(self) -> Path:
        """``configs/train.json`` of the bundle."""
        return self.bundle_root / "configs" / "train.json"

    @property
    def evaluate_config(self) -> Path:
        """``configs/evaluate.json`` of the bundle."""
        return self.bundle_root / "configs" / "evaluate.json"

    @property
    def meta_file(self) -> Path:
        """``configs/metadata.json`` of the bundle."""
        return self.bundle_root / "configs" / "metadata.json"

    def run_dir(self, network: str, fold: int) -> Path:
        """``OUT/<network>/fold_<k>``."""
        return self.out_dir / network / f"fold_{fold}"


@dataclass(kw_only=True)
class FoldRun:
    """What happened to one (network, fold).

    Attributes:
        network: registry name.
        fold: fold number.
        run_dir: its run folder.
        trained: whether training ran now (``False``: skipped, outputs existed).
        evaluated: whether evaluation ran now.
        train_seconds: wall time of the training step (0 when skipped).
        eval_seconds: wall time of the evaluation step (0 when skipped).
    """

    network: str
    fold: int
    run_dir: Path
    trained: bool = False
    evaluated: bool = False
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class CrossValResult:
    """The outcome of :func:`run_crossval`.

    Attributes:
        runs: one :class:`FoldRun` per (network, fold).
        out_of_fold: pooled out-of-fold predictions per network.
        report_paths: files of the cross-validation report.
    """

    runs: list[FoldRun]
    out_of_fold: dict[str, Any]
    report_paths: dict[str, Path]


# ---------------------------------------------------------------------------------------------------- the runs


def bundle_command(
    settings: CrossValSettings, run_id: Literal["training", "evaluating"], *, network: str, fold: int, **extra: Any
) -> list[str]:
    """The ``python -m monai.bundle run ...`` command of one step, exactly as a user would type it.

    Args:
        settings: the cross-validation settings.
        run_id: ``"training"`` or ``"evaluating"``.
        network: registry name.
        fold: the fold.
        **extra: further ``--key value`` overrides (e.g. ``split="val"``, ``resume="true"``).

    Returns:
        The argument list.
    """
    if run_id == "training":
        config = str(settings.train_config)
    else:
        config = repr([str(settings.train_config), str(settings.evaluate_config)])
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        config,
        "--meta_file",
        str(settings.meta_file),
        "--bundle_root",
        str(settings.bundle_root),
        "--datalist",
        str(settings.datalist),
        "--fold",
        str(fold),
        "--network_name",
        network,
        "--output_dir",
        str(settings.run_dir(network, fold)),
    ]
    for key, value in {**settings.overrides, **{k: str(v) for k, v in extra.items()}}.items():
        command += [f"--{key}", str(value)]
    return command


def _literal(text: str) -> Any:
    """A command-line value as python-fire would pass it (numbers and lists parsed, anything else a string)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _last_error_line(log: Path) -> str | None:
    if not log.is_file():
        return None
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("aamct: error:"):
            return line[len("aamct: error:") :].strip()
    return None


def _run_step(settings: CrossValSettings, command: list[str], *, log: Path, what: str) -> float:
    """Run one bundle step and return its wall time; a failure becomes a one-line :class:`UserError`."""
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    if settings.launcher == "inprocess":
        _run_in_process(command, what=what)
        return time.perf_counter() - start
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        reason = _last_error_line(log) or f"exited with status {completed.returncode}"
        raise UserError(f"{what} failed: {reason} (log: {log})")
    return time.perf_counter() - start


def _run_in_process(command: list[str], *, what: str) -> None:
    """Run a :func:`bundle_command` through ``monai.bundle.run`` in this interpreter."""
    from monai.bundle import run as bundle_run

    run_id = command[4]
    options: dict[str, Any] = {}
    rest = command[5:]
    for key, value in zip(rest[0::2], rest[1::2], strict=True):
        options[key.removeprefix("--")] = value
    config_file = _literal(options.pop("config_file"))
    meta_file = options.pop("meta_file")
    overrides = {
        key: _literal(value) if key not in ("datalist", "output_dir", "bundle_root") else value
        for key, value in options.items()
    }
    try:
        # logging_file=False: the bundle's logging.conf must not reconfigure the calling process
        bundle_run(run_id, config_file=config_file, meta_file=meta_file, logging_file=False, **overrides)
    except SystemExit as err:  # the bundle's one-line user errors
        message = str(err.code or "").removeprefix("aamct: error:").strip()
        raise UserError(f"{what} failed: {message or 'the bundle run stopped'}") from None


def _evaluation_is_current(run_dir: Path) -> bool:
    predictions = run_dir / "eval_val" / "predictions.csv"
    checkpoint = run_dir / "models" / "model.pt"
    return (
        predictions.is_file()
        and (run_dir / "eval_val" / "metrics.json").is_file()
        and checkpoint.is_file()
        and predictions.stat().st_mtime >= checkpoint.stat().st_mtime
    )


def run_fold(settings: CrossValSettings, network: str, fold: int) -> FoldRun:
    """Train and evaluate one (network, fold), skipping whatever is already done.

    Args:
        settings: the cross-validation settings.
        network: registry name.
        fold: the fold.

    Returns:
        The :class:`FoldRun`.

    Raises:
        UserError: a step failed (the message names the step and its log).
    """
    from pipeline.io import write_json_atomic

    run_dir = settings.run_dir(network, fold)
    record = FoldRun(network=network, fold=fold, run_dir=run_dir)
    marker = run_dir / _TRAINING_MARKER
    if not marker.is_file():
        extra: dict[str, Any] = {}
        if (run_dir / "models" / "checkpoint_last.pt").is_file():
            extra["resume"] = "true"
            logger.info("%s fold %d: resuming the interrupted training", network, fold)
        else:
            logger.info("%s fold %d: training", network, fold)
        command = bundle_command(settings, "training", network=network, fold=fold, **extra)
        record.train_seconds = _run_step(
            settings, command, log=run_dir / "training.log", what=f"{network} fold {fold} training"
        )
        if not (run_dir / "models" / "model.pt").is_file():
            raise UserError(f"{network} fold {fold} training wrote no {run_dir / 'models' / 'model.pt'}")
        write_json_atomic(
            marker,
            {"network": network, "fold": fold, "seconds": record.train_seconds, "overrides": dict(settings.overrides)},
        )
        record.trained = True
    else:
        logger.info("%s fold %d: trained already (%s), skipping training", network, fold, marker)
    if not _evaluation_is_current(run_dir):
        logger.info("%s fold %d: evaluating the held-out fold", network, fold)
        command = bundle_command(
            settings, "evaluating", network=network, fold=fold, split="val", n_resamples=settings.n_resamples
        )
        record.eval_seconds = _run_step(
            settings, command, log=run_dir / "evaluation.log", what=f"{network} fold {fold} evaluation"
        )
        record.evaluated = True
    else:
        logger.info("%s fold %d: evaluated already, skipping evaluation", network, fold)
    return record


# ------------------------------------------------------------------------------------------------- the report


def collect_out_of_fold(settings: CrossValSettings, network: str, folds: Sequence[int]) -> Any:
    """Pool a network's held-out-fold predictions into one table (written to ``OUT/<network>/oof_predictions.csv``).

    Args:
        settings: the cross-validation settings.
        network: registry name.
        folds: the folds to pool.

    Returns:
        A DataFrame with ``case_id, label, probability, site, split, fold, status, reason, network``.

    Raises:
        UserError: a fold's predictions are missing.
    """
    import pandas as pd

    from pipeline.io import write_csv_atomic

    frames = []
    for fold in folds:
        path = settings.run_dir(network, fold) / "eval_val" / "predictions.csv"
        if not path.is_file():
            raise UserError(f"{path}: out-of-fold predictions missing (run the fold first)")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame["fold"] = str(fold)
        frames.append(frame)
    pooled = pd.concat(frames, ignore_index=True)
    pooled["split"] = _OOF_SPLIT
    pooled["network"] = network
    columns = ["case_id", "label", "probability", "site", "split", "fold", "status", "reason", "network"]
    pooled = pooled[[c for c in columns if c in pooled.columns]]
    write_csv_atomic(settings.out_dir / network / "oof_predictions.csv", pooled)
    return pooled


def _test_train_ratio(datalist: Mapping[str, Any], folds: Sequence[int]) -> float:
    """Mean ``n_val / n_train`` over the folds run, for the Nadeau-Bengio correction (1/(J-1) for equal folds)."""
    training = datalist.get("training", [])
    ratios = []
    for fold in folds:
        n_val = sum(1 for item in training if int(item["fold"]) == fold)
        n_train = len(training) - n_val
        if n_val and n_train:
            ratios.append(n_val / n_train)
    if not ratios:
        raise UserError("no fold has both training and validation cases")
    return float(sum(ratios) / len(ratios))


def _paired_frames(
    frames: Mapping[str, Any], names: tuple[str, str], class_names: Sequence[str]
) -> tuple[Any, Any, int]:
    """Both networks' accepted cases with 0/1 labels and numeric folds, restricted to the cases both scored."""
    import pandas as pd

    from pipeline.evaluation.checks import binary_truth

    prepared = []
    for name in names:
        frame = frames[name]
        ok = frame[(frame["status"].str.lower().isin(["", "ok"])) & (frame["label"] != "")].copy()
        ok["label"] = binary_truth(ok["label"], classes=class_names, source=f"{name} out-of-fold predictions")
        ok["probability"] = pd.to_numeric(ok["probability"])
        ok["fold"] = ok["fold"].astype(int)
        prepared.append(ok)
    common = set(prepared[0]["case_id"]) & set(prepared[1]["case_id"])
    dropped = len(set(prepared[0]["case_id"]) ^ set(prepared[1]["case_id"]))
    a, b = (frame[frame["case_id"].isin(common)].reset_index(drop=True) for frame in prepared)
    return a, b, dropped


def write_crossval_report(
    out_of_fold: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    reference: str,
    class_names: Sequence[str] = ("negative", "positive"),
    test_train_ratio: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Path]:
    """Per-network out-of-fold reports and the comparison of every network with the reference.

    Args:
        out_of_fold: network -> pooled out-of-fold predictions (columns as :func:`collect_out_of_fold` writes).
        out_dir: the cross-validation root; reports go to ``<out_dir>/<network>/cv_report`` and
            ``<out_dir>/crossval_report``.
        reference: the network the others are compared with.
        class_names: the two class names, negative first.
        test_train_ratio: ``n_test / n_train`` per fold for the Nadeau-Bengio test (default ``1/(J-1)``).
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The written paths (``html``, ``json``, ``per_fold``, ``summary``, ``comparisons``, ``figure``, and
        ``report:<network>`` for each network's report).

    Raises:
        UserError: the reference has no predictions.
    """
    import pandas as pd

    from pipeline.evaluation.crossval import compare_cross_validated_models
    from pipeline.evaluation.plots import plot_cv_roc_comparison
    from pipeline.evaluation.report import evaluate_predictions, write_report
    from pipeline.io import write_csv_atomic, write_json_atomic, write_text_atomic

    if reference not in out_of_fold:
        raise UserError(f"reference network {reference!r} has no out-of-fold predictions")
    root = Path(out_dir)
    target = root / "crossval_report"
    target.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    per_fold_rows, summary_rows, reports = [], [], {}
    for network, frame in out_of_fold.items():
        report = evaluate_predictions(
            frame.drop(columns=["network"], errors="ignore"), classes=class_names, n_resamples=n_resamples, seed=seed
        )
        written = write_report(report, root / network / "cv_report", title=f"aamct cross-validation: {network}")
        paths[f"report:{network}"] = written["html"]
        reports[network] = report
        if report.cross_validation is not None:
            per_fold_rows.append(report.cross_validation.assign(network=network))
            summary_rows.append(report.cross_validation_summary.assign(network=network))
    per_fold = pd.concat(per_fold_rows, ignore_index=True) if per_fold_rows else pd.DataFrame()
    summary = pd.concat(summary_rows, ignore_index=True) if summary_rows else pd.DataFrame()
    if not per_fold.empty:
        per_fold = per_fold[["network", *[c for c in per_fold.columns if c != "network"]]]
        summary = summary[["network", *[c for c in summary.columns if c != "network"]]]

    comparisons, comparison_rows = {}, []
    for network in out_of_fold:
        if network == reference:
            continue
        key = f"{reference} vs {network}"
        ref_frame, other_frame, dropped = _paired_frames(out_of_fold, (reference, network), class_names)
        try:
            result = compare_cross_validated_models(
                ref_frame, other_frame, names=(reference, network), metric="auc", test_train_ratio=test_train_ratio
            )
        except UserError as err:
            comparisons[key] = {"reason": str(err), "cases_not_scored_by_both": dropped}
            comparison_rows.append({"reference": reference, "baseline": network, "test": "all", "note": str(err)})
            continue
        entry = result.to_dict()
        entry["cases_not_scored_by_both"] = dropped
        comparisons[key] = entry
        for test in result.tests.values():
            comparison_rows.append(
                {
                    "reference": reference,
                    "baseline": network,
                    "test": test.name,
                    "statistic": test.t,
                    "df": test.df,
                    "p_two_sided": test.p_two_sided,
                    "p_one_sided_reference_better": test.p_one_sided,
                    "difference": test.mean_difference,
                    "note": test.reason or "",
                }
            )
        pooled = result.pooled_delong
        comparison_rows.append(
            {
                "reference": reference,
                "baseline": network,
                "test": "paired DeLong, pooled out-of-fold",
                "statistic": pooled.z if pooled else None,
                "df": None,
                "p_two_sided": pooled.p_value if pooled else None,
                "p_one_sided_reference_better": None,
                "difference": pooled.difference if pooled else None,
                "note": result.pooled_delong_reason or "",
            }
        )
    comparison_table = pd.DataFrame(comparison_rows)

    figure_models = {name: [(y, p) for _, y, p in rep.cv_folds] for name, rep in reports.items() if rep.cv_folds}
    if figure_models:
        try:
            paths["figure"] = plot_cv_roc_comparison(target / "figures" / "cv_roc_models.png", figure_models)
        except UserError as err:
            logger.warning("cross-validated ROC comparison not drawn: %s", err)
    paths["per_fold"] = write_csv_atomic(target / "per_fold.csv", per_fold)
    paths["summary"] = write_csv_atomic(target / "summary.csv", summary)
    paths["comparisons"] = write_csv_atomic(target / "comparisons.csv", comparison_table)
    payload = {
        "reference": reference,
        "networks": list(out_of_fold),
        "class_names": list(class_names),
        "test_train_ratio": test_train_ratio,
        "threshold_note": "per-fold sensitivity, specificity and accuracy use the default threshold 0.5 on "
        "out-of-fold probabilities; AUC and Brier score are threshold-free",
        "per_network": {name: rep.to_dict() for name, rep in reports.items()},
        "comparisons": comparisons,
    }
    paths["json"] = write_json_atomic(target / "crossval.json", payload)
    paths["html"] = write_text_atomic(
        target / "report.html", _crossval_html(reference, reports, per_fold, summary, comparison_table, paths)
    )
    return paths


def _crossval_html(reference, reports, per_fold, summary, comparisons, paths) -> str:
    import pandas as pd

    # the single-run report's HTML helpers, so both reports look alike
    from pipeline.evaluation.report import _CSS, _e, _image, _table

    def number(value, digits=3):
        return "undefined" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>aamct cross-validation</title><style>{_CSS}</style></head><body>",
        "<h1>Cross-validation: AAM-ResNet against baselines</h1>",
        f"<p>Reference network: <b>{_e(reference)}</b>. Every network was trained through the bundle on the same "
        "folds and evaluated on each held-out fold; the statistics below use those out-of-fold predictions.</p>",
        "<h2>Mean \u00b1 SD over folds</h2>",
    ]
    if not summary.empty:
        rows = []
        for network in reports:
            part = summary[summary["network"] == network].set_index("metric")
            rows.append(
                [network]
                + [
                    "undefined"
                    if metric not in part.index or pd.isna(part.loc[metric, "mean"])
                    else f"{part.loc[metric, 'mean']:.3f} \u00b1 {number(part.loc[metric, 'sd'])}"
                    for metric in ("auc", "sensitivity", "specificity", "accuracy", "brier")
                ]
            )
        parts.append(_table(["Network", "AUC", "Sensitivity", "Specificity", "Accuracy", "Brier"], rows))
        parts.append(
            "<p class='muted'>Sensitivity, specificity and accuracy at the default threshold 0.5 (no threshold is "
            "tuned inside cross-validation); AUC and Brier score are threshold-free.</p>"
        )
    if "figure" in paths:
        parts.append("<div class='figs'>" + _image(paths["figure"], "Cross-validated mean ROC per network") + "</div>")
    parts.append("<h2>Per-fold AUC</h2>")
    if not per_fold.empty:
        table = per_fold.pivot_table(index="fold", columns="network", values="auc", aggfunc="first")
        order = [n for n in reports if n in table.columns]
        parts.append(
            _table(["Fold", *order], [[int(f)] + [number(table.loc[f, n]) for n in order] for f in table.index])
        )
    parts.append("<h2>Comparisons with the reference</h2>")
    if comparisons.empty:
        parts.append("<p>Only one network: nothing to compare.</p>")
    else:
        parts.append(
            _table(
                [
                    "Baseline",
                    "Test",
                    "Statistic",
                    "df",
                    "p (two-sided)",
                    "p (one-sided, reference better)",
                    "AUC diff.",
                    "Note",
                ],
                [
                    [
                        r.get("baseline"),
                        r.get("test"),
                        number(r.get("statistic")),
                        "" if r.get("df") is None or pd.isna(r.get("df")) else int(r["df"]),
                        number(r.get("p_two_sided"), 4),
                        number(r.get("p_one_sided_reference_better"), 4),
                        number(r.get("difference")),
                        r.get("note") or "",
                    ]
                    for r in comparisons.to_dict(orient="records")
                ],
                numeric_from=2,
            )
        )
        parts.append(
            "<p class='muted'>The paired t-test treats folds as independent, which they are not (they share "
            "training data); the Nadeau-Bengio corrected resampled t-test inflates the variance by n_test/n_train "
            "for that reason and is the one to quote. The paired DeLong test compares the AUCs of the pooled "
            "out-of-fold predictions of the same cases.</p>"
        )
    parts.append("<h2>Per-network reports</h2><ul>")
    for network in reports:
        parts.append(f"<li><code>{_e(network)}/cv_report/report.html</code></li>")
    parts.append("</ul></body></html>\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------- driver


def run_crossval(settings: CrossValSettings, *, on_fold: Callable[[FoldRun], None] | None = None) -> CrossValResult:
    """Run (or resume) the whole cross-validation and write its report.

    Args:
        settings: the cross-validation settings.
        on_fold: called after each (network, fold), e.g. to print progress.

    Returns:
        The :class:`CrossValResult`.

    Raises:
        UserError: bad settings (unknown network, folds outside the datalist, missing bundle files) or a failed step.
    """
    from pipeline.contracts.datalist import load_datalist, resolve_datalist
    from pipeline.networks import network_spec

    if not settings.networks:
        raise UserError("give at least one network")
    if len(set(settings.networks)) != len(settings.networks):
        raise UserError(f"a network is listed twice: {', '.join(settings.networks)}")
    for name in settings.networks:
        network_spec(name)
    if settings.reference_network not in settings.networks:
        raise UserError(f"reference network {settings.reference_network!r} is not among --networks")
    for path in (settings.train_config, settings.evaluate_config, settings.meta_file):
        if not path.is_file():
            raise UserError(f"{path}: bundle config not found (is --bundle-root the bundle folder?)")
    datalist_path = resolve_datalist(settings.datalist)
    datalist = load_datalist(datalist_path)
    n_folds = int(datalist.get("n_folds") or 1 + max((int(e["fold"]) for e in datalist["training"]), default=-1))
    folds = tuple(settings.folds) if settings.folds is not None else tuple(range(n_folds))
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise UserError(f"{datalist_path}: fold(s) {bad} outside the datalist's folds 0..{n_folds - 1}")
    if len(folds) < 2:
        raise UserError("cross-validation needs at least two folds")
    settings = replace(settings, datalist=Path(datalist_path).resolve())

    runs = []
    for network in settings.networks:
        for fold in folds:
            record = run_fold(settings, network, fold)
            runs.append(record)
            if on_fold is not None:
                on_fold(record)
    out_of_fold = {network: collect_out_of_fold(settings, network, folds) for network in settings.networks}
    paths = write_crossval_report(
        out_of_fold,
        settings.out_dir,
        reference=settings.reference_network,
        class_names=[str(c) for c in datalist["classes"]],
        test_train_ratio=_test_train_ratio(datalist, folds),
        n_resamples=settings.n_resamples,
        seed=settings.seed,
    )
    return CrossValResult(runs=runs, out_of_fold=out_of_fold, report_paths=paths)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _folds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds must be comma-separated integers, got {text!r}") from None


def _override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. epochs=20 or roi_size=[64,64,32]), got {text!r}")
    return key.strip().removeprefix("--"), value.strip()


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``aamct crossval`` to the top-level parser."""
    parser = sub.add_parser(
        "crossval",
        help="k-fold cross-validation of the AAM-ResNet against baselines through the bundle (resumable)",
        description="Train every network on every fold through `python -m monai.bundle run training`, evaluate the "
        "held-out fold through evaluate.json, pool the out-of-fold predictions and write the cross-validation "
        "report: per-fold metrics, mean ± sd, cross-validated mean ROC, paired and Nadeau-Bengio corrected t-tests "
        "and pooled DeLong of each baseline against the reference. Finished folds are skipped on a re-run.",
    )
    parser.add_argument("--datalist", type=Path, required=True, help="datalist JSON (or the manifest CSV beside it)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs and reports)")
    parser.add_argument(
        "--networks",
        type=_names,
        default=DEFAULT_NETWORKS,
        help=f"comma-separated registry names, reference first (default {','.join(DEFAULT_NETWORKS)})",
    )
    parser.add_argument("--reference", help="network the others are compared with (default: the first)")
    parser.add_argument("--folds", type=_folds, help="comma-separated folds to run (default: all of the datalist's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle override for training and evaluation alike, repeatable (e.g. --set epochs=20)",
    )
    parser.add_argument("--bundle-root", type=Path, default=_REPO_ROOT / "bundle", help="bundle folder")
    parser.add_argument(
        "--launcher",
        choices=("subprocess", "inprocess"),
        default="subprocess",
        help="run each bundle step in its own process (default) or in this one",
    )
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.set_defaults(func=_cmd_crossval)


def _cmd_crossval(args: argparse.Namespace) -> int:
    settings = CrossValSettings(
        datalist=args.datalist,
        out_dir=args.out.resolve(),
        networks=tuple(args.networks),
        reference=args.reference,
        folds=args.folds,
        bundle_root=args.bundle_root.resolve(),
        overrides=dict(args.overrides),
        launcher=args.launcher,
        n_resamples=args.n_resamples,
        seed=args.seed,
    )

    def progress(record: FoldRun) -> None:
        steps = []
        steps.append(f"trained in {record.train_seconds:.0f} s" if record.trained else "training skipped")
        steps.append(f"evaluated in {record.eval_seconds:.0f} s" if record.evaluated else "evaluation skipped")
        print(f"{record.network} fold {record.fold}: {', '.join(steps)}", flush=True)

    result = run_crossval(settings, on_fold=progress)
    summary_path = result.report_paths["json"]
    data = json.loads(summary_path.read_text(encoding="utf-8"))
    for network, report in data["per_network"].items():
        cv = report.get("cross_validation") or {}
        auc = next((row for row in cv.get("summary", []) if row["metric"] == "auc"), None)
        if auc and auc["mean"] is not None:
            sd = "undefined" if auc["sd"] is None else f"{auc['sd']:.3f}"
            print(f"{network:<16} AUC {auc['mean']:.3f} ± {sd} over {auc['n_folds_defined']} folds")
    for key, comparison in data["comparisons"].items():
        if "reason" in comparison:
            print(f"{key}: not compared: {comparison['reason']}")
            continue
        tests = comparison["tests"]
        nb = tests["nadeau_bengio"]
        delong = comparison.get("pooled_delong")
        nb_text = "undefined" if nb["p_two_sided"] is None else f"{nb['p_two_sided']:.4g}"
        delong_text = "undefined" if not delong else f"{delong['p_value']:.4g}"
        print(f"{key}: Nadeau-Bengio p = {nb_text}, pooled DeLong p = {delong_text}")
    print(f"report: {result.report_paths['html']}")
    return 0
