"""Train-or-reuse a named network on a generated demo cohort with the demo recipe (shared by the benchmarks).

Run from the repository root::

    .venv/bin/python -m benchmarks.demo_models --network aam_student_small resnet18 --difficulty hard [--cases 120]

or from Python::

    from benchmarks.demo_models import trained_demo_model
    model = trained_demo_model("resnet18", "hard")
    model.checkpoint, model.truth_dir, model.metrics["auc"]

What it does, as a user would (every step a stock command or the function behind it):

1. the cohort: ``aamct demo-data --masks`` (DICOM series + lesion/lung masks + truth tables, see
   :func:`pipeline.data.demo.write_demo_cohort`), ``aamct manifest build`` and ``aamct manifest split --seed 0``,
   into ``<workdir>/<cohort key>/`` (``cohort_dicom/``, ``cohort_dicom_truth/``, ``manifest.csv``,
   ``manifest.datalist.json``);
2. the training: ``python -m monai.bundle run training --config_file bundle/configs/train.json ...`` with the demo
   recipe of the Makefile (:data:`DEMO_RECIPE`: ``DEMO_TRAIN``'s LR / BATCH / SCHEDULE / LATER_TIES / EPOCHS) and
   the requested network, into ``<cohort>/runs/<network>[-<kwargs>]-seed<seed>/``;
3. the evaluation on the test split (``python -m monai.bundle run evaluating``, what ``make evaluate`` runs):
   ``metrics.json`` with AUC, DeLong CI and the frozen operating point.

Reuse: a finished run is one whose folder holds ``models/run.json`` and ``models/model.pt`` (written by the
training) and ``recipe.json`` (written here after training and evaluation succeeded), with ``recipe.json`` equal to
the requested recipe: network, its options, optimiser settings, epochs, training seed, cohort settings, the
datalist's sha256 and a sha256 of the code that decides the weights (``pipeline/networks``, ``pipeline/training``,
``pipeline/transforms.py``, ``bundle/configs/train.json``), so a changed network or recipe is trained again rather
than served stale. Anything else in the run folder is removed and the run trained again. A cohort is reused when
its ``generator.json`` matches the requested settings and ``cohort.json`` records the same generator code
(``pipeline/data/demo/``). Concurrent callers (two benchmarks, two helpers) are serialised by a lock file per
cohort and per run, so a model is trained once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

__all__ = [
    "DEFAULT_WORKDIR",
    "DEMO_COHORT",
    "DEMO_NETWORK",
    "DEMO_PSEUDONYM_KEY",
    "DEMO_RECIPE",
    "DemoCohortFiles",
    "DemoModel",
    "code_fingerprint",
    "demo_cohort",
    "finished_demo_model",
    "main",
    "trained_demo_model",
]

#: where cohorts and runs live unless told otherwise (git-ignored)
DEFAULT_WORKDIR = REPO_ROOT / "runs" / "demo_models"
#: the network ``make demo`` trains
DEMO_NETWORK = "aam_student_small"
#: the Makefile's demo recipe (``DEMO_TRAIN``; tests/benchmarks/test_demo_models.py checks they agree)
DEMO_RECIPE: dict[str, Any] = {
    "learning_rate": 6e-4,
    "batch_size": 8,
    "lr_schedule": "cosine",
    "keep_later_ties": True,
    "epochs": 30,
    "checkpoint_selection": "last",
    "early_stop_patience": 30,
}
#: the Makefile's demo cohort (``make demo``: DEMO_CASES, DEMO_SIZE, seed 0)
DEMO_COHORT: dict[str, Any] = {"cases": 120, "size": 64, "seed": 0}
#: the demo cohorts' pseudonym key (the Makefile's DEMO_KEY), fixed: case ids and splits are the same on every machine
DEMO_PSEUDONYM_KEY = "aamct-demo-models-key-" + "0" * 32
#: the code that decides a cohort's files, and a trained run's weights
_GENERATOR_CODE = ("pipeline/data/demo",)
_TRAINING_CODE = ("pipeline/networks", "pipeline/training", "pipeline/transforms.py", "bundle/configs/train.json")


def code_fingerprint(paths: Sequence[str]) -> str:
    """sha256 over the contents of the files (folders: their ``*.py`` files), in path order."""
    digest = hashlib.sha256()
    for name in paths:
        path = REPO_ROOT / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class DemoCohortFiles:
    """A generated demo cohort on disk.

    Attributes:
        folder: the cohort's work folder.
        dicom_root: the DICOM series (``aamct demo-data --out``).
        truth_dir: masks, ``truth.csv``, ``lesions.csv``, ``generator.json``.
        manifest: the manifest CSV (split filled in).
        datalist: the MONAI datalist JSON.
        settings: the generator settings (``generator.json``).
    """

    folder: Path
    dicom_root: Path
    truth_dir: Path
    manifest: Path
    datalist: Path
    settings: dict[str, Any]


@dataclass(frozen=True)
class DemoModel:
    """A network trained on a demo cohort with the demo recipe.

    Attributes:
        network: the registry name.
        difficulty: the cohort's difficulty.
        run_dir: the bundle's ``output_dir`` (``models/``, ``metrics.json``, ``recipe.json``, ``eval_test/``).
        checkpoint: ``run_dir/models/model.pt`` (best validation AUC).
        cohort: the cohort the network was trained on.
        recipe: the recipe record (``recipe.json``).
        metrics: the test-split ``metrics.json`` (``auc``, ``auc_ci``, ``splits.val.auc`` ...).
        reused: True when an earlier finished run was found.
        seconds: wall time of training + evaluation (as recorded when it was trained).
    """

    network: str
    difficulty: str
    run_dir: Path
    checkpoint: Path
    cohort: DemoCohortFiles
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    reused: bool
    seconds: float

    @property
    def truth_dir(self) -> Path:
        """The cohort's truth folder (masks and tables)."""
        return self.cohort.truth_dir

    @property
    def test_auc(self) -> float | None:
        """Test-split AUC of the best checkpoint."""
        return self.metrics.get("auc")

    @property
    def val_auc(self) -> float | None:
        """Validation AUC of the best checkpoint."""
        return self.metrics.get("splits", {}).get("val", {}).get("auc")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cohort_key(settings: dict[str, Any]) -> str:
    key = f"{settings['difficulty']}-c{settings['cases']}-s{settings['size']}-seed{settings['seed']}"
    if settings.get("lesion_size_range") is not None:
        low, high = settings["lesion_size_range"]
        key += f"-{low:g}-{high:g}{settings['lesion_size_unit']}"
    return key


