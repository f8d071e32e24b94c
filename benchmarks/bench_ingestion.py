"""Ingestion speed: header discovery and full-series reading, ours against the usual peers.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_ingestion [--repeats 7] [--slices 80] [--size 512]

It writes an uncompressed int16 CT series (80 slices of 512x512 by default) to a temporary folder and times, as the
median of ``--repeats`` runs after one warm-up run:

* discovery: :func:`pipeline.data.dicom.discover_series` (headers, grouping, checks) against a plain sequential
  ``pydicom.dcmread(stop_before_pixels=True)`` walk;
* reading the series to a float32 HU array: :func:`pipeline.data.reader.read_volume` (its default, which is sequential
  for uncompressed and threaded for compressed series, and each mode forced: threads, sequential, a process pool)
  against SimpleITK ``ImageSeriesReader``, MONAI ``LoadImage`` with ``PydicomReader`` and with
  ``ITKReader`` (skipped when ``itk`` is not installed), and plain pydicom (sequential ``dcmread`` + ``pixel_array`` +
  sort + stack + rescale).

When ``../shared/data`` holds the real JPEG 2000 series, the reading comparison is repeated on it. Results, with each
peer's ratio to ours (our default; > 1: the peer is slower), go to ``benchmarks/results/ingestion.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the series writer lives with the tests
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.timing import time_median  # noqa: E402 (after the sys.path set-up above)

__all__ = ["main", "time_median"]

RESULTS = REPO_ROOT / "benchmarks" / "results" / "ingestion.json"
REAL_SERIES = (
    Path(os.environ.get("AAMCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "dicom" / "totalseg_abdomen_ct"
)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _pydicom_header_walk(folder: Path) -> None:
    import pydicom

    for path in _files(folder):
        pydicom.dcmread(path, stop_before_pixels=True)


def _pydicom_plain_read(folder: Path) -> np.ndarray:
    import pydicom

    datasets = [pydicom.dcmread(path) for path in _files(folder)]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    planes = [
        ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets
    ]
    return np.stack(planes, axis=-1)


def _simpleitk_read(folder: Path, *, copy: bool = False) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    if copy:
        return sitk.GetArrayFromImage(image)
    # timed without the array copy (ours returns a view too); the image is returned to keep the view's memory alive
    return image, sitk.GetArrayViewFromImage(image)


def _monai_load(reader_name: str) -> Callable[[Path], Any]:
    from monai.transforms import LoadImage

    loader = LoadImage(reader=reader_name, image_only=True)
    return lambda folder: loader(str(folder))


def _itk_available() -> bool:
    try:
        import itk  # noqa: F401
    except ImportError:
        return False
    return True


def _compare_reads(folder: Path, repeats: int, workers: int) -> dict[str, Any]:
    from pipeline.data.reader import read_volume

    ours, _ = read_volume(folder)
    reference = _simpleitk_read(folder, copy=True).transpose(2, 1, 0)
    methods: dict[str, Callable[[], Any]] = {
        "ours_default": lambda: read_volume(folder),
        "ours_threads": lambda: read_volume(folder, workers=workers),
        "ours_sequential": lambda: read_volume(folder, workers=1),
        "ours_process_pool": lambda: read_volume(folder, workers=workers, use_processes=True),
        "simpleitk_image_series_reader": lambda: _simpleitk_read(folder),
        "monai_loadimage_pydicomreader": lambda: _monai_load("PydicomReader")(folder),
        "pydicom_plain": lambda: _pydicom_plain_read(folder),
    }
    timings: dict[str, Any] = {}
    for name, func in methods.items():
        timings[name] = time_median(func, repeats)
    if _itk_available():
        timings["monai_loadimage_itkreader"] = time_median(lambda: _monai_load("ITKReader")(folder), repeats)
    else:
        timings["monai_loadimage_itkreader"] = "skipped: itk not installed"
    ours_median = timings["ours_default"]["median_s"]
    peers = {k: v for k, v in timings.items() if not k.startswith("ours") and isinstance(v, dict)}
    fastest_peer = min(peers, key=lambda k: peers[k]["median_s"])
    return {
        "median_s": {k: (v["median_s"] if isinstance(v, dict) else v) for k, v in timings.items()},
        "ratio_to_ours": {k: round(v["median_s"] / ours_median, 3) for k, v in peers.items()},
        "fastest_peer": fastest_peer,
        "ours_at_least_as_fast_as_fastest_peer": ours_median <= peers[fastest_peer]["median_s"],
        "max_abs_difference_vs_simpleitk_hu": float(np.max(np.abs(ours - reference))),
        "runs_s": {k: v["runs_s"] for k, v in timings.items() if isinstance(v, dict)},
    }


def _compare_discovery(folder: Path, repeats: int, workers: int) -> dict[str, Any]:
    from pipeline.data.dicom import discover_series

    result = discover_series(folder, workers=workers)
    assert len(result.accepted) == 1, [r.reason for r in result.rejections]
    timings = {
        "ours_default": time_median(lambda: discover_series(folder), repeats),
        "ours_threads": time_median(lambda: discover_series(folder, workers=workers), repeats),
        "ours_sequential": time_median(lambda: discover_series(folder, workers=1), repeats),
        "pydicom_header_walk": time_median(lambda: _pydicom_header_walk(folder), repeats),
    }
    ours = timings["ours_default"]["median_s"]
    return {
        "median_s": {k: v["median_s"] for k, v in timings.items()},
        "ratio_to_ours": {"pydicom_header_walk": round(timings["pydicom_header_walk"]["median_s"] / ours, 3)},
        "note": "ours (default: a thread per CPU) also groups series, locates and size-checks the pixel data and runs "
        "every geometry check; threads pay off on cold caches and network storage, not on the warm page cache here",
        "runs_s": {k: v["runs_s"] for k, v in timings.items()},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``benchmarks/results/ingestion.json`` and return the results.

    Args:
        argv: command-line arguments (``--repeats``, ``--slices``, ``--size``, ``--workers``, ``--out``).

    Returns:
        The results written.
    """
    parser = argparse.ArgumentParser(prog="bench_ingestion", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per method (after one warm-up run)")
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of every slice")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads/processes of our reader")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import monai
    import pydicom
    import SimpleITK as sitk

    from pipeline.io import write_json_atomic
    from tests.data.dicom_factory import write_ct_series

    results: dict[str, Any] = {
        "benchmark": "ingestion",
        "config": {
            "repeats": args.repeats,
            "statistic": "median after one warm-up run",
            "workers": args.workers,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "monai": monai.__version__,
            "simpleitk": sitk.Version.VersionString(),
            "machine": platform.machine(),
            # other jobs on the machine skew every figure: record how busy it was
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
    }
    with tempfile.TemporaryDirectory(prefix="aamct-bench-") as tmp:
        folder = Path(tmp) / "series"
        start = time.perf_counter()
        write_ct_series(folder, n_slices=args.slices, rows=args.size, columns=args.size, pixel_spacing=(0.7, 0.7))
        results["series"] = {
            "slices": args.slices,
            "matrix": f"{args.size}x{args.size}",
            "pixel_type": "int16, Explicit VR Little Endian (uncompressed)",
            "write_s": round(time.perf_counter() - start, 3),
        }
        print(f"wrote {args.slices} slices of {args.size}x{args.size} in {results['series']['write_s']} s", flush=True)
        results["discovery"] = _compare_discovery(folder, args.repeats, args.workers)
        print("discovery:", results["discovery"]["median_s"], flush=True)
        results["read_uncompressed"] = _compare_reads(folder, args.repeats, args.workers)
        print("read (uncompressed):", results["read_uncompressed"]["median_s"], flush=True)
    if REAL_SERIES.is_dir():
        results["read_real_jpeg2000"] = {
            "series": "shared/data/dicom/totalseg_abdomen_ct (20 slices, 512x512, JPEG 2000 lossless)",
            **_compare_reads(REAL_SERIES, max(3, args.repeats // 2), args.workers),
        }
        print("read (real JPEG 2000):", results["read_real_jpeg2000"]["median_s"], flush=True)
    else:
        results["read_real_jpeg2000"] = f"skipped: {REAL_SERIES} not found"
    results["config"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_json_atomic(args.out, results)
    print(f"results -> {args.out}")
    return results


if __name__ == "__main__":
    main()
