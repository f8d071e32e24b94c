"""What resolution the small-lesion claim needs: the stress test's detection curve at two preprocessings, over seeds.

Run from the repository root::

    nice .venv/bin/python -m benchmarks.bench_resolution [--seeds 0 1 2] [--commit]   # 2 torch threads, as make demo

Issue 27 item 4. The default preprocessing (:data:`pipeline.contracts.DEFAULT_SPACING` 5 x 5 x 10 mm into
:data:`~pipeline.contracts.DEFAULT_ROI_SIZE` 64 x 64 x 32) leaves a 10 mm lesion two voxels across. Here the best
network of the stress benchmark (``aam_student_small``: the smallest 50 %-sensitivity size for real nodules,
``results/stress.md``) is trained with the demo recipe (:func:`benchmarks.demo_models.trained_demo_model`) at both
preprocessings on one demo cohort generated at a 128 matrix (2.7 mm pixels, 9.7 mm slices), so the finer grid has
detail to keep:

* ``default``: 5 x 5 x 10 mm, 64 x 64 x 32 (the product's default);
* ``fine``: 2.5 x 2.5 x 10 mm, 128 x 128 x 32 (4x the voxels; the slices stay at their acquired ~10 mm). The body crop
  of the default chain (:func:`pipeline.transforms`) already removes the air around the chest; 128 x 128 at 2.5 mm
  holds a 320 mm body, so no further lung crop is needed to fit it.

Per resolution and training seed: test AUC, training wall time, the stress test (:class:`pipeline.evaluation.stress.
StressTest`, ``aamct stress-test``'s code) on the test split's negatives, ground glass and solid LIDC nodules at
5-60 mm, scores only, and its wall time per scored scan (inference cost). Paired comparison fine vs default on the same
copies (the insertion depends on the stress seed and the case only). Baselines as in ``bench_stress``: the originals
called positive, AUC 0.5, the flip rate. Per-run files under ``benchmarks/results/resolution/``, tables in
``resolution.json`` / ``resolution.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_stress import (  # noqa: E402
    BENCH_SIZES_MM,
    NODULES,
    _stress,
    _stress_code,
    aggregate,
    copy_records,
    network_sections,
    paired_comparison,
    paired_section,
)
from benchmarks.demo_models import DEFAULT_WORKDIR, DEMO_NETWORK, finished_demo_model, trained_demo_model  # noqa: E402
from benchmarks.store import ResultStore, write_result_json, write_result_text  # noqa: E402

__all__ = ["COHORT", "RESOLUTIONS", "headline", "main"]

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "resolution.json"
#: the demo cohort both resolutions train on: 2.7 mm pixels, 9.7 mm slices (pipeline.data.demo.scanner)
COHORT: dict[str, Any] = {"difficulty": "default", "cases": 120, "size": 128, "seed": 0}
#: name -> recipe override (spacing in mm and network input, x y z); ``default`` is the product's preprocessing
RESOLUTIONS: dict[str, dict[str, list[float] | list[int]]] = {
    "default": {},
    "fine": {"spacing": [2.5, 2.5, 10.0], "roi_size": [128, 128, 32]},
}


def _label(resolution: str) -> str:
    from pipeline.contracts import DEFAULT_ROI_SIZE, DEFAULT_SPACING

    spacing = RESOLUTIONS[resolution].get("spacing", list(DEFAULT_SPACING))
    roi = RESOLUTIONS[resolution].get("roi_size", list(DEFAULT_ROI_SIZE))
    return f"{DEMO_NETWORK} at {'x'.join(f'{v:g}' for v in spacing)} mm ({'x'.join(str(v) for v in roi)})"


def _unit(store: ResultStore, resolution: str, seed: int, *, workdir: Path, sizes: Sequence[float]) -> dict[str, Any]:
    from pipeline.evaluation.stress import StressSettings
    from pipeline.inference.cohort import read_cases

    # a finished run is used as it is (as bench_stress does): its stored unit belongs to those weights
    options = {
        "train_seed": seed, "cases": COHORT["cases"], "size": COHORT["size"], "seed": COHORT["seed"],
        "recipe": RESOLUTIONS[resolution] or None, "workdir": workdir,
    }  # fmt: skip
    model = finished_demo_model(DEMO_NETWORK, COHORT["difficulty"], **options) or trained_demo_model(
        DEMO_NETWORK, COHORT["difficulty"], **options
    )
    key = {
        "resolution": resolution,
        **RESOLUTIONS[resolution],
        "train_seed": seed,
        "cohort": COHORT,
        "training_code": model.recipe.get("training_code"),
        "sizes_mm": list(sizes),
        "stress_seed": 0,
        "texture": "solid",
        "code": _stress_code(),
    }
    parts = ("units", f"{resolution}-seed{seed}")  # not "runs": .gitignore ignores every runs/ folder
    stored = store.load(key, *parts)
    if stored is not None:
        print(f"[resolution] {resolution} seed {seed}: stored result reused", flush=True)
        return stored
    cases = sorted(
        (c for c in read_cases(model.cohort.manifest, split="test") if str(c.label).strip().lower() == "negative"),
        key=lambda c: c.case_id,
    )
    settings = StressSettings(sizes_mm=tuple(sizes), nodules_dir=NODULES, texture="solid", seed=0, maps=False)
    out = Path(workdir) / "stress" / f"resolution-{resolution}-seed{seed}"
    summary, copies, cases_frame, timing = _stress(model.run_dir, cases, out, settings)
    scored = int((copies["status"] == "ok").sum()) + int((cases_frame["status"] == "ok").sum())
    record = {
        "network_label": _label(resolution),
        "run": str(model.run_dir.relative_to(Path(workdir).resolve())),
        "test_auc": model.test_auc,
        "test_auc_ci": model.metrics.get("auc_ci"),
        "train_seconds": model.seconds,
        "train_load": "as recorded by trained_demo_model (wall time of training + test evaluation)",
        "summary": {k: v for k, v in summary.items() if k != "citation"},
        "copies": copy_records(copies),
        "cases": cases_frame.to_dict(orient="records"),
        **timing,
        "scored_scans": scored,
        "seconds_per_scored_scan": round(timing["seconds"] / max(1, scored), 3),
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    path = store.save(key, record, *parts)
    print(
        f"[resolution] {resolution} seed {seed}: test AUC {model.test_auc}, train {model.seconds} s, stress "
        f"{timing['seconds']} s ({record['seconds_per_scored_scan']} s/scan); 50 % at {summary['size_at_50']} -> "
        f"{path.name}",
        flush=True,
    )
    return store.load(key, *parts) or {"key": key, **record}


def _epoch_seconds(train_log: Path) -> list[float]:
    """The trainer's epoch times from a bundle training log (``Epoch[n] Complete. Time taken: hh:mm:ss.fff``)."""
    import re

    times = []
    pattern = re.compile(r"SupervisedTrainer - INFO - Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            hours, minutes, seconds = match.groups()
            times.append(int(hours) * 3600 + int(minutes) * 60 + float(seconds))
    return times


def _timing(store: ResultStore, *, workdir: Path, epochs: int = 4) -> dict[str, Any]:
    """Idle cost per resolution: a short training (epoch times after the first, which fills the cache) and
    ``evaluate-cohort`` on the test split with seed 0's model, scores only and with the default map."""
    import statistics
    import subprocess
    import tempfile

    import pandas as pd

    from benchmarks.demo_models import _run_name

    record: dict[str, Any] = {"load_start": [round(v, 2) for v in os.getloadavg()], "cpu_count": os.cpu_count()}
    for resolution in RESOLUTIONS:
        short = trained_demo_model(
            DEMO_NETWORK,
            COHORT["difficulty"],
            train_seed=100,
            cases=COHORT["cases"],
            size=COHORT["size"],
            seed=COHORT["seed"],
            recipe={**RESOLUTIONS[resolution], "epochs": epochs},
            workdir=workdir,
        )
        epoch_times = _epoch_seconds(short.run_dir / "train.log")[1:]
        run = short.cohort.folder / "runs" / _run_name(DEMO_NETWORK, None, 0, RESOLUTIONS[resolution] or None)
        entry: dict[str, Any] = {"label": _label(resolution), "epoch_seconds": epoch_times}
        entry["epoch_seconds_median"] = statistics.median(epoch_times) if epoch_times else None
        for mode, extra in (("scores", ["--no-heatmaps"]), ("maps", ["--no-montage"])):
            with tempfile.TemporaryDirectory(prefix="aamct-resolution-") as tmp:
                command = [
                    sys.executable, "-m", "pipeline", "evaluate-cohort", "--bundle", str(run),
                    "--manifest", str(short.cohort.manifest), "--split", "test", "--out", str(Path(tmp) / "out"),
                    "--no-report", *extra,
                ]  # fmt: skip
                done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"evaluate-cohort ({resolution}, {mode}): {done.stderr[-1500:]}")
                frame = pd.read_csv(Path(tmp) / "out" / "predictions.csv")
                entry[f"case_seconds_median_{mode}"] = float(frame["seconds"].median())
                entry[f"cases_{mode}"] = int(len(frame))
        record[resolution] = entry
        print(f"[resolution] timing {resolution}: {entry}", flush=True)
    record["load_end"] = [round(v, 2) for v in os.getloadavg()]
    store.save({"unit": "timing", "epochs": epochs, "cohort": COHORT}, record, "timing")
    return record


