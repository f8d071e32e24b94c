"""One Markdown summary of every benchmark result: ``benchmarks/results/summary.md``.

Run from the repository root (``benchmarks.run_all`` calls it at the end)::

    .venv/bin/python -m benchmarks.summary [--results-dir benchmarks/results]

It reads every ``*.json`` of the results folder and renders, per benchmark, each figure beside its peer and the
ratio, with the command that produced it and the machine load (1-minute load average, start -> end) at the time; the
commands come from ``run_all.json`` when ``benchmarks.run_all`` ran the benchmark, else from the result file itself.
The renderers know the keys each benchmark module writes but read them defensively: a missing key prints ``—``, a
missing result file prints "not run", a file no renderer knows is listed with its top-level figures, so a benchmark
still being written never breaks the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.store import write_result_json, write_result_text  # noqa: E402

__all__ = ["SUMMARY_NAME", "KNOWN_BENCHMARKS", "load_results", "render_summary", "write_summary", "write_json_record"]

SUMMARY_NAME = "summary.md"
RUN_LOG_NAME = "run_all.json"
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"

#: the benchmarks ``make bench`` runs, in the summary's order (``medmnist`` stands for every ``medmnist_*.json``)
KNOWN_BENCHMARKS: tuple[str, ...] = (
    "ingestion",
    "evaluation",
    "networks",
    "inference",
    "training",
    "distillation",
    "localisation",
    "small_lesions",
    "distillation_terms",
    "medmnist",
)

Json = Mapping[str, Any]


def write_json_record(path: str | Path, record: Json) -> Path:
    """Write ``record`` as JSON atomically, paths made portable (used by ``benchmarks.run_all`` for ``run_all.json``)."""
    return write_result_json(path, record)


def load_results(results_dir: str | Path) -> dict[str, Any]:
    """Every readable ``*.json`` of ``results_dir`` by file stem (unreadable files map to an ``{"_error": ...}``)."""
    results: dict[str, Any] = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            results[path.stem] = {"_error": f"unreadable: {err}"}
    return results


def _get(data: Any, *keys: str | int, default: Any = None) -> Any:
    for key in keys:
        in_mapping = isinstance(data, Mapping) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data)
        if in_mapping or in_list:
            data = data[key]
        else:
            return default
    return data


def _num(value: Any, digits: int = 4) -> str:
    """A figure for the table: numbers to ``digits`` significant digits, text as it is, absence as ``—``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 10**digits or abs(value) < 10 ** -(digits - 1)):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value).replace("|", "/").replace("\n", " ")


