"""Distillation-terms benchmark: seed aggregation, the comparison with scratch and with the teacher."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import bench_distillation_terms as bench


def _records(labels, scores_by_config, teacher_by_seed):
    records = []
    for name, by_seed in scores_by_config.items():
        for seed, scores in by_seed.items():
            cases = [
                {"case_id": f"c{i}", "label": int(y), "probability": float(p), "predicted": int(p > 0.5),
                 "lesion_volume_ml": float(y)}
                for i, (y, p) in enumerate(zip(labels, scores, strict=True))
            ]  # fmt: skip
            teacher = [{"case_id": f"c{i}", "probability": float(p)} for i, p in enumerate(teacher_by_seed[seed])]
            key = {"configuration": name, "train_seed": seed, "weights": bench.CONFIGURATIONS[name]}
            records.append({"key": key, "cases": cases, "teacher_cases": teacher, "student_parameters": 461_667,
                            "seconds": 90.0})  # fmt: skip
    return records


def test_each_configuration_is_compared_with_scratch_and_the_teacher_on_seed_averaged_scores():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 10)
    teacher = {s: labels * 0.6 + rng.random(20) * 0.5 for s in (0, 1)}
    scratch = {s: labels * 0.2 + rng.random(20) for s in (0, 1)}
    logit = {s: labels * 0.5 + rng.random(20) * 0.6 for s in (0, 1)}
    block = bench.aggregate(_records(labels, {"scratch": scratch, "logit": logit}, teacher))
    row = block["configurations"]["logit"]
    averaged = np.mean([logit[0], logit[1]], axis=0)
    assert row["seed_averaged_auc"] == pytest.approx(roc_auc_score(labels, averaged))
    gaps = [roc_auc_score(labels, logit[s]) - roc_auc_score(labels, teacher[s]) for s in (0, 1)]
    assert row["auc_minus_teacher"]["mean"] == pytest.approx(np.mean(gaps))
    assert row["share_of_resnet50"] == pytest.approx(461_667 / 46_163_010)
    pairs = {(r["a"], r["b"]): r for r in block["delong"]}
    assert ("logit", "scratch") in pairs and ("scratch", "teacher") in pairs and ("scratch", "scratch") not in pairs
    assert pairs[("logit", "scratch")]["auc_b"] == pytest.approx(
        roc_auc_score(labels, np.mean([scratch[0], scratch[1]], axis=0))
    )
    assert block["teacher"]["seed_averaged_auc"] == pytest.approx(
        roc_auc_score(labels, np.mean([teacher[0], teacher[1]], axis=0))
    )
    text = bench.render_markdown({"table": block, "difficulty": "hard"})
    assert "| logit | 1 | 0 | 0 | 2 |" in text and "| trivial: a constant score |" in text