def demo_cohort(
    difficulty: str = "default",
    *,
    cases: int = DEMO_COHORT["cases"],
    size: int = DEMO_COHORT["size"],
    seed: int = DEMO_COHORT["seed"],
    lesion_size_range: tuple[float, float] | None = None,
    lesion_size_unit: str = "mm",
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
) -> DemoCohortFiles:
    """Generate (or reuse) a demo cohort with its truth, manifest and split.

    Args:
        difficulty: ``default`` or ``hard``.
        cases: scans.
        size: in-plane matrix.
        seed: generator seed.
        lesion_size_range: ``(min, max)`` lesion size (see ``aamct demo-data --lesion-size-range``).
        lesion_size_unit: ``mm`` or ``ml``.
        workdir: parent of the cohort folder.

    Returns:
        The cohort's files.
    """
    request = {
        "difficulty": difficulty,
        "cases": cases,
        "size": size,
        "seed": seed,
        "lesion_size_range": list(lesion_size_range) if lesion_size_range is not None else None,
        "lesion_size_unit": lesion_size_unit,
    }
    folder = Path(workdir) / _cohort_key(request)
    truth_dir, datalist = folder / "cohort_dicom_truth", folder / "manifest.datalist.json"
    generator_code = code_fingerprint(_GENERATOR_CODE)
    with _locked(folder.with_name(folder.name + ".lock")):
        settings = _read_json(truth_dir / "generator.json")
        expected = {"cases": cases, "size": size, "seed": seed, "difficulty": difficulty}
        recorded = (_read_json(folder / "cohort.json") or {}).get("generator_code")
        stale = settings is None or any(settings.get(k) != v for k, v in expected.items())
        if stale or recorded != generator_code or not datalist.is_file():
            # generate beside the old cohort; keep the old one (and the runs trained on it) when the new code
            # writes the same cohort (a refactor of the generator), replace it when the content differs
            fresh = folder.with_name(folder.name + ".new")
            if fresh.exists():
                shutil.rmtree(fresh)
            fresh.mkdir(parents=True)
            _write_cohort(fresh, request, lesion_size_range)
            from benchmarks.store import cohort_fingerprint
            from pipeline.io import write_json_atomic

            same = (
                not stale
                and datalist.is_file()
                and cohort_fingerprint(truth_dir, datalist)
                == cohort_fingerprint(fresh / "cohort_dicom_truth", fresh / "manifest.datalist.json")
            )
            if same:
                shutil.rmtree(fresh)
            else:
                if folder.exists():
                    shutil.rmtree(folder)
                fresh.rename(folder)
                _relocate_manifest(fresh, folder)
            write_json_atomic(folder / "cohort.json", {"request": request, "generator_code": generator_code})
            settings = _read_json(truth_dir / "generator.json")
    return _cohort_files(folder, settings)