def _ratio(value: Any, reference: Any) -> str:
    if (
        isinstance(value, (int, float))
        and isinstance(reference, (int, float))
        and reference
        and not isinstance(value, bool)
    ):
        return f"{value / reference:.3g}"
    return "—"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_num(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _load_text(start: Any, end: Any = None) -> str:
    def one(value: Any) -> str:
        if isinstance(value, list) and value:
            value = value[0]  # (1, 5, 15)-minute load averages: the 1-minute one is what the run competed with
        return _num(value, 3) if isinstance(value, (int, float)) else "?"

    if start is None and end is None:
        return "not recorded"
    return f"{one(start)} -> {one(end)}"


# --- one renderer per benchmark: (result) -> (rows of Markdown, machine load text) -----------------------------------


def _render_ingestion(data: Json) -> tuple[list[str], str]:
    lines: list[str] = []
    for section, title in (
        ("discovery", "series discovery (headers, grouping, checks)"),
        ("read_uncompressed", "reading an uncompressed series to float32 HU"),
        ("read_real_jpeg2000", "reading the real JPEG 2000 series"),
    ):
        medians = _get(data, section, "median_s")
        if not isinstance(medians, Mapping):
            lines += [f"*{title}*: not run", ""]
            continue
        ours = medians.get("ours_default")
        rows = [[peer, ours, value, _ratio(value, ours)] for peer, value in medians.items() if peer != "ours_default"]
        lines += [f"*{title}* (median seconds; ratio = peer / ours, > 1: ours is faster)", ""]
        lines += _table(["peer (or our other mode)", "ours (default) s", "peer s", "ratio"], rows)
    load = _load_text(
        _get(data, "config", "load_average_1min_at_start"), _get(data, "config", "load_average_1min_at_end")
    )
    return lines, load


def _render_evaluation(data: Json) -> tuple[list[str], str]:
    rows = []
    for size in _get(data, "sizes", default=[]) or []:
        medians = _get(size, "median_s", default={}) or {}
        reference = medians.get("sklearn_roc_auc_score")
        for method, value in medians.items():
            if method != "sklearn_roc_auc_score":
                rows.append(
                    [_get(size, "n_cases"), method, value, "sklearn roc_auc_score", reference, _ratio(value, reference)]
                )
    lines = ["(median seconds; ratio = ours / sklearn, < 1: ours is faster)", ""]
    lines += _table(["cases", "ours", "seconds", "peer", "peer seconds", "ratio"], rows) if rows else ["not run", ""]
    load = _load_text(
        _get(data, "config", "load_average_1min_at_start"), _get(data, "config", "load_average_1min_at_end")
    )
    return lines, load


def _render_networks(data: Json) -> tuple[list[str], str]:
    networks = _get(data, "networks", default={}) or {}
    paper = _get(data, "paper_form", default={}) or {}
    reference = networks.get("resnet50", {})
    rows = []
    for name, entry in {**networks, **paper}.items():
        peer = networks.get(_get(entry, "peer"), {}) if _get(entry, "peer") else {}
        deployed = _get(entry, "deployed", "median_s")
        rows.append(
            [
                name,
                _get(entry, "params"),
                _ratio(_get(entry, "params"), _get(reference, "params")),
                _get(entry, "flops"),
                _ratio(_get(entry, "flops"), _get(reference, "flops")),
                _get(entry, "latency_s"),
                _ratio(_get(entry, "latency_s"), _get(reference, "latency_s")),
                deployed,
                _ratio(deployed, _get(reference, "deployed", "median_s")),
                f"{_get(entry, 'peer')} {_ratio(_get(entry, 'latency_s'), _get(peer, 'latency_s'))} / "
                f"{_ratio(deployed, _get(peer, 'deployed', 'median_s'))}"
                if peer
                else "—",
            ]
        )
    shape = _get(data, "input_shape")
    lines = [
        f"(input {shape}; peer: {_get(data, 'reference', default='MONAI resnet50')}; ratio = network / peer; "
        f"latency = median of {_get(data, 'repeats', default='?')} interleaved rounds, eager and deployed "
        "(TorchScript + optimize_for_inference); last column: ratio to the same-depth ResNet, eager / deployed)",
        "",
    ]
    headers = ["network", "params", "ratio", "FLOPs", "ratio", "latency s", "ratio", "deployed s", "ratio", "vs peer"]
    lines += _table(headers, rows) if rows else ["not run", ""]
    goals = _get(data, "goals", default=[]) or []
    if goals:
        goal_rows = []
        for goal in goals:
            if "ratio" in goal:
                measured, met = _num(goal.get("ratio"), 3), goal.get("met")
            else:
                measured = f"{_num(goal.get('eager_median_ratio'), 3)} / {_num(goal.get('deployed_median_ratio'), 3)}"
                met = f"{_num(goal.get('met_eager'))} / {_num(goal.get('met_deployed'))}"
            goal_rows.append([goal.get("goal"), measured, met])
        lines += _table(["goal (issue 14)", "measured (eager / deployed)", "met (eager / deployed)"], goal_rows)
        lines += [
            "Eager is what the default inference path runs (bundle inference, `aamct` maps); the deployed form "
            "(`pipeline.networks.optimized_for_inference`) is opt-in, so a goal met only when deployed is not met "
            "by default.",
            "",
        ]
    finding = _get(data, "profile", "finding")
    if finding:
        lines += [f"Profile: {_num(finding)}", ""]
    return lines, _load_text(_get(data, "load_average_start"), _get(data, "load_average_end"))


def _render_inference(data: Json) -> tuple[list[str], str]:
    goals = _get(data, "goals_s", default={}) or {}
    rows = []
    for key, entry in (_get(data, "per_case", default={}) or {}).items():
        for figure, goal_key in (("score_s", "score"), ("score_plus_heatmap_s", "score_plus_heatmap")):
            value, goal = _get(entry, figure), goals.get(goal_key)
            rows.append([f"{key}: {figure}", value, "goal", goal, _ratio(value, goal)])
    lines = ["(seconds per case; ratio = measured / goal, <= 1 meets the goal)", ""]
    lines += _table(["figure", "seconds", "peer", "peer seconds", "ratio"], rows) if rows else ["per case: not run", ""]
    scaling = []
    single = _get(data, "torchrun", "1", "cases_per_min_loop")
    for ranks, entry in (_get(data, "torchrun", default={}) or {}).items():
        scaling.append(
            [
                f"torchrun {ranks} rank(s)",
                _get(entry, "cases_per_min_loop"),
                single,
                _ratio(_get(entry, "cases_per_min_loop"), single),
            ]
        )
    cohort = _get(data, "cohort", "cases_per_min")
    if cohort is not None:
        scaling.insert(0, ["cohort loop (one process)", cohort, None, "—"])
    if scaling:
        lines += ["(cases per minute; ratio = against one rank)", ""]
        lines += _table(["run", "cases/min", "1 rank", "ratio"], scaling)
    return lines, _load_text(_get(data, "config", "load_average_start"), _get(data, "config", "load_average_end"))


def _render_training(data: Json) -> tuple[list[str], str]:
    runs = _get(data, "runs", default=[]) or []
    baseline = _get(runs, 0, "cached_median", "volumes_per_second")
    rows = []
    for run in runs:
        cached = _get(run, "cached_median", "volumes_per_second")
        rows.append(
            [
                f"num_workers={_get(run, 'num_workers')}",
                _get(run, "cold", "volumes_per_second"),
                cached,
                _ratio(cached, baseline),
                _get(run, "cached_median", "data_wait_share"),
            ]
        )
    settings = _get(data, "settings", default={})
    lines = [
        f"(network {_get(settings, 'network_name')}, batch {_get(settings, 'batch_size')}, roi "
        f"{_get(settings, 'roi_size')}; ratio = cached volumes/s against the first run)",
        "",
    ]
    lines += (
        _table(["run", "cold volumes/s", "cached volumes/s", "ratio", "data-wait share"], rows)
        if rows
        else ["not run", ""]
    )
    machine = _get(data, "machine", default={})
    return lines, _load_text(_get(machine, "load_average_start"), _get(machine, "load_average_end"))


_INTERLEAVED_MS = ("latency_interleaved", "threads=1", "median_ms")


def _stage_latency(entry: Json, model: Json) -> Any:
    """A distillation model's CPU ms: from the latencies measured in turn under one load (1 thread) when recorded.

    The stages' own figures are taken minutes apart, so on a shared CPU their ratio can be off by a large factor.
    """
    interleaved = _get(entry, *_INTERLEAVED_MS)
    if isinstance(interleaved, Mapping):
        return interleaved.get(_get(model, "network"))
    return _get(model, "cpu_latency_ms")


def _render_distillation(data: Json) -> tuple[list[str], str]:
    lines: list[str] = []
    for dataset, entry in (_get(data, "datasets", default={}) or {}).items():
        models = _get(entry, "models", default={}) or {}
        teacher = models.get("teacher", {})
        latencies = {role: _stage_latency(entry, model) for role, model in models.items()}
        rows = []
        for role, model in models.items():
            rows.append(
                [
                    role,
                    _get(model, "network"),
                    _get(model, "test_auc"),
                    _get(teacher, "test_auc"),
                    _ratio(_get(model, "test_auc"), _get(teacher, "test_auc")),
                    _get(model, "params"),
                    _ratio(_get(model, "params"), _get(teacher, "params")),
                    latencies[role],
                    _ratio(latencies[role], latencies.get("teacher")),
                ]
            )
        interleaved = isinstance(_get(entry, *_INTERLEAVED_MS), Mapping)
        how = "measured in turn, 1 thread" if interleaved else "per stage"
        lines += [f"*{dataset}* (peer: the teacher; ratio = model / teacher; CPU ms {how})", ""]
        if _get(entry, "command"):
            lines += [f"command: `{_get(entry, 'command')}`", ""]
        headers = ["role", "network", "test AUC", "teacher AUC", "ratio", "params", "ratio", "CPU ms", "ratio"]
        lines += _table(headers, rows)
        comparisons = _get(entry, "comparisons", default={}) or {}
        if comparisons:
            lines += _table(
                ["paired DeLong", "AUC a", "AUC b", "difference", "p"],
                [
                    [name, _get(c, "auc_a"), _get(c, "auc_b"), _get(c, "difference"), _get(c, "p_value")]
                    for name, c in comparisons.items()
                ],
            )
    machine = _get(data, "machine", default={})
    return lines or ["not run", ""], _load_text(
        _get(machine, "load_average_at_start"), _get(machine, "load_average_at_end")
    )


def _render_medmnist(data: Json) -> tuple[list[str], str]:
    published = _get(data, "published", default=[]) or []
    best_auc = max((p for p in published if "test_auc" in p), key=lambda p: p["test_auc"], default=None)
    best_acc = max((p for p in published if "test_acc" in p), key=lambda p: p["test_acc"], default=None)
    applies = bool(_get(data, "published_applies", default=False))
    rows = []
    for name, model in (_get(data, "models", default={}) or {}).items():
        auc, acc = _get(model, "test_auc"), _get(model, "test_acc")
        rows.append(
            [
                name,
                auc,
                _get(model, "test_auc_sd"),
                best_auc["test_auc"] if best_auc and applies else None,
                _ratio(auc, best_auc["test_auc"]) if best_auc and applies else "—",
                acc,
                best_acc["test_acc"] if best_acc and applies else None,
                _ratio(acc, best_acc["test_acc"]) if best_acc and applies else "—",
                _get(model, "val_auc"),
                _get(model, "run_minutes"),
            ]
        )
    peer = (
        f"published best: AUC {best_auc['method']}, ACC {best_acc['method']} ({_get(data, 'published_source')})"
        if best_auc and best_acc and applies
        else "no published peer for this run (subset or other resolution)"
    )
    lines = [
        f"(test split, {_get(data, 'n_test')} cases, mean over seeds {_get(data, 'settings', 'seeds')}; {peer}; "
        "ratio = measured / published)",
        "",
    ]
    if _get(data, "stale"):
        lines = [f"**Stale:** {_num(_get(data, 'stale'))}", "", *lines]
    headers = [
        "model",
        "test AUC",
        "sd",
        "published AUC",
        "ratio",
        "ACC@0.5",
        "published ACC",
        "ratio",
        "val AUC",
        "min/run",
    ]
    lines += _table(headers, rows) if rows else ([] if _get(data, "ablation") else ["not run", ""])
    delong = _get(data, "delong", default=[]) or []
    if delong:
        lines += _table(
            ["paired DeLong", "baseline", "AUC", "baseline AUC", "difference", "p"],
            [
                [
                    _get(r, "model"),
                    _get(r, "baseline"),
                    _get(r, "auc_model"),
                    _get(r, "auc_baseline"),
                    _get(r, "difference"),
                    _get(r, "p_value"),
                ]
                for r in delong
            ],
        )
    ablation = _get(data, "ablation", default={}) or {}
    if ablation:
        versus = {_get(r, "model"): r for r in _get(data, "ablation_delong", default=[]) or []}
        lines += [
            f"{_get(data, 'variant_set', default='ablation')} of {_get(data, 'ablation_network')} "
            "(difference and paired DeLong p against the first row)",
            "",
        ]
        lines += _table(
            ["variant", "val AUC", "test AUC", "sd", "params", "min/run", "difference to first", "p"],
            [
                [
                    variant,
                    _get(row, "val_auc"),
                    _get(row, "test_auc"),
                    _get(row, "test_auc_sd"),
                    _get(row, "params"),
                    _get(row, "run_minutes"),
                    _get(versus.get(variant), "difference"),
                    _get(versus.get(variant), "p_value"),
                ]
                for variant, row in ablation.items()
            ],
        )
        if _get(data, "selected_on_val"):
            lines += [f"selected on val: {_num(_get(data, 'selected_on_val'))}", ""]
    wall = _get(data, "wall_seconds")
    if isinstance(wall, (int, float)):
        reused, total, run_seconds = _get(data, "runs_reused"), _get(data, "runs_total"), _get(data, "run_seconds")
        note = (
            f" ({reused} of {total} runs reused from an earlier invocation; training + evaluation of all runs "
            f"{run_seconds / 60:.1f} min)"
            if isinstance(reused, int) and reused and isinstance(run_seconds, (int, float))
            else ""
        )
        lines += [f"wall time {wall / 60:.1f} min on {_get(data, 'cpu_count')} CPU(s){note}", ""]
    return lines, _load_text(_get(data, "load_average_at_start"), _get(data, "load_average_at_end"))


def _render_localisation(data: Json) -> tuple[list[str], str]:
    aucs = {(m.get("difficulty"), m.get("network")): m.get("test_auc") for m in _get(data, "models", default=[]) or []}
    rows = []
    for row in _get(data, "results", default=[]) or []:
        game = row.get("pointing_game", {})
        ci = game.get("ci") or [None, None]
        rows.append(
            [
                row.get("difficulty"),
                f"{row.get('network')} (AUC {_num(aucs.get((row.get('difficulty'), row.get('network'))), 3)})",
                row.get("variant"),
                f"{game.get('hits')}/{game.get('n')}",
                f"{_num(ci[0], 2)}-{_num(ci[1], 2)}",
                _num(_get(row, "energy_in_lesion", "mean"), 3),
                _num(_get(row, "lesion_share_of_lung", "mean"), 3),
                _num(_get(row, "voxel_auroc", "mean"), 3),
            ]
        )
    headers = ["demo", "network", "map", "pointing game", "95% CI", "energy in lesions", "lesion share", "voxel AUROC"]
    note = f"pointing-game margin {_num(_get(data, 'margin_mm'))} mm; test split, positive cases"
    return [note, "", *_table(headers, rows)], _load_text(
        _get(data, "load_average_at_start"), _get(data, "load_average_at_end")
    )


def _spread_text(value: Any, digits: int = 3) -> str:
    if not isinstance(value, Mapping) or value.get("mean") is None:
        return "—"
    sd = value.get("sd")
    return f"{value['mean']:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _render_small_lesions(data: Json) -> tuple[list[str], str]:
    tertiles = ("smallest third", "middle third", "largest third")
    lines: list[str] = []
    for difficulty, block in (_get(data, "difficulties", default={}) or {}).items():
        rows = []
        for name, row in (_get(block, "networks", default={}) or {}).items():
            ci = _get(row, "seed_averaged_auc_ci") or [None, None]
            rows.append(
                [
                    name,
                    len(_get(row, "seeds", default=[]) or []),
                    _spread_text(_get(row, "test_auc")),
                    f"{_num(_get(row, 'seed_averaged_auc'), 3)} ({_num(ci[0], 3)}-{_num(ci[1], 3)})",
                    *(_spread_text(_get(row, "tertiles", t, "per_seed"), 2) for t in tertiles),
                ]
            )
        edges = _get(block, "tertile_edges_ml") or [None, None]
        lines += [
            f"{difficulty} demo, test split {_get(block, 'n_test')} cases ({_get(block, 'n_test_positive')} positive); "
            f"sensitivity at each seed's val-frozen threshold, mean ± sd over seeds; tertile edges "
            f"{_num(edges[0], 3)} / {_num(edges[1], 3)} ml",
            "",
            *_table(["network", "seeds", "test AUC", "seed-averaged AUC (95% CI)", *tertiles], rows),
        ]
        delong = _get(block, "delong", default=[]) or []
        if delong:
            lines += _table(
                ["paired DeLong (seed-averaged)", "AUC a", "AUC b", "difference", "p"],
                [
                    [f"{r.get('a')} vs {r.get('b')}", r.get("auc_a"), r.get("auc_b"), r.get("difference"),
                     r.get("p_value")]
                    for r in delong
                ],
            )  # fmt: skip
    return lines or ["(no difficulty measured yet)", ""], "per seed, in each per-seed file"


def _render_distillation_terms(data: Json) -> tuple[list[str], str]:
    table = _get(data, "table", default={}) or {}
    rows = []
    for name, row in (_get(table, "configurations", default={}) or {}).items():
        rows.append(
            [
                name,
                len(_get(row, "seeds", default=[]) or []),
                _spread_text(_get(row, "test_auc")),
                _num(_get(row, "seed_averaged_auc"), 3),
                _spread_text(_get(row, "auc_minus_teacher")),
            ]
        )
    teacher = _get(table, "teacher", default={}) or {}
    lines = [
        f"{_get(data, 'difficulty')} demo; teacher {_get(teacher, 'network')} test AUC "
        f"{_spread_text(_get(teacher, 'test_auc'))}",
        "",
        *_table(["configuration", "seeds", "test AUC", "seed-averaged AUC", "AUC - teacher"], rows),
    ]
    delong = _get(table, "delong", default=[]) or []
    if delong:
        lines += _table(
            ["paired DeLong (seed-averaged)", "AUC a", "AUC b", "difference", "p"],
            [[f"{r.get('a')} vs {r.get('b')}", r.get("auc_a"), r.get("auc_b"), r.get("difference"), r.get("p_value")]
             for r in delong],
        )  # fmt: skip
    return lines, "per seed, in each per-seed file"


def _render_generic(data: Json) -> tuple[list[str], str]:
    rows = [[key, value] for key, value in data.items() if isinstance(value, (int, float, str)) and key != "command"]
    return (_table(["key", "value"], rows) if rows else ["(no top-level figures)", ""]), "not recorded"


RENDERERS: dict[str, Callable[[Json], tuple[list[str], str]]] = {
    "ingestion": _render_ingestion,
    "evaluation": _render_evaluation,
    "networks": _render_networks,
    "inference": _render_inference,
    "training": _render_training,
    "distillation": _render_distillation,
    "localisation": _render_localisation,
    "small_lesions": _render_small_lesions,
    "distillation_terms": _render_distillation_terms,
    "medmnist": _render_medmnist,
}


def _section(title: str, data: Any, renderer: Callable[[Json], tuple[list[str], str]], run: Json | None) -> list[str]:
    lines = [f"## {title}", ""]
    command = _get(run, "command") or _get(data, "command")
    if run is not None:
        status = f"{_get(run, 'status', default='?')}" + (" (quick settings)" if _get(run, "quick") else "")
        lines += [f"- run by `benchmarks.run_all`: {status}, {_num(_get(run, 'wall_seconds'))} s"]
        if _get(run, "status") == "failed" and _get(run, "stderr_tail"):
            tail = str(run["stderr_tail"]).strip().splitlines()[-1:]
            lines += [f"- last error line: `{_num(tail[0]) if tail else '?'}`"]
    if not isinstance(data, Mapping):
        return lines + ([f"- command: `{command}`"] if command else []) + ["", "not run", ""]
    if "_error" in data:
        return lines + [f"- result file {data['_error']}", ""]
    try:
        body, load = renderer(data)
    except Exception as err:  # noqa: BLE001  a half-written result must not stop the other sections
        body, load = [f"could not render this result ({type(err).__name__}: {err})", ""], "not recorded"
    if run is not None and load == "not recorded":
        load = _load_text(_get(run, "load_average_start"), _get(run, "load_average_end"))
    lines += [f"- command: `{command or 'not recorded'}`", f"- machine load (1-min average, start -> end): {load}", ""]
    return lines + body


def render_summary(results: Mapping[str, Any], run_log: Json | None = None) -> str:
    """The Markdown summary of a results folder's content.

    Args:
        results: ``{file stem: parsed JSON}`` (:func:`load_results`).
        run_log: ``run_all.json``'s content, if any.

    Returns:
        Markdown text: one section per known benchmark (``not run`` where its file is absent), one per
        ``medmnist_*.json`` and one per other result file.
    """
    runs = _get(run_log, "benchmarks", default={}) or {}
    cpu = _get(run_log, "cpu_count")
    lines = [
        "# aamct benchmark summary",
        "",
        "Each figure beside its peer and the ratio; the command that produced it and the machine load at the time "
        "(shared CPU: timings are indicative when the load exceeds the core count"
        + (f", {cpu} cores" if cpu else "")
        + "). Regenerate with `.venv/bin/python -m benchmarks.summary`; rerun everything with `make bench`.",
        "",
    ]
    for name in KNOWN_BENCHMARKS:
        if name == "medmnist":
            stems = sorted(stem for stem in results if stem.startswith("medmnist_"))
            if not stems:
                lines += _section("medmnist", None, _render_medmnist, runs.get("medmnist"))
            for stem in stems:
                # medmnist_adrenalmnist3d_ablation was made by the run_all entry medmnist_ablation, and so on; the
                # plain medmnist_<dataset> by medmnist; any other file by a command of its own (shown from the file)
                key = next((k for k in runs if k.startswith("medmnist_") and stem.endswith(k[8:])), None)
                if key is None and stem == f"medmnist_{_get(results[stem], 'dataset')}":
                    key = "medmnist"
                run = runs.get(key) if key else None
                lines += _section(stem, results[stem], _render_medmnist, run)
        else:
            lines += _section(name, results.get(name), RENDERERS[name], runs.get(name))
    known = set(KNOWN_BENCHMARKS) | {Path(RUN_LOG_NAME).stem}
    for stem, data in results.items():
        if stem not in known and not stem.startswith("medmnist_") and isinstance(data, Mapping):
            lines += _section(stem, data, _render_generic, None)
    return "\n".join(lines).rstrip() + "\n"


def write_summary(results_dir: str | Path = DEFAULT_RESULTS) -> Path:
    """Render every result of ``results_dir`` into ``results_dir/summary.md`` (written atomically).

    Args:
        results_dir: the results folder.

    Returns:
        Path of the summary.
    """
    results = load_results(results_dir)
    run_log = results.pop(Path(RUN_LOG_NAME).stem, None)
    target = Path(results_dir) / SUMMARY_NAME
    write_result_text(target, render_summary(results, run_log if isinstance(run_log, Mapping) else None))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: write the summary, print its path."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    print(write_summary(args.results_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
