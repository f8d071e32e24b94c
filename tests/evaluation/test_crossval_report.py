"""The cross-validation report over given out-of-fold predictions, without any training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.errors import UserError
from pipeline.evaluation.crossval_report import write_crossval_report

NETWORKS = ("reference_net", "baseline_net")


def _out_of_fold(network: str, *, seed: int, n_folds: int = 3, per_fold: int = 12) -> pd.DataFrame:
    """Pooled out-of-fold predictions in the columns the fold runner writes (strings, as read from its CSVs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(n_folds):
        for i in range(per_fold):
            positive = i % 2 == 1
            probability = float(np.clip(rng.normal(0.65 if positive else 0.35, 0.2), 0.01, 0.99))
            rows.append(
                {
                    "case_id": f"case-{fold}-{i:02d}",
                    "label": "positive" if positive else "negative",
                    "probability": f"{probability:.6f}",
                    "site": "a",
                    "split": "out-of-fold",
                    "fold": str(fold),
                    "status": "ok",
                    "reason": "",
                    "network": network,
                }
            )
    return pd.DataFrame(rows)


def test_per_fold_aucs_and_the_comparison_are_written(tmp_path):
    frames = {name: _out_of_fold(name, seed=k) for k, name in enumerate(NETWORKS)}
    paths = write_crossval_report(frames, tmp_path, reference=NETWORKS[0], test_train_ratio=0.5, n_resamples=50)

    per_fold = pd.read_csv(paths["per_fold"])
    for name, frame in frames.items():
        expected = [
            roc_auc_score(part["label"] == "positive", part["probability"].astype(float))
            for _, part in frame.groupby("fold", sort=True)
        ]
        reported = per_fold[per_fold["network"] == name].sort_values("fold")["auc"].to_numpy()
        assert reported == pytest.approx(expected)
        assert (tmp_path / name / "cv_report" / "report.html").is_file()
    report = json.loads(paths["json"].read_text())
    assert report["reference"] == NETWORKS[0] and report["test_train_ratio"] == 0.5
    comparison = report["comparisons"][f"{NETWORKS[0]} vs {NETWORKS[1]}"]
    assert set(comparison["tests"]) >= {"paired", "nadeau_bengio"}
    assert comparison["cases_not_scored_by_both"] == 0
    assert paths["html"].is_file() and paths["figure"].is_file()


def test_a_reference_without_predictions_is_named(tmp_path):
    with pytest.raises(UserError, match="'missing_net' has no out-of-fold predictions"):
        write_crossval_report({"other": _out_of_fold("other", seed=0)}, tmp_path, reference="missing_net")
