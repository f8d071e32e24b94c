"""Where a real case's time goes: the real chest CT through ``aamct evaluate-cohort`` with and without ``--dicom-out``.

Run from the repository root (after ``make test-tools`` fetched the real chest CT)::

    .venv/bin/python -m benchmarks.bench_case_time [--repeats 3] [--bundle RUN_OR_ZIP]

The case is TCIA Lung-PET-CT-Dx Lung_Dx-A0001 (64 axial slices of 512 x 512, ``.cache/realdata/lung_dx_a0001``).
The model is the demo's network (``aam_student_small`` at width 0.125, what the demo's cascade distils to), trained
for one epoch on a 24-case demo cohort by :func:`benchmarks.demo_models.trained_demo_model`: the weights do not
change the time of a case, only the architecture and the map kind do (the default map). ``--bundle`` times another
bundle (a run folder or an exported zip) instead.

Each repetition runs the console script's ``main`` in this process twice on a fresh ``--out``, first without and
then with ``--dicom-out``, after one warm-up pair that is not counted (the first case of a process also pays
one-time costs: TorchScript freezing, imports). From each run's ``predictions.csv`` it takes the case's
``seconds`` (the case's total) and every ``seconds_*`` step column; reported: the median per column over the
repetitions, how far the steps' sum is from the total, and the ratio of the medians of the totals (goal <= 1.5,
issue 25). The machine's load average is recorded at start and end: timings are comparable only within one run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS = REPO_ROOT / "benchmarks" / "results" / "case_time.json"
REAL_CHEST = Path(os.environ.get("AAMCT_REAL_CHEST", REPO_ROOT / ".cache" / "realdata" / "lung_dx_a0001"))

__all__ = ["main", "time_case"]


def _model_bundle() -> Path:
    from benchmarks.demo_models import DEMO_NETWORK, trained_demo_model

    model = trained_demo_model(DEMO_NETWORK, "default", network_kwargs={"width": 0.125}, cases=24, recipe={"epochs": 1})
    return model.run_dir


def time_case(bundle: Path, series: Path, out: Path, *, dicom: bool) -> dict:
    """One ``aamct evaluate-cohort`` run on the folder holding ``series``: the case's time columns and the wall."""
    import pandas as pd

    from pipeline.cli import main as aamct

    argv = ["evaluate-cohort", "--bundle", str(bundle), "--input", str(series.parent), "--out", str(out)]
    argv += ["--no-report", *(["--dicom-out", str(out / "dicom")] if dicom else [])]
    started = time.perf_counter()
    code = aamct(argv)
    wall = time.perf_counter() - started
    frame = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    if code != 0 or len(frame) != 1 or frame.loc[0, "status"] != "ok":
        raise RuntimeError(f"evaluate-cohort failed (exit {code}): {frame.to_dict('records')}")
    row = frame.iloc[0]
    steps = {c: float(row[c]) for c in frame.columns if c.startswith("seconds_") and str(row[c]) != ""}
    return {"seconds": float(row["seconds"]), "steps": steps, "command_wall_seconds": round(wall, 3)}


def _summary(runs: list[dict]) -> dict:
    import numpy as np

    columns = sorted({c for r in runs for c in r["steps"]}, key=lambda c: list(runs[0]["steps"]).index(c))
    median = {c: round(float(np.median([r["steps"].get(c, 0.0) for r in runs])), 3) for c in columns}
    totals = [r["seconds"] for r in runs]
    gaps = [abs(r["seconds"] - sum(r["steps"].values())) / r["seconds"] for r in runs]
    return {
        "seconds_median": round(float(np.median(totals)), 3),
        "seconds_runs": [round(t, 3) for t in totals],
        "steps_median": median,
        "steps_sum_vs_total_max_gap": round(float(max(gaps)), 4),
        "command_wall_seconds_median": round(float(np.median([r["command_wall_seconds"] for r in runs])), 2),
    }


