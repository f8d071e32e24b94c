"""What the default heatmap costs: a cohort run with maps against the same run without, and one clinical-size case.

Run from the repository root (after ``benchmarks.demo_models`` trained the demo network, or it trains it)::

    .venv/bin/python -m benchmarks.bench_map_cost [--difficulty default] [--output benchmarks/results/map_cost.json]

1. ``aamct evaluate-cohort`` (in process, the console script's ``main``) on the demo cohort's test split with the
   demo network, once with ``--no-heatmaps`` and once with the default map (NIfTI + PNG montage + gallery), in that
   order, same cases; the ratio of the wall times is the maps' cost (issue goal: <= 3x).
2. One demo DICOM series at 512 x 512 (``aamct demo-data --size 512``, 50-80 slices) scored by :class:`CasePredictor` with the
   default map and without: seconds per stage, median of ``--repeats`` after one warm-up (goal: score + map <= 4.3 s
   on the CPU, the seed's GPU anchor for a whole MRI segmentation).

The machine load is recorded at start and end; the timings are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS = REPO_ROOT / "benchmarks" / "results" / "map_cost.json"


def _cohort_runs(model, out: Path) -> dict:
    from pipeline.cli import main as aamct

    base = [
        "evaluate-cohort",
        "--bundle",
        str(model.run_dir),
        "--manifest",
        str(model.cohort.manifest),
        "--split",
        "test",
    ]
    timings = {}
    for label, extra in (("no_heatmaps", ["--no-heatmaps", "--no-report"]), ("default_maps", ["--no-report"])):
        started = time.perf_counter()
        code = aamct([*base, "--out", str(out / label), *extra])
        timings[label] = {"seconds": round(time.perf_counter() - started, 2), "exit_code": code}
    timings["ratio"] = round(timings["default_maps"]["seconds"] / timings["no_heatmaps"]["seconds"], 2)
    return timings


def _clinical_case(model, folder: Path, repeats: int) -> dict:
    import numpy as np
    import torch

    from pipeline.contracts import settings_for
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.reader import read_volume
    from pipeline.inference import CasePredictor, DenseClassificationInferer
    from pipeline.inference.bundle import load_weights
    from pipeline.inference.maps import DEFAULT_MAP_KIND
    from pipeline.networks import build
    from pipeline.transforms import infer_transforms

    # a positive demo case written at the clinical matrix: a DICOM series of 512 x 512 slices
    write_demo_cohort(folder / "clinical", cases=2, size=512, seed=0)
    source = sorted(p for p in (folder / "clinical").iterdir() if p.is_dir())[0]
    shape = list(read_volume(source)[0].shape)
    settings = settings_for(model.checkpoint)
    network = load_weights(build(settings.network_name, options=dict(settings.network_kwargs)), model.checkpoint)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = {}
    for label, kwargs in (("score_only", {"write_heatmap": False, "write_montage": False}), ("score_and_map", {})):
        predictor = CasePredictor(
            network=network.eval(),
            inferer=DenseClassificationInferer(roi_size=settings.roi_size),
            preprocessing=infer_transforms(
                roi_size=settings.roi_size, spacing=settings.spacing, hu_window=settings.hu_window
            ),
            heatmap_kind=DEFAULT_MAP_KIND,
            **kwargs,
        )
        runs = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            prediction = predictor(source, case_id="clinical", heatmap_dir=folder / label)
            runs.append({"total": time.perf_counter() - started, **prediction.stage_seconds})
        kept = runs[1:]
        out[label] = {
            "seconds_median": round(float(np.median([r["total"] for r in kept])), 2),
            "stage_seconds_median": {
                key: round(float(np.median([r.get(key, 0.0) for r in kept])), 3) for key in kept[0] if key != "total"
            },
            "passes": predictor.map_maker.passes if label == "score_and_map" else None,
            "windows": predictor.map_maker.windows if label == "score_and_map" else None,
        }
    out["map_kind"] = DEFAULT_MAP_KIND
    out["shape"] = shape
    out["series"] = "aamct demo-data --size 512 --cases 2 --seed 0, first series"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Time both, write the JSON."""
    from benchmarks.demo_models import DEMO_NETWORK, trained_demo_model
    from benchmarks.store import write_result_json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_map_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    model = trained_demo_model(DEMO_NETWORK, args.difficulty)
    with tempfile.TemporaryDirectory(prefix="aamct-map-cost-") as scratch:
        cohort = _cohort_runs(model, Path(scratch))
        clinical = _clinical_case(model, Path(scratch), args.repeats)
    record = {
        "benchmark": "map_cost",
        "command": " ".join(["python -m benchmarks.bench_map_cost", *map(shlex.quote, argv or sys.argv[1:])]),
        "network": DEMO_NETWORK,
        "difficulty": args.difficulty,
        "cohort_test_split": cohort,
        "clinical_case": clinical,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg()[0],
    }
    write_result_json(args.output, record)
    print(record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
