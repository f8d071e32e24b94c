"""The exported demo model's maps on an unseen generated cohort: pointing game beside the position prior, per map variant.

Run from the repository root, after ``make demo``::

    nice .venv/bin/python -m benchmarks.bench_demo_maps [--bundle runs/demo] [--seed 13] [--cases 48] [--variants ...]

Issue 26 item 3: the exported model's default map must find >= 0.9 of the test positives on the demo and on an
unseen cohort seed. What it runs, as a user would: ``aamct demo-data --masks`` (cohort seed ``--seed``, never the
demo's 0), ``aamct manifest build`` with the demo's pseudonym key (every row scored, no split), then
``aamct evaluate-cohort --bundle B --manifest ... --no-montage`` once per variant (a named list of extra
``evaluate-cohort`` arguments; ``default`` adds none: the bundle's own map), and
:func:`pipeline.evaluation.demo_page.map_hit_rate` on each output against the generator's lesion masks: the
pointing game (map peak within 10 mm of a lesion voxel, Wilson CI) beside the leave-one-out position prior and a
random lung point, with each case's peak distance. Results: ``benchmarks/results/demo_maps/<variant>.json`` and
``demo_maps_unseen.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.demo_models import DEMO_PSEUDONYM_KEY, code_fingerprint  # noqa: E402
from benchmarks.store import ResultStore, write_result_json, write_result_text  # noqa: E402

__all__ = ["VARIANTS", "main"]

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "demo_maps_unseen.json"
#: name -> extra evaluate-cohort arguments
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "occlusion": ["--heatmap", "occlusion"],
    "region_lungs": ["--heatmap-region", "lungs"],
    "overlap75": ["--set", "occlusion_overlap=0.75"],
    "cam": ["--heatmap", "cam"],
    # occluded blocks filled with aerated lung (-850 HU = 0.107 in the default -1000..400 window) instead of air
    "lungfill": ["--set", "occlusion_value=0.107"],
    "fine8": ["--set", "occlusion_size=[8,8,4]"],
    "fine6": ["--set", "occlusion_size=[6,6,3]"],
    "refine2": ["--set", "occlusion_refine=2"],
    "lungfill_fine6": ["--set", "occlusion_value=0.107", "--set", "occlusion_size=[6,6,3]"],
    "lungfill_fine8": ["--set", "occlusion_value=0.107", "--set", "occlusion_size=[8,8,4]"],
}
#: what runs without --variants (the dense occlusion costs about 8 min per 48 cases)
DEFAULT_VARIANTS = [name for name in VARIANTS if name not in ("occlusion", "cam")]


def _cohort(workdir: Path, seed: int, cases: int, size: int = 64) -> Path:
    """``aamct demo-data --masks`` + ``manifest build`` (demo key) into ``workdir/seed<seed>-c<cases>[-s<size>]/``
    (reused)."""
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.manifest import build_manifest

    folder = workdir / (f"seed{seed}-c{cases}" + (f"-s{size}" if size != 64 else ""))
    if (folder / "manifest.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dicom = folder / "cohort_dicom"
    write_demo_cohort(dicom, cases=cases, size=size, seed=seed, masks=True, truth_dir=folder / "cohort_dicom_truth")
    key = folder / "pseudonym.key"
    key.write_text(DEMO_PSEUDONYM_KEY, encoding="utf-8")
    build_manifest(
        dicom_root=dicom, nifti_glob=None, labels_csv=dicom / "labels.csv", out=folder / "manifest.csv", key_file=key
    )
    return folder


def _variant(
    store: ResultStore, name: str, extra: Sequence[str], *, bundle: Path, cohort: Path, label: str = ""
) -> dict[str, Any]:
    import hashlib
    import subprocess

    from pipeline.evaluation.demo_page import map_hit_rate

    weights = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    key = {
        "variant": name,
        "arguments": list(extra),
        "weights_sha256": weights,
        "cohort": cohort.name,
        "code": code_fingerprint(("pipeline/inference",))[:16],
    }
    unit = f"{label}-{name}" if label else name
    stored = store.load(key, unit)
    if stored is not None:
        print(f"[demo_maps] {name}: stored result reused", flush=True)
        return stored
    out = cohort / f"cohort_{unit}"
    if out.exists():  # evaluate-cohort resumes a folder: a fresh measurement starts from an empty one
        import shutil

        shutil.rmtree(out)
    command = [
        sys.executable, "-m", "pipeline", "evaluate-cohort", "--bundle", str(bundle),
        "--manifest", str(cohort / "manifest.csv"), "--out", str(out), "--no-montage", "--no-report", *extra,
    ]  # fmt: skip
    load_start = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        raise RuntimeError(f"evaluate-cohort ({name}) exited {done.returncode}: {done.stderr[-2000:]}")
    result = map_hit_rate(cohort, cohort=out, per_case=True)
    if result is None:
        raise RuntimeError(f"{out}: no maps or no truth to score")
    record = {"seconds": seconds, "load_start": load_start, "cpu_count": os.cpu_count(), **result}
    store.save(key, record, unit)
    summary = result["map"]["pointing_game"]
    print(f"[demo_maps] {name}: {summary['hits']}/{summary['n']} ({seconds} s)", flush=True)
    return store.load(key, unit) or {"key": key, **record}


def render_markdown(result: Mapping[str, Any]) -> str:
    """The table of :func:`main`'s JSON as Markdown."""
    lines = [
        "# The exported demo model's maps on an unseen cohort (pointing game, 10 mm)",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        f"Bundle `{result.get('bundle')}`; cohort `aamct demo-data --cases {result.get('cases')} --seed "
        f"{result.get('seed')} --masks`, every positive case scored (no split). Baselines: the "
        "leave-one-out position prior (peak of the other cases' lesion frequency) and a random lung point.",
        "",
        "| variant | evaluate-cohort arguments | pointing game (95% CI) | position prior | random lung point | "
        "median peak distance of misses (mm) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, block in result.get("variants", {}).items():
        game = block["map"]["pointing_game"]
        ci = game.get("ci") or [None, None]
        prior = block["baselines"].get("position_prior_peak", {})
        random_point = block["baselines"].get("random_point_in_lung", {})
        misses = sorted(c["peak_distance_mm"] for c in block["map"].get("cases", []) if not c["hit"])
        median = f"{misses[len(misses) // 2]:.0f}" if misses else "—"
        random_text = random_point.get("rate") if isinstance(random_point, Mapping) else random_point
        lines.append(
            f"| {name} | `{' '.join(block['key']['arguments']) or '(the bundle default)'}` | "
            f"{game['hits']}/{game['n']} = {game['rate']:.2f} ({ci[0]:.2f}–{ci[1]:.2f}) | "
            f"{prior.get('hits')}/{prior.get('n')} = {prior.get('rate', 0):.2f} | "
            f"{'—' if random_text is None else f'{float(random_text):.2f}'} | {median} | {block['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Score each variant (stored ones reused) and write the table."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_demo_maps", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "runs" / "demo", help="run folder or bundle zip")
    parser.add_argument("--seed", type=int, default=13, help="the unseen cohort's generator seed")
    parser.add_argument("--cases", type=int, default=48)
    parser.add_argument("--size", type=int, default=64, help="the cohort's in-plane matrix (the bundle's training one)")
    parser.add_argument("--label", default="", help="a name for this bundle in the result file names")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "demo_maps")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--commit", action="store_true", help="git-commit each variant's file as it is written")
    args = parser.parse_args(arguments)
    args.output = args.output.resolve()
    store = ResultStore("demo_maps", root=args.output.parent, commit=args.commit)
    cohort = _cohort(args.workdir, args.seed, args.cases, args.size)
    variants = {
        name: _variant(store, name, VARIANTS[name], bundle=args.bundle, cohort=cohort, label=args.label)
        for name in args.variants
    }
    result = {
        "benchmark": "demo_maps_unseen",
        "command": " ".join(["nice .venv/bin/python", "-m", "benchmarks.bench_demo_maps", *arguments]),
        "bundle": str(args.bundle.relative_to(REPO_ROOT) if args.bundle.is_relative_to(REPO_ROOT) else args.bundle),
        "seed": args.seed,
        "cases": args.cases,
        "size": args.size,
        "variants": variants,
    }
    write_result_json(args.output, result)
    write_result_text(args.output.with_suffix(".md"), render_markdown(result))
    print(f"[demo_maps] wrote {args.output.name} (+ .md)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
