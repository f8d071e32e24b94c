"""Which distillation term pays? A student distilled with each term on and off against the same student from scratch.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_distillation_terms [--difficulty hard] [--seeds 0 1 2 3 4] [--commit]

For every training seed, the teacher is the demo network (``aam_student_small``: AAM-ResNet-18 at width 0.25) trained
with the demo recipe on the demo cohort (:func:`benchmarks.demo_models.trained_demo_model`, the same runs the
small-lesion benchmark trains, reused). The student is the demo's distilled network (AAM-ResNet-18 at width 0.125,
``make demo``'s ``aam_student_tiny``). Each configuration is one stage of the stock distillation bundle
(``python -m monai.bundle run distilling``, what ``make distill`` runs) with the same recipe, data order and seed;
only the loss terms differ:

* ``scratch``: focal loss only (``kd_weight`` 0: the student trained from scratch, through the same code);
* ``logit``: + ``T^2`` KL to the teacher's softened logits (T = 4);
* ``logit+at``: + attention transfer (Zagoruyko & Komodakis 2017, weight 500 on the per-element mean: their
  beta = 1000 / 2);
* ``logit+hint``: + parameter-free feature hints (weight 1 on standardised, channel-pooled maps);
* ``logit+at+hint``: all three.

Each student is then evaluated on the test split by the stock ``evaluating`` bundle (threshold frozen on val). One
file per (configuration, seed) under ``benchmarks/results/distillation_terms/`` (:class:`benchmarks.store.ResultStore`:
a rerun skips finished ones); the table (``distillation_terms.json`` / ``.md``) gives the test AUC mean ± sd over
seeds, the seed-averaged AUC with its DeLong CI, the paired DeLong test of each configuration against ``scratch`` and
against the teacher (seed-averaged probabilities, same cases), the mean per-seed AUC gap to the teacher, and the
parameters as a share of MONAI's 3D ResNet-50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_small_lesions import DEFAULT_CASES, case_table  # noqa: E402
from benchmarks.demo_models import (  # noqa: E402
    _TRAINING_CODE,
    DEFAULT_WORKDIR,
    DEMO_NETWORK,
    DEMO_RECIPE,
    _bundle,
    _locked,
    code_fingerprint,
    demo_cohort,
    trained_demo_model,
)
from benchmarks.store import (  # noqa: E402
    ResultStore,
    code_versions,
    cohort_fingerprint,
    format_p,
    network_fingerprint,
    write_result_json,
    write_result_text,
)
from pipeline.evaluation.roc import UndefinedStatisticError, delong_ci, delong_test_row, roc_auc  # noqa: E402

__all__ = ["CONFIGURATIONS", "STUDENT", "aggregate", "main", "render_markdown"]

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "distillation_terms.json"
#: the student: make demo's distilled network
STUDENT: dict[str, Any] = {"network": "aam_student_small", "network_kwargs": {"width": 0.125}}
#: loss weights of each configuration (temperature 4 throughout)
CONFIGURATIONS: dict[str, dict[str, float]] = {
    "scratch": {"kd_weight": 0.0, "attention_weight": 0.0, "hint_weight": 0.0},
    "logit": {"kd_weight": 1.0, "attention_weight": 0.0, "hint_weight": 0.0},
    "logit+at": {"kd_weight": 1.0, "attention_weight": 500.0, "hint_weight": 0.0},
    "logit+hint": {"kd_weight": 1.0, "attention_weight": 0.0, "hint_weight": 1.0},
    "logit+at+hint": {"kd_weight": 1.0, "attention_weight": 500.0, "hint_weight": 1.0},
}
MONAI_RESNET50_PARAMS = 46_163_010


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    sd = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return {"mean": float(np.mean(kept)), "sd": sd, "n": len(kept), "values": kept}


def _distil(
    *, teacher: Any, configuration: str, train_seed: int, recipe: Mapping[str, Any], folder: Path
) -> tuple[Path, float]:
    """One stage of the stock distillation bundle, then the stock evaluation on the test split."""
    weights = CONFIGURATIONS[configuration]
    stage = {**STUDENT, "name": "student", **weights}
    with _locked(folder.with_name(folder.name + ".lock")):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        extra = ["--teacher_ckpt", str(teacher.checkpoint), "--stages", json.dumps([stage])]
        # the teacher's network name: distill.json reads the teacher's own run record for it
        _bundle("distilling", teacher.cohort, folder, recipe, DEMO_NETWORK, None, train_seed, None, extra)
        _bundle("evaluating", teacher.cohort, folder, recipe, DEMO_NETWORK, None, train_seed, None)
        return folder, round(time.perf_counter() - started, 1)


def _run_unit(
    store: ResultStore,
    *,
    difficulty: str,
    configuration: str,
    train_seed: int,
    cases: int,
    cohort_seed: int,
    recipe: Mapping[str, Any] | None,
    workdir: Path,
    refresh_stale: bool,
) -> dict[str, Any]:
    cohort = demo_cohort(difficulty, cases=cases, seed=cohort_seed, workdir=workdir)
    settings = {**DEMO_RECIPE, **dict(recipe or {})}
    key = {
        "difficulty": difficulty,
        "configuration": configuration,
        "weights": CONFIGURATIONS[configuration],
        "teacher": DEMO_NETWORK,
        "teacher_fingerprint": network_fingerprint(DEMO_NETWORK),
        "student": STUDENT,
        "student_fingerprint": network_fingerprint(STUDENT["network"], STUDENT["network_kwargs"]),
        "train_seed": train_seed,
        "cohort": {k: cohort.settings.get(k) for k in ("cases", "size", "seed", "difficulty")},
        "cohort_fingerprint": cohort_fingerprint(cohort.truth_dir, cohort.datalist),
        "recipe": settings,
    }
    parts = (difficulty, f"{configuration.replace('+', '_')}-seed{train_seed}")
    training_code = code_fingerprint(_TRAINING_CODE)
    stored = store.load(key, *parts)
    if stored is not None and not (refresh_stale and stored.get("training_code") != training_code):
        print(f"[distillation_terms] {configuration} seed {train_seed}: stored result reused", flush=True)
        return stored
    teacher = trained_demo_model(
        DEMO_NETWORK, difficulty, train_seed=train_seed, cases=cases, seed=cohort_seed, recipe=recipe, workdir=workdir
    )
    teacher_table = case_table(
        teacher.run_dir / "eval_test" / "predictions.csv", cohort.manifest, cohort.truth_dir / "truth.csv"
    )
    print(f"[distillation_terms] {configuration} seed {train_seed}: distilling ...", flush=True)
    load_start = [round(v, 2) for v in os.getloadavg()]
    folder = teacher.run_dir.parent / f"distil-{parts[1]}"
    folder, seconds = _distil(
        teacher=teacher, configuration=configuration, train_seed=train_seed, recipe=settings, folder=folder
    )
    table = case_table(folder / "eval_test" / "predictions.csv", cohort.manifest, cohort.truth_dir / "truth.csv")
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    summary_path = folder / "distill_summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    from pipeline.networks import build

    parameters = sum(p.numel() for p in build(STUDENT["network"], **STUDENT["network_kwargs"]).parameters())
    record = {
        "training_code": training_code,
        "val_auc": metrics.get("splits", {}).get("val", {}).get("auc"),
        "test_auc": metrics.get("auc"),
        "teacher_test_auc": teacher.test_auc,
        "student_parameters": parameters,
        "stage_summary": {k: summary.get(k) for k in ("stages",) if k in summary},
        "seconds": seconds,
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "cases": table.to_dict(orient="records"),
        "teacher_cases": teacher_table[["case_id", "probability"]].to_dict(orient="records"),
    }
    store.save(key, record, *parts)
    print(f"[distillation_terms] {configuration} seed {train_seed}: test AUC {record['test_auc']}", flush=True)
    return store.load(key, *parts) or {"key": key, **record}


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The table of one difficulty from its per-seed records.

    Raises:
        ValueError: records scored on different test cases.
    """
    import pandas as pd

    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_config.setdefault(record["key"]["configuration"], []).append(record)
    present = [name for name in CONFIGURATIONS if name in by_config]
    if not present:
        return {"configurations": {}}
    first = pd.DataFrame(by_config[present[0]][0]["cases"])
    case_ids, labels = list(first["case_id"]), first["label"].to_numpy()
    teacher_by_seed: dict[int, np.ndarray] = {}
    averaged: dict[str, np.ndarray] = {}
    rows: dict[str, Any] = {}
    for name in present:
        ordered = sorted(by_config[name], key=lambda r: r["key"]["train_seed"])
        probabilities, gaps = [], []
        for record in ordered:
            table = pd.DataFrame(record["cases"])
            if list(table["case_id"]) != case_ids:
                raise ValueError(f"{name}: seed {record['key']['train_seed']} scored other test cases")
            teacher = pd.DataFrame(record["teacher_cases"]).set_index("case_id").loc[case_ids, "probability"]
            teacher_by_seed[record["key"]["train_seed"]] = teacher.to_numpy()
            probabilities.append(table["probability"].to_numpy())
            gaps.append(roc_auc(labels, probabilities[-1]) - roc_auc(labels, teacher.to_numpy()))
        averaged[name] = np.mean(probabilities, axis=0)
        try:
            ci = list(delong_ci(labels, averaged[name]))
        except UndefinedStatisticError:
            ci = None
        rows[name] = {
            "weights": ordered[0]["key"]["weights"],
            "seeds": [r["key"]["train_seed"] for r in ordered],
            "test_auc": _spread([roc_auc(labels, p) for p in probabilities]),
            "seed_averaged_auc": roc_auc(labels, averaged[name]),
            "seed_averaged_auc_ci": ci,
            "auc_minus_teacher": _spread(gaps),
            "student_parameters": ordered[0].get("student_parameters"),
            "share_of_resnet50": (ordered[0].get("student_parameters") or 0) / MONAI_RESNET50_PARAMS,
            "minutes_per_run": _spread([r.get("seconds", 0.0) / 60 for r in ordered]),
            "training_code": code_versions(ordered),
        }
    teacher_seeds = sorted(teacher_by_seed)
    teacher_mean = np.mean([teacher_by_seed[s] for s in teacher_seeds], axis=0)
    comparisons = []
    for name in present:
        if name != "scratch" and "scratch" in averaged:
            comparisons.append(
                {"a": name, "b": "scratch", **delong_test_row(labels, averaged[name], averaged["scratch"])}
            )
    for name in present:
        comparisons.append({"a": name, "b": "teacher", **delong_test_row(labels, averaged[name], teacher_mean)})
    return {
        "n_test": int(labels.size),
        "n_test_positive": int(labels.sum()),
        "teacher": {
            "network": DEMO_NETWORK,
            "seeds": teacher_seeds,
            "test_auc": _spread([roc_auc(labels, teacher_by_seed[s]) for s in teacher_seeds]),
            "seed_averaged_auc": roc_auc(labels, teacher_mean),
        },
        "configurations": rows,
        "delong": comparisons,
        "trivial": {"what": "a constant score", "auc": 0.5},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fmt_spread(spread: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not spread or spread.get("mean") is None:
        return "—"
    sd = spread.get("sd")
    return f"{spread['mean']:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{spread['mean']:.{digits}f}"


def headline(result: Mapping[str, Any]) -> str:
    """The distillation comparison in one paragraph, for README.md and the bundle docs (a test checks they quote it):
    the teacher, each configuration's test AUC over seeds, the paired tests against scratch and the teacher, and
    whether any configuration beats scratch and comes within 0.01 of the teacher."""
    table = result["table"]
    teacher = table["teacher"]
    configurations = table["configurations"]
    first = next(iter(configurations.values()))
    tests = {(t["a"], t["b"]): t for t in table["delong"]}
    parts = []
    for name, row in configurations.items():
        text = f"{name} {row['test_auc']['mean']:.3f} ± {row['test_auc']['sd']:.3f}"
        versus = tests.get((name, "scratch"))
        if versus:
            text += f" (vs scratch {versus['difference']:+.3f}, p {format_p(versus['p_value'])})"
        parts.append(text)
    best = max(configurations, key=lambda name: configurations[name]["seed_averaged_auc"])
    gap = tests.get((best, "teacher"))
    beats = [
        name
        for name in configurations
        if name != "scratch" and tests.get((name, "scratch"), {}).get("difference", 0) > 0
    ]
    close = [name for name in configurations if tests.get((name, "teacher"), {}).get("difference", -1) >= -0.01]
    verdict = (
        f"distillation pays here ({', '.join(close)} within 0.01 of the teacher)"
        if close and any(name in beats for name in close)
        else "no student comes within 0.01 of the teacher: distillation does not pay here"
    )
    return (
        f"On the {result['difficulty']} demo ({table['n_test']} test cases, {len(result['seeds'])} seeds), the teacher "
        f"{teacher['network']} scores test AUC {teacher['test_auc']['mean']:.3f} ± {teacher['test_auc']['sd']:.3f}; "
        f"the student ({first['student_parameters']:,} parameters, {100 * first['share_of_resnet50']:.1f} % of "
        f"ResNet-50's): " + "; ".join(parts) + f". Best: {best}, {gap['difference']:+.3f} vs the teacher "
        f"(p {format_p(gap['p_value'])}); {verdict}."
    )


def render_markdown(result: Mapping[str, Any]) -> str:
    """The table of :func:`main`'s JSON as Markdown."""
    block = result.get("table", {})
    teacher = block.get("teacher", {})
    lines = [
        "# Distillation: which term pays (student vs scratch, over training seeds)",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        f"Cohort: the {result.get('difficulty')} demo ({block.get('n_test')} test cases, "
        f"{block.get('n_test_positive')} positive). Teacher: `{teacher.get('network')}` per seed, test AUC "
        f"{_fmt_spread(teacher.get('test_auc'))} (seed-averaged {_fmt(teacher.get('seed_averaged_auc'))}). Student: "
        f"`{STUDENT['network']}` with {STUDENT['network_kwargs']}.",
        "",
        "| configuration | kd | AT | hint | seeds | test AUC | seed-avg AUC (95% CI) | AUC − teacher | params "
        "(share of R50) | min/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in block.get("configurations", {}).items():
        weights, ci = row["weights"], row.get("seed_averaged_auc_ci")
        lines.append(
            f"| {name} | {weights['kd_weight']:g} | {weights['attention_weight']:g} | {weights['hint_weight']:g} | "
            f"{len(row['seeds'])} | {_fmt_spread(row['test_auc'])} | {_fmt(row['seed_averaged_auc'])}"
            + ("" if not ci else f" ({ci[0]:.3f}–{ci[1]:.3f})")
            + f" | {_fmt_spread(row['auc_minus_teacher'])} | {row.get('student_parameters', 0):,} "
            f"({100 * row.get('share_of_resnet50', 0):.1f} %) | {_fmt_spread(row['minutes_per_run'], 1)} |"
        )
    lines.append("| trivial: a constant score | — | — | — | — | 0.500 | 0.500 | — | — | — |")
    comparisons = block.get("delong", [])
    if comparisons:
        lines += [
            "",
            "| paired DeLong (seed-averaged) | AUC a | AUC b | difference (95% CI) | p |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in comparisons:
            ci = row.get("difference_ci")
            lines.append(
                f"| {row['a']} vs {row['b']} | {_fmt(row.get('auc_a'))} | {_fmt(row.get('auc_b'))} | "
                f"{_fmt(row.get('difference'))}{'' if not ci else f' ({ci[0]:.3f}, {ci[1]:.3f})'} | "
                f"{_fmt(row.get('p_value'), 4)} |"
            )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_distillation_terms", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--difficulty", default="hard")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="cohort generator seed")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--results-dir", type=Path, default=None, help="per-seed files (default: beside --output)")
    parser.add_argument("--commit", action="store_true", help="git-commit each per-seed file as it is written")
    parser.add_argument("--refresh-stale", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 scans, 2 epochs, 1 seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or reuse) every configuration and seed; write the per-seed files and the table."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(arguments)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    recipe = {"epochs": epochs} if epochs is not None else None
    cases = 60 if args.quick else (args.cases or DEFAULT_CASES.get(args.difficulty, 120))
    output = Path(args.output)
    store = ResultStore(
        "distillation_terms", root=args.results_dir or output.parent, commit=args.commit and not args.quick
    )
    started = time.perf_counter()
    records = [
        _run_unit(
            store,
            difficulty=args.difficulty,
            configuration=configuration,
            train_seed=seed,
            cases=cases,
            cohort_seed=args.seed,
            recipe=recipe,
            workdir=args.workdir,
            refresh_stale=args.refresh_stale,
        )
        for seed in seeds
        for configuration in args.configurations
    ]
    result = {
        "benchmark": "distillation_terms",
        "command": " ".join([".venv/bin/python", "-m", "benchmarks.bench_distillation_terms", *arguments]),
        "difficulty": args.difficulty,
        "seeds": seeds,
        "table": aggregate(records),
        "wall_seconds": time.perf_counter() - started,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    write_result_json(output, result)
    write_result_text(output.with_suffix(".md"), render_markdown(result))
    print(f"[distillation_terms] wrote {output.name} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
