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
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.demo_models import DEFAULT_WORKDIR, DEMO_RECIPE, demo_cohort, trained_demo_model  # noqa: E402
from benchmarks.store import (  # noqa: E402
    ResultStore,
    code_versions,
    cohort_fingerprint,
    format_p,
    network_fingerprint,
    write_result_json,
    write_result_text,
)
from pipeline.evaluation.operating_point import proportion_with_ci  # noqa: E402
from pipeline.evaluation.roc import UndefinedStatisticError, delong_ci, delong_test_row, roc_auc  # noqa: E402

__all__ = [
    "DEFAULT_NETWORKS",
    "NetworkChoice",
    "aggregate",
    "case_table",
    "detection_by_tertile",
    "main",
    "parse_network",
    "tertile_edges",
]

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "small_lesions.json"
#: the AAM-ResNet first (it is compared with every other one); all three at a quarter of their width, one recipe
DEFAULT_NETWORKS: tuple[str, ...] = ("aam_student_small", "resnet18:widen_factor=0.25", "densenet121:width=0.25")
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
DEFAULT_DIFFICULTIES: tuple[str, ...] = ("hard", "default")
#: cohort size per difficulty (the hard demo needs more scans for a test split with enough small lesions)
DEFAULT_CASES: dict[str, int] = {"hard": 160, "default": 120}
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