def _cost(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    import numpy as np

    out = {}
    for resolution in RESOLUTIONS:
        mine = [r for r in records if r["key"].get("resolution") == resolution]
        if not mine:
            continue
        train = [float(r["train_seconds"]) for r in mine]
        per_scan = [float(r["seconds_per_scored_scan"]) for r in mine]
        out[resolution] = {
            "label": _label(resolution),
            "seeds": [r["key"]["train_seed"] for r in mine],
            "train_seconds_mean": round(float(np.mean(train)), 1),
            "train_seconds": train,
            "seconds_per_scored_scan_mean": round(float(np.mean(per_scan)), 3),
            "seconds_per_scored_scan": per_scan,
        }
    if "default" in out and "fine" in out:
        out["fine_over_default"] = {
            "training": round(out["fine"]["train_seconds_mean"] / out["default"]["train_seconds_mean"], 2),
            "stress_per_scan": round(
                out["fine"]["seconds_per_scored_scan_mean"] / out["default"]["seconds_per_scored_scan_mean"], 2
            ),
        }
    return out


def _spread_text(spread: Mapping[str, Any] | None, digits: int, unit: str = "") -> str:
    if not spread or spread.get("mean") is None:
        return "not reached"
    sd = spread.get("sd")
    return f"{spread['mean']:.{digits}f}{'' if sd is None else f' ± {sd:.{digits}f}'}{unit}"


def _flip_at(block: Mapping[str, Any], kind: str, size: float) -> str:
    for row in block["kinds"].get(kind, {}).get("sizes", []):
        if float(row["size_mm"]) == float(size):
            flip = row["flip"]
            ci = flip.get("ci") or [0.0, 0.0]
            return f"{flip['value']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}, {flip['count']})"
    return "not measured"


def headline(result: Mapping[str, Any]) -> str:
    """One paragraph for the docs, from the results file."""
    networks, cost = result.get("networks", {}), result.get("cost", {})
    fine, default = networks.get(_label("fine")), networks.get(_label("default"))
    if not fine or not default:
        return "The finer preprocessing has not been measured yet (python -m benchmarks.bench_resolution)."

    def at_50(block: Mapping[str, Any], kind: str) -> str:
        spread = block["kinds"][kind]["flip_at_50_per_seed"]
        return f"{_spread_text(spread, 1, ' mm')} ({spread['n']}/{spread['of']} seeds reach it below 60 mm)"

    def small(block: Mapping[str, Any]) -> str:
        rows = [r for kind in block["kinds"].values() for r in kind["sizes"] if float(r["size_mm"]) <= 20]
        return f"{max((r['flip']['value'] or 0.0) for r in rows):.2f}" if rows else "not measured"

    ratio = cost.get("fine_over_default", {})
    return (
        f"At a finer preprocessing (`python -m benchmarks.bench_resolution`, benchmarks/results/resolution.md): "
        f"{DEMO_NETWORK} trained with the demo recipe on a demo cohort generated at a {COHORT['size']} matrix "
        f"(2.7 mm pixels, 9.7 mm slices; {len(fine['seeds'])} training seeds per preprocessing), at "
        f"{_label('fine').split(' at ')[1]} against the default {_label('default').split(' at ')[1]}. Test AUC "
        f"{_spread_text(fine['test_auc'], 3)} against {_spread_text(default['test_auc'], 3)}. Size at which half of "
        f"the copies of negative originals are called positive, solid nodules: {at_50(fine, 'nodule')} against "
        f"{at_50(default, 'nodule')}; ground glass: {at_50(fine, 'ggo')} against {at_50(default, 'ggo')}. Flip rate "
        f"at 40 mm, nodules: {_flip_at(fine, 'nodule', 40)} against {_flip_at(default, 'nodule', 40)}; at 5-20 mm "
        f"at most {small(fine)} against {small(default)} (either kind). Originals called positive (what a copy gets for nothing): "
        f"{_spread_text(fine['originals_called_positive'], 2)} against "
        f"{_spread_text(default['originals_called_positive'], 2)}. {_cost_text(result, cost, ratio)}"
    )


def _cost_text(result: Mapping[str, Any], cost: Mapping[str, Any], ratio: Mapping[str, Any]) -> str:
    timing = result.get("timing")
    if timing and "fine" in timing and "default" in timing:
        fine, default = timing["fine"], timing["default"]

        def pair(key: str) -> str:
            a, b = fine.get(key), default.get(key)
            if a is None or b is None:
                return "not measured"
            return f"{a:.2f} s against {b:.2f} s (x{a / b:.1f})"

        return (
            f"Cost (`--timing`, load average {timing['load_start'][0]} at the start): a training epoch "
            f"{pair('epoch_seconds_median')}; a test case scored {pair('case_seconds_median_scores')}, with the "
            f"default map {pair('case_seconds_median_maps')} (median of {fine.get('cases_scores')} cases)."
        )
    return (
        f"Cost: training with its test evaluation {cost['fine']['train_seconds_mean']:.0f} s against "
        f"{cost['default']['train_seconds_mean']:.0f} s (x{ratio.get('training')}), on 2 CPU cores shared with other "
        "work."
    )


def render_markdown(result: Mapping[str, Any]) -> str:
    """The tables of :func:`main`'s JSON as Markdown."""
    lines = [
        "# What resolution the small-lesion claim needs",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        f"`{DEMO_NETWORK}` trained with the demo recipe on one demo cohort generated at a 128 matrix "
        f"(`aamct demo-data --cases {COHORT['cases']} --size {COHORT['size']} --seed {COHORT['seed']}`: 2.7 mm "
        "pixels, 9.7 mm slices) at the default preprocessing and at a finer one, then stress-tested on the test "
        "split's negatives as in `stress.md` (ground glass and solid LIDC-IDRI nodules, Armato et al. 2011, "
        "doi:10.1118/1.3528204, CC BY 3.0). Read the flip rate beside the originals called positive (the baseline a "
        "copy gets for nothing).",
        "",
        headline(result),
        "",
        "## Cost",
        "",
        "| resolution | seeds | training + test evaluation (s, mean) | stress test per scored scan (s, mean) |",
        "| --- | --- | --- | --- |",
    ]
    cost = result.get("cost", {})
    for resolution in RESOLUTIONS:
        block = cost.get(resolution)
        if block:
            lines.append(
                f"| {block['label']} | {block['seeds']} | {block['train_seconds_mean']:.0f} "
                f"({', '.join(f'{v:.0f}' for v in block['train_seconds'])}) | "
                f"{block['seconds_per_scored_scan_mean']:.3f} |"
            )
    ratio = cost.get("fine_over_default")
    if ratio:
        lines += [
            "",
            f"Fine over default: training x{ratio['training']}, stress test per scan x{ratio['stress_per_scan']}.",
        ]
    lines += ["", f"Wall times on {result.get('cpu_count')} CPUs, benchmark running niced beside other work.", ""]
    lines += network_sections(result.get("networks", {}))
    lines += paired_section(result.get("paired", []))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Train and stress-test each resolution and seed (stored units reused), then assemble the tables."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_resolution", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON to write (+ .md beside it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--sizes", type=float, nargs="+", default=list(BENCH_SIZES_MM), help="diameters, mm")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cohorts and runs")
    parser.add_argument("--commit", action="store_true", help="git-commit each per-run file as it is written")
    parser.add_argument("--only-stored", action="store_true", help="run nothing: assemble the stored files")
    parser.add_argument("--timing", action="store_true", help="instead: the idle cost per resolution")
    args = parser.parse_args(arguments)
    output = Path(args.output)
    store = ResultStore("resolution", root=output.parent, commit=args.commit)
    if args.timing:
        _timing(store, workdir=args.workdir)
    elif not args.only_stored:
        for seed in args.seeds:  # seed-major: both resolutions get seed 0 before either gets seed 1
            for resolution in args.resolutions:
                _unit(store, resolution, seed, workdir=args.workdir, sizes=args.sizes)
                _assemble(store, output)
    _assemble(store, output)
    return 0


def _assemble(store: ResultStore, output: Path) -> None:
    stored = store.records()
    records = [r for r in stored if "network_label" in r]
    timing = [r for r in stored if r.get("key", {}).get("unit") == "timing"]
    labels = [_label(name) for name in RESOLUTIONS]
    result: dict[str, Any] = {
        "benchmark": "resolution",
        # what produced the stored units (a run assembles every stored unit, whatever its own arguments)
        "command": "nice .venv/bin/python -m benchmarks.bench_resolution --commit && "
        "nice .venv/bin/python -m benchmarks.bench_resolution --timing --commit",
        "cohort": COHORT,
        "resolutions": RESOLUTIONS,
        "cost": _cost(records),
        "timing": {k: v for k, v in timing[-1].items() if k != "key"} if timing else None,
        "networks": aggregate(records, labels),
        "paired": paired_comparison(records, labels[1], labels[0]),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    write_result_json(output, result)
    write_result_text(output.with_suffix(".md"), render_markdown(result))
    print(f"[resolution] wrote {output.name} (+ .md)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
