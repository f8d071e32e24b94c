"""Evaluation statistics speed: DeLong fast (Sun & Xu midranks) against naive (placement values), and the bootstrap,
each as a multiple of scikit-learn's ``roc_auc_score`` (the peer: what computing just the AUC costs).

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_evaluation [--sizes 1000 10000] [--repeats 5] [--n-resamples 2000]

For each number of cases it draws a seeded binormal cohort (half positive, scores N(0, 1) and N(1, 1)) and times, as
the median of ``--repeats`` runs after one warm-up run:

* ``sklearn_roc_auc_score``: ``sklearn.metrics.roc_auc_score`` (AUC only, the peer);
* ``delong_fast``: :func:`pipeline.evaluation.roc.delong_covariance`, O(N log N);
* ``delong_naive``: :func:`pipeline.evaluation.roc.delong_covariance_naive`, O(m·n) time and memory;
* ``delong_ci``: :func:`pipeline.evaluation.roc.delong_ci` (fast variance + logit interval);
* ``bootstrap_ci``: :func:`pipeline.evaluation.roc.bootstrap_auc_ci`, stratified percentile, ``--n-resamples``.

It also records that the fast and naive DeLong agree (largest absolute difference of AUC and variance). Results go
to ``benchmarks/results/evaluation.json`` with each method's ratio to the peer (``> 1``: slower than computing the
AUC alone) and the naive/fast speed-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.timing import time_median  # noqa: E402 (after the sys.path set-up above)

__all__ = ["binormal_cohort", "main", "time_median"]

RESULTS = REPO_ROOT / "benchmarks" / "results" / "evaluation.json"


def binormal_cohort(n_cases: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half positive cases scored N(1, 1), half negative scored N(0, 1) (true AUC about 0.76).

    Args:
        n_cases: number of cases.
        seed: generator seed.

    Returns:
        ``(labels, scores)``.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_cases) % 2).astype(np.int64)
    scores = rng.normal(loc=labels.astype(np.float64), scale=1.0)
    return labels, scores


def _one_size(n_cases: int, *, repeats: int, n_resamples: int, seed: int) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from pipeline.evaluation.roc import bootstrap_auc_ci, delong_ci, delong_covariance, delong_covariance_naive

    labels, scores = binormal_cohort(n_cases, seed=seed)
    methods: dict[str, Callable[[], Any]] = {
        "sklearn_roc_auc_score": lambda: roc_auc_score(labels, scores),
        "delong_fast": lambda: delong_covariance(labels, scores),
        "delong_naive": lambda: delong_covariance_naive(labels, scores),
        "delong_ci": lambda: delong_ci(labels, scores),
        "bootstrap_ci": lambda: bootstrap_auc_ci(labels, scores, n_resamples=n_resamples, seed=seed),
    }
    timings = {}
    for name, func in methods.items():
        # the bootstrap is the slow one: fewer repeats keep the whole benchmark short
        timings[name] = time_median(func, max(1, repeats // 2) if name == "bootstrap_ci" else repeats)
        print(f"  {n_cases:>6} cases  {name:<22} {timings[name]['median_s'] * 1e3:10.3f} ms", flush=True)
    peer = timings["sklearn_roc_auc_score"]["median_s"]
    fast_auc, fast_var = delong_covariance(labels, scores)
    naive_auc, naive_var = delong_covariance_naive(labels, scores)
    return {
        "n_cases": n_cases,
        "n_positive": int(labels.sum()),
        "median_s": {name: t["median_s"] for name, t in timings.items()},
        "ratio_to_sklearn_roc_auc_score": {
            name: round(t["median_s"] / peer, 3) for name, t in timings.items() if name != "sklearn_roc_auc_score"
        },
        "delong_naive_over_fast": round(timings["delong_naive"]["median_s"] / timings["delong_fast"]["median_s"], 2),
        "fast_vs_naive_max_abs_difference": {
            "auc": float(np.max(np.abs(fast_auc - naive_auc))),
            "variance": float(np.max(np.abs(fast_var - naive_var))),
        },
        "auc": float(fast_auc[0]),
        "runs_s": {name: t["runs_s"] for name, t in timings.items()},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``benchmarks/results/evaluation.json`` and return the results.

    Args:
        argv: command-line arguments (``--sizes``, ``--repeats``, ``--n-resamples``, ``--seed``, ``--out``).

    Returns:
        The results written.
    """
    parser = argparse.ArgumentParser(prog="bench_evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of cases")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (after one warm-up run)")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (the report's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import scipy
    import sklearn

    from benchmarks.store import write_result_json

    results: dict[str, Any] = {
        "benchmark": "evaluation",
        "config": {
            "sizes": args.sizes,
            "repeats": args.repeats,
            "statistic": "median after one warm-up run (bootstrap: repeats // 2 runs)",
            "bootstrap_resamples": args.n_resamples,
            "cohort": "binormal: half positive, scores N(1, 1) vs N(0, 1), seeded",
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            "machine": platform.machine(),
            # other jobs on the machine skew every figure: record how busy it was
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "sizes": [],
    }
    for n_cases in args.sizes:
        results["sizes"].append(_one_size(n_cases, repeats=args.repeats, n_resamples=args.n_resamples, seed=args.seed))
    results["config"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_result_json(args.out, results)
    print(f"results -> {args.out}")
    return results


if __name__ == "__main__":
    main()
