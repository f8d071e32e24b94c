"""Do the heatmaps point at the lesions? Every map kind of every network, scored against the demo's lesion masks.

Run from the repository root (``make bench`` runs it through ``benchmarks.run_all``)::

    .venv/bin/python -m benchmarks.bench_localisation [--difficulties default hard] [--quick]
                                                      [--output benchmarks/results/localisation.json]

For each demo difficulty and each network (default: the demo's ``aam_student_small``, an AAM-ResNet-18 at width
0.25, against MONAI's ResNet-18 at the same width, ``resnet18`` with ``widen_factor=0.25``), the network is trained
once with the demo recipe through the bundle (:func:`benchmarks.demo_models.trained_demo_model`, reused when a
finished run exists), then every positive case of the test split is run through the inference path a user runs
(:class:`pipeline.inference.CasePredictor`: load, preprocess, sliding-window inference with the map kind, map on the
source grid, written as NIfTI in its raw units, float32 here so that no 8-bit ties decide the peak) for every map:

* ``cam``: the dense CAM (positive log-odds, at 1/32 of the network input: 2 x 2 x 1 for the demo's window);
* ``gradcam`` at ``layer4`` / ``layer3`` / ``layer2`` (1/32, 1/16 and 1/8 of the input), ``gradcampp`` at ``layer2``;
* ``attention`` (AAM only): the mean over stages, and stage ``layer2`` alone;
* ``occlusion``: MONAI's occlusion sensitivity (blocks of 3/16 of the window replaced by air), in the default
  half-block steps and in 2/3-block steps (``occlusion@overlap0.33``, 2.6x fewer forward passes).

Each raw map is read back and finished three ways by :func:`pipeline.inference.maps.finish_map` (what
``CasePredictor`` writes with ``heatmap_values=relative``): ``raw`` (as computed; the map the project wrote before),
``body`` (positive evidence, 0 outside the body, scaled to its maximum) and ``lungs`` (the same inside
:func:`pipeline.inference.maps.lung_mask`). Each is scored with the case's lesion and lung masks
(``aamct demo-data --masks``, same grid, checked) by :mod:`pipeline.inference.localisation`: pointing game (peak within ``--margin-mm`` of a lesion) with a
Wilson interval, share of the in-lung map mass inside lesions (beside the lesions' own share of the lung, what a flat
map would score), and voxel AUROC of map vs lesion inside the lung. Results: ``localisation.json`` (per variant,
per case) and ``localisation.md`` (the summary table) beside it. The machine load is recorded; nothing here is
timed, so the load does not change the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

__all__ = ["MapVariant", "NETWORKS", "VARIANTS", "headline", "main", "render_table", "score_model"]

RESULTS = REPO_ROOT / "benchmarks" / "results" / "localisation.json"


@dataclass(frozen=True)
class MapVariant:
    """One map as the benchmark writes it.

    Attributes:
        kind: one of :data:`pipeline.inference.maps.MAP_KINDS`.
        layer: Grad-CAM layer, or LayerCAM's comma-separated layers (``None``: not such a kind).
        stage: attention stage.
        overlap: occlusion blocks' overlap (``None``: the default,
            :data:`pipeline.inference.maps.DEFAULT_OCCLUSION_OVERLAP`).
        networks: the registry names it is scored for (``None``: every network); dense occlusion costs ~1,200
            passes per window, so it is scored as the reference on the network it used to be the default of.
    """

    kind: str
    layer: str | None = None
    stage: str = "mean"
    overlap: float | None = None
    networks: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """A short label: ``gradcam@layer3``, ``layercam@layer2,layer3,layer4``, ``attention@layer2``, ``cam``."""
        where = f"@{self.layer}" if self.layer else (f"@{self.stage}" if self.kind == "attention" else "")
        if self.overlap is not None:
            where = f"@overlap{self.overlap:.2f}"
        return f"{self.kind}{where}"


#: the networks compared: (registry name, options). The demo's AAM-ResNet-18 at width 0.25 (class map at 1/32),
#: the same network at output stride (8, 8, 4) (dilated layers 3-4) and with gated attention-MIL pooling on it, and
#: MONAI's ResNet-18 at the same width without AAM.
NETWORKS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("aam_student_small", {}),
    ("aam_student_small_os8", {}),
    ("aam_student_small_mil", {}),
    ("resnet18", {"widen_factor": 0.25}),
)
#: LayerCAM's fused layers (multi-layer fusion: layer2 at 1/8 adds resolution to layers 3-4)
LAYERCAM_LAYERS = "layer2,layer3,layer4"
VARIANTS: tuple[MapVariant, ...] = (
    MapVariant("cam"),
    MapVariant("gradcam", layer="layer3"),
    MapVariant("layercam", layer=LAYERCAM_LAYERS),
    MapVariant("attention", stage="mean"),
    MapVariant("occlusion_c2f"),
    MapVariant("occlusion", networks=("aam_student_small",)),
)
#: how each raw map is finished before scoring (:func:`pipeline.inference.maps.finish_map`)
FINISHES: tuple[str, ...] = ("raw", "body", "lungs")
#: the finish the inference config writes (``heatmap_values=relative``, ``heatmap_region`` default) and the headline
DEFAULT_FINISH = "body"


def default_variant_name() -> str:
    """The variant label of the map the inference config writes by default (``DEFAULT_MAP_KIND``)."""
    from pipeline.inference.maps import DEFAULT_MAP_KIND

    for variant in VARIANTS:
        if variant.kind == DEFAULT_MAP_KIND:
            return variant.name
    raise ValueError(f"bench_localisation: no variant of the default map kind {DEFAULT_MAP_KIND!r}")


def _positives(manifest: Path, split: str | None) -> list[tuple[str, Path]]:
    """``(case_id, series folder)`` of the split's positive cases (``split=None``: every positive case)."""
    import pandas as pd

    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    chosen = rows[(rows["label"] == "positive") & ((rows["split"] == split) if split else True)]
    return [
        (row.case_id, (manifest.parent / row.image) if not Path(row.image).is_absolute() else Path(row.image))
        for row in chosen.itertuples()
    ]


