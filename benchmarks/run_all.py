"""Run every benchmark of the project in sequence, then write ``benchmarks/results/summary.md``.

Run from the repository root (this is what ``make bench`` does)::

    .venv/bin/python -m benchmarks.run_all [--quick] [--only ingestion networks ...] [--itk-path .bench/itk]
                                           [--results-dir benchmarks/results]

Each benchmark runs as its own child process (``python -m benchmarks.bench_<name> ...``): the benchmarks set torch
thread counts and OpenMP variables for their timings, and a crash or an out-of-memory kill in one of them must not
take the others down. A failing benchmark is recorded (exit status, the end of its stderr) and the run goes on; the
exit status is 1 if any benchmark failed. ``run_all.json`` beside the results records, per benchmark, the command,
the wall time, the exit status and the machine load before and after, and :mod:`benchmarks.summary` renders it all.

``--quick`` passes each module's small settings (a smoke run in minutes, not a measurement); with ``--quick`` and no
``--results-dir`` the results go to ``benchmarks/results/quick/`` so that the full results are not overwritten.
``--itk-path`` puts a ``pip install --no-deps --target`` folder holding ``itk`` (and its ``itk-*`` wheels, but no
numpy: that folder comes before the venv on ``PYTHONPATH``) on the children's ``PYTHONPATH``, so the ingestion
benchmark also times MONAI's ``ITKReader``; an ``itk`` already on ``PYTHONPATH`` works as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import summary as summary_module  # noqa: E402  (after the path set-up above)
from benchmarks.store import portable  # noqa: E402

__all__ = ["BENCHMARKS", "BenchmarkSpec", "benchmark_command", "run_benchmark", "run_all", "main"]

DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
RUN_LOG_NAME = "run_all.json"
STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True, kw_only=True)
class BenchmarkSpec:
    """How to run one benchmark module.

    Args:
        name: short name (``--only`` takes it); the module is ``benchmarks.bench_<name>``.
        result_file: file name of its JSON inside the results folder (``None``: it writes a folder of files).
        output_flag: its option naming the output file (or folder, for ``medmnist``).
        output_is_dir: ``output_flag`` takes a folder rather than a file.
        quick_args: options that make it a smoke run.
        args: options it always gets (a second configuration of the same module).
        module_name: the module, when it is not ``benchmarks.bench_<name>``.
    """

    name: str
    result_file: str | None
    output_flag: str
    output_is_dir: bool = False
    quick_args: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    module_name: str | None = None

    @property
    def module(self) -> str:
        """The ``python -m`` module name."""
        return self.module_name or f"benchmarks.bench_{self.name}"


def _medmnist_table(suffix: str | None, *args: str) -> BenchmarkSpec:
    """A ``bench_medmnist`` entry: ``medmnist_<suffix>`` writes ``medmnist_adrenalmnist3d_<suffix>.json`` (the
    summary attributes each results file to its entry by that suffix); ``None`` is the main table."""
    return BenchmarkSpec(
        name="medmnist" if suffix is None else f"medmnist_{suffix}",
        module_name="benchmarks.bench_medmnist",
        result_file=None,
        output_flag="--results-dir",
        output_is_dir=True,
        quick_args=("--quick",),
        args=() if suffix is None else (*args, "--name", f"medmnist_adrenalmnist3d_{suffix}"),
    )


#: every benchmark, in the order ``make bench`` runs them (fast ones first, so a late failure still leaves results)
BENCHMARKS: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec(
        name="ingestion",
        result_file="ingestion.json",
        output_flag="--out",
        quick_args=("--repeats", "3", "--slices", "40"),
    ),
    BenchmarkSpec(
        name="evaluation",
        result_file="evaluation.json",
        output_flag="--out",
        quick_args=("--sizes", "1000", "--repeats", "3", "--n-resamples", "200"),
    ),
    BenchmarkSpec(
        name="networks",
        result_file="networks.json",
        output_flag="--output",
        quick_args=("--input-shape", "1", "1", "32", "64", "64", "--train-steps", "0", "--skip-default-stem"),
    ),
    BenchmarkSpec(
        name="inference",
        result_file="inference.json",
        output_flag="--output",
        quick_args=("--repeats", "2", "--slices", "40", "--cohort", "4", "--ranks"),
    ),
    BenchmarkSpec(
        name="training",
        result_file="training.json",
        output_flag="--output",
        quick_args=("--cases", "24", "--epochs", "2", "--workers", "0"),  # 24: the fewest the 5-fold split takes
    ),
    # distilled vs scratch on the demo cohort (AdrenalMNIST3D: medmnist_distillation, 3 seeds through the bundle);
    # teacher AAM-ResNet-18 (train.json's default) -> aam_student, and -> aam_student_small (<= 10 % of ResNet-50)
    BenchmarkSpec(
        name="distillation",
        result_file="distillation.json",
        output_flag="--out",
        quick_args=("--quick",),
        args=(
            "--datasets",
            "demo",
            "--demo-cases",
            "120",
            "--teacher",
            "aam_resnet18",
            "--assistant",
            "",
            "--small-student",
            "aam_student_small",
            "--teacher-epochs",
            "30",
            "--student-epochs",
            "30",
            "--patience",
            "10",
            "--batch-size",
            "8",
            "--lr",
            "6e-4",
        ),
    ),
    # heatmaps against the demo's lesion masks: every map kind, AAM-ResNet-18 (width 0.25) vs ResNet-18 (same width),
    # one file per demo difficulty; trains each network once through the bundle (benchmarks/demo_models.py) or reuses it
    BenchmarkSpec(
        name="localisation",
        result_file="localisation.json",
        output_flag="--output",
        quick_args=("--quick",),
        args=("--difficulties", "default"),
    ),
    BenchmarkSpec(
        name="localisation_hard",
        module_name="benchmarks.bench_localisation",
        result_file="localisation_hard.json",
        output_flag="--output",
        quick_args=("--quick",),
        args=("--difficulties", "hard"),
    ),
    # small lesions (issue 21): AAM-ResNet-18 vs ResNet-18 vs DenseNet-121 (all at width 0.25) trained the same way
    # over 5 seeds on the hard and the default demo, sensitivity by lesion-volume tertile; one file per (difficulty,
    # network, seed) under small_lesions/, a rerun skips finished ones (benchmarks/store.py)
    BenchmarkSpec(
        name="small_lesions",
        result_file="small_lesions.json",
        output_flag="--output",
        quick_args=("--quick",),
    ),
    # distillation (issue 21): the demo's student distilled with each loss term on / off vs scratch, 5 seeds, hard demo
    BenchmarkSpec(
        name="distillation_terms",
        result_file="distillation_terms.json",
        output_flag="--output",
        quick_args=("--quick",),
    ),
    # issue 25: out-of-scope scans against chests (the real chest CT when make test-tools fetched it), and where a
    # real case's time goes with and without DICOM outputs
    BenchmarkSpec(
        name="scope",
        result_file="scope.json",
        output_flag="--output",
        quick_args=("--demo-cases", "2", "--repeats", "1"),
    ),
    BenchmarkSpec(
        name="case_time", result_file="case_time.json", output_flag="--output", quick_args=("--repeats", "1")
    ),
    # issue 27: lesion-insertion detection curves of the small-lesion networks (their runs reused or trained), and the
    # same at a finer preprocessing on a 128-matrix demo cohort (3 seeds each; per-run files, a rerun reuses them)
    BenchmarkSpec(
        name="stress",
        result_file="stress.json",
        output_flag="--output",
        quick_args=("--seeds", "0", "--sizes", "20", "40"),
    ),
    BenchmarkSpec(
        name="resolution",
        result_file="resolution.json",
        output_flag="--output",
        quick_args=("--seeds", "0", "--sizes", "40"),
    ),
    _medmnist_table(None),
    # the gamma / channel / spatial / placement ablation, on the small AAM-ResNet-18 (width 0.25), from scratch
    _medmnist_table("ablation", "--models", "--ablation", "--ablation-network", "aam_student_small"),
    # attention placement on the AAM-ResNet-50 itself: AAM in every unit (the main table's runs) vs stage ends only
    _medmnist_table(
        "placement", "--models", "--ablation", "--ablation-network", "aam_resnet50", "--ablation-variants", "placement"
    ),
    # issue 14: the AAM variants, one seed each, selected on val (the first run: resnet18 seed 0, the reference)
    _medmnist_table(
        "probes",
        "--models",
        "resnet18",
        "--ablation",
        "--variant-set",
        "probes",
        "--ablation-network",
        "aam_resnet18",
        "--seeds",
        "1",
    ),  # fmt: skip
    # AAM-ResNet-18 (the registry default chosen by the probes) against ResNet-18, 3 seeds (seed 0: the probes' runs)
    _medmnist_table("aam_resnet18", "--models", "aam_resnet18", "resnet18"),
    # aam_student distilled from those AAM-ResNet-18 runs with attention transfer and feature hints, vs from scratch
    _medmnist_table(
        "distillation",
        "--models",
        "aam_student",
        "--student-scratch",
        "--teacher",
        "aam_resnet18",
        "--distill-weight",
        "attention_weight=10",
        "--distill-weight",
        "hint_weight=0.2",
    ),  # fmt: skip
    # MedMNIST+ 64^3: AAM-ResNet-18 vs ResNet-18, 2 seeds, both at half width to fit 2 CPU cores
    _medmnist_table(
        "64",
        "--npz",
        str(REPO_ROOT.parent / "shared" / "data" / "medmnist" / "adrenalmnist3d_64.npz"),
        "--models",
        "aam_resnet18",
        "resnet18",
        "--seeds",
        "2",
        "--width-multiplier",
        "0.5",
    ),  # fmt: skip
)


def _spec(name: str) -> BenchmarkSpec:
    for spec in BENCHMARKS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(s.name for s in BENCHMARKS)}")


def benchmark_command(
    spec: BenchmarkSpec, *, results_dir: Path, quick: bool, python: str = sys.executable
) -> list[str]:
    """The command line that runs one benchmark.

    Args:
        spec: the benchmark.
        results_dir: folder of the results.
        quick: add the module's smoke-run options.
        python: the interpreter.

    Returns:
        The argument list.
    """
    output = results_dir if spec.output_is_dir else results_dir / str(spec.result_file)
    command = [python, "-m", spec.module, spec.output_flag, str(output), *spec.args]
    return command + list(spec.quick_args) if quick else command


def _child_environment(itk_path: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if itk_path is not None:
        paths.insert(0, str(Path(itk_path).resolve()))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_benchmark(command: Sequence[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one benchmark command to completion and describe how it went.

    Its stdout goes straight through (progress stays visible); its stderr is passed through too and its end is kept
    for the record when the command fails.

    Args:
        command: the argument list.
        env: the child's environment (default: this process's).

    Returns:
        ``{"command", "returncode", "status" ("ok" | "failed"), "wall_seconds", "load_average_start",
        "load_average_end", "stderr_tail"}``; the recorded command has portable paths
        (:func:`benchmarks.store.portable`; an interpreter outside the repository is named, not located).
    """
    load_start = list(os.getloadavg())
    started = time.perf_counter()
    try:
        completed = subprocess.run(list(command), cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
        returncode, stderr = completed.returncode, completed.stderr or ""
    except OSError as err:  # the interpreter itself could not start
        returncode, stderr = 127, str(err)
    sys.stderr.write(stderr)
    interpreter, *rest = list(command) or [""]
    if os.path.isabs(interpreter) and not Path(interpreter).is_relative_to(REPO_ROOT):
        interpreter = Path(interpreter).name  # /usr/bin/python3 -> python3: where it lives says only whose machine
    return {
        "command": portable(shlex.join([interpreter, *rest])),
        "returncode": returncode,
        "status": "ok" if returncode == 0 else "failed",
        "wall_seconds": round(time.perf_counter() - started, 3),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "stderr_tail": "" if returncode == 0 else stderr[-STDERR_TAIL_CHARS:],
    }


def run_all(
    *,
    names: Sequence[str] | None = None,
    quick: bool = False,
    results_dir: Path = DEFAULT_RESULTS,
    itk_path: Path | None = None,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run the chosen benchmarks in sequence, record them in ``run_all.json`` and write ``summary.md``.

    Args:
        names: benchmark names (default: all of :data:`BENCHMARKS`).
        quick: smoke-run settings.
        results_dir: where every JSON, ``run_all.json`` and ``summary.md`` go.
        itk_path: a folder holding ``itk`` to put on the children's ``PYTHONPATH``.
        python: the interpreter running the benchmarks.

    Returns:
        The run record (as written to ``run_all.json``).

    Raises:
        ValueError: for an unknown benchmark name.
    """
    specs = [_spec(name) for name in names] if names else list(BENCHMARKS)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    env = _child_environment(itk_path)
    record: dict[str, Any] = {
        "quick": quick,
        "itk_path": str(itk_path) if itk_path else None,
        "cpu_count": os.cpu_count(),
        "benchmarks": {},
    }
    log_path = results_dir / RUN_LOG_NAME
    previous = _read_json(log_path)
    if previous and isinstance(previous.get("benchmarks"), dict):
        # keep the record of benchmarks not run this time (``--only``), so the summary still says how they were made
        record["benchmarks"].update(previous["benchmarks"])
    for spec in specs:
        command = benchmark_command(spec, results_dir=results_dir, quick=quick, python=python)
        print(f"== benchmark {spec.name}: {shlex.join(command)}", flush=True)
        outcome = run_benchmark(command, env=env)
        outcome["quick"] = quick
        record["benchmarks"][spec.name] = outcome
        print(f"== benchmark {spec.name}: {outcome['status']} in {outcome['wall_seconds']:.0f} s", flush=True)
        summary_module.write_json_record(log_path, record)  # after each benchmark, so an interrupted run keeps it
    summary_module.write_summary(results_dir)
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every benchmark ran, 1 when one failed, 2 for bad options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run settings of every benchmark")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[s.name for s in BENCHMARKS], help="run these")
    parser.add_argument("--itk-path", type=Path, help="folder with itk (pip install --target), for ITKReader")
    parser.add_argument("--results-dir", type=Path, help="default benchmarks/results (quick: benchmarks/results/quick)")
    args = parser.parse_args(argv)
    if args.itk_path is not None and not (args.itk_path / "itk").is_dir():
        parser.error(f"--itk-path {args.itk_path}: no itk package in that folder (pip install --target it itk)")
    if args.itk_path is not None and (args.itk_path / "numpy").is_dir():
        # PYTHONPATH comes before the venv's site-packages: a second numpy there would replace the venv's own
        parser.error(f"--itk-path {args.itk_path}: holds its own numpy; install itk there with --no-deps")
    results_dir = args.results_dir or (DEFAULT_RESULTS / "quick" if args.quick else DEFAULT_RESULTS)
    record = run_all(names=args.only, quick=args.quick, results_dir=results_dir, itk_path=args.itk_path)
    ran = [record["benchmarks"][name] for name in (args.only or [s.name for s in BENCHMARKS])]
    failed = [
        name
        for name, outcome in zip(args.only or [s.name for s in BENCHMARKS], ran, strict=True)
        if outcome["status"] != "ok"
    ]
    print(
        f"summary: {results_dir / summary_module.SUMMARY_NAME}" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