@dataclass(frozen=True)
class NetworkChoice:
    """A registry network with its options, as ``--networks`` names it (``resnet18:widen_factor=0.25``)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def label(self) -> str:
        """``resnet18(widen_factor=0.25)``: how tables name it."""
        if not self.kwargs:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.kwargs)})"

    @property
    def slug(self) -> str:
        """A file-name form: ``resnet18-widen_factor0p25``."""
        text = self.name + "".join(f"-{k}{v}" for k, v in self.kwargs)
        return text.replace(".", "p").replace("/", "_").replace(" ", "")


def parse_network(text: str) -> NetworkChoice:
    """``name`` or ``name:key=value,key=value`` (values read as JSON numbers/booleans when they are ones).

    Raises:
        SystemExit: for a malformed option (one line naming it).
    """
    name, _, rest = text.partition(":")
    options: list[tuple[str, Any]] = []
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bench_small_lesions: error: network option {item!r} in {text!r} is not key=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options.append((key.strip(), value))
    return NetworkChoice(name.strip(), tuple(sorted(options)))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _fmt_estimate(estimate: Mapping[str, Any]) -> str:
    if not estimate or estimate.get("value") is None:
        return "—"
    low, high = estimate["ci"]
    return f"{estimate['value']:.2f} ({low:.2f}–{high:.2f}; {estimate['numerator']}/{estimate['denominator']})"


def _fmt_spread(spread: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not spread or spread.get("mean") is None:
        return "—"
    sd = spread.get("sd")
    return f"{spread['mean']:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{spread['mean']:.{digits}f}"


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    return {
        "mean": float(np.mean(kept)),
        "sd": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
        "n": len(kept),
        "values": kept,
    }


def _run_unit(
    store: ResultStore,
    *,
    difficulty: str,
    network: NetworkChoice,
    train_seed: int,
    cases: int,
    cohort_seed: int,
    recipe: Mapping[str, Any] | None,
    workdir: Path,
    refresh_stale: bool,
) -> dict[str, Any]:
    """One (difficulty, network, seed): the stored record when its key matches, else train, evaluate, store."""
    from benchmarks.demo_models import _TRAINING_CODE, code_fingerprint

    cohort = demo_cohort(difficulty, cases=cases, seed=cohort_seed, workdir=workdir)
    settings = {**DEMO_RECIPE, **dict(recipe or {})}
    key = {
        "difficulty": difficulty,
        "network": network.name,
        "network_kwargs": network.options,
        "network_fingerprint": network_fingerprint(network.name, network.options),
        "train_seed": train_seed,
        "cohort": {k: cohort.settings.get(k) for k in ("cases", "size", "seed", "difficulty")},
        "cohort_fingerprint": cohort_fingerprint(cohort.truth_dir, cohort.datalist),
        "recipe": settings,
    }
    parts = (difficulty, f"{network.slug}-seed{train_seed}")
    training_code = code_fingerprint(_TRAINING_CODE)
    stored = store.load(key, *parts)
    if stored is not None and not (refresh_stale and stored.get("training_code") != training_code):
        print(f"[small_lesions] {difficulty} {network.label} seed {train_seed}: stored result reused", flush=True)
        return stored
    print(f"[small_lesions] {difficulty} {network.label} seed {train_seed}: training ...", flush=True)
    load_start = [round(v, 2) for v in os.getloadavg()]
    model = trained_demo_model(
        network.name,
        difficulty,
        network_kwargs=network.options or None,
        train_seed=train_seed,
        cases=cases,
        seed=cohort_seed,
        recipe=dict(recipe) if recipe else None,
        workdir=workdir,
    )
    table = case_table(model.run_dir / "eval_test" / "predictions.csv", cohort.manifest, cohort.truth_dir / "truth.csv")
    record = {
        "network_label": network.label,
        "training_code": training_code,
        "val_auc": model.val_auc,
        "test_auc": model.test_auc,
        "seconds": model.seconds,
        "reused_run": model.reused,
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "cpu_count": os.cpu_count(),
        "cases": table.to_dict(orient="records"),
    }
    path = store.save(key, record, *parts)
    print(f"[small_lesions] {difficulty} {network.label} seed {train_seed}: test AUC {model.test_auc} -> {path.name}")
    return store.load(key, *parts) or {"key": key, **record}


def tertile_aucs(table, edges: tuple[float, float]) -> dict[str, float | None]:
    """Per tertile, the AUC of that tertile's positives against every negative: small-lesion detection without a
    threshold, so networks working at different operating points (one calling more cases positive) compare fairly."""
    labels = table["label"].to_numpy()
    scores = table["probability"].to_numpy()
    volumes = table["lesion_volume_ml"].to_numpy()
    lower, upper = edges
    members = {
        TERTILES[0]: volumes <= lower,
        TERTILES[1]: (volumes > lower) & (volumes <= upper),
        TERTILES[2]: volumes > upper,
    }
    out: dict[str, float | None] = {}
    for name, inside in members.items():
        keep = (labels == 0) | ((labels == 1) & inside)
        chosen = labels[keep]
        out[name] = roc_auc(chosen, scores[keep]) if 0 < chosen.sum() < chosen.size else None
    return out


def aggregate(records: Sequence[Mapping[str, Any]], networks: Sequence[str]) -> dict[str, Any]:
    """One difficulty's table from its per-seed records (:func:`_run_unit`'s files).

    Per network: test AUC mean ± sd over seeds; the AUC (DeLong CI) of the seed-averaged probability of each test
    case; sensitivity overall and per lesion-volume tertile at each seed's frozen threshold, as mean ± sd over seeds
    and as counts pooled over seeds with a Wilson CI (the same cases repeat across seeds, so that interval is
    narrower than one from independent cases would be); specificity likewise. The first network's seed-averaged
    probabilities are compared with each other network's by the paired DeLong test on the same cases. A constant
    score (every case called the majority class) is the trivial row: AUC 0.5 and its sensitivity/specificity.

    Args:
        records: the records of one difficulty.
        networks: network labels in table order (the first is compared with the others).

    Returns:
        JSON-ready: ``networks`` (label -> row), ``delong``, ``tertile_edges_ml``, ``n_test``, ``trivial``.

    Raises:
        ValueError: when records of one difficulty were scored on different test cases.
    """
    import pandas as pd

    by_network: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_network.setdefault(record["network_label"], []).append(record)
    present = [name for name in networks if name in by_network]
    if not present:
        return {"networks": {}, "delong": []}
    first = pd.DataFrame(by_network[present[0]][0]["cases"])
    case_ids = list(first["case_id"])
    labels = first["label"].to_numpy()
    edges = tertile_edges(first.loc[first["label"] == 1, "lesion_volume_ml"])
    rows: dict[str, Any] = {}
    averaged: dict[str, np.ndarray] = {}
    for name in present:
        tables = [pd.DataFrame(r["cases"]) for r in sorted(by_network[name], key=lambda r: r["key"]["train_seed"])]
        for table in tables:
            if list(table["case_id"]) != case_ids:
                raise ValueError(f"{name}: a seed was evaluated on other test cases than {present[0]}")
        per_seed = [detection_by_tertile(table, edges) for table in tables]
        probability = np.mean([table["probability"].to_numpy() for table in tables], axis=0)
        averaged[name] = probability
        mean_table = first.assign(probability=probability)
        seed_tertile_aucs = [tertile_aucs(table, edges) for table in tables]
        averaged_tertile_aucs = tertile_aucs(mean_table, edges)
        pooled = pd.concat(tables, ignore_index=True)
        pooled_detection = detection_by_tertile(pooled, edges)
        try:
            ci = list(delong_ci(labels, probability))
        except UndefinedStatisticError:
            ci = None
        seeds = [r["key"]["train_seed"] for r in sorted(by_network[name], key=lambda r: r["key"]["train_seed"])]
        rows[name] = {
            "seeds": seeds,
            "test_auc": _spread([d["auc"] for d in per_seed]),
            "val_auc": _spread([r.get("val_auc") for r in by_network[name]]),
            "seed_averaged_auc": roc_auc(labels, mean_table["probability"].to_numpy()),
            "seed_averaged_auc_ci": ci,
            "sensitivity": {
                "per_seed": _spread([d["sensitivity"]["value"] for d in per_seed]),
                "pooled": pooled_detection["sensitivity"],
            },
            "specificity": {
                "per_seed": _spread([d["specificity"]["value"] for d in per_seed]),
                "pooled": pooled_detection["specificity"],
            },
            "tertiles": {
                tertile: {
                    "volume_ml": per_seed[0]["tertiles"][tertile]["volume_ml"],
                    "per_seed": _spread([d["tertiles"][tertile]["sensitivity"]["value"] for d in per_seed]),
                    "pooled": pooled_detection["tertiles"][tertile]["sensitivity"],
                    "auc_vs_negatives": _spread([a[tertile] for a in seed_tertile_aucs]),
                    "seed_averaged_auc_vs_negatives": averaged_tertile_aucs[tertile],
                }
                for tertile in TERTILES
            },
            "minutes_per_run": _spread([r.get("seconds", 0.0) / 60 for r in by_network[name]]),
            "training_code": code_versions(by_network[name]),
        }
    comparisons = []
    for other in present[1:]:
        row: dict[str, Any] = {"a": present[0], "b": other, "scores": "seed-averaged probability"}
        row.update(delong_test_row(labels, averaged[present[0]], averaged[other]))
        comparisons.append(row)
    majority_positive = labels.mean() > 0.5
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    called = "positive" if majority_positive else "negative"
    what = (
        f"every case called {called} (the majority class)"
        if positives != negatives
        else (f"every case called {called} (the classes tie, {positives}/{labels.size})")
    )
    return {
        "n_test": int(labels.size),
        "n_test_positive": positives,
        "tertile_edges_ml": list(edges),
        "networks": rows,
        "delong": comparisons,
        "trivial": {
            "what": what,
            "auc": 0.5,
            "sensitivity": 1.0 if majority_positive else 0.0,
            "specificity": 0.0 if majority_positive else 1.0,
            "accuracy": max(positives, negatives) / max(labels.size, 1),
        },
    }


def best_small_tertile_network(result: Mapping[str, Any], difficulty: str = "hard") -> str:
    """The network with the highest smallest-tertile sensitivity (pooled over seeds; ties: the threshold-free
    seed-averaged AUC of the smallest tertile against the negatives)."""
    networks = result["difficulties"][difficulty]["networks"]

    def key(name: str) -> tuple[float, float]:
        smallest = networks[name]["tertiles"][TERTILES[0]]
        return (smallest["pooled"]["value"] or 0.0, smallest.get("seed_averaged_auc_vs_negatives") or 0.0)

    return max(networks, key=key)


def headline(result: Mapping[str, Any], difficulty: str = "hard") -> str:
    """The small-lesion comparison in one paragraph, for README.md and the bundle docs (a test checks they quote it).

    Per network: the smallest tertile's sensitivity at each seed's frozen operating point, pooled over seeds with its
    Wilson CI, its threshold-free AUC against the negatives (seed-averaged), the test AUC over seeds; then the paired
    DeLong tests and the trivial baseline.
    """
    block = result["difficulties"][difficulty]
    parts = []
    for name, row in block["networks"].items():
        smallest = row["tertiles"][TERTILES[0]]
        pooled = smallest["pooled"]
        parts.append(
            f"{name} {pooled['numerator']}/{pooled['denominator']} = {pooled['value']:.2f} "
            f"(95 % CI {pooled['ci'][0]:.2f}-{pooled['ci'][1]:.2f}; AUC vs negatives "
            f"{smallest['seed_averaged_auc_vs_negatives']:.3f}; test AUC {row['test_auc']['mean']:.3f} ± "
            f"{row['test_auc']['sd']:.3f})"
        )
    tests = "; ".join(
        f"{t['a']} - {t['b']} {t['difference']:+.3f} (p {format_p(t['p_value'])})" for t in block.get("delong", [])
    )
    seeds = max(len(row["seeds"]) for row in block["networks"].values())
    return (
        f"On the {difficulty} demo ({block['n_test']} test cases, {block['n_test_positive']} positive, {seeds} "
        f"seeds per network), smallest-tertile sensitivity pooled over seeds: " + "; ".join(parts) + ". Paired "
        f"DeLong on the seed-averaged probabilities: {tests}. Calling every case negative scores AUC "
        f"{block['trivial']['auc']:.1f}, sensitivity {block['trivial']['sensitivity']:.0f}. Highest small-tertile "
        f"sensitivity: {best_small_tertile_network(result, difficulty)}."
    )


def render_markdown(result: Mapping[str, Any]) -> str:
    """The tables of a result (:func:`main`'s JSON) as Markdown."""
    lines = [
        "# Small lesions: detection by lesion-volume tertile, over training seeds",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        "Each network trained with the demo recipe on the same cohort once per seed (per-seed files in "
        "`benchmarks/results/small_lesions/`). Test AUC: mean ± sd over seeds; seed-averaged AUC: the AUC of each "
        "case's mean probability over seeds, DeLong 95 % CI, and the paired DeLong test of the first network "
        "against the others on those probabilities. Sensitivity at each seed's operating point frozen on val: "
        "mean ± sd over seeds, and pooled over seeds (successes/total, Wilson 95 % CI; cases repeat across seeds).",
        "",
    ]
    for difficulty, block in result.get("difficulties", {}).items():
        cohort = block.get("cohort", {})
        lines += [
            f"## {difficulty} demo",
            "",
            f"Cohort: `aamct demo-data --difficulty {difficulty} --cases {cohort.get('cases')} --seed "
            f"{cohort.get('seed')} --masks`; test split {block.get('n_test')} cases, {block.get('n_test_positive')} "
            "positive.",
            "",
        ]
        edges = block.get("tertile_edges_ml")
        if edges:
            lines += [
                f"Tertile edges of the test positives' lesion volume: {edges[0]:.1f} ml and {edges[1]:.1f} ml.",
                "",
            ]
        header = [
            "network",
            "seeds",
            "test AUC",
            "seed-avg AUC (95% CI)",
            "sensitivity",
            *TERTILES,
            "specificity",
            "min/run",
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for name, row in block.get("networks", {}).items():
            ci = row.get("seed_averaged_auc_ci")
            cells = [
                name,
                str(len(row.get("seeds", []))),
                _fmt_spread(row.get("test_auc")),
                _fmt(row.get("seed_averaged_auc")) + ("" if not ci else f" ({ci[0]:.3f}–{ci[1]:.3f})"),
                f"{_fmt_spread(row['sensitivity']['per_seed'], 2)}; {_fmt_estimate(row['sensitivity']['pooled'])}",
                *(
                    f"{_fmt_spread(row['tertiles'][t]['per_seed'], 2)}; {_fmt_estimate(row['tertiles'][t]['pooled'])}"
                    for t in TERTILES
                ),
                f"{_fmt_spread(row['specificity']['per_seed'], 2)}; {_fmt_estimate(row['specificity']['pooled'])}",
                _fmt_spread(row.get("minutes_per_run"), 1),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        trivial = block.get("trivial")
        if trivial:
            lines.append(
                f"| trivial: {trivial['what']} | — | 0.500 | 0.500 | {trivial['sensitivity']:.2f} | — | — | — | "
                f"{trivial['specificity']:.2f} | — |"
            )
        lines += [
            "",
            "Threshold-free small-lesion detection: AUC of each tertile's positives against all negatives (mean ± sd "
            "over seeds; seed-averaged probability). A constant score gets 0.500.",
            "",
            "| network | " + " | ".join(TERTILES) + " |",
            "| --- |" + " --- |" * len(TERTILES),
        ]
        for name, row in block.get("networks", {}).items():
            cells = [
                f"{_fmt_spread(row['tertiles'][t].get('auc_vs_negatives'))}; "
                f"{_fmt(row['tertiles'][t].get('seed_averaged_auc_vs_negatives'))}"
                for t in TERTILES
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
        versions = sorted({v for row in block.get("networks", {}).values() for v in row.get("training_code", [])})
        if len(versions) > 1:
            lines += [
                "",
                f"Note: rows come from {len(versions)} versions of the training code ({', '.join(versions)}).",
            ]
        lines.append("")
    return "\n".join(lines) + "\n"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_small_lesions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON to write (+ .md beside it)")
    parser.add_argument(
        "--networks", nargs="+", default=list(DEFAULT_NETWORKS), help="name[:key=value,...], the AAM first"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="training seeds")
    parser.add_argument("--difficulties", nargs="+", default=list(DEFAULT_DIFFICULTIES), help="demo difficulties")
    parser.add_argument("--cases", type=int, default=None, help="scans per cohort (default: 160 hard, 120 default)")
    parser.add_argument("--seed", type=int, default=0, help="cohort generator seed (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cohorts and runs (default: %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=None, help="per-seed files (default: beside --output)")
    parser.add_argument("--commit", action="store_true", help="git-commit each per-seed file as it is written")
    parser.add_argument("--refresh-stale", action="store_true", help="rerun units made with other training code")
    parser.add_argument("--only-stored", action="store_true", help="train nothing: assemble the stored files")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 scans, 2 epochs, 2 seeds")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or reuse) every network and seed on each difficulty, write the per-seed files and the tables."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(arguments)
    seeds = args.seeds[:2] if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    recipe = {"epochs": epochs} if epochs is not None else None
    networks = [parse_network(text) for text in args.networks]
    output = Path(args.output)
    store = ResultStore("small_lesions", root=args.results_dir or output.parent, commit=args.commit and not args.quick)
    started = time.perf_counter()
    difficulties: dict[str, Any] = {}
    for difficulty in args.difficulties:
        cases = 60 if args.quick else (args.cases or DEFAULT_CASES.get(difficulty, 120))
        records = []
        for train_seed in seeds:  # seed-major: every network gets seed 0 before any gets seed 1
            for network in networks:
                if args.only_stored:
                    found = [
                        r
                        for r in store.records()
                        if r.get("key", {}).get("difficulty") == difficulty
                        and r.get("network_label") == network.label
                        and r.get("key", {}).get("train_seed") == train_seed
                        and r.get("key", {}).get("cohort", {}).get("cases") == cases
                    ]
                    records.extend(found[-1:])
                    continue
                records.append(
                    _run_unit(
                        store,
                        difficulty=difficulty,
                        network=network,
                        train_seed=train_seed,
                        cases=cases,
                        cohort_seed=args.seed,
                        recipe=recipe,
                        workdir=args.workdir,
                        refresh_stale=args.refresh_stale,
                    )
                )
        block = aggregate(records, [n.label for n in networks])
        if records:
            block["cohort"] = records[0]["key"]["cohort"]
            block["cohort_fingerprint"] = records[0]["key"]["cohort_fingerprint"][:12]
            block["recipe"] = records[0]["key"]["recipe"]
        difficulties[difficulty] = block
    result = {
        "benchmark": "small_lesions",
        "command": " ".join([".venv/bin/python", "-m", "benchmarks.bench_small_lesions", *arguments]),
        "networks": [n.label for n in networks],
        "seeds": seeds,
        "difficulties": difficulties,
        "wall_seconds": time.perf_counter() - started,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    write_result_json(output, result)
    write_result_text(output.with_suffix(".md"), render_markdown(result))
    print(f"[small_lesions] wrote {output.name} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
