"""k-fold cross-validation runs of the AAM-ResNet against baselines, through the bundle, resumable.

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

Then the out-of-fold predictions of every network are pooled (``OUT/NAME/oof_predictions.csv``) and handed to the
report writer the caller gives :func:`run_crossval`. That writer is evaluation's
(:func:`pipeline.evaluation.crossval_report.write_crossval_report`: per-network reports, paired and Nadeau-Bengio
t-tests, pooled DeLong); training ranks below evaluation in the data flow and does not import it, so ``aamct
crossval`` (:mod:`pipeline.evaluation.cli`) composes the two. This module only orchestrates runs and files.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from pipeline.errors import UserError

__all__ = [
    "DEFAULT_NETWORKS",
    "CrossValReportWriter",
    "CrossValResult",
    "CrossValSettings",
    "FoldRun",
    "add_crossval_arguments",
    "bundle_command",
    "collect_out_of_fold",
    "describe_fold",
    "run_crossval",
    "settings_from_args",
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


class CrossValReportWriter(Protocol):
    """Writes the report of a cross-validation from its pooled out-of-fold predictions.

    :func:`pipeline.evaluation.crossval_report.write_crossval_report` is the one ``aamct crossval`` passes.
    """

    def __call__(
        self,
        out_of_fold: Mapping[str, Any],
        out_dir: str | os.PathLike,
        *,
        reference: str,
        class_names: Sequence[str],
        test_train_ratio: float | None,
        n_resamples: int,
        seed: int,
    ) -> dict[str, Path]:
        """Write the report under ``out_dir`` and return the written paths (``html`` and ``json`` among them)."""
        ...


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


# ------------------------------------------------------------------------------------------- out-of-fold pooling


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


# ----------------------------------------------------------------------------------------------------- driver


def run_crossval(
    settings: CrossValSettings,
    *,
    write_report: CrossValReportWriter,
    on_fold: Callable[[FoldRun], None] | None = None,
) -> CrossValResult:
    """Run (or resume) the whole cross-validation and write its report.

    Args:
        settings: the cross-validation settings.
        write_report: writes the report from the pooled out-of-fold predictions (evaluation's
            :func:`~pipeline.evaluation.crossval_report.write_crossval_report`; injected, since training does not
            import evaluation).
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
    paths = write_report(
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


def add_crossval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``aamct crossval`` (everything :class:`CrossValSettings` holds) to ``parser``.

    Args:
        parser: the parser to extend.

    Returns:
        The same parser.
    """
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
    return parser


def settings_from_args(args: argparse.Namespace) -> CrossValSettings:
    """The :class:`CrossValSettings` of options parsed by a parser built with :func:`add_crossval_arguments`."""
    return CrossValSettings(
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


def describe_fold(record: FoldRun) -> str:
    """One progress line for a finished (network, fold), e.g. ``resnet50 fold 2: trained in 80 s, evaluated in 9 s``."""
    steps = [
        f"trained in {record.train_seconds:.0f} s" if record.trained else "training skipped",
        f"evaluated in {record.eval_seconds:.0f} s" if record.evaluated else "evaluation skipped",
    ]
    return f"{record.network} fold {record.fold}: {', '.join(steps)}"
