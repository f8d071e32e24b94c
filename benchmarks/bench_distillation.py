"""Distillation vs training from scratch: the cascade's student against the same network trained on labels only.

For each dataset the benchmark

1. trains the teacher (default ``aam_resnet50``) from scratch on the task loss (softmax focal loss, gamma 2,
   alpha 0.25, AdamW as in ``train.json``), best checkpoint by validation AUC;
2. runs the cascade teacher -> ``aam_assistant`` -> ``aam_student``
   (:class:`~pipeline.training.cascade.DistillationCascade`, focal loss + T^2 KL, T = 4);
3. trains ``aam_student`` from scratch with the same loss, optimiser, epochs, data order and seed;
4. optionally (``--small-student``) does 2-3 for ``aam_student_small`` (<= 10% of ResNet-50, the stretch goal),
   distilled directly from the teacher;
5. scores every best checkpoint on the held-out test split: AUC with DeLong 95% CI and stratified bootstrap CI
   (:func:`pipeline.evaluation.roc.auc_summary`), and the paired DeLong test distilled vs scratch
   (:func:`pipeline.evaluation.roc.delong_test`); parameters, FLOPs and CPU latency come from the cascade summary.

Datasets:

* ``adrenal``: AdrenalMNIST3D 28^3 (``../shared/data/medmnist/adrenalmnist3d.npz``; MedMNIST protocol: train on
  ``train``, select on ``val``, report on ``test``), masks scaled to 0..1 and zero-padded to 32^3 (the networks
  need >= 32 voxels per axis), random left-right flips in training.
* ``demo``: the generated demo cohort (``pipeline.data.demo.write_demo_cohort``) written as DICOM, manifest +
  patient-level split (fold 0 validates), loaded through the bundle's own transform chains
  (``pipeline.transforms.train_transforms`` / ``eval_transforms``, DICOM read by ``CTImageReader``).

Run: ``.venv/bin/python -m benchmarks.bench_distillation [--datasets adrenal demo] [--quick]``; results in
``benchmarks/results/distillation.json`` (one block per dataset, each with the command and settings it ran with;
a run of one dataset keeps the other's block unless ``--fresh``). Training uses ``--threads`` intra-op threads (default 1: on a shared,
oversubscribed CPU, two OpenMP threads spin-wait and run many times slower than one); latency is measured with
``--latency-threads`` (default 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import FocalLoss
from monai.transforms import Compose, RandFlipd, SpatialPadd

from benchmarks.store import write_result_json
from pipeline.evaluation.checks import UndefinedStatisticError
from pipeline.evaluation.roc import auc_summary, delong_test
from pipeline.networks import build
from pipeline.training.cascade import DistillationCascade, load_state_dict, predict_scores

__all__ = ["adrenal_splits", "demo_splits", "interleaved_latency", "main", "run_comparison"]

logger = logging.getLogger("benchmarks.bench_distillation")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "distillation.json"
SHARED_DATA = Path(os.environ.get("AAMCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
ADRENAL_NPZ = SHARED_DATA / "medmnist" / "adrenalmnist3d.npz"


def adrenal_splits(npz_path: str | os.PathLike, *, limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """AdrenalMNIST3D as MONAI data dicts, ``{split: [{"image": (1, 28, 28, 28) float, "label": (1,) long}]}``.

    Args:
        npz_path: the MedMNIST ``.npz`` file.
        limit: keep only the first ``limit`` cases of each split (quick runs).

    Returns:
        The three splits; images scaled from {0, 255} to {0, 1}.

    Raises:
        FileNotFoundError: when the file is missing.
    """
    path = Path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AdrenalMNIST3D not found (see ../shared/data/README.md)")
    data = np.load(path)
    splits = {}
    for split in ("train", "val", "test"):
        images = data[f"{split}_images"][:limit].astype(np.float32) / 255.0
        labels = data[f"{split}_labels"][:limit].astype(np.int64).reshape(-1)
        splits[split] = [
            {"image": torch.from_numpy(image[None]), "label": torch.tensor([label])}
            for image, label in zip(images, labels, strict=True)
        ]
    return splits


def demo_splits(
    work_dir: Path, *, cases: int, size: int, seed: int, n_folds: int = 5
) -> dict[str, list[dict[str, Any]]]:
    """Write the demo cohort as DICOM, build and split its manifest, and return the fold-0 train/val and test lists.

    Args:
        work_dir: scratch folder (cohort, key, manifest, datalist).
        cases: number of demo scans.
        size: in-plane matrix of the demo scans.
        seed: cohort and split seed.
        n_folds: cross-validation folds of the training split (fold 0 validates).

    Returns:
        ``{"train", "val", "test"}`` lists of datalist entries (``image`` path, integer ``label``).
    """
    from pipeline.contracts.datalist import select
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.manifest import build_manifest
    from pipeline.data.splits import split_manifest

    key = work_dir / "pseudonym.key"
    key.write_text(os.urandom(16).hex() + "\n")
    cohort = write_demo_cohort(work_dir / "dicom", cases=cases, size=size, seed=seed)
    manifest = work_dir / "manifest.csv"
    build_manifest(dicom_root=cohort.root, nifti_glob=None, labels_csv=cohort.labels_csv, out=manifest, key_file=key)
    split = split_manifest(manifest, seed=seed, n_folds=n_folds)
    datalist = split.datalist_path
    return {"train": select(datalist, "train", 0), "val": select(datalist, "val", 0), "test": select(datalist, "test")}


def _loaders(
    dataset: str, splits: dict[str, list[dict[str, Any]]], roi_size: Sequence[int], batch_size: int
) -> tuple[DataLoader, DataLoader, DataLoader]:
    if dataset == "adrenal":
        pad = SpatialPadd(keys="image", spatial_size=roi_size)
        train_tf = Compose([pad, RandFlipd(keys="image", spatial_axis=0, prob=0.5)])
        train = Dataset(splits["train"], transform=train_tf)
        val, test = Dataset(splits["val"], transform=pad), Dataset(splits["test"], transform=pad)
    else:
        from pipeline.transforms import eval_transforms, train_transforms

        train = CacheDataset(splits["train"], transform=train_transforms(roi_size=roi_size), progress=False)
        val = CacheDataset(splits["val"], transform=eval_transforms(roi_size=roi_size), progress=False)
        test = CacheDataset(splits["test"], transform=eval_transforms(roi_size=roi_size), progress=False)
    generator = torch.Generator().manual_seed(0)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=0, generator=generator),
        DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=0),
        DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=0),
    )


def _test_auc(network: torch.nn.Module, loader: DataLoader) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    labels, scores = predict_scores(network, loader)
    result = auc_summary(labels, scores, n_resamples=2000, seed=0)
    return {**result.to_dict(), "text": result.format()}, labels, scores


def _paired(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, Any]:
    try:
        return delong_test(labels, scores_a, scores_b).to_dict()
    except UndefinedStatisticError as err:
        return {"undefined": str(err)}


def interleaved_latency(
    networks: Sequence[str], roi_size: Sequence[int], *, threads: Sequence[int] = (1, 2), repeats: int = 15
) -> dict[str, Any]:
    """CPU latency of several networks measured in turn, so that they share the same background load.

    The per-stage latencies of the cascade summary are measured minutes apart; on a shared CPU the load changes in
    between, so their ratio can be off by a large factor. Here one forward pass of each network alternates with the
    others', ``repeats`` rounds after a warm-up round, at each thread count (weights do not matter for latency, so
    freshly built networks are used).

    Args:
        networks: registry names; the first is taken as the teacher for the ratios.
        roi_size: spatial input size.
        threads: intra-op thread counts to measure at.
        repeats: timed rounds.

    Returns:
        ``{"threads=<n>": {"median_ms": {name: ms}, "ratio_to_first": {name: ratio}}, "repeats": ..., "roi_size": ...}``.
    """
    models = {name: build(name).eval() for name in dict.fromkeys(networks)}
    x = torch.zeros((1, 1, *roi_size))
    previous = torch.get_num_threads()
    out: dict[str, Any] = {"repeats": repeats, "roi_size": list(roi_size)}
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            timings: dict[str, list[float]] = {name: [] for name in models}
            with torch.inference_mode():
                for round_index in range(repeats + 1):
                    for name, model in models.items():
                        start = time.perf_counter()
                        model(x)
                        if round_index:  # round 0 is the warm-up
                            timings[name].append((time.perf_counter() - start) * 1000.0)
            medians = {name: float(np.median(values)) for name, values in timings.items()}
            first = medians[networks[0]]
            out[f"threads={n_threads}"] = {
                "median_ms": medians,
                "ratio_to_first": {name: value / first for name, value in medians.items()},
            }
    finally:
        torch.set_num_threads(previous)
    return out


def _model_entry(entry: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "network",
        "teacher_network",
        "mode",
        "params",
        "params_ratio_to_resnet50",
        "flops",
        "cpu_latency_ms",
        "val_auc",
        "val_auc_delong_ci",
        "epochs_run",
        "best_epoch",
        "train_seconds",
    )
    return {
        **{k: entry.get(k) for k in keep},
        "test_auc": test["auc"],
        "test_auc_delong_ci": test["delong_ci"],
        "test": test,
    }


def run_comparison(
    *,
    dataset: str,
    splits: dict[str, list[dict[str, Any]]],
    roi_size: Sequence[int],
    work_dir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Teacher from scratch, the cascade, the scratch students, and their test AUCs on one dataset.

    Args:
        dataset: ``"adrenal"`` or ``"demo"``.
        splits: ``train`` / ``val`` / ``test`` data dicts.
        roi_size: network input size.
        work_dir: where checkpoints go.
        args: the parsed command line.

    Returns:
        The dataset's JSON block.
    """
    train, val, test = _loaders(dataset, splits, roi_size, args.batch_size)
    focal = FocalLoss(gamma=2.0, alpha=0.25, use_softmax=True, to_onehot_y=True)

    def cascade(stages: list, output: str, teacher_ckpt: Path, **extra: Any) -> DistillationCascade:
        return DistillationCascade(
            teacher_network=args.teacher,
            teacher_ckpt=teacher_ckpt,
            stages=stages,
            network_factory=build,
            optimizer_factory=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-5),
            task_loss=focal,
            train_data_loader=train,
            val_data_loader=val,
            auc_summary=auc_summary,
            output_dir=work_dir / output,
            roi_size=roi_size,
            max_epochs=args.student_epochs,
            early_stop_patience=args.patience,
            temperature=args.temperature,
            kd_weight=args.kd_weight,
            attention_weight=args.attention_weight,
            latency_threads=args.latency_threads,
            latency_repeats=args.latency_repeats,
            seed=args.seed,
            **extra,
        )

    started = time.perf_counter()
    # the teacher is trained like any from-scratch stage; its best checkpoint then starts the cascade
    teacher_runner = cascade([args.teacher], "teacher_run", work_dir / "no_teacher_yet.pt")
    _, teacher_entry = teacher_runner.train_stage(
        {"network": args.teacher, "name": "teacher", "max_epochs": args.teacher_epochs}, teacher=None
    )
    teacher_ckpt = Path(teacher_entry["checkpoint"])

    stages: list[Any] = [args.assistant, args.student] if args.assistant else [args.student]
    summary = cascade(stages, "cascade", teacher_ckpt).run()
    scratch_runner = cascade([args.student], "scratch", teacher_ckpt)
    _, scratch_entry = scratch_runner.train_stage({"network": args.student, "name": "student_scratch"}, teacher=None)

    models: dict[str, dict[str, Any]] = {}
    scores: dict[str, np.ndarray] = {}
    labels = np.empty(0)
    entries = {"teacher": (args.teacher, teacher_entry, teacher_ckpt)}
    for entry in summary["stages"]:
        role = "student_distilled" if entry["network"] == args.student else entry["stage"]
        entries[role] = (entry["network"], entry, Path(entry["checkpoint"]))
    entries["student_scratch"] = (args.student, scratch_entry, Path(scratch_entry["checkpoint"]))

    if args.small_student:
        small = cascade([args.small_student], "small_distilled", teacher_ckpt).run()["stages"][0]
        entries["small_student_distilled"] = (args.small_student, small, Path(small["checkpoint"]))
        small_scratch = cascade([args.small_student], "small_scratch", teacher_ckpt)
        _, small_entry = small_scratch.train_stage(
            {"network": args.small_student, "name": "small_scratch"}, teacher=None
        )
        entries["small_student_scratch"] = (args.small_student, small_entry, Path(small_entry["checkpoint"]))

    for role, (network_name, entry, checkpoint) in entries.items():
        network = load_state_dict(build(network_name), checkpoint)
        test_result, labels, scores[role] = _test_auc(network, test)
        models[role] = _model_entry(entry, test_result)
        logger.info("%s %s: test AUC %s", dataset, role, test_result["text"])

    comparisons = {
        "student_distilled_vs_scratch": _paired(labels, scores["student_distilled"], scores["student_scratch"]),
        "student_distilled_vs_teacher": _paired(labels, scores["student_distilled"], scores["teacher"]),
    }
    if args.small_student:
        comparisons["small_distilled_vs_scratch"] = _paired(
            labels, scores["small_student_distilled"], scores["small_student_scratch"]
        )
    return {
        "cases": {split: len(items) for split, items in splits.items()},
        "positives": {
            split: sum(int(np.asarray(item["label"]).reshape(-1)[0]) for item in items)
            for split, items in splits.items()
        },
        "roi_size": list(roi_size),
        "models": models,
        "comparisons": comparisons,
        "latency_ratio_student_to_teacher": summary["student"]["cpu_latency_ratio_to_teacher"],
        "params_ratio_student_to_resnet50": summary["student"]["params_ratio_to_resnet50"],
        "teacher_cpu_latency_ms": summary["teacher"]["cpu_latency_ms"],
        "student_cpu_latency_ms": summary["stages"][-1]["cpu_latency_ms"],
        "latency_interleaved": interleaved_latency(_networks(args), roi_size),
        "wall_seconds": time.perf_counter() - started,
    }