def _cohort_files(folder: Path, settings: dict[str, Any] | None) -> DemoCohortFiles:
    folder = folder.resolve()
    return DemoCohortFiles(
        folder=folder,
        dicom_root=folder / "cohort_dicom",
        truth_dir=folder / "cohort_dicom_truth",
        manifest=folder / "manifest.csv",
        datalist=folder / "manifest.datalist.json",
        settings=settings or {},
    )


def _write_cohort(folder: Path, request: dict[str, Any], lesion_size_range: tuple[float, float] | None) -> None:
    """``aamct demo-data --masks``, ``manifest build`` and ``manifest split --seed 0`` into ``folder``."""
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.manifest import build_manifest
    from pipeline.data.splits import split_manifest

    dicom_root, truth_dir = folder / "cohort_dicom", folder / "cohort_dicom_truth"
    write_demo_cohort(
        dicom_root,
        cases=request["cases"],
        size=request["size"],
        seed=request["seed"],
        difficulty=request["difficulty"],
        lesion_size_range=lesion_size_range,
        lesion_size_unit=request["lesion_size_unit"],
        masks=True,
        truth_dir=truth_dir,
    )
    key_file = folder / "pseudonym.key"
    key_file.write_text(DEMO_PSEUDONYM_KEY, encoding="utf-8")
    build_manifest(
        dicom_root=dicom_root, nifti_glob=None, labels_csv=dicom_root / "labels.csv", out=folder / "manifest.csv",
        key_file=key_file,
    )  # fmt: skip
    split_manifest(folder / "manifest.csv", seed=0)


def _relocate_manifest(old: Path, new: Path) -> None:
    """Rewrite the absolute paths a cohort generated in ``old`` records, after the folder moved to ``new``."""
    names = ("manifest.datalist.json", "manifest.csv", "manifest.rejections.csv", "cohort_dicom_truth/generator.json")
    for path in (new / name for name in names):
        if path.is_file():
            path.write_text(path.read_text(encoding="utf-8").replace(str(old), str(new)), encoding="utf-8")


