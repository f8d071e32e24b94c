"""Small-lesion benchmark: sensitivity by lesion-volume tertile on the hard demo, AAM-ResNet vs baselines.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_small_lesions [--networks aam_resnet18 resnet18 densenet121] [--cases 160]
                                                       [--output benchmarks/results/small_lesions.json] [--quick]

Every network is trained the same way on the same cohort, by :func:`benchmarks.demo_models.trained_demo_model`
(``aamct demo-data --difficulty hard --masks``: small, faint opacities, with the generator's own lesion masks; the
Makefile's demo recipe through the stock bundle training, then ``evaluating`` on the test split, whose operating
point is frozen on the validation split). A finished run is reused. Then, on the test split:

- AUC with its DeLong 95 % CI (:func:`pipeline.evaluation.roc.delong_ci`) and the paired DeLong test of the first
  network (the AAM-ResNet) against each other one (:func:`pipeline.evaluation.roc.delong_test`);
- sensitivity at the frozen operating point (``predictions.csv``'s ``predicted``: the threshold chosen on val) for
  all positives and per tertile of their total lesion volume (the mask volume from the cohort's ``truth.csv``; the
  tertile edges come from the test positives' volumes only, so they are the same for every network), and
  specificity, each with its Wilson 95 % CI (:func:`pipeline.evaluation.operating_point.proportion_with_ci`).

Writes ``small_lesions.json`` and ``small_lesions.md``. Lesion volumes are the generator's truth, not a
segmentation: the benchmark measures detection of small lesions, not their delineation.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.demo_models import DEFAULT_WORKDIR, DemoModel, trained_demo_model  # noqa: E402
from pipeline.evaluation.operating_point import proportion_with_ci  # noqa: E402
from pipeline.evaluation.roc import UndefinedStatisticError, delong_ci, delong_test_row, roc_auc  # noqa: E402
from pipeline.io import write_json_atomic, write_text_atomic  # noqa: E402

__all__ = ["DEFAULT_NETWORKS", "case_table", "detection_by_tertile", "main", "tertile_edges"]

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "small_lesions.json"
#: the AAM-ResNet first: it is compared with every other one
DEFAULT_NETWORKS: tuple[str, ...] = ("aam_resnet18", "resnet18", "densenet121")
TERTILES = ("smallest third", "middle third", "largest third")


def case_table(predictions_csv: str | os.PathLike, manifest_csv: str | os.PathLike, truth_csv: str | os.PathLike):
    """One row per evaluated test case: label, probability, prediction at the frozen threshold, lesion volume.

    The predictions name cases by ``case_id``; the manifest maps a ``case_id`` to its series folder (``image``);
    the generator's ``truth.csv`` gives each series folder (``path``) its total lesion volume.

    Args:
        predictions_csv: ``eval_test/predictions.csv`` of a run.
        manifest_csv: the cohort's manifest.
        truth_csv: the cohort's ``truth.csv``.

    Returns:
        A pandas DataFrame with ``case_id, label (0/1), probability, predicted (0/1), lesion_volume_ml``.

    Raises:
        ValueError: when a prediction has no manifest row or truth row, or failed.
    """
    import pandas as pd

    predictions = pd.read_csv(predictions_csv)
    failed = predictions[predictions["status"] != "ok"]
    if len(failed):
        raise ValueError(f"{predictions_csv}: {len(failed)} case(s) failed, first: {failed['reason'].iloc[0]}")
    manifest = pd.read_csv(manifest_csv)[["case_id", "image"]]
    manifest["path"] = manifest["image"].map(lambda image: Path(str(image)).name)
    truth = pd.read_csv(truth_csv)[["path", "label", "lesion_volume_ml"]].rename(columns={"label": "truth_label"})
    table = predictions.merge(manifest, on="case_id", how="left").merge(truth, on="path", how="left")
    missing = table[table["lesion_volume_ml"].isna()]
    if len(missing):
        raise ValueError(f"{predictions_csv}: no truth for case(s) {', '.join(missing['case_id'].astype(str)[:3])}")
    if not (table["label"] == table["truth_label"]).all():
        raise ValueError(f"{predictions_csv}: labels disagree with the generator's truth.csv")
    positive = "positive"
    return pd.DataFrame(
        {
            "case_id": table["case_id"].astype(str),
            "label": (table["label"] == positive).astype(int),
            "probability": table["probability"].astype(float),
            "predicted": (table["predicted"] == positive).astype(int),
            "lesion_volume_ml": table["lesion_volume_ml"].astype(float),
        }
    )


def tertile_edges(volumes: Sequence[float]) -> tuple[float, float]:
    """The 1/3 and 2/3 quantiles of the positives' lesion volumes (numpy's default linear interpolation).

    Args:
        volumes: lesion volumes (ml) of the positive cases.

    Returns:
        ``(lower, upper)``: a case is in the smallest third when its volume <= lower, the largest when > upper.

    Raises:
        ValueError: for fewer than 3 volumes.
    """
    values = np.asarray(volumes, dtype=float)
    if values.size < 3:
        raise ValueError(f"tertiles need at least 3 positive cases, got {values.size}")
    lower, upper = np.quantile(values, [1 / 3, 2 / 3])
    return float(lower), float(upper)


def _estimate(successes: int, total: int, what: str) -> dict[str, Any]:
    estimate = proportion_with_ci(successes, total, method="wilson", what=what)
    return {
        "value": estimate.value,
        "ci": None if estimate.ci is None else list(estimate.ci),
        "numerator": successes,
        "denominator": total,
    }


def detection_by_tertile(table, edges: tuple[float, float]) -> dict[str, Any]:
    """AUC (DeLong CI), sensitivity overall and per lesion-volume tertile, specificity (Wilson CIs).

    Args:
        table: :func:`case_table`'s frame.
        edges: :func:`tertile_edges` of the test positives.

    Returns:
        ``{"auc", "auc_ci", "sensitivity", "specificity", "tertiles": {name: {"volume_ml": [lo, hi], ...}}}``.
    """
    labels = table["label"].to_numpy()
    scores = table["probability"].to_numpy()
    predicted = table["predicted"].to_numpy()
    volumes = table["lesion_volume_ml"].to_numpy()
    auc = roc_auc(labels, scores)
    try:
        ci = list(delong_ci(labels, scores))
    except UndefinedStatisticError:
        ci = None
    positives, negatives = labels == 1, labels == 0
    lower, upper = edges
    bins = {
        TERTILES[0]: positives & (volumes <= lower),
        TERTILES[1]: positives & (volumes > lower) & (volumes <= upper),
        TERTILES[2]: positives & (volumes > upper),
    }
    tertiles = {}
    for name, members in bins.items():
        tertiles[name] = {
            "volume_ml": [float(volumes[members].min()), float(volumes[members].max())] if members.any() else None,
            "sensitivity": _estimate(int(predicted[members].sum()), int(members.sum()), f"sensitivity ({name})"),
        }
    return {
        "n_cases": int(labels.size),
        "n_positive": int(positives.sum()),
        "auc": auc,
        "auc_ci": ci,
        "sensitivity": _estimate(int(predicted[positives].sum()), int(positives.sum()), "sensitivity"),
        "specificity": _estimate(int((1 - predicted[negatives]).sum()), int(negatives.sum()), "specificity"),
        "tertiles": tertiles,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fmt_estimate(estimate: Mapping[str, Any]) -> str:
    if estimate.get("value") is None:
        return "—"
    low, high = estimate["ci"]
    return f"{estimate['value']:.2f} ({low:.2f}–{high:.2f}; {estimate['numerator']}/{estimate['denominator']})"


def render_markdown(result: Mapping[str, Any]) -> str:
    """The tables of a result (:func:`main`'s JSON) as Markdown."""
    lines = [
        "# Small lesions: detection by lesion-volume tertile (hard demo)",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        f"Cohort: `aamct demo-data --difficulty hard --masks`, {result.get('cohort', {}).get('cases')} scans, lesion "
        f"volumes {result.get('cohort', {}).get('lesion_volume_range_ml')} ml (generator truth); test split "
        f"{result.get('n_test')} cases, {result.get('n_test_positive')} positive. Operating point frozen on val. "
        "Sensitivity / specificity with Wilson 95 % CIs (successes/total); AUC with DeLong 95 % CI.",
        "",
    ]
    edges = result.get("tertile_edges_ml")
    if edges:
        lines += [
            f"Tertile edges of the test positives' total lesion volume: {edges[0]:.2f} ml and {edges[1]:.2f} ml.",
            "",
        ]
    header = ["network", "val AUC", "test AUC (95% CI)", "sensitivity", *TERTILES, "specificity", "min/run"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, row in result.get("networks", {}).items():
        ci = row.get("auc_ci")
        cells = [
            name,
            _fmt(row.get("val_auc")),
            f"{_fmt(row.get('auc'))}" + ("" if not ci else f" ({ci[0]:.3f}–{ci[1]:.3f})"),
            _fmt_estimate(row.get("sensitivity", {})),
            *(_fmt_estimate(row.get("tertiles", {}).get(t, {}).get("sensitivity", {})) for t in TERTILES),
            _fmt_estimate(row.get("specificity", {})),
            _fmt(row.get("seconds", 0) / 60, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    comparisons = result.get("delong", [])
    if comparisons:
        lines += ["", "| paired DeLong | AUC a | AUC b | difference (95% CI) | p |", "| --- | --- | --- | --- | --- |"]
        for row in comparisons:
            ci = row.get("difference_ci")
            lines.append(
                f"| {row['a']} vs {row['b']} | {_fmt(row.get('auc_a'))} | {_fmt(row.get('auc_b'))} | "
                f"{_fmt(row.get('difference'))}{'' if not ci else f' ({ci[0]:.3f}, {ci[1]:.3f})'} | "
                f"{_fmt(row.get('p_value'), 4)} |"
            )
    lines += ["", f"Wall time {result.get('wall_seconds', 0) / 60:.1f} min; load {result.get('load_average')}."]
    return "\n".join(lines) + "\n"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_small_lesions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON to write (+ .md beside it)")
    parser.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS), help="registry names, AAM first")
    parser.add_argument("--cases", type=int, default=160, help="scans of the hard demo cohort (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="cohort generator seed (default: %(default)s)")
    parser.add_argument("--train-seed", type=int, default=0, help="training seed (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cohorts and runs (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 scans, 2 epochs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or reuse) every network, score the test split by lesion-volume tertile, write JSON + Markdown."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(arguments)
    cases, epochs = (60, 2) if args.quick else (args.cases, args.epochs)
    recipe = {"epochs": epochs} if epochs is not None else None
    started = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    models: dict[str, DemoModel] = {}
    for name in args.networks:
        print(f"[small_lesions] {name}: training or reusing on the hard demo ({cases} scans) ...", flush=True)
        models[name] = trained_demo_model(
            name, "hard", cases=cases, seed=args.seed, train_seed=args.train_seed, recipe=recipe, workdir=args.workdir
        )
    cohort = next(iter(models.values())).cohort
    tables = {
        name: case_table(
            model.run_dir / "eval_test" / "predictions.csv", cohort.manifest, cohort.truth_dir / "truth.csv"
        )
        for name, model in models.items()
    }
    first = next(iter(tables.values()))
    for name, table in tables.items():
        if list(table["case_id"]) != list(first["case_id"]):
            raise SystemExit(f"bench_small_lesions: error: {name} was evaluated on other test cases")
    edges = tertile_edges(first.loc[first["label"] == 1, "lesion_volume_ml"])
    networks = {}
    for name, table in tables.items():
        model = models[name]
        networks[name] = {
            **detection_by_tertile(table, edges),
            "val_auc": model.val_auc,
            "run_dir": str(model.run_dir),
            "reused": model.reused,
            "seconds": model.seconds,
        }
    comparisons = []
    names = list(tables)
    labels = first["label"].to_numpy()
    for other in names[1:]:
        row: dict[str, Any] = {"a": names[0], "b": other}
        row.update(
            delong_test_row(labels, tables[names[0]]["probability"].to_numpy(), tables[other]["probability"].to_numpy())
        )
        comparisons.append(row)
    result = {
        "benchmark": "small_lesions",
        "command": " ".join([".venv/bin/python", "-m", "benchmarks.bench_small_lesions", *arguments]),
        "cohort": {
            k: cohort.settings.get(k) for k in ("cases", "size", "seed", "difficulty", "lesion_volume_range_ml")
        },
        "recipe": next(iter(models.values())).recipe,
        "n_test": int(len(first)),
        "n_test_positive": int(first["label"].sum()),
        "tertile_edges_ml": list(edges),
        "networks": networks,
        "delong": comparisons,
        "wall_seconds": time.perf_counter() - started,
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    output = Path(args.output)
    write_json_atomic(output, result)
    write_text_atomic(output.with_suffix(".md"), render_markdown(result))
    print(f"[small_lesions] wrote {output} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
