"""Timing helper shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["time_median"]


def time_median(func: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Median wall time of ``func`` over ``repeats`` runs after one warm-up run.

    Args:
        func: the call to time.
        repeats: timed runs.

    Returns:
        ``{"median_s": ..., "runs_s": [...]}``.
    """
    func()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "runs_s": [round(r, 6) for r in runs]}