def _markdown(record: dict) -> str:
    plain, dicom = record["without_dicom"], record["with_dicom"]
    columns = list(dict.fromkeys([*plain["steps_median"], *dicom["steps_median"]]))
    lines = [
        "# Where a real case's time goes (`python -m benchmarks.bench_case_time`)",
        "",
        f"Real chest CT {record['case']['shape']} through `aamct evaluate-cohort`, median of {record['repeats']} "
        f"repetitions after a warm-up pair; load average {record['load_average_at_start']:.1f} at start, "
        f"{record['load_average_at_end']:.1f} at end ({record['cpu_count']} CPUs).",
        "",
        "| step | without --dicom-out (s) | with --dicom-out (s) |",
        "|---|---:|---:|",
    ]
    for column in columns:
        a = plain["steps_median"].get(column)
        b = dicom["steps_median"].get(column)
        lines.append(f"| {column} | {'' if a is None else f'{a:.3f}'} | {'' if b is None else f'{b:.3f}'} |")
    lines += [
        f"| **case total (`seconds`)** | **{plain['seconds_median']:.3f}** | **{dicom['seconds_median']:.3f}** |",
        f"| whole command (s) | {plain['command_wall_seconds_median']:.2f} | {dicom['command_wall_seconds_median']:.2f} |",
        "",
        f"Ratio with / without DICOM outputs (case totals): **{record['ratio']:.2f}** (goal <= 1.5; issue 25 measured "
        "9.6 s / 3.0 s = 3.2 on the code before). Steps' sum vs total, largest gap: "
        f"{100 * max(plain['steps_sum_vs_total_max_gap'], dicom['steps_sum_vs_total_max_gap']):.1f} %.",
        "",
    ]
    before = record.get("before")
    if before:
        b_plain, b_dicom = before["without_dicom"], before["with_dicom"]
        lines += [
            f"Before (the code at {before.get('code') or 'the earlier commit'}, same machine and session, load "
            f"{before['load_average'][0]:.1f} -> {before['load_average'][1]:.1f}; it had no DICOM step columns):",
            "",
            "| | without --dicom-out (s) | with --dicom-out (s) | ratio |",
            "|---|---:|---:|---:|",
            f"| before | {b_plain['seconds_median']:.3f} | {b_dicom['seconds_median']:.3f} | {before['ratio']:.2f} |",
            f"| after | {plain['seconds_median']:.3f} | {dicom['seconds_median']:.3f} | {record['ratio']:.2f} |",
            "",
            "Before, the steps' columns missed "
            f"{b_dicom['seconds_median'] - sum(b_dicom['steps_median'].values()):.2f} s of the case with DICOM outputs "
            f"(largest gap {100 * b_dicom['steps_sum_vs_total_max_gap']:.0f} % of the total).",
            "",
        ]
    return "\n".join(lines)


def _git_head() -> str:
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Time the case with and without DICOM outputs, write the JSON and the Markdown table."""
    from benchmarks.store import write_result_json, write_result_text
    from pipeline.data.reader import read_volume

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_case_time", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bundle", type=Path, help="bundle (run folder or zip); default the demo network, 1 epoch")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--before",
        type=Path,
        help="a results JSON of this benchmark run on earlier code (same machine, same session): shown beside",
    )
    args = parser.parse_args(argv)
    if len(list(REAL_CHEST.glob("*.dcm"))) < 16:
        print(f"real chest CT not found at {REAL_CHEST}: run `make test-tools`", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0]
    bundle = args.bundle or _model_bundle()
    runs: dict[str, list[dict]] = {"without_dicom": [], "with_dicom": []}
    with tempfile.TemporaryDirectory(prefix="aamct-case-time-") as scratch:
        series = Path(scratch) / "input" / "chest"
        series.mkdir(parents=True)
        for path in sorted(REAL_CHEST.glob("*.dcm")):  # the slices only (the fetch leaves a .complete marker)
            shutil.copy2(path, series / path.name)
        shape = list(read_volume(series)[0].shape)
        for repetition in range(args.repeats + 1):
            for label, dicom in (("without_dicom", False), ("with_dicom", True)):
                out = Path(scratch) / f"{label}-{repetition}"
                result = time_case(bundle, series, out, dicom=dicom)
                if repetition > 0:  # repetition 0 is the warm-up pair
                    runs[label].append(result)
                shutil.rmtree(out)
    record = {
        "benchmark": "case_time",
        "command": " ".join(["python -m benchmarks.bench_case_time", *map(shlex.quote, argv or sys.argv[1:])]),
        "bundle": str(bundle),
        "code": _git_head(),
        "case": {"series": "TCIA Lung-PET-CT-Dx Lung_Dx-A0001 (.cache/realdata/lung_dx_a0001)", "shape": shape},
        "repeats": args.repeats,
        "without_dicom": _summary(runs["without_dicom"]),
        "with_dicom": _summary(runs["with_dicom"]),
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg()[0],
    }
    record["ratio"] = round(record["with_dicom"]["seconds_median"] / record["without_dicom"]["seconds_median"], 3)
    if args.before is not None:
        import json

        before = json.loads(args.before.read_text(encoding="utf-8"))
        record["before"] = {k: before.get(k) for k in ("command", "code", "without_dicom", "with_dicom", "ratio")}
        record["before"]["load_average"] = [before.get("load_average_at_start"), before.get("load_average_at_end")]
    write_result_json(args.output, record)
    write_result_text(args.output.with_suffix(".md"), _markdown(record))
    print(_markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
