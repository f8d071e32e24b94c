"""MedMNIST v2 3D protocol (train on ``train``, select on ``val``, report ``test``) through the bundle's own code.

Every model is trained and evaluated by the stock MONAI bundle runner on the bundle's configs (``python -m
monai.bundle run ...`` in a child process, as a user types it), so the benchmark measures the product, not a
re-implementation of it::

    npz  ->  NIfTI files (identity affine, 1 mm voxels) + a contract datalist (train rows fold 1, val rows fold 0)
         ->  run training    train.json                    best checkpoint by val AUC
         ->  run distilling  train.json + distill.json     aam_student from the --teacher (default aam_resnet50)
         ->  run evaluating  train.json + evaluate.json    eval_val (Youden threshold) + eval_test

A finished run leaves a record of its settings (the network as built, with the registry's defaults resolved) and is
reused by any later invocation with the same settings; an interrupted training of the same settings resumes from its
last checkpoint.

The MedMNIST volumes are binary masks {0, 255} already isotropic, so the CT-specific settings are overridden:
``spacing [1, 1, 1]`` (the NIfTI files carry 1 mm voxels, so Spacingd is a no-op), ``hu_window [0, 255]``, ``allow_out_of_scope`` (the
chest-scope check does not apply to adrenal masks) and the
bundle's foreground crop (HU > -500) keeps the whole volume. ``roi_size`` defaults to 32³ (the registry's minimum
input size, DenseNet-121's three transitions collapse 28³ to nothing); the 28³ masks are resized by ``Resized``.

Reported per model: per-seed test AUC with its DeLong CI (:func:`pipeline.evaluation.roc.delong_ci`), ACC at 0.5
(softmax probability of the positive class, i.e. the argmax, as MedMNIST reports it) and ACC at the threshold chosen
on ``val`` (Youden's J, the evaluate config's frozen operating point); mean ± sd over seeds; and the paired DeLong
test (:func:`pipeline.evaluation.roc.delong_test`) of the AAM-ResNet and the student against each baseline on the
seed-averaged test probabilities. Own code here is only the orchestration: MONAI has no MedMNIST runner.

The command is :mod:`benchmarks.bench_medmnist` (``python -m benchmarks.bench_medmnist`` from a checkout, and an
entry of ``make bench``); like every benchmark it measures the checkout (its bundle configs, its results folder), so
it lives here and not in the installed ``pipeline`` package.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.store import write_result_json, write_result_text
from pipeline.errors import UserError
from pipeline.io import write_json_atomic

__all__ = [
    "REPO_ROOT",
    "DEFAULT_NPZ",
    "DEFAULT_RESULTS_DIR",
    "DEFAULT_MODELS",
    "BASELINES",
    "ABLATIONS",
    "PROBES",
    "PROBE_DEFAULT_NOTE",
    "VARIANT_SETS",
    "PUBLISHED_ADRENAL_28",
    "PUBLISHED_SOURCE",
    "MedMNISTSettings",
    "load_npz_splits",
    "write_cohort",
    "run_training",
    "run_distillation",
    "run_evaluation",
    "summarize",
    "val_probabilities",
    "val_comparisons",
    "render_markdown",
    "headline",
    "results_stem",
    "run_medmnist",
    "default_work_dir",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = REPO_ROOT.parent / "shared" / "data" / "medmnist" / "adrenalmnist3d.npz"
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
BUNDLE_DIR = REPO_ROOT / "bundle"
CONFIGS = BUNDLE_DIR / "configs"

#: the models of issue 9: the AAM-ResNet teacher, its distilled student and the MedMNIST-style 3D baselines
DEFAULT_MODELS: tuple[str, ...] = ("aam_resnet50", "aam_student", "resnet18", "resnet50", "densenet121")
BASELINES: tuple[str, ...] = ("resnet18", "resnet50", "densenet121")
#: models compared against every baseline with the paired DeLong test (``aam_resnet18``: train.json's default network)
CANDIDATES: tuple[str, ...] = ("aam_resnet50", "aam_student", "aam_resnet18")
#: the table's name of ``aam_student`` trained from scratch (``student_scratch``), compared with the distilled one
SCRATCH_STUDENT = "aam_student (from scratch)"

#: ablation variants of an AAM-ResNet, as registry keyword arguments (``network_def#...`` overrides); the first is
#: the full model (trained from scratch; when it is also in the main table, that run is reused)
ABLATIONS: dict[str, dict[str, Any]] = {
    "full (learned gamma, channel + spatial attention)": {},
    "without gamma (fixed at 1: plain residual sum)": {"learn_gamma": False, "gamma_init": 1.0},
    "without channel attention (spatial branch only)": {"attention_branches": "spatial"},
    "without spatial attention (channel branch only)": {"attention_branches": "channel"},
    "without attention (gamma-scaled residual only)": {"attention": "none"},
    "attention placement: last unit of each stage only": {"attention": "stage"},
}

#: AAM variants probed (one seed, selected on the val split) before the 3-seed table is spent on the winner (issue 14):
#: each is complete over the options the probes vary, so its run does not change when the registry defaults do
_PROBE_BASE: dict[str, Any] = {
    "attention": "block",
    "attention_fusion": "product",
    "attention_spatial": "separable",
    "attention_spatial_stride": 2,
    "gamma_placement": "branch",
    "gamma_init": 0.5,
    "zero_init_residual": False,
}
PROBES: dict[str, dict[str, Any]] = {
    "paper form: product fusion, full ASPP at full resolution, every unit, gamma 0.5": {
        **_PROBE_BASE,
        "attention_spatial": "aspp",
        "attention_spatial_stride": 1,
    },
    "gated fusion (pass-through at init), cheap spatial branch, every unit": {
        **_PROBE_BASE,
        "attention_fusion": "gated",
    },
    "gated fusion, cheap spatial branch, stage ends only": {
        **_PROBE_BASE,
        "attention_fusion": "gated",
        "attention": "stage",
    },
    "zero-init last norm (Goyal et al. 2017), product fusion, cheap spatial branch": {
        **_PROBE_BASE,
        "zero_init_residual": True,
    },
    "gamma on the attention only, init 0 (SAGAN), product fusion, cheap spatial branch": {
        **_PROBE_BASE,
        "gamma_placement": "attention",
        "gamma_init": 0.0,
    },
    "residual fusion x(1 + a) (Wang et al. 2017), cheap spatial branch": {
        **_PROBE_BASE,
        "attention_fusion": "residual",
    },
}
#: why the registry may keep a probe that the val split did not pick (printed under the probes table when it does)
PROBE_DEFAULT_NOTE = (
    "The registry keeps the cheap form on cost: the paper form's spatial branch (full dilated ASPP at full "
    "resolution in every unit) is what puts its aam_resnet50 beyond the 1.25x latency goal of issue 14 "
    "(benchmarks/results/networks.json, `paper_form`); the 3-seed table (medmnist_adrenalmnist3d_aam_resnet18) "
    "measures the registry default."
)
#: the variant tables ``--ablation`` can run (``--variant-set``): run folders are prefixed with the set's name
VARIANT_SETS: dict[str, dict[str, dict[str, Any]]] = {"ablation": ABLATIONS, "probes": PROBES}

PUBLISHED_SOURCE = 'Yang et al., "MedMNIST v2", Scientific Data 2023 (AdrenalMNIST3D test split, 28³)'
#: the published AdrenalMNIST3D rows, as listed in ../shared/data/README.md: (method, AUC, ACC)
PUBLISHED_ADRENAL_28: tuple[tuple[str, float, float], ...] = (
    ("ResNet-18 + 2.5D", 0.718, 0.772),
    ("ResNet-18 + 3D", 0.827, 0.721),
    ("ResNet-18 + ACS", 0.839, 0.754),
    ("ResNet-50 + 2.5D", 0.732, 0.763),
    ("ResNet-50 + 3D", 0.828, 0.745),
    ("ResNet-50 + ACS", 0.828, 0.758),
    ("auto-sklearn", 0.828, 0.802),
    ("AutoKeras", 0.804, 0.705),
)

_SPLITS = ("train", "val", "test")
_CLASSES = ["negative", "positive"]  # the bundle's class_names; positive = adrenal mass


@dataclass(frozen=True, kw_only=True)
class MedMNISTSettings:
    """Settings of one MedMNIST benchmark run.

    Args:
        npz: the MedMNIST ``.npz`` file (keys ``{train,val,test}_{images,labels}``).
        work_dir: NIfTI files, datalist and run folders (checkpoints, caches, reports).
        results_dir: where ``medmnist_<npz stem>.json`` / ``.md`` are written.
        models: registry names; ``aam_student`` is distilled from the same seed's ``aam_resnet50``.
        seeds: the seeds (one training per model and seed).
        epochs: maximum epochs per training (and per distillation stage).
        early_stop_patience: epochs without a better val AUC before stopping.
        batch_size: training and evaluation batch size.
        learning_rate: AdamW learning rate.
        roi_size: network input size, the volumes are resized to it; ``None``: the volumes' own size, at least 32
            (the registry's minimum input: 28³ volumes are resized to 32³, 64³ ones kept).
        limit: at most this many cases per split (class-stratified, for smoke runs); ``None`` uses all.
        num_workers: DataLoader workers.
        n_resamples: bootstrap resamples of the evaluation report.
        ablation: also train the variants of ``ablation_network`` (from scratch) of ``variant_set``.
        ablation_network: the AAM-ResNet the ablation varies.
        student_scratch: also train ``aam_student`` from scratch (row :data:`SCRATCH_STUDENT`, paired DeLong
            against the distilled student).
        ablation_seeds: the seeds of the ablation variants (``None``: all ``seeds``).
        ablation_variants: words selecting variants of the set (a variant runs when its name contains one of
            them, case-insensitively); the set's first variant always runs, as the reference. ``None``: every one.
        variant_set: ``"ablation"`` (:data:`ABLATIONS`) or ``"probes"`` (:data:`PROBES`: the AAM variants of issue
            14, selected on the val split).
        teacher: the distillation teacher of ``aam_student`` (trained from scratch as a model of its own).
        distill_weights: overrides of distill.json's loss weights (``kd_weight``, ``attention_weight``,
            ``hint_weight``, ``temperature``, ``attention_source``) for the distilled student.
        width_multiplier: scales every network's width (AAM-ResNets' ``width``, MONAI ResNets' ``widen_factor``), to
            fit larger volumes in a CPU budget; ``None`` keeps the registry widths.
        distill_stages: the distillation cascade after the ``aam_resnet50`` teacher, ending in ``aam_student``
            (default: the student directly; ``("aam_assistant", "aam_student")`` is the bundle's full cascade).
        lr_schedule: ``"constant"`` or ``"cosine"`` (see :mod:`pipeline.training.schedule`).
        name: the results' file stem (default ``medmnist_<npz stem>``).
        command: the command line, recorded in the results.
    """

    npz: Path = DEFAULT_NPZ
    work_dir: Path = REPO_ROOT / "runs" / "bench_medmnist"
    results_dir: Path = DEFAULT_RESULTS_DIR
    models: tuple[str, ...] = DEFAULT_MODELS
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 8
    early_stop_patience: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    roi_size: tuple[int, int, int] | None = None
    limit: int | None = None
    num_workers: int = 0
    n_resamples: int = 200
    ablation: bool = False
    ablation_network: str = "aam_resnet50"
    student_scratch: bool = False
    ablation_seeds: tuple[int, ...] | None = None
    ablation_variants: tuple[str, ...] | None = None
    variant_set: str = "ablation"
    teacher: str = "aam_resnet50"
    distill_weights: Mapping[str, Any] | None = None
    width_multiplier: float | None = None
    distill_stages: tuple[str, ...] = ("aam_student",)
    lr_schedule: str = "cosine"
    name: str | None = None
    command: str = ""


def load_npz_splits(npz: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST 3D ``.npz`` file.

    Args:
        npz: path of the file.

    Returns:
        ``{"train" | "val" | "test": (images (N, D, H, W) uint8, labels (N,) int64)}``.

    Raises:
        UserError: if the file is missing, unreadable or lacks a split's images or labels.
    """
    path = Path(npz)
    if not path.is_file():
        raise UserError(f"{path}: MedMNIST npz file not found")
    try:
        with np.load(path) as archive:
            keys = set(archive.files)
            missing = [f"{s}_{kind}" for s in _SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in keys]
            if missing:
                raise UserError(f"{path}: not a MedMNIST 3D file, missing {', '.join(missing)}")
            splits = {s: (archive[f"{s}_images"], archive[f"{s}_labels"].reshape(-1).astype(np.int64)) for s in _SPLITS}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the npz file ({err})") from None
    for split, (images, labels) in splits.items():
        if images.ndim != 4 or len(images) != len(labels):
            raise UserError(f"{path}: {split}_images must be (N, D, H, W) with one label each, got {images.shape}")
        if set(np.unique(labels)) - {0, 1}:
            raise UserError(f"{path}: {split}_labels must be binary 0/1")
    return splits


def _stratified_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` cases keeping the class proportions (>= 2 per class, for a defined AUC)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        share = max(2, round(limit * len(members) / len(labels)))
        chosen.append(members[:share])  # the first cases of each class: deterministic, no seed needed
    return np.sort(np.concatenate(chosen))


def write_cohort(npz: str | os.PathLike, out_dir: str | os.PathLike, *, limit: int | None = None) -> Path:
    """Write the npz volumes as NIfTI files and a datalist in the project's contract format.

    MedMNIST ``train`` rows become datalist ``training`` rows with fold 1 and ``val`` rows ``training`` rows with
    fold 0, so the bundle's ``fold 0`` selection trains on ``train`` and validates on ``val``; ``test`` rows go to
    ``test``. Existing NIfTI files are reused (the cohort is written once per work folder).

    Args:
        npz: the MedMNIST ``.npz`` file.
        out_dir: folder of ``images/`` and ``medmnist.datalist.json``.
        limit: at most this many cases per split (class-stratified); ``None`` writes all.

    Returns:
        Path of the datalist JSON.

    Raises:
        UserError: see :func:`load_npz_splits`.
    """
    import nibabel as nib

    npz = Path(npz).resolve()
    splits = load_npz_splits(npz)  # before any folder is made: a bad path leaves nothing behind
    out = Path(out_dir).resolve()
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    datalist: dict[str, Any] = {
        "classes": list(_CLASSES),
        "manifest": str(npz),
        "seed": 0,
        "n_folds": 5,
        "training": [],
        "test": [],
        "external": [],
    }
    for split, (images, labels) in splits.items():
        for index in _stratified_subset(labels, limit):
            case_id = f"{npz.stem}-{split}-{index:04d}"  # MedMNIST indices: no patient identifiers exist here
            image_path = images_dir / f"{case_id}.nii.gz"
            if not image_path.is_file():
                # MedMNIST stores (D, H, W); written as the NIfTI's (i, j, k) with 1 mm voxels, RAS identity affine
                volume = nib.Nifti1Image(np.ascontiguousarray(images[index]).astype(np.uint8), np.eye(4))
                tmp = image_path.with_name(image_path.name + ".tmp.nii.gz")
                nib.save(volume, tmp)
                os.replace(tmp, image_path)
            entry = {
                "image": str(image_path),
                "label": int(labels[index]),
                "case_id": case_id,
                "patient_id": case_id,
                "site": "medmnist",
            }
            if split == "test":
                datalist["test"].append(entry)
            else:
                datalist["training"].append({**entry, "fold": 0 if split == "val" else 1})
    path = out / "medmnist.datalist.json"
    write_json_atomic(path, datalist)
    return path


def _bundle_overrides(settings: MedMNISTSettings, *, datalist: Path, output_dir: Path, seed: int) -> dict[str, Any]:
    """The overrides every bundle run shares: the mask-volume preprocessing and the run's schedule."""
    if settings.roi_size is None:
        raise ValueError("roi_size must be resolved before the bundle runs (run_medmnist does it)")
    return {
        "bundle_root": str(BUNDLE_DIR),
        "datalist": str(datalist),
        "output_dir": str(output_dir),
        "roi_size": list(settings.roi_size),
        "spacing": [1.0, 1.0, 1.0],
        "hu_window": [0.0, 255.0],
        # adrenal shape masks, not chest CT: the loader's chest-scope check would refuse every volume
        "allow_out_of_scope": True,
        "fold": 0,
        "seed": int(seed),
        "epochs": int(settings.epochs),
        "early_stop_patience": int(settings.early_stop_patience),
        "batch_size": int(settings.batch_size),
        "learning_rate": float(settings.learning_rate),
        "lr_schedule": settings.lr_schedule,
        "num_workers": int(settings.num_workers),
        "progress_bar": False,
    }


def _cli_value(value: Any) -> str:
    """An override as the bundle CLI (python-fire) reads it back: Python literals for everything but plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value if not isinstance(value, tuple) else list(value))


def _run_bundle(run_id: str, config_files: Sequence[str], overrides: Mapping[str, Any]) -> float:
    """Run one bundle workflow as ``python -m monai.bundle run`` in a child process; returns its wall seconds.

    A child process, not this one: a benchmark runs for hours while the working tree may change under it, and a
    config read fresh must meet the code read fresh (an in-process run would pair a new config with the code this
    process imported at its start). It is also exactly the command a user types.

    Raises:
        UserError: when the workflow exits non-zero (the message carries its last error line).
    """
    config = str([str(CONFIGS / name) for name in config_files])
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config]
    command += ["--meta_file", str(CONFIGS / "metadata.json")]
    for key, value in overrides.items():
        command += [f"--{key}", _cli_value(value)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # libgomp busy-waits between parallel regions by default, which slows a training several-fold beside any
        # other job on a small machine (see tests/conftest.py); the Makefile sets the same for its bundle runs
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    started = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True) as child:
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())
    if child.returncode != 0:
        last = next((line for line in reversed(tail) if line.strip()), "no error output")
        raise UserError(f"{run_id} of {overrides.get('output_dir', '?')} exited {child.returncode}: {last}")
    return time.perf_counter() - started


def run_training(
    settings: MedMNISTSettings,
    *,
    datalist: Path,
    run_dir: Path,
    network_name: str,
    seed: int,
    network_kwargs: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``network_name`` with ``bundle/configs/train.json`` (best checkpoint by val AUC).

    Args:
        settings: the benchmark settings.
        datalist: the cohort's datalist.
        run_dir: the run's output folder (``models/model.pt``, ``train_history.json``).
        network_name: registry name.
        seed: the run's seed.
        network_kwargs: extra registry arguments (ablations), the config's ``network_kwargs``.
        resume: continue from the run's ``models/checkpoint_last.pt`` (an interrupted run of the same recipe).

    Returns:
        ``{"checkpoint", "train_seconds", "epochs_run", "best_epoch", "val_auc"}``.
    """
    overrides = _bundle_overrides(settings, datalist=datalist, output_dir=run_dir, seed=seed)
    overrides["network_name"] = network_name
    overrides["network_kwargs"] = dict(network_kwargs or {})  # built with them and recorded in models/run.json
    overrides["resume"] = bool(resume)
    seconds = _run_bundle("training", ["train.json"], overrides)
    return {"checkpoint": str(run_dir / "models" / "model.pt"), "train_seconds": seconds, **_history(run_dir)}


def _history(run_dir: Path) -> dict[str, Any]:
    """Epochs run, best epoch and its val AUC (the selection criterion) from the ``EpochSummary`` history."""
    path = run_dir / "train_history.json"
    empty = {"epochs_run": None, "best_epoch": None, "val_auc": None}
    if not path.is_file():
        return empty
    history = json.loads(path.read_text(encoding="utf-8"))
    epochs = history.get("epochs", history) if isinstance(history, dict) else history
    if not isinstance(epochs, list) or not epochs:
        return empty
    scored = [(e.get("val_auc"), e.get("epoch")) for e in epochs if isinstance(e, dict)]
    scored = [(auc, epoch) for auc, epoch in scored if isinstance(auc, (int, float)) and not math.isnan(auc)]
    best = max(scored) if scored else (None, None)
    return {"epochs_run": len(epochs), "best_epoch": best[1], "val_auc": best[0]}


def _epoch_seconds(run_dir: Path) -> float:
    """Sum of the recorded epochs' wall seconds (the training time of a run finished by an earlier process)."""
    path = run_dir / "train_history.json"
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    epochs = history.get("epochs", history) if isinstance(history, dict) else history
    return float(sum(e.get("epoch_seconds") or 0.0 for e in epochs if isinstance(e, dict)))


def run_distillation(
    settings: MedMNISTSettings, *, datalist: Path, run_dir: Path, teacher_ckpt: Path, seed: int
) -> dict[str, Any]:
    """Distil ``aam_student`` from a ``settings.teacher`` checkpoint with ``bundle/configs/distill.json``.

    The cascade is ``settings.distill_stages`` after the teacher (default: the student directly), each stage trained
    for at most ``settings.epochs`` epochs.

    Args:
        settings: the benchmark settings.
        datalist: the cohort's datalist.
        run_dir: the cascade's output folder (the student's weights land in ``models/model.pt``).
        teacher_ckpt: the teacher's best checkpoint.
        seed: the run's seed.

    Returns:
        ``{"checkpoint", "train_seconds", "cascade", "val_auc"}`` (``cascade``: the stages' summary entries;
        ``val_auc``: the last stage's best val AUC, its selection criterion).
    """
    overrides = _bundle_overrides(settings, datalist=datalist, output_dir=run_dir, seed=seed)
    overrides.update(
        network_name=settings.teacher,
        teacher_ckpt=str(teacher_ckpt),
        stages=list(settings.distill_stages),
        latency_repeats=1,
        **dict(settings.distill_weights or {}),
    )
    seconds = _run_bundle("distilling", ["train.json", "distill.json"], overrides)
    summary_path = run_dir / "distill_summary.json"
    cascade = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    last_stage = run_dir / settings.distill_stages[-1]
    return {
        "checkpoint": str(run_dir / "models" / "model.pt"),
        "train_seconds": seconds,
        "cascade": cascade,
        "val_auc": _history(last_stage)["val_auc"],
    }


def run_evaluation(
    settings: MedMNISTSettings,
    *,
    datalist: Path,
    run_dir: Path,
    network_name: str,
    checkpoint: Path,
    seed: int,
    network_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``test`` with ``bundle/configs/evaluate.json`` (threshold frozen on ``val``).

    Args:
        settings: the benchmark settings.
        datalist: the cohort's datalist.
        run_dir: the run folder; the reports go to ``eval_val/`` and ``eval_test/`` in it.
        network_name: registry name of the checkpoint's network.
        checkpoint: the weights to evaluate.
        seed: the run's seed (bootstrap resampling).
        network_kwargs: the registry arguments the checkpoint was trained with (ablation variants).

    Returns:
        ``{"case_ids", "labels", "probabilities", "threshold", "acc_at_threshold", "eval_seconds"}``.

    Raises:
        UserError: if the evaluation wrote no predictions or some test cases failed.
    """
    import pandas as pd

    overrides = _bundle_overrides(settings, datalist=datalist, output_dir=run_dir, seed=seed)
    overrides.update(
        network_name=network_name,
        checkpoint=str(checkpoint),
        split="test",
        n_resamples=int(settings.n_resamples),
        roc_band_resamples=int(settings.n_resamples),
    )
    overrides["network_kwargs"] = dict(network_kwargs or {})
    seconds = _run_bundle("evaluating", ["train.json", "evaluate.json"], overrides)
    predictions_path = run_dir / "eval_test" / "predictions.csv"
    if not predictions_path.is_file():
        raise UserError(f"{predictions_path}: the evaluation wrote no predictions")
    frame = pd.read_csv(predictions_path)
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        raise UserError(f"{predictions_path}: {len(failed)} test case(s) failed, first: {failed['reason'].iloc[0]}")
    frame = frame.sort_values("case_id")
    # predictions.csv names the classes; the class list's index is the integer label
    labels = frame["label"].map(_class_index).to_numpy()
    from pipeline.contracts.operating_point import frozen_threshold

    frozen = frozen_threshold(checkpoint)  # the operating_point.json beside the checkpoint
    threshold = None if frozen.is_default else frozen.threshold
    return {
        "case_ids": frame["case_id"].astype(str).tolist(),
        "labels": labels.tolist(),
        "probabilities": frame["probability"].astype(float).tolist(),
        "threshold": threshold,
        "acc_at_threshold": float(np.mean(frame["predicted"].map(_class_index).to_numpy() == labels)),
        "eval_seconds": seconds,
    }


def _class_index(value: Any) -> int:
    """Integer label of a ``predictions.csv`` class (a class name, or already an integer)."""
    text = str(value)
    return _CLASSES.index(text) if text in _CLASSES else int(float(text))


def _auc_and_ci(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[float] | None]:
    from pipeline.evaluation.roc import UndefinedStatisticError, delong_ci, roc_auc

    auc = roc_auc(labels, scores)
    try:
        return auc, list(delong_ci(labels, scores))
    except UndefinedStatisticError:  # perfect or constant scores on a smoke subset: no interval, not an error
        return auc, None


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def summarize(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], *, params: Mapping[str, int], reference: str | None = None
) -> dict[str, Any]:
    """Per-model figures over seeds and the paired DeLong tests against the baselines.

    Args:
        runs: ``{model: [one evaluation result per seed, with "seed", "labels", "probabilities", ...]}``, every
            result on the same test cases.
        params: trainable parameters per model.
        reference: compare every other model with this one (the ablation's full model) instead of the
            candidates with the baselines.

    Returns:
        ``{"models": {name: {"test_auc", "test_auc_sd", "test_auc_ci", "test_acc", "test_acc_sd",
        "test_acc_at_val_threshold", "params", "seeds": [...]}}, "delong": [...]}``; ``test_auc_ci`` is the DeLong
        CI of the seed-averaged probabilities, the other figures are means over seeds.
    """
    from pipeline.evaluation.roc import delong_test_row

    models: dict[str, Any] = {}
    averaged: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for name, seed_runs in runs.items():
        per_seed = []
        for run in seed_runs:
            y = np.asarray(run["labels"], dtype=int)
            p = np.asarray(run["probabilities"], dtype=float)
            if labels is None:
                labels = y
            elif not np.array_equal(labels, y):
                raise ValueError(f"{name}: test labels differ from the other models' (different cases?)")
            auc, ci = _auc_and_ci(y, p)
            per_seed.append(
                {
                    "seed": run["seed"],
                    "test_auc": auc,
                    "test_auc_ci": ci,
                    "test_acc": float(np.mean((p >= 0.5).astype(int) == y)),
                    "test_acc_at_val_threshold": run.get("acc_at_threshold"),
                    "val_threshold": run.get("threshold"),
                    "val_auc": run.get("val_auc"),
                    **{k: run.get(k) for k in ("train_seconds", "eval_seconds", "epochs_run", "best_epoch")},
                }
            )
        if not per_seed:
            continue
        averaged[name] = np.mean([np.asarray(r["probabilities"], dtype=float) for r in seed_runs], axis=0)
        auc_mean, auc_sd = _mean_sd([r["test_auc"] for r in per_seed])
        acc_mean, acc_sd = _mean_sd([r["test_acc"] for r in per_seed])
        thresholded = [r["test_acc_at_val_threshold"] for r in per_seed if r["test_acc_at_val_threshold"] is not None]
        ensemble_auc, ensemble_ci = _auc_and_ci(labels, averaged[name])
        val_aucs = [r["val_auc"] for r in per_seed if r["val_auc"] is not None]
        run_seconds = [(r["train_seconds"] or 0.0) + (r["eval_seconds"] or 0.0) for r in per_seed]
        models[name] = {
            "test_auc": auc_mean,
            "test_auc_sd": auc_sd,
            "test_auc_ci": ensemble_ci,
            "seed_averaged_auc": ensemble_auc,
            "test_acc": acc_mean,
            "test_acc_sd": acc_sd,
            "test_acc_at_val_threshold": float(statistics.fmean(thresholded)) if thresholded else None,
            "params": int(params.get(name, 0)) or None,
            # the selection criterion (best epoch's val AUC), mean over seeds; and what one run cost
            "val_auc": float(statistics.fmean(val_aucs)) if val_aucs else None,
            "run_minutes": float(statistics.fmean(run_seconds)) / 60 if run_seconds else None,
            "seeds": per_seed,
        }
    comparisons = []
    if reference is None:
        pairs = [(c, b) for c in CANDIDATES if c in averaged for b in (*BASELINES, SCRATCH_STUDENT) if b in averaged]
    else:
        pairs = [(name, reference) for name in averaged if name != reference]
    for candidate, baseline in pairs:
        row: dict[str, Any] = {"model": candidate, "baseline": baseline}
        row.update(
            delong_test_row(labels, averaged[candidate], averaged[baseline], auc_keys=("auc_model", "auc_baseline"))
        )
        comparisons.append(row)
    return {"models": models, "delong": comparisons}


def val_probabilities(run: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """A finished run's val-split predictions (``eval_val/predictions.csv`` beside its ``models/`` folder).

    Args:
        run: a run result with ``checkpoint`` (``<run>/models/model.pt``).

    Returns:
        ``(case_ids, labels, probabilities)`` sorted by case id, or ``None`` when the file is missing.
    """
    import csv

    path = Path(run["checkpoint"]).parents[1] / "eval_val" / "predictions.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sorted((r for r in csv.DictReader(handle) if r.get("status", "ok") == "ok"), key=lambda r: r["case_id"])
    return (
        [r["case_id"] for r in rows],
        np.array([_class_index(r["label"]) for r in rows], dtype=int),
        np.array([float(r["probability"]) for r in rows], dtype=float),
    )


def val_comparisons(runs: Mapping[str, Sequence[Mapping[str, Any]]], selected: str) -> list[dict[str, Any]]:
    """Paired DeLong tests on the **val** split of every variant against the one selected there.

    The selection is made on val, so its uncertainty is a val figure: this says whether the val split can tell the
    selected variant from the others at all (seed-averaged val probabilities; the test split is not looked at).

    Args:
        runs: ``{variant: [run results]}`` (as for :func:`summarize`).
        selected: the variant selected on val.

    Returns:
        One row per other variant: ``model``, ``baseline`` (= ``selected``), ``val_auc_model``,
        ``val_auc_baseline``, ``difference``, ``difference_ci``, ``p_value`` (or ``note`` when undefined/missing).
    """
    from pipeline.evaluation.roc import delong_test_row

    averaged: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    for name, seed_runs in runs.items():
        loaded = [val_probabilities(run) for run in seed_runs]
        if not loaded or any(v is None for v in loaded):
            continue
        ids, labels = loaded[0][0], loaded[0][1]
        if any(v[0] != ids for v in loaded):
            continue
        averaged[name] = (ids, labels, np.mean([v[2] for v in loaded], axis=0))
    rows: list[dict[str, Any]] = []
    for name in runs:
        if name == selected:
            continue
        row: dict[str, Any] = {"model": name, "baseline": selected}
        if name not in averaged or selected not in averaged or averaged[name][0] != averaged[selected][0]:
            rows.append({**row, "p_value": None, "note": "val predictions missing or on different cases"})
            continue
        row.update(
            delong_test_row(
                averaged[name][1],
                averaged[name][2],
                averaged[selected][2],
                auc_keys=("val_auc_model", "val_auc_baseline"),
            )
        )
        rows.append(row)
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def headline(result: Mapping[str, Any]) -> str:
    """A result in one paragraph, for README.md and the bundle docs (tests check they quote it verbatim).

    Each model's test AUC (mean ± sd over seeds) and each paired DeLong comparison of the seed-averaged probabilities.
    """
    settings = result.get("settings", {})
    seeds = settings.get("seeds") or []
    models = [
        f"{name} {row['test_auc']:.3f} ± {row['test_auc_sd']:.3f}" for name, row in result.get("models", {}).items()
    ]
    tests = [
        f"{row['model']} - {row['baseline']} {row['difference']:+.3f} "
        f"(95 % CI {row['difference_ci'][0]:+.3f} to {row['difference_ci'][1]:+.3f}, p {row['p_value']:.2f})"
        for row in result.get("delong", [])
        if row.get("p_value") is not None
    ]
    text = (
        f"{result.get('dataset', '?')} at {settings.get('roi_size')}, {len(seeds)} seed(s), {result.get('n_test')} "
        f"test cases: test AUC {', '.join(models)}"
    )
    if tests:
        text += f"; paired DeLong on the seed-averaged probabilities: {'; '.join(tests)}"
    return text + "."


def render_markdown(result: Mapping[str, Any]) -> str:
    """The Markdown table of a result (``run_medmnist``'s output) beside the published MedMNIST v2 rows.

    Args:
        result: the result dictionary written to ``medmnist_<name>.json``.

    Returns:
        Markdown text.
    """
    settings = result.get("settings", {})
    lines = [
        f"# MedMNIST benchmark: {result.get('dataset', '?')}",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        f"Protocol: train on `train`, select the checkpoint by val AUC, report `test` ({result.get('n_test', '?')} "
        f"cases); seeds {settings.get('seeds')}; epochs <= {settings.get('epochs')}, roi {settings.get('roi_size')}. "
        "AUC = mean ± sd over seeds (95% DeLong CI of the seed-averaged probabilities); ACC@0.5 = argmax of the "
        "softmax (MedMNIST's rule); ACC@val = at the Youden threshold frozen on `val`.",
        "",
    ]
    if result.get("models"):
        lines += [
            "| method | AUC | 95% CI | ACC@0.5 | ACC@val | val AUC | params | min/run | source |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for name, row in result.get("models", {}).items():
        ci = row.get("test_auc_ci")
        params = row.get("params")
        lines.append(
            f"| {name} | {_fmt(row.get('test_auc'))} ± {_fmt(row.get('test_auc_sd'))} | "
            f"{'—' if not ci else f'{ci[0]:.3f}–{ci[1]:.3f}'} | {_fmt(row.get('test_acc'))} ± "
            f"{_fmt(row.get('test_acc_sd'))} | {_fmt(row.get('test_acc_at_val_threshold'))} | "
            f"{_fmt(row.get('val_auc'))} | {'—' if not params else f'{params / 1e6:.1f} M'} | "
            f"{_fmt(row.get('run_minutes'), 1)} | measured |"
        )
    if result.get("published_applies", False) and result.get("models"):
        for method, auc, acc in PUBLISHED_ADRENAL_28:
            lines.append(f"| {method} | {auc:.3f} | — | {acc:.3f} | — | — | — | — | published |")
        lines += ["", f"Published rows: {PUBLISHED_SOURCE}."]
    comparisons = result.get("delong", [])
    if comparisons:
        lines += [
            "",
            "Paired DeLong test on the test split (seed-averaged probabilities):",
            "",
            "| model | baseline | AUC model | AUC baseline | difference (95% CI) | p |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in comparisons:
            ci = row.get("difference_ci")
            lines.append(
                f"| {row['model']} | {row['baseline']} | {_fmt(row.get('auc_model'))} | "
                f"{_fmt(row.get('auc_baseline'))} | {_fmt(row.get('difference'))}"
                f"{'' if not ci else f' ({ci[0]:.3f}, {ci[1]:.3f})'} | {_fmt(row.get('p_value'), 4)} |"
            )
    ablation = result.get("ablation", {})
    if ablation:
        versus = {row["model"]: row for row in result.get("ablation_delong", [])}
        reference = next(iter(ablation))
        probes = result.get("variant_set") == "probes"
        title = "AAM variant probes" if probes else "Ablation"
        lines += [
            "",
            f"{title} of {result.get('ablation_network', 'aam_resnet50')}, trained from scratch (same protocol); "
            f"p: paired DeLong test of the variant against the first row (seed-averaged probabilities); val AUC: the "
            "best epoch's, the selection criterion:",
            "",
            "| variant | val AUC | AUC | 95% CI | ACC@0.5 | params | min/run | difference to first (95% CI) | p |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for variant, row in ablation.items():
            ci, params, test = row.get("test_auc_ci"), row.get("params"), versus.get(variant, {})
            diff_ci = test.get("difference_ci")
            lines.append(
                f"| {variant} | {_fmt(row.get('val_auc'))} | {_fmt(row.get('test_auc'))} ± "
                f"{_fmt(row.get('test_auc_sd'))} | {'—' if not ci else f'{ci[0]:.3f}–{ci[1]:.3f}'} | "
                f"{_fmt(row.get('test_acc'))} | {'—' if not params else f'{params / 1e6:.2f} M'} | "
                f"{_fmt(row.get('run_minutes'), 1)} | {'—' if variant == reference else _fmt(test.get('difference'))}"
                f"{'' if not diff_ci else f' ({diff_ci[0]:.3f}, {diff_ci[1]:.3f})'} | {_fmt(test.get('p_value'), 4)} |"
            )
        if result.get("selected_on_val"):
            lines += ["", f"Selected on the val split (highest val AUC): **{result['selected_on_val']}**."]
        val_rows = result.get("selection_val_delong") or []
        if val_rows:
            lines += [
                "",
                f"How sure that selection is: paired DeLong test on the val split ({result.get('n_val')} cases, "
                "seed-averaged val probabilities) of each variant against the selected one:",
                "",
                "| variant | val AUC | selected's val AUC | difference (95% CI) | p |",
                "| --- | --- | --- | --- | --- |",
            ]
            for row in val_rows:
                ci = row.get("difference_ci")
                lines.append(
                    f"| {row['model']} | {_fmt(row.get('val_auc_model'))} | {_fmt(row.get('val_auc_baseline'))} | "
                    f"{_fmt(row.get('difference'))}{'' if not ci else f' ({ci[0]:.3f}, {ci[1]:.3f})'} | "
                    f"{_fmt(row.get('p_value'), 4)} |"
                )
        default = result.get("registry_default_variant")
        if default and result.get("selected_on_val"):
            if default == result["selected_on_val"]:
                lines += ["", f"The registry's {result.get('ablation_network')} is this variant."]
            else:
                row = next((r for r in val_rows if r["model"] == default), {})
                p_value = row.get("p_value")
                verdict = (
                    "the val split cannot tell the two apart"
                    if p_value is not None and p_value >= 0.05
                    else "the val split prefers the selected variant"
                )
                lines += [
                    "",
                    f"The registry's {result.get('ablation_network')} is **not** the selected variant but "
                    f"**{default}** (val difference {_fmt(row.get('difference'))}, p {_fmt(p_value, 4)}: {verdict}). "
                    + PROBE_DEFAULT_NOTE,
                ]
    wall = f"Wall time: {_fmt(result.get('wall_seconds', 0) / 60, 1)} min on {result.get('cpu_count')} CPU(s)"
    if result.get("runs_reused"):
        wall += (
            f"; {result['runs_reused']} of {result['runs_total']} runs were reused from an earlier invocation with the"
            f" same settings; training + evaluation time of all {result['runs_total']} runs:"
            f" {_fmt(result.get('run_seconds', 0) / 60, 1)} min"
        )
    lines += ["", wall + "."]
    return "\n".join(lines) + "\n"


def resolved_network_arguments(name: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every constructor argument the registry entry ``name`` builds its network with (defaults included).

    Args:
        name: registry name.
        kwargs: the run's extra registry arguments.

    Returns:
        ``{argument: value}`` as JSON-ready values (tuples become lists).
    """
    import inspect

    from pipeline.networks import network_spec

    spec = network_spec(name)
    signature = inspect.signature(spec.factory)
    arguments = {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    arguments.update({**spec.defaults, **dict(kwargs or {})})
    return json.loads(json.dumps(arguments, default=str))


def _count_params(name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    from pipeline.networks import build

    model = build(name, num_classes=len(_CLASSES), **dict(kwargs or {}))
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def run_medmnist(settings: MedMNISTSettings) -> dict[str, Any]:
    """Run the benchmark and write ``medmnist_<npz stem>.json`` and ``.md`` in ``settings.results_dir``.

    Args:
        settings: what to run.

    Returns:
        The result dictionary (as written to the JSON file).

    Raises:
        UserError: for a missing or malformed npz file, unknown model names or a failed evaluation.
    """
    from pipeline.networks import available

    unknown = sorted(set(settings.models) - set(available()))
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(available())}")
    if not settings.seeds:
        raise UserError("at least one seed is needed")
    started = time.perf_counter()
    load_start = os.getloadavg()
    npz = Path(settings.npz)
    if settings.roi_size is None:
        side = max(32, int(max(load_npz_splits(npz)["test"][0].shape[1:])))
        settings = replace(settings, roi_size=(side, side, side))
    work = Path(settings.work_dir).resolve()
    earlier = work / "cohort" / "medmnist.datalist.json"
    source = json.loads(earlier.read_text(encoding="utf-8")).get("manifest") if earlier.is_file() else None
    if source not in (None, str(npz.resolve())):  # run folders are named by model and seed: they would collide
        raise UserError(f"{work}: holds the runs of {source}; give {npz.name} its own --work-dir")
    datalist = write_cohort(npz, work / "cohort", limit=settings.limit)
    data = json.loads(datalist.read_text(encoding="utf-8"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings.models}
    ablation_runs: dict[str, list[dict[str, Any]]] = {}
    finished: dict[str, dict[str, Any]] = {}  # every run (teachers too) by run folder, for the compute-time tally
    trained = [m for m in settings.models if m != "aam_student"]
    if "aam_student" in settings.models and settings.teacher not in trained:
        trained.insert(0, settings.teacher)  # the student's teacher
    variants = selected_ablations(settings.ablation_variants, variant_set=settings.variant_set)
    ablation_seeds = settings.seeds if settings.ablation_seeds is None else settings.ablation_seeds
    for seed in sorted(set(settings.seeds) | (set(ablation_seeds) if settings.ablation else set())):
        checkpoints: dict[str, Path] = {}
        for name in trained if seed in settings.seeds else []:
            run_dir = work / "runs" / f"{name}_seed{seed}"
            result = finished[run_dir.name] = _train_and_evaluate(
                settings,
                datalist=datalist,
                run_dir=run_dir,
                network_name=name,
                seed=seed,
                network_kwargs=width_arguments(name, settings.width_multiplier),
            )
            checkpoints[name] = Path(result["checkpoint"])
            if name in runs:
                runs[name].append(result)
        if "aam_student" in settings.models and seed in settings.seeds:
            run_dir = work / "runs" / f"aam_student_seed{seed}"
            result = finished[run_dir.name] = _train_and_evaluate(
                settings,
                datalist=datalist,
                run_dir=run_dir,
                network_name="aam_student",
                seed=seed,
                teacher_ckpt=checkpoints[settings.teacher],
            )
            runs["aam_student"].append(result)
            if settings.student_scratch:  # the same student without its teacher: what distillation adds
                run_dir = work / "runs" / f"aam_student_scratch_seed{seed}"
                result = finished[run_dir.name] = _train_and_evaluate(
                    settings, datalist=datalist, run_dir=run_dir, network_name="aam_student", seed=seed
                )
                runs.setdefault(SCRATCH_STUDENT, []).append(result)
        if settings.ablation and seed in ablation_seeds:
            base = settings.ablation_network
            for variant, kwargs in variants.items():
                # a variant without arguments (the ablation's full model) shares the main table's run folder
                tag = "_".join(f"{k}-{v}" for k, v in kwargs.items())
                prefix = settings.variant_set
                run_dir = work / "runs" / (f"{prefix}_{base}_{tag}_seed{seed}" if tag else f"{base}_seed{seed}")
                result = finished[run_dir.name] = _train_and_evaluate(
                    settings,
                    datalist=datalist,
                    run_dir=run_dir,
                    network_name=base,
                    seed=seed,
                    network_kwargs={**width_arguments(base, settings.width_multiplier), **kwargs},
                )
                ablation_runs.setdefault(variant, []).append(result)
    params = {
        name: _count_params(model, width_arguments(model, settings.width_multiplier))
        for name in runs
        for model in ["aam_student" if name == SCRATCH_STUDENT else name]
    }
    summary = summarize({k: v for k, v in runs.items() if v}, params=params)
    result: dict[str, Any] = {
        "benchmark": "medmnist",
        "dataset": npz.stem,
        "npz": str(npz.resolve()),
        "command": settings.command,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "n_train": sum(1 for e in data["training"] if e["fold"] != 0),
        "n_val": sum(1 for e in data["training"] if e["fold"] == 0),
        "n_test": len(data["test"]),
        "published_applies": npz.stem == "adrenalmnist3d" and settings.limit is None,
        "published": [{"method": m, "test_auc": a, "test_acc": c} for m, a, c in PUBLISHED_ADRENAL_28],
        "published_source": PUBLISHED_SOURCE,
        **summary,
    }
    if ablation_runs:
        full = next(iter(variants))
        base = settings.ablation_network
        ablation = summarize(
            ablation_runs,
            params={
                v: _count_params(base, {**width_arguments(base, settings.width_multiplier), **k})
                for v, k in variants.items()
            },
            reference=full if full in ablation_runs else None,
        )
        result["ablation"] = ablation["models"]
        result["ablation_network"] = base
        result["ablation_delong"] = ablation["delong"]
        result["variant_set"] = settings.variant_set
        result["variant_arguments"] = {v: dict(k) for v, k in variants.items()}
        result["selected_on_val"] = max(
            (v for v, row in ablation["models"].items() if row.get("val_auc") is not None),
            key=lambda v: ablation["models"][v]["val_auc"],
            default=None,
        )
        if result["selected_on_val"] is not None:
            result["selection_val_delong"] = val_comparisons(ablation_runs, result["selected_on_val"])
        # which variant the registry builds by default (its resolved constructor arguments), if any
        default_arguments = resolved_network_arguments(base, width_arguments(base, settings.width_multiplier))
        result["registry_default_variant"] = next(
            (
                v
                for v, k in variants.items()
                if resolved_network_arguments(base, {**width_arguments(base, settings.width_multiplier), **k})
                == default_arguments
            ),
            None,
        )
    result.update(
        runs_total=len(finished),
        runs_reused=sum(1 for r in finished.values() if r.get("reused")),
        # what the results cost to compute, whether trained now or reused from an earlier invocation
        run_seconds=sum((r.get("train_seconds") or 0.0) + (r.get("eval_seconds") or 0.0) for r in finished.values()),
        wall_seconds=time.perf_counter() - started,
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        python=platform.python_version(),
        load_average_at_start=list(load_start),
        load_average_at_end=list(os.getloadavg()),
    )
    out_dir = Path(settings.results_dir)
    stem = results_stem(settings)
    write_result_json(out_dir / f"{stem}.json", result)
    write_result_text(out_dir / f"{stem}.md", render_markdown(result))
    return result


def default_work_dir(npz: str | os.PathLike, *, quick: bool = False) -> Path:
    """The work folder of a benchmark of ``npz``: ``runs/bench_medmnist`` for the default file, else one per file.

    Each npz file and smoke runs get their own folder, so that no run replaces the finished runs of another dataset
    (run folders are named by model and seed) that a full rerun would reuse.
    """
    stem = Path(npz).stem
    name = "bench_medmnist" if stem == DEFAULT_NPZ.stem else f"bench_medmnist_{stem}"
    return REPO_ROOT / "runs" / (f"{name}_quick" if quick else name)


def selected_ablations(words: Sequence[str] | None, *, variant_set: str = "ablation") -> dict[str, dict[str, Any]]:
    """The variants of a set whose names contain one of ``words`` (any case), always with the set's first variant.

    Args:
        words: selecting words; ``None`` selects every variant.
        variant_set: a key of :data:`VARIANT_SETS` (``"ablation"``: :data:`ABLATIONS`, ``"probes"``: :data:`PROBES`).

    Returns:
        ``{variant name: registry keyword arguments}``, the reference (first) variant first.

    Raises:
        UserError: for an unknown set or a word that matches no variant.
    """
    if variant_set not in VARIANT_SETS:
        raise UserError(f"--variant-set: unknown set {variant_set!r} (sets: {', '.join(VARIANT_SETS)})")
    table = VARIANT_SETS[variant_set]
    if words is None:
        return dict(table)
    matches = {word: {name for name in table if word.lower() in name.lower()} for word in words}
    unmatched = [word for word, names in matches.items() if not names]
    if unmatched:
        raise UserError(f"--ablation-variants: no variant matches {', '.join(unmatched)} (variants: {list(table)})")
    chosen = {next(iter(table))}.union(*matches.values())
    return {name: kwargs for name, kwargs in table.items() if name in chosen}


def width_arguments(name: str, multiplier: float | None) -> dict[str, Any]:
    """Registry arguments that scale network ``name``'s width by ``multiplier`` (``{}`` for ``None``).

    Args:
        name: registry name.
        multiplier: the factor (AAM-ResNets and DenseNet-121: ``width`` times the entry's own; MONAI ResNets: ``widen_factor``).

    Returns:
        The keyword arguments.

    Raises:
        UserError: for a network without a width option (the U-Net encoder) or a non-positive factor.
    """
    if multiplier is None:
        return {}
    if multiplier <= 0:
        raise UserError(f"--width-multiplier must be positive, got {multiplier}")
    from pipeline.networks import network_spec

    spec = network_spec(name)
    accepted = spec.accepted_arguments()
    if "width" in accepted:
        return {"width": float(spec.defaults.get("width", 1.0)) * multiplier}
    if "widen_factor" in accepted:
        return {"widen_factor": float(spec.defaults.get("widen_factor", 1.0)) * multiplier}
    raise UserError(f"--width-multiplier: network {name!r} has no width option")


def results_stem(settings: MedMNISTSettings) -> str:
    """File stem of a run's results: ``settings.name`` or ``medmnist_<npz stem>``."""
    return settings.name or f"medmnist_{Path(settings.npz).stem}"


_RUN_RECORD = "medmnist_run.json"
#: key entries that name a run rather than define it: two runs equal in everything else trained the same network
_NAMING_KEYS = ("output_dir", "network_kwargs")


def _equivalent_record(runs_dir: Path, key: Mapping[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """A finished run in ``runs_dir`` whose recipe equals ``key`` up to its folder and how its network was named."""
    wanted = {k: v for k, v in key.items() if k not in _NAMING_KEYS}
    for path in sorted(runs_dir.glob(f"*/{_RUN_RECORD}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        theirs = record.get("key")
        if isinstance(theirs, dict) and {k: v for k, v in theirs.items() if k not in _NAMING_KEYS} == wanted:
            return path.parent, record
    return None


#: written when a run starts: a later invocation with the same settings resumes its training
_STARTED_RECORD = "medmnist_run.started.json"


def _train_and_evaluate(
    settings: MedMNISTSettings,
    *,
    datalist: Path,
    run_dir: Path,
    network_name: str,
    seed: int,
    network_kwargs: Mapping[str, Any] | None = None,
    teacher_ckpt: Path | None = None,
) -> dict[str, Any]:
    """Train (or distil, given ``teacher_ckpt``) and evaluate one model and seed, or reuse a finished run.

    Each finished run leaves ``medmnist_run.json`` in its folder with the settings that produced it; a rerun with the
    same settings reuses it, so an interrupted benchmark resumes at the first unfinished model and an ablation run
    reuses the main table's ``aam_resnet50`` runs.
    """
    key = {
        "network": network_name,
        "network_kwargs": dict(network_kwargs or {}),
        # what the network is, not how it was asked for: a change of the registry's defaults is a new recipe
        "network_arguments": resolved_network_arguments(network_name, network_kwargs),
        "teacher_ckpt": None if teacher_ckpt is None else str(teacher_ckpt),
        "distill_stages": list(settings.distill_stages) if teacher_ckpt is not None else None,
        "distill_weights": dict(settings.distill_weights or {}) if teacher_ckpt is not None else None,
        "seed": int(seed),
        **_bundle_overrides(settings, datalist=datalist, output_dir=run_dir, seed=seed),
        "limit": settings.limit,
        "n_resamples": settings.n_resamples,
    }
    record_path = run_dir / _RUN_RECORD
    comparable = json.loads(json.dumps(key))
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("key") == comparable:
            logger.info("medmnist: reusing %s (finished earlier with the same settings)", run_dir.name)
            return {**record["result"], "reused": True}
    twin = _equivalent_record(run_dir.parent, comparable)
    if twin is not None:  # the same network and recipe, finished under another name (a probe of the default)
        logger.info("medmnist: reusing %s for %s (the same network and settings)", twin[0].name, run_dir.name)
        return {**twin[1]["result"], "reused": True, "reused_from": twin[0].name}
    # an interrupted training of the same recipe continues from its last checkpoint instead of starting over
    started_path = run_dir / _STARTED_RECORD
    started = json.loads(started_path.read_text(encoding="utf-8")) if started_path.is_file() else {}
    resume = started.get("key") == comparable and (run_dir / "models" / "checkpoint_last.pt").is_file()
    write_json_atomic(started_path, {"key": key})
    history = _history(run_dir) if resume else {}
    if teacher_ckpt is None and resume and (history.get("epochs_run") or 0) >= settings.epochs:
        # the training of this recipe finished in an earlier process that died before its evaluation
        logger.info("medmnist: %s finished training earlier; evaluating it", run_dir.name)
        checkpoint = run_dir / "models" / "model.pt"
        training = {"checkpoint": str(checkpoint), "train_seconds": _epoch_seconds(run_dir), **history}
    elif teacher_ckpt is None:
        logger.info(
            "medmnist: training %s %s, seed %d%s",
            network_name,
            dict(network_kwargs or {}),
            seed,
            " (resuming)" if resume else "",
        )
        training = run_training(
            settings,
            datalist=datalist,
            run_dir=run_dir,
            network_name=network_name,
            seed=seed,
            network_kwargs=network_kwargs,
            resume=resume,
        )
    else:
        logger.info("medmnist: distilling %s from %s, seed %d", network_name, teacher_ckpt, seed)
        training = run_distillation(settings, datalist=datalist, run_dir=run_dir, teacher_ckpt=teacher_ckpt, seed=seed)
    evaluation = run_evaluation(
        settings,
        datalist=datalist,
        run_dir=run_dir,
        network_name=network_name,
        checkpoint=Path(training["checkpoint"]),
        seed=seed,
        network_kwargs=network_kwargs,
    )
    result = {"seed": seed, **training, **evaluation}
    write_json_atomic(record_path, {"key": key, "result": result})
    return result