def trained_demo_model(
    network: str,
    difficulty: str = "default",
    *,
    network_kwargs: dict[str, Any] | None = None,
    train_seed: int = 0,
    cases: int = DEMO_COHORT["cases"],
    size: int = DEMO_COHORT["size"],
    seed: int = DEMO_COHORT["seed"],
    lesion_size_range: tuple[float, float] | None = None,
    lesion_size_unit: str = "mm",
    recipe: dict[str, Any] | None = None,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    log: Any = None,
) -> DemoModel:
    """A network trained once on a demo cohort through the bundle with the demo recipe (reused when finished).

    Args:
        network: registry name (``aam_student_small``, ``resnet18``, ``densenet121`` ...).
        difficulty: ``default`` or ``hard``.
        network_kwargs: the network's options (train.json ``network_kwargs``).
        train_seed: train.json ``seed`` (weights initialisation, shuffling, augmentation).
        cases: scans of the cohort.
        size: in-plane matrix.
        seed: generator seed of the cohort.
        lesion_size_range: ``(min, max)`` lesion size (see ``aamct demo-data --lesion-size-range``).
        lesion_size_unit: ``mm`` or ``ml``.
        recipe: overrides of :data:`DEMO_RECIPE` (e.g. ``{"epochs": 10}``; ``spacing`` and ``roi_size`` set a
            preprocessing other than the defaults; the evaluation reads it from the run's ``models/run.json``).
        workdir: parent of the cohort folders.
        log: a writable text stream for the bundle's output (default: a ``train.log`` / ``evaluate.log`` in the run).

    Returns:
        The trained model.

    Raises:
        RuntimeError: when the training or the evaluation exits non-zero (the message names the log file).
    """
    cohort = demo_cohort(
        difficulty,
        cases=cases,
        size=size,
        seed=seed,
        lesion_size_range=lesion_size_range,
        lesion_size_unit=lesion_size_unit,
        workdir=workdir,
    )
    settings = {**DEMO_RECIPE, **(recipe or {})}
    record = {
        "network": network,
        "network_kwargs": dict(network_kwargs or {}),
        **settings,
        "train_seed": train_seed,
        "cohort": {
            k: cohort.settings.get(k) for k in ("cases", "size", "seed", "difficulty", "lesion_volume_range_ml")
        },
        "datalist_sha256": hashlib.sha256(cohort.datalist.read_bytes()).hexdigest(),
        "training_code": code_fingerprint(_TRAINING_CODE),
    }
    run_dir = cohort.folder / "runs" / _run_name(network, network_kwargs, train_seed, recipe)
    with _locked(run_dir.with_name(run_dir.name + ".lock")):
        done = _read_json(run_dir / "recipe.json")
        finished = (run_dir / "models" / "run.json").is_file() and (run_dir / "models" / "model.pt").is_file()
        if done is not None and finished and {k: v for k, v in done.items() if k != "seconds"} == record:
            return _reused(network, difficulty, run_dir, cohort, done)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        _bundle("training", cohort, run_dir, settings, network, network_kwargs, train_seed, log)
        _bundle("evaluating", cohort, run_dir, settings, network, network_kwargs, train_seed, log)
        seconds = round(time.perf_counter() - start, 1)
        done = {**record, "seconds": seconds}
        from pipeline.io import write_json_atomic

        write_json_atomic(run_dir / "recipe.json", done)
    return DemoModel(
        network=network,
        difficulty=difficulty,
        run_dir=run_dir,
        checkpoint=run_dir / "models" / "model.pt",
        cohort=cohort,
        recipe=done,
        metrics=_read_json(run_dir / "metrics.json") or {},
        reused=False,
        seconds=seconds,
    )


def _reused(network: str, difficulty: str, run_dir: Path, cohort: DemoCohortFiles, done: dict[str, Any]) -> DemoModel:
    return DemoModel(
        network=network,
        difficulty=difficulty,
        run_dir=run_dir,
        checkpoint=run_dir / "models" / "model.pt",
        cohort=cohort,
        recipe=done,
        metrics=_read_json(run_dir / "metrics.json") or {},
        reused=True,
        seconds=float(done.get("seconds", 0.0)),
    )


def finished_demo_model(
    network: str,
    difficulty: str = "default",
    *,
    network_kwargs: dict[str, Any] | None = None,
    train_seed: int = 0,
    cases: int = DEMO_COHORT["cases"],
    size: int = DEMO_COHORT["size"],
    seed: int = DEMO_COHORT["seed"],
    recipe: dict[str, Any] | None = None,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
) -> DemoModel | None:
    """The run :func:`trained_demo_model` makes, taken as it is on disk even when the training or generator code has
    changed since (its ``recipe.json`` records which code trained it), for benchmarks whose stored results belong
    to those weights; ``None`` when it is not finished (``recipe.json`` and ``models/model.pt``)."""
    request = {"difficulty": difficulty, "cases": cases, "size": size, "seed": seed, "lesion_size_range": None}
    folder = Path(workdir) / _cohort_key(request)
    run_dir = folder.resolve() / "runs" / _run_name(network, network_kwargs, train_seed, recipe)
    done = _read_json(run_dir / "recipe.json")
    if done is None or not (run_dir / "models" / "model.pt").is_file():
        return None
    return _reused(
        network,
        difficulty,
        run_dir,
        _cohort_files(folder, _read_json(folder / "cohort_dicom_truth" / "generator.json")),
        done,
    )


def _run_name(network: str, kwargs: dict[str, Any] | None, train_seed: int, recipe: dict[str, Any] | None) -> str:
    name = network
    if kwargs:
        name += "-" + "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    if recipe:
        name += "-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    # no dots: a folder name with one reads as a file name with a suffix to some path helpers
    return f"{name}-seed{train_seed}".replace("/", "_").replace(" ", "").replace(".", "p")