def position_baseline_record(cohort: Any, *, margin_mm: float, split: str | None = "test") -> dict[str, Any]:
    """The maps that ignore the image, on the same positive cases and masks the maps are scored on.

    :func:`pipeline.inference.localisation.position_baselines`: the leave-one-out lesion-frequency peak, the
    leave-one-out mean lesion centroid, and a random point in the lung (exact expectation).
    """
    import pandas as pd

    from pipeline.inference.localisation import load_on_same_grid, position_baselines

    truth = {row["path"]: row for row in pd.read_csv(cohort.truth_dir / "truth.csv", dtype=str).to_dict("records")}
    lesions, lungs, spacings = [], [], []
    for _case_id, series in _positives(cohort.manifest, split):
        row = truth[series.name]
        (lesion, lung), affine = load_on_same_grid(
            cohort.truth_dir / row["lesion_mask"], cohort.truth_dir / row["lung_mask"]
        )
        lesions.append(lesion)
        lungs.append(lung)
        spacings.append([float(v) for v in (affine[:3, :3] ** 2).sum(axis=0) ** 0.5])
    return position_baselines(lesions, lungs, spacings, margin_mm=margin_mm).as_dict()


def score_model(
    model: Any,
    variants: Sequence[MapVariant],
    *,
    margin_mm: float,
    split: str | None = "test",
    cohort: Any = None,
) -> list[dict]:
    """Score every variant of one trained demo model on a split's positive cases.

    Args:
        model: a :class:`benchmarks.demo_models.DemoModel`.
        variants: the maps to score (``attention`` ones are skipped for a network without AAM, and a variant
            limited to other networks is skipped).
        margin_mm: the pointing game's margin.
        split: the manifest split (``None``: every positive case, for a cohort the model never saw).
        cohort: the :class:`benchmarks.demo_models.DemoCohortFiles` to score (default: the model's own).

    Returns:
        One result dict per variant and finish scored, with the forward passes per window and the seconds per case.
    """
    import numpy as np
    import pandas as pd
    import torch

    from pipeline.contracts import settings_for
    from pipeline.data.reader import read_volume
    from pipeline.inference import CasePredictor, DenseClassificationInferer
    from pipeline.inference.bundle import load_weights
    from pipeline.inference.localisation import load_on_same_grid, score_case, summarise_localisation
    from pipeline.inference.maps import finish_map
    from pipeline.networks import attention_modules, build
    from pipeline.transforms import infer_transforms

    cohort = cohort or model.cohort
    settings = settings_for(model.checkpoint)
    network = load_weights(build(settings.network_name, options=dict(settings.network_kwargs)), model.checkpoint).eval()
    has_attention = bool(attention_modules(network))
    cases = _positives(cohort.manifest, split)
    truth = {row["path"]: row for row in pd.read_csv(cohort.truth_dir / "truth.csv", dtype=str).to_dict("records")}
    results = []
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="aamct-localisation-") as scratch:
        for variant in variants:
            if variant.kind == "attention" and not has_attention:
                continue
            if variant.networks is not None and settings.network_name not in variant.networks:
                continue
            predictor = CasePredictor(
                network=network,
                inferer=DenseClassificationInferer(roi_size=settings.roi_size),
                preprocessing=infer_transforms(
                    roi_size=settings.roi_size, spacing=settings.spacing, hu_window=settings.hu_window
                ),
                heatmap_kind=variant.kind,
                gradcam_layer=variant.layer,
                attention_stage=variant.stage,
                heatmap_values="raw",
                heatmap_dtype="float32",
                **({} if variant.overlap is None else {"occlusion_overlap": variant.overlap}),
                write_montage=False,
            )
            scores: dict[str, list] = {finish: [] for finish in FINISHES}
            probabilities, seconds = {}, []
            folder = Path(scratch) / variant.name.replace("@", "-").replace(",", "_")
            for case_id, series in cases:
                row = truth[series.name]
                prediction = predictor(series, case_id=case_id, heatmap_dir=folder)
                probabilities[case_id] = float(prediction.probabilities[1])
                seconds.append(prediction.stage_seconds.get("inference", 0.0) + prediction.stage_seconds["heatmap"])
                (raw, lesion, lung), affine = load_on_same_grid(
                    prediction.heatmap, cohort.truth_dir / row["lesion_mask"], cohort.truth_dir / row["lung_mask"]
                )
                hu, _ = read_volume(series)
                spacing = [float(v) for v in (affine[:3, :3] ** 2).sum(axis=0) ** 0.5]
                for finish in FINISHES:
                    heat = (
                        raw
                        if finish == "raw"
                        else finish_map(raw, kind=variant.kind, hu=hu, affine=affine, restrict_to=finish)
                    )
                    scores[finish].append(
                        score_case(case_id, heat, lesion, lung, spacing_mm=spacing, margin_mm=margin_mm)
                    )
            maker = predictor.map_maker
            passes_per_window = maker.passes / maker.windows if maker.windows else None
            for finish in FINISHES:
                summary = summarise_localisation(scores[finish], margin_mm=margin_mm)
                for case in summary["cases"]:
                    case["probability"] = probabilities[case["case"]]
                results.append(
                    {
                        "variant": f"{variant.name} ({finish})",
                        "kind": variant.kind,
                        "layer": variant.layer,
                        "stage": variant.stage if variant.kind == "attention" else None,
                        "finish": finish,
                        "description": maker.description,
                        "map_seconds_median": float(np.median(seconds)),
                        "passes_per_window": passes_per_window,
                        "windows_per_case": maker.windows / max(1, len(cases)),
                        **summary,
                    }
                )
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_localisation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--difficulties", nargs="+", default=["default", "hard"], help="demo difficulties")
    parser.add_argument("--cases", type=int, default=120, help="demo cohort size (make demo's)")
    parser.add_argument("--margin-mm", type=float, default=10.0, help="pointing-game margin around the lesions")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    parser.add_argument("--workdir", type=Path, default=None, help="cohorts and runs (default: runs/demo_models)")
    parser.add_argument(
        "--networks", nargs="+", default=None, help=f"registry names among {', '.join(n for n, _ in NETWORKS)}"
    )
    parser.add_argument(
        "--unseen-seeds",
        type=int,
        nargs="*",
        default=[21],
        help="generator seeds of fresh cohorts (never trained or tuned on) the default map is also scored on, "
        "every positive case, with the demo network of each difficulty",
    )
    parser.add_argument("--unseen-cases", type=int, default=40, help="size of each unseen cohort")
    parser.add_argument(
        "--variants", nargs="+", default=None, help="score only these map variants (names as in the table, e.g. cam)"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the rows of the variants scored in the existing --output (the other rows, models and "
        "baselines stay); for a rerun of one map after a change to it",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 24 cases, 2 epochs, the first difficulty only, 4 maps"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Train or reuse the models, score every map, write the JSON and the Markdown table."""
    from benchmarks.demo_models import DEFAULT_WORKDIR, DEMO_NETWORK, demo_cohort, trained_demo_model

    args = _parser().parse_args(argv)
    variants = VARIANTS
    networks = [(n, kw) for n, kw in NETWORKS if args.networks is None or n in args.networks]
    if args.quick:
        args.cases, args.epochs, args.difficulties = 24, args.epochs or 2, args.difficulties[:1]
        args.unseen_seeds = []
        variants = (
            MapVariant("cam"),
            MapVariant("layercam", layer=LAYERCAM_LAYERS),
            MapVariant("attention"),
            MapVariant("occlusion_c2f"),
        )
    if args.variants:
        variants = tuple(v for v in variants if v.name in args.variants)
        if not variants:
            raise SystemExit(f"bench_localisation: error: no variant named {' '.join(args.variants)}")
    workdir = args.workdir or (DEFAULT_WORKDIR if not args.quick else DEFAULT_WORKDIR / "quick")
    started, load_start = time.time(), os.getloadavg()[0]
    models, results, baselines, unseen = [], [], {}, []
    default_name = default_variant_name()

    def report(result: dict[str, Any], prefix: str = "  ") -> None:
        game = result["pointing_game"]
        print(
            f"{prefix}{result['variant']:>34}: pointing game {game['hits']}/{game['n']}, "
            f"energy {result['energy_in_lesion']['mean']}, AUROC {result['voxel_auroc']['mean']}, "
            f"{result['passes_per_window']} passes/window, {result['map_seconds_median']:.2f} s/case",
            flush=True,
        )

    for difficulty in args.difficulties:
        for network, kwargs in networks:
            model = trained_demo_model(
                network,
                difficulty,
                network_kwargs=kwargs,
                cases=args.cases,
                recipe={"epochs": args.epochs} if args.epochs else None,
                workdir=workdir,
            )
            if difficulty not in baselines:
                baselines[difficulty] = position_baseline_record(model.cohort, margin_mm=args.margin_mm)
                print(f"{difficulty}: baselines {baselines[difficulty]}", flush=True)
            models.append(
                {
                    "difficulty": difficulty,
                    "network": network,
                    "network_kwargs": kwargs,
                    "test_auc": model.test_auc,
                    "test_auc_ci": model.metrics.get("auc_ci"),
                    "val_auc": model.val_auc,
                    "run_dir": str(model.run_dir),
                    "train_and_evaluate_seconds": model.seconds,
                    "reused": model.reused,
                }
            )
            print(f"{difficulty} / {network}: test AUC {model.test_auc}; scoring maps", flush=True)
            for result in score_model(model, variants, margin_mm=args.margin_mm):
                results.append({"difficulty": difficulty, "network": network, **result})
                report(result)
            if network != DEMO_NETWORK:
                continue
            # every map but the dense occlusion (~1,200 passes per window): the default is chosen among them
            chosen = [v for v in variants if v.networks is None]
            for seed in args.unseen_seeds:
                cohort = demo_cohort(difficulty, cases=args.unseen_cases, seed=seed, workdir=workdir)
                entry = {
                    "difficulty": difficulty,
                    "network": network,
                    "cohort_seed": seed,
                    "cases": args.unseen_cases,
                    "baselines": position_baseline_record(cohort, margin_mm=args.margin_mm, split=None),
                    "results": score_model(model, chosen, margin_mm=args.margin_mm, split=None, cohort=cohort),
                }
                unseen.append(entry)
                for result in entry["results"]:
                    report(result, prefix=f"  unseen seed {seed}: ")
    record = {
        "benchmark": "localisation",
        "command": " ".join(["python -m benchmarks.bench_localisation", *map(shlex.quote, argv or sys.argv[1:])]),
        "margin_mm": args.margin_mm,
        "split": "test",
        "cases": args.cases,
        "quick": args.quick,
        "default_map": default_name,
        "models": models,
        "baselines": baselines,
        "results": results,
        "unseen_cohorts": unseen,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg()[0],
    }
    from benchmarks.store import write_result_json, write_result_text

    if args.merge and args.output.is_file():
        record = merged(json.loads(args.output.read_text()), record, {v.name for v in variants})
    write_result_json(args.output, record)
    write_result_text(args.output.with_suffix(".md"), render_table(record))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


def merged(old: dict[str, Any], new: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """``old`` with the rows of the variants ``names`` of the networks ``new`` scored replaced by ``new``'s (main
    results and unseen cohorts)."""
    networks = {(m["difficulty"], m["network"]) for m in new["models"]}

    def scored(row: dict[str, Any], difficulty: str | None = None) -> bool:
        where = (difficulty or row["difficulty"], row.get("network"))
        return row["variant"].rsplit(" (", 1)[0] in names and (row.get("network") is None or where in networks)

    out = dict(old)
    out["results"] = [r for r in old["results"] if not scored(r)] + new["results"]
    unseen = {(e["difficulty"], e["network"], e["cohort_seed"]): e for e in new.get("unseen_cohorts", [])}
    out["unseen_cohorts"] = []
    for entry in old.get("unseen_cohorts", []):
        fresh = unseen.get((entry["difficulty"], entry["network"], entry["cohort_seed"]))
        rows = [r for r in entry["results"] if not (fresh and scored(r, entry["difficulty"]))]
        rows += fresh["results"] if fresh else []
        out["unseen_cohorts"].append({**entry, "results": rows})
    out["merged_runs"] = [*old.get("merged_runs", []), {"command": new["command"], "variants": sorted(names)}]
    out["default_map"] = new["default_map"]
    return out


def _game(result: dict[str, Any]) -> str:
    game = result["pointing_game"]
    return f"{game['hits']}/{game['n']}"


def headline(record: dict[str, Any], *, difficulty: str = "default", finish: str = DEFAULT_FINISH) -> str:
    """The benchmark in one paragraph, for README.md and the bundle docs (tests check they quote it verbatim).

    The default map (``record["default_map"]``, finished ``finish``) per network: pointing game with its Wilson CI,
    in-lung energy inside lesions against a flat map's, voxel AUROC, forward passes per window and seconds per case;
    then the baselines that ignore the image (position prior, random point in the lung) and, where scored, the
    default map on the unseen cohorts.
    """
    default = record.get("default_map", "occlusion")
    rows = [r for r in record["results"] if r["difficulty"] == difficulty]
    aucs = {m["network"]: m["test_auc"] for m in record["models"] if m["difficulty"] == difficulty}
    parts = []
    for network in dict.fromkeys(r["network"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["network"] == network}
        row = mine.get(f"{default} ({finish})")
        if row is None:
            continue
        game, ci = row["pointing_game"], row["pointing_game"]["ci"]
        passes = row.get("passes_per_window")
        parts.append(
            f"{network} (test AUC {aucs[network]:.3f}): {game['hits']}/{game['n']} test positives "
            f"(95 % CI {ci[0]:.2f}-{ci[1]:.2f}), in-lung energy inside lesions "
            f"{row['energy_in_lesion']['mean']:.3f} (flat map {row['lesion_share_of_lung']['mean']:.3f}), "
            f"voxel AUROC {row['voxel_auroc']['mean']:.3f}, "
            + (f"{passes:.0f} forward passes per window, " if passes else "")
            + f"{row['map_seconds_median']:.1f} s per case"
        )
    text = (
        f"On the {difficulty} demo, the default map ({default}, {finish}) peaks within {record['margin_mm']:g} mm of "
        "a lesion for " + "; ".join(parts)
    )
    dense = [r for r in rows if r["kind"] == "occlusion" and r["finish"] == finish]
    for row in dense:
        text += (
            f". The dense occlusion ({row['network']}): {_game(row)} at {row.get('passes_per_window') or 0:.0f} "
            f"passes per window, {row['map_seconds_median']:.1f} s per case"
        )
    one_pass = [r for r in rows if r["kind"] not in ("occlusion", "occlusion_c2f") and r["finish"] == finish]
    if one_pass:
        best = max(one_pass, key=lambda r: (r["pointing_game"]["hits"], r["voxel_auroc"]["mean"] or 0.0))
        text += f"; the best one-pass map ({best['network']}, {best['variant']}) {_game(best)}"
    base = record.get("baselines", {}).get(difficulty)
    if base:
        prior, rand = base["position_prior_peak"], base["random_point_in_lung"]
        text += (
            f". Maps that ignore the image: the position prior (leave-one-out lesion-frequency peak) "
            f"{prior['hits']}/{prior['n']}, a random point in the lung {rand['rate']:.2f}"
        )
    for entry in record.get("unseen_cohorts", []):
        if entry["difficulty"] != difficulty:
            continue
        for result in entry["results"]:
            if result["variant"] == f"{default} ({finish})":
                prior = entry["baselines"]["position_prior_peak"]
                text += (
                    f". On an unseen {entry['cases']}-case cohort (seed {entry['cohort_seed']}), {entry['network']}'s "
                    f"default map {_game(result)} positives (position prior {prior['hits']}/{prior['n']})"
                )
    return text + "."


def render_table(record: dict[str, Any]) -> str:
    """The summary table: one row per difficulty, network and map variant, the baselines below each difficulty."""

    def number(value: Any, digits: int = 3) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    aucs = {(m["difficulty"], m["network"]): m for m in record["models"]}
    lines = [
        "# Localisation of the heatmaps against the demo's lesion masks",
        "",
        f"Command: `{record['command']}`. Test split, positive cases; pointing game = map peak within "
        f"{record['margin_mm']:g} mm of a lesion voxel (Wilson 95 % CI); energy = share of the in-lung map mass "
        "inside lesions (flat map = lesion share of the lung); AUROC = map vs lesion mask, voxels inside the lung; "
        "passes = forward passes per 64 x 64 x 32 window (the score's own included); s/case = inference + map, "
        f"median. Default map: `{record.get('default_map', 'occlusion')}`.",
        "",
        "| demo | network (test AUC) | map (finish) | pointing game | 95 % CI | energy in lesions | lesion share | "
        "voxel AUROC | passes | s/case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row_line(row: dict[str, Any], demo: str, network: str) -> str:
        game = row["pointing_game"]
        ci = game["ci"]
        return (
            f"| {demo} | {network} | {row['variant']} | "
            f"{game['hits']}/{game['n']} = {number(game['rate'], 2)} | "
            f"{'–' if not ci else f'{ci[0]:.2f}–{ci[1]:.2f}'} | {number(row['energy_in_lesion']['mean'])} | "
            f"{number(row['lesion_share_of_lung']['mean'])} | {number(row['voxel_auroc']['mean'])} | "
            f"{number(row.get('passes_per_window'), 0)} | {number(row.get('map_seconds_median'), 2)} |"
        )

    for difficulty in dict.fromkeys(r["difficulty"] for r in record["results"]):
        for row in (r for r in record["results"] if r["difficulty"] == difficulty):
            model = aucs.get((row["difficulty"], row["network"]), {})
            lines.append(row_line(row, difficulty, f"{row['network']} ({number(model.get('test_auc'))})"))
        base = record.get("baselines", {}).get(difficulty)
        if base:
            for label, key in (
                ("position prior: LOO lesion-frequency peak", "position_prior_peak"),
                ("position prior: LOO mean centroid", "position_prior_mean"),
            ):
                entry = base[key]
                lines.append(
                    f"| {difficulty} | baseline | {label} | {entry['hits']}/{entry['n']} = {number(entry['rate'], 2)} "
                    f"| {entry['ci'][0]:.2f}–{entry['ci'][1]:.2f} | – | – | – | 0 | – |"
                )
            rand = base["random_point_in_lung"]
            lines.append(
                f"| {difficulty} | baseline | random point in the lung (expected) | {number(rand['rate'], 2)} "
                "| – | – | – | – | 0 | – |"
            )
    for entry in record.get("unseen_cohorts", []):
        demo = f"{entry['difficulty']}, unseen seed {entry['cohort_seed']} (all {entry['cases']} cases' positives)"
        for row in entry["results"]:
            lines.append(row_line(row, demo, entry["network"]))
        prior = entry["baselines"]["position_prior_peak"]
        lines.append(
            f"| {demo} | baseline | position prior: LOO lesion-frequency peak | {prior['hits']}/{prior['n']} = "
            f"{number(prior['rate'], 2)} | {prior['ci'][0]:.2f}–{prior['ci'][1]:.2f} | – | – | – | 0 | – |"
        )
    if not record.get("quick"):
        for difficulty in dict.fromkeys(r["difficulty"] for r in record["results"]):
            lines += [
                "",
                "In words (README.md and bundle/docs/README.md quote this): " + headline(record, difficulty=difficulty),
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