def _networks(args: argparse.Namespace) -> list[str]:
    return [name for name in (args.teacher, args.assistant, args.student, args.small_student) if name]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_distillation", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=("adrenal", "demo"), default=["adrenal", "demo"])
    parser.add_argument("--teacher", default="aam_resnet50")
    parser.add_argument("--assistant", default="aam_assistant", help="empty string: distil the teacher directly")
    parser.add_argument("--student", default="aam_student")
    parser.add_argument("--small-student", default="", help="also compare this student (e.g. aam_student_small)")
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--student-epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--kd-weight", type=float, default=1.0)
    parser.add_argument("--attention-weight", type=float, default=0.0)
    parser.add_argument("--adrenal-limit", type=int, default=None, help="first N cases of each AdrenalMNIST3D split")
    parser.add_argument("--demo-cases", type=int, default=60)
    parser.add_argument("--demo-size", type=int, default=64)
    parser.add_argument("--demo-folds", type=int, default=5)
    parser.add_argument("--demo-roi", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for training")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--latency-repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 2 epochs, 64 cases per split")
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoints (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--latency-only", action="store_true", help="only (re)measure interleaved latencies of existing results"
    )
    parser.add_argument("--fresh", action="store_true", help="drop results of datasets not run this time")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.quick:
        args.teacher_epochs = args.student_epochs = 2
        args.adrenal_limit = args.adrenal_limit or 64
        args.demo_cases = min(args.demo_cases, 24)
        args.demo_folds = 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    command = " ".join(
        [".venv/bin/python -m benchmarks.bench_distillation", *(argv if argv is not None else sys.argv[1:])]
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {
        "benchmark": "distillation vs training from scratch",
        "loss": "softmax focal loss (gamma 2, alpha 0.25) [+ T^2 KL(teacher || student) for distilled stages]",
        "note": "shared CPU: timings are indicative; each dataset block records the command and settings it ran with",
        "datasets": {},
    }
    if args.out.is_file() and not args.fresh:
        # datasets not run this time keep their earlier results (each block carries its own command)
        previous = json.loads(args.out.read_text(encoding="utf-8"))
        for name, block in previous.get("datasets", {}).items():
            # files from before per-dataset metadata kept the command and settings at the top level
            carried = {k: previous[k] for k in ("command", "settings", "machine") if k in previous and k not in block}
            results["datasets"][name] = {**carried, **block}
    if args.latency_only:
        for dataset in args.datasets:
            block = results["datasets"].get(dataset)
            if block is None:
                raise SystemExit(f"{args.out}: no {dataset} results to add latencies to; run the comparison first")
            block["latency_interleaved"] = {
                "command": command,
                "load_average": list(os.getloadavg()),
                **interleaved_latency(_networks(args), block["roi_size"]),
            }
            write_result_json(args.out, results)
        logger.info("wrote %s", args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_distillation_") as scratch:
        work_root = args.work_dir or Path(scratch)
        for dataset in args.datasets:
            work_dir = work_root / dataset
            work_dir.mkdir(parents=True, exist_ok=True)
            load_at_start = list(os.getloadavg())
            if dataset == "adrenal":
                splits = adrenal_splits(ADRENAL_NPZ, limit=args.adrenal_limit)
                roi = (32, 32, 32)
            else:
                splits = demo_splits(
                    work_dir, cases=args.demo_cases, size=args.demo_size, seed=args.seed, n_folds=args.demo_folds
                )
                roi = tuple(args.demo_roi)
            block = run_comparison(dataset=dataset, splits=splits, roi_size=roi, work_dir=work_dir, args=args)
            results["datasets"][dataset] = {
                "command": command,
                "settings": settings,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_average_at_start": load_at_start,
                    "load_average_at_end": list(os.getloadavg()),
                },
                **block,
            }
            write_result_json(args.out, results)  # after every dataset, so a long run keeps what it finished
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
