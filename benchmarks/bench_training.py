"""Training throughput: volumes per second and the share of step time spent waiting on data, cold vs cached.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_training [--cases 40] [--size 64] [--epochs 3] [--workers 0 2]

It writes the demo cohort (``aamct demo-data`` -> ``manifest build`` -> ``manifest split``, the ``make demo`` steps)
into a temporary folder, unless ``--datalist`` names an existing one, then for each ``--workers`` value runs the
bundle's training exactly as a user does (``python -m monai.bundle run training --config_file
bundle/configs/train.json ...``, a fresh process, an empty ``PersistentDataset`` cache) and reads the per-epoch
figures that :class:`pipeline.training.handlers.EpochSummary` records in ``train_history.json``:

* epoch 1 = cold cache: every case is read from DICOM and preprocessed (in the DataLoader workers, or in the main
  process with 0 workers); the validation cases were already read (and cached) by the pre-flight pass;
* epochs 2.. = cached: only unpickling and augmentation remain.

Per epoch: training volumes per second (over the training part of the epoch, validation excluded), data-wait
seconds (ignite ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``) and their share of the training time, the whole
epoch's wall time, and the process's total wall time (start-up and pre-flight included). The machine's load average
is recorded at start and end: on a shared machine the figures are indicative only.
Results go to ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["main"]

RESULTS = REPO_ROOT / "benchmarks" / "results" / "training.json"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_training", description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, help="use this datalist / manifest instead of writing the demo cohort")
    parser.add_argument("--cases", type=int, default=40, help="demo cohort size (the `make demo` default)")
    parser.add_argument("--size", type=int, default=64, help="demo in-plane matrix")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (1 cold + the rest cached)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to compare")
    parser.add_argument("--network", default=None, help="network_name override (default: the bundle's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch_size override (default: the bundle's)")
    parser.add_argument("--workdir", type=Path, help="keep cohort and runs here (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _write_cohort(root: Path, *, cases: int, size: int) -> Path:
    """The `make demo` data steps; returns the datalist."""
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.manifest import build_manifest
    from pipeline.data.splits import split_manifest

    demo = write_demo_cohort(root / "cohort_dicom", cases=cases, size=size, seed=0)
    key = root / "pseudonym.key"
    key.write_text("benchmark-key-" + "0" * 32, encoding="utf-8")
    manifest = root / "manifest.csv"
    build_manifest(dicom_root=demo.root, nifti_glob=None, labels_csv=demo.labels_csv, out=manifest, key_file=key)
    split_manifest(manifest, seed=0)
    return root / "manifest.datalist.json"


def _run(datalist: Path, output: Path, *, epochs: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", "bundle/configs/train.json", "--bundle_root", "bundle",
        "--datalist", str(datalist), "--output_dir", str(output),
        "--epochs", str(epochs), "--num_workers", str(workers),
        "--early_stop_patience", str(epochs + 1),
    ]  # fmt: skip
    if args.network:
        command += ["--network_name", args.network]
    if args.batch_size:
        command += ["--batch_size", str(args.batch_size)]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"training run failed ({process.returncode}):\n{process.stderr[-2000:]}")
    rows = json.loads((output / "train_history.json").read_text(encoding="utf-8"))["epochs"]
    epochs_out = [
        {
            "epoch": row["epoch"],
            "cache": "cold" if row["epoch"] == 1 else "cached",
            "volumes": row["volumes"],
            "volumes_per_second": _round(row["volumes_per_second"]),
            "data_wait_seconds": _round(row["data_wait_seconds"]),
            "data_wait_share": _round(row["data_wait_share"]),
            "train_seconds": _round(row["train_seconds"]),
            "epoch_seconds_with_validation": _round(row["epoch_seconds"]),
        }
        for row in rows
    ]
    cached = [row for row in epochs_out if row["cache"] == "cached"]
    return {
        "num_workers": workers,
        "process_wall_seconds": _round(wall),
        "epochs": epochs_out,
        "cold": epochs_out[0],
        "cached_median": {
            key: _round(statistics.median(row[key] for row in cached))
            for key in ("volumes_per_second", "data_wait_share", "train_seconds")
        }
        if cached
        else None,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    config = json.loads((REPO_ROOT / "bundle" / "configs" / "train.json").read_text(encoding="utf-8"))
    parser = ConfigParser(config)  # the settings are expressions of the contracts defaults: resolve them
    return {
        "network_name": args.network or parser.get_parsed_content("network_name"),
        "batch_size": args.batch_size or config["batch_size"],
        "roi_size": parser.get_parsed_content("roi_size"),
        "spacing": parser.get_parsed_content("spacing"),
        "epochs": args.epochs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON; returns the exit status."""
    args = _parse(argv)
    import torch

    from benchmarks.store import write_result_json
    from pipeline.errors import UserError

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="aamct-bench-training-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            datalist = args.datalist or _write_cohort(work, cases=args.cases, size=args.size)
        except UserError as err:
            print(f"bench_training: error: {err}", file=sys.stderr)
            return 2
        cohort_seconds = time.perf_counter() - started
        data = json.loads(Path(datalist).read_text(encoding="utf-8")) if str(datalist).endswith(".json") else None
        runs = [
            _run(datalist, work / f"run-workers{workers}", epochs=args.epochs, workers=workers, args=args)
            for workers in args.workers
        ]
    result = {
        "benchmark": "training",
        "command": "python -m monai.bundle run training --config_file bundle/configs/train.json ...",
        "cohort": {
            "source": str(args.datalist) if args.datalist else f"demo cohort, {args.cases} cases at {args.size}",
            "datalist_training_rows": None if data is None else len(data["training"]),
            "seconds_to_write": None if args.datalist else _round(cohort_seconds, 1),
        },
        "settings": _settings(args),
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        },
        "note": "volumes/s of one process's training loop; on a shared machine (see load averages) indicative only",
    }
    write_result_json(args.output, result)
    for run in runs:
        cold, cached = run["cold"], run["cached_median"]
        line = (
            f"workers {run['num_workers']}: cold epoch {cold['volumes_per_second']} vol/s "
            f"(data wait {100 * (cold['data_wait_share'] or 0):.0f}%)"
        )
        if cached:
            line += (
                f", cached epochs {cached['volumes_per_second']} vol/s "
                f"(data wait {100 * (cached['data_wait_share'] or 0):.0f}%)"
            )
        print(line)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
