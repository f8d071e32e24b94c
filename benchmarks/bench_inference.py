"""Inference speed: seconds per case by stage, peak memory, cohort throughput and torchrun scaling.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_inference [--repeats 5] [--cohort 20] [--ranks 1 2] [--threads 2 1]

It writes an uncompressed int16 CT series (80 slices of 512x512, 0.7 mm pixels, 5 mm slices) and measures, each in a
fresh process so that thread settings and peak memory are its own:

* one case, :class:`pipeline.inference.CasePredictor` with the bundle's settings (network, ``roi_size``, ``spacing``,
  HU window from ``bundle/configs/inference.json``, random weights: speed does not depend on them), median of
  ``--repeats`` runs after one warm-up run, split by stage: load, preprocess, sliding-window inference, heatmap
  (resampling to the 512x512x80 source grid + NIfTI write), montage; the score time is load + preprocess +
  inference, the heatmap time adds the heatmap stage (goals: <= 2 s and <= 4.3 s on 2 CPU cores);
* peak resident memory of that process (``ru_maxrss``), before the first case (imports, network) and after;
* a ``--cohort``-case cohort (hard links of the same series; warm page cache) through :class:`CohortRunner`:
  cases per minute of the case loop;
* the same cohort through ``torchrun --nproc_per_node R -m pipeline evaluate-cohort`` for each ``--ranks`` value
  (``OMP_NUM_THREADS = threads / R``): wall time including start-up and merge, and the case-loop makespan (largest
  per-rank sum of case seconds), with the speed-up over one rank.

All child processes run with ``OMP_WAIT_POLICY=PASSIVE`` by default (see ``--omp-wait-policy``). The machine's load
average is recorded at start and end: on a shared machine the figures are indicative only.
Results go to ``benchmarks/results/inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the series writer lives with the tests
    sys.path.insert(0, str(REPO_ROOT))

__all__ = ["main"]

RESULTS = REPO_ROOT / "benchmarks" / "results" / "inference.json"
BUNDLE_CONFIG = REPO_ROOT / "bundle" / "configs" / "inference.json"
GOAL_SCORE_S = 2.0
GOAL_HEATMAP_S = 4.3  # Clara Holoscan's reported MRI segmentation time on a GPU


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    # the settings are expressions of the contracts defaults: resolve them
    config = ConfigParser(json.loads(BUNDLE_CONFIG.read_text()))
    return {
        "network_name": args.network or config.get_parsed_content("network_name"),
        "roi_size": list(args.roi_size or config.get_parsed_content("roi_size")),
        "spacing": list(args.spacing or config.get_parsed_content("spacing")),
        "hu_window": list(config.get_parsed_content("hu_window")),
        "overlap": config["overlap"],
        "blend_mode": config["blend_mode"],
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _build_predictor(settings: dict[str, Any], *, write_montage: bool = True):
    import torch

    from pipeline.inference import CasePredictor, DenseClassificationInferer
    from pipeline.networks import build
    from pipeline.transforms import infer_transforms

    torch.manual_seed(0)
    network = build(settings["network_name"]).eval()
    return CasePredictor(
        network=network,
        inferer=DenseClassificationInferer(
            roi_size=settings["roi_size"], overlap=settings["overlap"], mode=settings["blend_mode"]
        ),
        preprocessing=infer_transforms(
            roi_size=settings["roi_size"], spacing=settings["spacing"], hu_window=settings["hu_window"]
        ),
        write_montage=write_montage,
    )


def _measure_case(series: str, out: str, settings: dict[str, Any], repeats: int, threads: int) -> dict[str, Any]:
    """Child process: stage timings of one case and peak memory."""
    import torch

    torch.set_num_threads(threads)
    predictor = _build_predictor(settings)
    rss_before = _peak_rss_mb()
    runs = []
    for index in range(repeats + 1):
        prediction = predictor(series, case_id=f"case-bench{index}", heatmap_dir=out)
        if index:  # the first run warms up (allocator, oneDNN kernels, imports inside transforms)
            runs.append(prediction.stage_seconds)
    return {
        "runs": runs,
        "map_shape": list(prediction.map_shape),
        "source_shape": list(prediction.source_shape),
        "heatmap_mb": round(os.path.getsize(prediction.heatmap) / 2**20, 2),
        "rss_before_first_case_mb": round(rss_before, 1),
        "rss_peak_mb": round(_peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
    }


def _measure_cohort(manifest: str, out: str, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """Child process: the cohort runner's case loop."""
    import torch

    from pipeline.inference import CohortRunner

    torch.set_num_threads(threads)
    runner = CohortRunner(
        predictor=_build_predictor(settings), output_dir=out, progress=False, evaluate=False, fingerprint="bench"
    )
    summary = runner.run(manifest)
    return {
        "cases": summary.n_cases,
        "ok": summary.n_ok,
        "loop_s": round(summary.seconds, 3),
        "cases_per_min": round(summary.cases_per_minute, 2),
        "rss_peak_mb": round(_peak_rss_mb(), 1),
    }