def _bundle(
    bundle_id: str,
    cohort: DemoCohortFiles,
    run_dir: Path,
    settings: dict[str, Any],
    network: str,
    network_kwargs: dict[str, Any] | None,
    train_seed: int,
    log: Any,
    extra: Sequence[str] = (),
) -> None:
    """``python -m monai.bundle run <id>`` as ``make train`` / ``make evaluate`` / ``make distill`` call it.

    ``distilling`` takes the training options (the recipe, as ``make distill`` passes them) and ``extra``
    (``--teacher_ckpt ... --stages ...``).
    """
    config = "bundle/configs/train.json"
    if bundle_id == "evaluating":
        config = "['bundle/configs/train.json','bundle/configs/evaluate.json']"
    elif bundle_id == "distilling":
        config = "['bundle/configs/train.json','bundle/configs/distill.json']"
    command = [
        sys.executable, "-m", "monai.bundle", "run", bundle_id,
        "--config_file", config,
        "--meta_file", "bundle/configs/metadata.json",
        "--bundle_root", "bundle",
        "--datalist", str(cohort.datalist),
        "--output_dir", str(run_dir),
    ]  # fmt: skip
    if bundle_id in ("training", "distilling"):
        command += [
            "--epochs", str(settings["epochs"]),
            "--network_name", network,
            "--learning_rate", repr(settings["learning_rate"]),
            "--batch_size", str(settings["batch_size"]),
            "--lr_schedule", settings["lr_schedule"],
            "--keep_later_ties", str(settings["keep_later_ties"]).lower(),
            "--seed", str(train_seed),
        ]  # fmt: skip
        for key in ("checkpoint_selection", "early_stop_patience"):
            if key in settings:
                command += [f"--{key}", str(settings[key])]
        if network_kwargs:
            command += ["--network_kwargs", repr(dict(network_kwargs))]
        command += list(extra)
        for key in ("spacing", "roi_size"):  # a preprocessing other than the defaults (bench_resolution)
            if settings.get(key) is not None:
                command += [f"--{key}", json.dumps(list(settings[key]))]
    else:  # the evaluation reads the preprocessing from the run's models/run.json
        command += ["--split", "test"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO_ROOT)}
    log_path = run_dir / {"training": "train.log", "distilling": "distill.log"}.get(bundle_id, "evaluate.log")
    with contextlib.ExitStack() as stack:
        stream = log if log is not None else stack.enter_context(open(log_path, "w", encoding="utf-8"))
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{bundle_id} of {network} on {cohort.folder.name} exited {result.returncode}; see {log_path}"
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_models", description=__doc__.splitlines()[0])
    parser.add_argument("--network", nargs="+", default=[DEMO_NETWORK], help="registry names to train")
    parser.add_argument("--difficulty", default="default", help="default or hard")
    parser.add_argument("--cases", type=int, default=DEMO_COHORT["cases"])
    parser.add_argument("--size", type=int, default=DEMO_COHORT["size"])
    parser.add_argument("--seed", type=int, default=DEMO_COHORT["seed"], help="the cohort generator's seed")
    parser.add_argument("--train-seed", type=int, nargs="+", default=[0], help="train.json seed(s)")
    parser.add_argument("--lesion-size-range", type=float, nargs=2, metavar=("MIN", "MAX"))
    parser.add_argument("--lesion-size-unit", default="mm")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or reuse) each requested network and print its validation and test AUC."""
    args = _parser().parse_args(argv)
    for network in args.network:
        for train_seed in args.train_seed:
            model = trained_demo_model(
                network,
                args.difficulty,
                train_seed=train_seed,
                cases=args.cases,
                size=args.size,
                seed=args.seed,
                lesion_size_range=tuple(args.lesion_size_range) if args.lesion_size_range else None,
                lesion_size_unit=args.lesion_size_unit,
                recipe={"epochs": args.epochs} if args.epochs else None,
                workdir=args.workdir,
            )
            ci = model.metrics.get("auc_ci")
            ci_text = f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
            print(
                f"{network} seed {train_seed} on {model.cohort.folder.name}: val AUC {model.val_auc}, "
                f"test AUC {model.test_auc}{ci_text}, {'reused' if model.reused else f'{model.seconds:.0f} s'}; "
                f"{model.run_dir}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
