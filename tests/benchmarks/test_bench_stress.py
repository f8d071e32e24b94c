"""bench_stress's statistics on hand-made records: flip counts, pooled curves, paired McNemar / Wilcoxon."""

from __future__ import annotations

import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from benchmarks.bench_stress import _flips, aggregate, paired_comparison


def _record(label, seed, calls, probabilities, originals, threshold=0.5, size=10.0):
    copies = [
        {
            "copy_id": f"c{i}_ggo_{size:g}mm",
            "case_id": f"c{i}",
            "kind": "ggo",
            "size_mm": size,
            "status": "ok",
            "probability": str(p),  # as read back from copies.csv
            "called_positive": str(c),
            "original_probability": o,
            "lesion_diameter_mm": str(size),
        }
        for i, (c, p, o) in enumerate(zip(calls, probabilities, originals, strict=True))
    ]
    n, hits = len(calls), sum(calls)
    row = {
        "kind": "ggo",
        "size_mm": size,
        "sensitivity": hits / n,
        "sensitivity_count": f"{hits}/{n}",
        "auc_vs_originals": 0.5,
        "change_mean": 0.0,
        "lesion_diameter_mm_mean": size,
    }
    summary = {
        "threshold": threshold,
        "originals": {"called_positive": {"value": sum(o >= threshold for o in originals) / n}},
        "rows": [row],
        "size_at_50": {"ggo": None},
    }
    return {"network_label": label, "key": {"train_seed": seed}, "copies": copies, "summary": summary}


def test_flips_count_only_copies_of_originals_called_negative():
    record = _record("a", 0, [True, True, False, True], [0.9, 0.8, 0.1, 0.7], [0.6, 0.2, 0.1, 0.3])
    assert _flips(record, "ggo", 10.0) == (2, 3)  # the first original is already positive: not counted
    block = aggregate([record], ["a"])["a"]["kinds"]["ggo"]["sizes"][0]
    assert block["flip"]["count"] == "2/3" and block["pooled"]["count"] == "3/4"


def test_paired_comparison_is_mcnemar_on_calls_and_wilcoxon_on_changes():
    originals = [0.1, 0.2, 0.3, 0.1, 0.2]
    a = _record("a", 0, [True, True, True, False, True], [0.9, 0.8, 0.7, 0.2, 0.6], originals)
    b = _record("b", 0, [False, False, True, False, False], [0.3, 0.25, 0.6, 0.15, 0.3], originals)
    (row,) = paired_comparison([a, b], "a", "b")
    assert (row["only_a"], row["only_b"], row["pairs"]) == (3, 0, 5)
    assert row["mcnemar_exact_p"] == pytest.approx(mcnemar([[1, 3], [0, 1]], exact=True).pvalue)
    changes = [
        (pa - o) - (pb - o)
        for pa, pb, o in zip([0.9, 0.8, 0.7, 0.2, 0.6], [0.3, 0.25, 0.6, 0.15, 0.3], originals, strict=True)
    ]
    assert row["mean_change_difference"] == pytest.approx(sum(changes) / 5)
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(changes).pvalue)