def _median_stages(runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    stages = list(runs[0])
    medians = {stage: round(statistics.median(run[stage] for run in runs), 4) for stage in stages}
    score = [run["load"] + run["preprocess"] + run["inference"] for run in runs]
    heat = [s + run["heatmap"] for s, run in zip(score, runs, strict=True)]
    full = [h + run.get("montage", 0.0) for h, run in zip(heat, runs, strict=True)]
    return {
        "median_s": medians,
        "score_s": round(statistics.median(score), 4),
        "score_plus_heatmap_s": round(statistics.median(heat), 4),
        "score_heatmap_montage_s": round(statistics.median(full), 4),
        "runs_s": [{k: round(v, 4) for k, v in run.items()} for run in runs],
    }


def _cohort_manifest(series: Path, root: Path, n_cases: int) -> Path:
    lines = ["case_id,image"]
    for index in range(n_cases):
        folder = root / f"series-{index:03d}"
        folder.mkdir(parents=True)
        for file in series.iterdir():
            os.link(file, folder / file.name)  # same bytes, no extra disk
        lines.append(f"case-bench{index:03d},{folder.name}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _torchrun(ranks: int, manifest: Path, bundle: Path, out: Path, settings: dict, threads: int) -> dict[str, Any]:
    torchrun = Path(sys.executable).with_name("torchrun")
    overrides = []
    for key in ("network_name", "roi_size", "spacing"):
        overrides += ["--set", f"{key}={json.dumps(settings[key])}"]
    command = [
        str(torchrun), "--standalone", f"--nproc_per_node={ranks}", "-m", "pipeline", "evaluate-cohort",
        "--bundle", str(bundle), "--manifest", str(manifest), "--out", str(out), "--no-report", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // ranks)), "PYTHONPATH": str(REPO_ROOT)}
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    busy: dict[int, float] = {}
    for record_path in (out / "records").glob("*.json"):
        record = json.loads(record_path.read_text())
        busy[record["pid"]] = busy.get(record["pid"], 0.0) + record["seconds"]
    makespan = max(busy.values())
    cases = sum(1 for _ in (out / "records").glob("*.json"))
    return {
        "omp_num_threads": env["OMP_NUM_THREADS"],
        "wall_s": round(wall, 3),
        "loop_makespan_s": round(makespan, 3),
        "per_rank_busy_s": sorted(round(v, 3) for v in busy.values()),
        "cases": cases,
        "cases_per_min_wall": round(60 * cases / wall, 2),
        "cases_per_min_loop": round(60 * cases / makespan, 2),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``benchmarks/results/inference.json``.

    Args:
        argv: command-line arguments (see ``--help``).

    Returns:
        The results dictionary that was written.
    """
    parser = argparse.ArgumentParser(prog="bench_inference", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case measurement (after 1 warm-up)")
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cohort", type=int, default=20, help="cases of the cohort measurement (0 skips it)")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 2], help="torchrun rank counts (none: skip)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[2, 1],
        help="torch threads per process for the one-case timing; "
        "the first value (the machine's cores) is also used for the cohort and split across torchrun ranks",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "unset"),
        default="passive",
        help="OMP_WAIT_POLICY of the measuring processes: with 'active' (libgomp's spinning default) two threads "
        "on a busy 2-core machine wait for each other ~10x longer than they compute",
    )
    parser.add_argument("--network", help="network name (default: the bundle's)")
    parser.add_argument("--roi-size", type=int, nargs=3, help="window (default: the bundle's roi_size)")
    parser.add_argument("--spacing", type=float, nargs=3, help="mm (default: the bundle's spacing)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import monai
    import torch

    from benchmarks.store import write_result_json
    from tests.data.dicom_factory import write_ct_series

    settings = _settings(args)
    results: dict[str, Any] = {
        "benchmark": "inference",
        "config": {
            **settings,
            "weights": "random (speed does not depend on them)",
            "repeats": args.repeats,
            "statistic": "median after one warm-up run",
            "torch_threads": args.threads,
            "omp_wait_policy": args.omp_wait_policy,
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.is_available(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
        },
        "goals_s": {"score": GOAL_SCORE_S, "score_plus_heatmap": GOAL_HEATMAP_S},
    }
    if args.omp_wait_policy != "unset":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()  # read by each child's OpenMP runtime at start
    spawn = get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        series = tmp_path / "series"
        write_ct_series(
            series, n_slices=args.slices, rows=args.size, columns=args.size, pixel_spacing=(0.7, 0.7), slice_spacing=5.0
        )
        results["series"] = {
            "matrix": f"{args.size}x{args.size}",
            "slices": args.slices,
            "spacing_mm": [0.7, 0.7, 5.0],
            "pixel_type": "int16, Explicit VR Little Endian (uncompressed)",
            "write_s": round(time.perf_counter() - start, 3),
        }
        results["per_case"] = {}
        for threads in args.threads:
            print(f"timing one case with {threads} thread(s) ...", flush=True)
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                case = pool.submit(
                    _measure_case, str(series), str(tmp_path / "case_out"), settings, args.repeats, threads
                ).result()
            stages = _median_stages(case.pop("runs"))
            row = {**stages, **{k: v for k, v in case.items() if not k.startswith("rss")}}
            row["meets_goal"] = {
                "score": stages["score_s"] <= GOAL_SCORE_S,
                "score_plus_heatmap": stages["score_plus_heatmap_s"] <= GOAL_HEATMAP_S,
            }
            row["memory"] = {
                "rss_before_first_case_mb": case["rss_before_first_case_mb"],
                "rss_peak_mb": case["rss_peak_mb"],
                "case_increment_mb": round(case["rss_peak_mb"] - case["rss_before_first_case_mb"], 1),
                "note": "peak resident set of the measuring process (ru_maxrss); before = after imports and network",
            }
            results["per_case"][f"threads_{threads}"] = row
            print(json.dumps(row["median_s"]), flush=True)

        if args.cohort > 0:
            manifest = _cohort_manifest(series, tmp_path / "cohort", args.cohort)
            print(f"cohort of {args.cohort} cases ...", flush=True)
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                results["cohort"] = pool.submit(
                    _measure_cohort, str(manifest), str(tmp_path / "cohort_out"), settings, args.threads[0]
                ).result()
            results["cohort"]["torch_threads"] = args.threads[0]
            print(json.dumps(results["cohort"]), flush=True)
            if args.ranks:
                bundle = tmp_path / "bundle"
                (bundle / "models").mkdir(parents=True)
                torch.manual_seed(0)
                from pipeline.networks import build

                torch.save(build(settings["network_name"]).state_dict(), bundle / "models" / "model.pt")
                scaling = {}
                for ranks in args.ranks:
                    print(f"torchrun with {ranks} rank(s) ...", flush=True)
                    scaling[str(ranks)] = _torchrun(
                        ranks, manifest, bundle, tmp_path / f"torchrun_{ranks}", settings, args.threads[0]
                    )
                    shutil.rmtree(tmp_path / f"torchrun_{ranks}" / "heatmaps", ignore_errors=True)
                    print(json.dumps(scaling[str(ranks)]), flush=True)
                base = scaling.get("1", {})
                for row in scaling.values():
                    if "error" not in row and "error" not in base and base:
                        row["speedup_wall"] = round(base["wall_s"] / row["wall_s"], 3)
                        row["speedup_loop"] = round(base["loop_makespan_s"] / row["loop_makespan_s"], 3)
                results["torchrun"] = scaling
    results["config"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["note"] = (
        "taken on a machine shared with other jobs (see the load averages): indicative only; "
        "rerun on an idle machine for reference figures"
    )
    write_result_json(args.output, results)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
