"""The demo recipe over training seeds: does every seed reach the test AUC the README quotes?

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_demo [--seeds 0 1 2 3 4] [--commit]
    .venv/bin/python -m benchmarks.bench_demo --time-demo 3 [--commit]   # make demo's wall time, 3 runs

Each seed trains ``make demo``'s network with ``make demo``'s recipe on ``make demo``'s cohort (120 cases at 64 x 64,
generator seed 0, the demo's fixed pseudonym key, so the same patient-level split) through the stock bundle commands
(:func:`benchmarks.demo_models.trained_demo_model`) and evaluates the model ``make demo`` exports on the test split.
One file per seed in ``benchmarks/results/demo/`` (committed as each finishes with ``--commit``), with the load
average beside its time (the machine may be shared) and the run record's numerics (threads, torch, oneDNN, CPU ISA:
what decides the floating-point results beside the seed). ``benchmarks/results/demo.json`` / ``demo.md`` hold the
spread over seeds beside the trivial baseline (a constant score: AUC 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.demo_models import DEMO_COHORT, DEMO_NETWORK, DEMO_RECIPE, trained_demo_model  # noqa: E402
from benchmarks.store import RESULTS_ROOT, ResultStore, write_result_json, write_result_text  # noqa: E402

__all__ = ["GOAL_AUC", "headline", "main", "render_table", "summarise"]

#: the test AUC every seed must reach (issue 26)
GOAL_AUC = 0.95
#: the stages the Makefile times
STAGE_NAMES = ("data", "manifest", "train", "evaluate", "cohort", "export")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_seed(seed: int, *, store: ResultStore, workdir: Path | None = None) -> dict[str, Any]:
    """Train (or reuse) one seed and store its record."""
    key = {"network": DEMO_NETWORK, "recipe": DEMO_RECIPE, "cohort": DEMO_COHORT, "train_seed": seed}
    load_before = _load()
    start = time.perf_counter()
    model = trained_demo_model(DEMO_NETWORK, "default", train_seed=seed, **({"workdir": workdir} if workdir else {}))
    run = json.loads((model.run_dir / "models" / "run.json").read_text())
    history = json.loads((model.run_dir / "train_history.json").read_text())["epochs"]
    metrics = model.metrics
    record = {
        "test_auc": metrics.get("auc"),
        "test_auc_ci": metrics.get("auc_ci"),
        "val_auc_last_epoch": history[-1].get("val_auc"),
        "best_val_auc": max(row.get("val_auc", 0.0) for row in history),
        "epochs_run": len(history),
        "threshold": metrics.get("threshold"),
        "sensitivity": metrics.get("sensitivity"),
        "specificity": metrics.get("specificity"),
        "n_test": metrics.get("n"),
        "seconds": model.seconds,
        "wall_seconds_now": round(time.perf_counter() - start, 1),
        "reused_run": model.reused,
        "load_average_before": load_before,
        "load_average_after": _load(),
        "numerics": run.get("numerics"),
        "training_code": model.recipe.get("training_code"),
    }
    store.save(key, record, f"seed{seed}")
    return record


def summarise(records: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """The spread over seeds of the stored per-seed records."""
    aucs = [r["test_auc"] for r in records]
    return {
        "benchmark": "demo",
        "command": ".venv/bin/python -m benchmarks.bench_demo --seeds " + " ".join(map(str, seeds)),
        "network": DEMO_NETWORK,
        "recipe": DEMO_RECIPE,
        "cohort": DEMO_COHORT,
        "goal_auc": GOAL_AUC,
        "seeds": list(seeds),
        "test_auc": {
            "values": aucs,
            "mean": statistics.fmean(aucs),
            "sd": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "min": min(aucs),
            "max": max(aucs),
            "seeds_at_goal": sum(a >= GOAL_AUC for a in aucs),
        },
        "baseline": {"constant score": 0.5},
        "per_seed": list(records),
    }


def headline(summary: dict[str, Any]) -> str:
    """One paragraph for the README."""
    auc = summary["test_auc"]
    n = len(auc["values"])
    values = ", ".join(f"{v:.3f}" for v in auc["values"])
    first = summary["per_seed"][0]
    threads = (first.get("numerics") or {}).get("num_threads")
    other = summary.get("other_threads") or []
    other_text = ""
    if other:
        t = other[0]["numerics"]["num_threads"]
        vals = ", ".join(f"seed {r['train_seed']} {r['test_auc']:.3f}" for r in other)
        below = sum(r["test_auc"] < summary["goal_auc"] for r in other)
        other_text = (
            f" With {t} thread the same recipe gave {vals} (benchmarks/results/demo_threads.json): "
            f"{below} of {len(other)} below {summary['goal_auc']:.2f}, so the goal holds for every seed at "
            f"{threads} threads, not for every thread count."
        )
    return (
        f"Over {n} training seeds of the demo recipe (`make demo`'s network, recipe and cohort; "
        f"`python -m benchmarks.bench_demo`), the exported model's test AUC is {auc['mean']:.3f} ± {auc['sd']:.3f} "
        f"(min {auc['min']:.3f}, max {auc['max']:.3f}; seeds {values}); {auc['seeds_at_goal']} of {n} reach "
        f"{summary['goal_auc']:.2f}. A constant score gets 0.500. Measured with {threads} torch threads; another "
        f"thread count or CPU is another draw (benchmarks/results/demo.md).{other_text}"
    )


def render_table(summary: dict[str, Any]) -> str:
    """The Markdown results file."""
    lines = [
        "# The demo recipe over training seeds",
        "",
        f"Command: `{summary['command']}`",
        "",
        headline(summary),
        "",
        "| seed | test AUC (95% CI) | sensitivity | specificity | epochs | best val AUC | min/run | load avg "
        "(before → after) | threads | ISA | torch / oneDNN |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, r in zip(summary["seeds"], summary["per_seed"], strict=True):
        ci = r.get("test_auc_ci") or [float("nan")] * 2
        num = r.get("numerics") or {}
        lines.append(
            f"| {seed} | {r['test_auc']:.3f} ({ci[0]:.3f}–{ci[1]:.3f}) | {r['sensitivity']:.2f} | "
            f"{r['specificity']:.2f} | {r['epochs_run']} | {r['best_val_auc']:.3f} | {r['seconds'] / 60:.1f} | "
            f"{r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f} | {num.get('num_threads')} | "
            f"{num.get('cpu_capability')} | {num.get('torch')} / {num.get('onednn')} |"
        )
    lines.append("| trivial: a constant score | 0.500 | — | — | — | — | — | — | — | — | — |")
    timings = summary.get("make_demo_runs") or []
    if timings:
        lines += [
            "",
            "## `make demo` from scratch (`--time-demo`)",
            "",
            "Wall time of each run with the load average (1 / 5 / 15 min) before and after: the machine was shared "
            "with other work, so these are upper bounds of the 2-idle-core figure (goal 180 s).",
            "",
            "| run | total s | data | manifest | train | evaluate | cohort (maps) | export | test AUC | load before | "
            "load after |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for t in timings:
            st = t["stage_seconds"]
            cells = " | ".join(f"{st.get(name, float('nan')):.0f}" for name in STAGE_NAMES)
            load_before = " / ".join(f"{v:.1f}" for v in t["load_average_before"])
            load_after = " / ".join(f"{v:.1f}" for v in t["load_average_after"])
            lines.append(
                f"| {t['run']} | {t['seconds']:.0f} | {cells} | {t['test_auc']:.3f} | {load_before} | {load_after} |"
            )
    return "\n".join(lines) + "\n"


def time_demo(runs: int, *, store: ResultStore, run_dir: str = "runs/demo") -> list[dict[str, Any]]:
    """Run ``make demo`` from scratch ``runs`` times; record its wall time, its stages' and the load average.

    The load average (1, 5, 15 min) before and after each run says whether the machine was idle: the goal
    (180 s) is for 2 idle cores, and a shared machine's timing is an upper bound of it.
    """
    import shutil
    import subprocess

    records = []
    for index in range(runs):
        shutil.rmtree(REPO_ROOT / run_dir, ignore_errors=True)
        before = _load()
        start = time.perf_counter()
        done = subprocess.run(["make", "demo", f"RUN={run_dir}"], cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = round(time.perf_counter() - start, 1)
        stages = {}
        tsv = REPO_ROOT / run_dir / "stage_seconds.tsv"
        if tsv.is_file():
            for line in tsv.read_text().splitlines():
                name, ms = line.split("\t")
                stages[name] = int(ms) / 1000.0
        metrics = json.loads((REPO_ROOT / run_dir / "metrics.json").read_text()) if done.returncode == 0 else {}
        record = {
            "run": index,
            "returncode": done.returncode,
            "seconds": seconds,
            "stage_seconds": stages,
            "test_auc": metrics.get("auc"),
            "load_average_before": before,
            "load_average_after": _load(),
            "cpu_count": os.cpu_count(),
            "headline": done.stdout.strip().splitlines()[-12:],
        }
        store.save({"make": "demo", "run": index}, record, f"make_demo_run{index}")
        print(f"make demo run {index}: {seconds:.0f} s (load {before} -> {record['load_average_after']})", flush=True)
        records.append(record)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Train every requested seed in turn (stored and optionally committed as each lands), then summarise."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--commit", action="store_true", help="git-commit each seed's file as it is written")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_ROOT)
    parser.add_argument("--workdir", type=Path, default=None, help="demo_models work folder")
    parser.add_argument("--time-demo", type=int, metavar="N", help="instead: time N from-scratch make demo runs")
    parser.add_argument("--render-only", action="store_true", help="rewrite demo.json / demo.md from stored results")
    args = parser.parse_args(argv)
    store = ResultStore("demo", root=args.results_dir, commit=args.commit)
    if args.time_demo:
        time_demo(args.time_demo, store=store)
        return 0
    records = []
    if args.render_only:
        stored = {json.dumps(r["key"], sort_keys=True): r for r in store.records() if "train_seed" in r["key"]}
        for seed in args.seeds:
            record = next((r for r in stored.values() if r["key"]["train_seed"] == seed), None)
            if record is None:
                raise SystemExit(f"no stored result for seed {seed} in {store.folder}")
            records.append(record)
    for seed in [] if args.render_only else args.seeds:
        record = run_seed(seed, store=store, workdir=args.workdir)
        print(
            f"seed {seed}: test AUC {record['test_auc']:.3f}, {record['seconds']:.0f} s, "
            f"load {record['load_average_before']} -> {record['load_average_after']}",
            flush=True,
        )
        records.append(record)
    summary = summarise(records, args.seeds)
    threads_file = args.results_dir / "demo_threads.json"
    if threads_file.is_file():
        summary["other_threads"] = json.loads(threads_file.read_text())["runs"]
    summary["make_demo_runs"] = sorted(
        (r for r in store.records() if r["key"].get("make") == "demo"), key=lambda r: r["run"]
    )
    write_result_json(args.results_dir / "demo.json", summary)
    write_result_text(args.results_dir / "demo.md", render_table(summary))
    print(headline(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
