"""The evaluation handlers on real MONAI ``SupervisedEvaluator`` runs over NIfTI files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import ROCAUC, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from sklearn.metrics import roc_auc_score

from pipeline.contracts.datalist import select
from pipeline.contracts.operating_point import OperatingPoint, read_operating_point, write_operating_point
from pipeline.errors import UserError
from pipeline.evaluation.checks import binary_truth
from pipeline.evaluation.handlers import (
    PREDICTION_COLUMNS,
    DeLongAUCHandler,
    EvaluationReportHandler,
    read_run_summary,
    update_run_summary,
)
from pipeline.evaluation.operating_point import choose_threshold
from pipeline.evaluation.report import evaluate_predictions
from pipeline.evaluation.roc import auc_summary, delong_ci
from pipeline.training.datasets import SkipFailedCases
from pipeline.transforms import eval_transforms

ROI = (32, 32, 32)


class MeanIntensityNet(torch.nn.Module):
    """A deterministic two-class network: the positive logit grows with the mean windowed intensity (ground glass
    raises it a little), so the scores rank the classes without any training."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.mean(dim=(1, 2, 3, 4))
        return torch.stack([torch.zeros_like(mean), 400.0 * (mean - 0.341)], dim=1)


def _postprocessing() -> Compose:
    return Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="label", to_onehot=2)])


def _expected_probabilities(network: torch.nn.Module, entries: list[dict]) -> dict[str, float]:
    """Positive-class probability per case, computed outside the engine with the same transforms."""
    transform = eval_transforms(roi_size=ROI, allow_out_of_scope=True)
    out = {}
    for entry in entries:
        with torch.no_grad():
            logits = network(transform(dict(entry))["image"].as_tensor()[None])
        out[entry["case_id"]] = float(torch.softmax(logits, dim=1)[0, 1])
    return out


@pytest.fixture(scope="module")
def evaluated_test_split(tiny_cohort, tmp_path_factory):
    """One evaluator run over the test split (one truncated file among them) choosing and freezing the threshold."""
    entries = select(tiny_cohort.datalist, "test")
    dataset = SkipFailedCases(Dataset(entries, eval_transforms(roi_size=ROI, allow_out_of_scope=True)), check_all=True)
    out = tmp_path_factory.mktemp("eval_test")
    handler = EvaluationReportHandler(
        output_dir=out / "eval_test",
        split="test",
        class_names=("negative", "positive"),
        choose_threshold=True,
        operating_point_file=out / "models" / "operating_point.json",
        expected_cases=entries,
        failures=dataset,
        summary_file=out / "metrics.json",
        provenance={"checkpoint_sha256": "abc", "fold": 0},
        n_resamples=200,
        roc_band_resamples=50,
    )
    network = MeanIntensityNet()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(dataset, batch_size=2, shuffle=False, num_workers=0),
        network=network,
        postprocessing=_postprocessing(),
        val_handlers=[handler],
    )
    evaluator.run()
    loaded = [entries[i] for i in dataset._indices]
    return {"out": out, "handler": handler, "entries": entries, "loaded": loaded, "network": network}


def test_predictions_csv_has_one_row_per_case_with_the_engines_probabilities(evaluated_test_split):
    run = evaluated_test_split
    frame = pd.read_csv(run["out"] / "eval_test" / "predictions.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert list(frame["case_id"]) == [entry["case_id"] for entry in run["entries"]]
    ok = frame[frame["status"] == "ok"]
    expected = _expected_probabilities(run["network"], run["loaded"])
    assert set(ok["case_id"]) == set(expected)
    for case_id, probability in zip(ok["case_id"], ok["probability"].astype(float), strict=True):
        assert probability == pytest.approx(expected[case_id], abs=1e-5)
    assert set(frame["split"]) == {"test"}
    truth = {e["case_id"]: ("negative", "positive")[e["label"]] for e in run["entries"]}
    assert list(frame["label"]) == [truth[c] for c in frame["case_id"]]


def test_a_case_that_fails_to_load_is_an_error_row_without_its_path(evaluated_test_split, tiny_cohort):
    run = evaluated_test_split
    frame = pd.read_csv(run["out"] / "eval_test" / "predictions.csv", dtype=str, keep_default_na=False)
    failed = frame[frame["status"] == "error"]
    assert len(failed) == len(run["entries"]) - len(run["loaded"]) == 1
    assert failed["reason"].iloc[0] != ""
    assert failed["probability"].iloc[0] in ("", "nan", "NaN")
    report = json.loads((run["out"] / "eval_test" / "metrics.json").read_text())
    assert report["flow"]["rejected"] == 1
    # privacy: no output file names the image folder or a file in it
    for path in run["out"].rglob("*"):
        if path.suffix in (".csv", ".json", ".html"):
            text = path.read_text(encoding="utf-8")
            assert str(tiny_cohort.root) not in text, path
            assert ".nii.gz" not in text, path


def test_threshold_is_chosen_on_the_run_frozen_and_applied(evaluated_test_split):
    run = evaluated_test_split
    frame = pd.read_csv(run["out"] / "eval_test" / "predictions.csv", dtype=str, keep_default_na=False)
    ok = frame[frame["status"] == "ok"]
    truth = binary_truth(ok["label"], classes=["negative", "positive"])
    scores = ok["probability"].astype(float).to_numpy()
    expected = choose_threshold(truth, scores)
    frozen, provenance = read_operating_point(run["out"] / "models" / "operating_point.json")
    assert frozen.threshold == pytest.approx(expected.threshold)
    assert frozen.chosen_on == "validation" and frozen.n_validation == len(ok)
    assert provenance["checkpoint_sha256"] == "abc" and provenance["chosen_on_split"] == "test"
    called = np.where(scores >= frozen.threshold, "positive", "negative")
    assert list(ok["predicted"]) == list(called)


def test_run_summary_has_the_auc_and_its_delong_interval(evaluated_test_split):
    run = evaluated_test_split
    frame = pd.read_csv(run["out"] / "eval_test" / "predictions.csv", dtype=str, keep_default_na=False)
    ok = frame[frame["status"] == "ok"]
    truth = binary_truth(ok["label"], classes=["negative", "positive"])
    scores = ok["probability"].astype(float).to_numpy()
    summary = json.loads((run["out"] / "metrics.json").read_text())
    assert summary["split"] == "test"
    assert summary["auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert summary["splits"]["test"]["checkpoint_sha256"] == "abc"
    assert (run["out"] / summary["report"]).is_file()
    expected = auc_summary(truth, scores, n_resamples=0)
    # None when the interval is undefined (e.g. a perfect separation of these few cases), never a made-up number
    assert summary["auc_ci"] == (pytest.approx(list(expected.delong_ci)) if expected.delong_ci else None)
    assert run["handler"].report is not None
    assert "Predictions: <code>predictions.csv</code>" in run["handler"].paths["html"].read_text()
    # the one reader of this file gives back what the writer stored
    read = read_run_summary(run["out"] / "metrics.json")
    assert read.split == "test" and read.headline.auc == summary["auc"]
    assert read.headline.proportion("sensitivity").value == summary["sensitivity"]
    assert read.headline.eval_metrics()["auc_ci"] == summary["auc_ci"]
    entry = summary["splits"]["test"]
    assert entry["delong_scale"] == "logit" and entry["confidence"] == 0.95
    tp, positives = entry["sensitivity_count"]
    assert positives == entry["n_positive"] and entry["sensitivity"] == pytest.approx(tp / positives)


def test_delong_handler_matches_monai_rocauc_and_logs_the_interval(tiny_cohort, tmp_path):
    entries = select(tiny_cohort.datalist, "train_all")
    history = tmp_path / "auc_history.json"
    handler = DeLongAUCHandler(metric_name="val_auc", history_path=history)
    network = MeanIntensityNet()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(
            Dataset(entries, eval_transforms(roi_size=ROI, allow_out_of_scope=True)), batch_size=4, shuffle=False
        ),
        network=network,
        postprocessing=_postprocessing(),
        key_val_metric={"val_auc": ROCAUC(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[handler],
    )
    evaluator.run()
    metrics = evaluator.state.metrics
    expected = _expected_probabilities(network, entries)
    truth = np.array([entry["label"] for entry in entries])
    scores = np.array([expected[entry["case_id"]] for entry in entries])
    row = json.loads(history.read_text())["epochs"][-1]
    assert row["auc"] == pytest.approx(metrics["val_auc"])
    assert metrics["val_auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-6)
    lower, upper = delong_ci(truth, scores)  # defined here: the 8 training cases are not perfectly separated
    assert metrics["val_auc_ci_lower"] == pytest.approx(lower, abs=1e-6)
    assert metrics["val_auc_ci_upper"] == pytest.approx(upper, abs=1e-6)
    assert metrics["val_auc_ci_lower"] <= metrics["val_auc"] <= metrics["val_auc_ci_upper"]
    assert row["ci_lower"] == pytest.approx(lower, abs=1e-6) and row["se"] > 0
    assert row["epoch"] == 1 and row["n_positive"] == int(truth.sum())


def test_delong_handler_marks_an_undefined_interval():
    handler = DeLongAUCHandler()
    result = handler.compute(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9]))
    assert math.isnan(result["auc"]) and math.isnan(result["ci_lower"])
    assert "negative" in result["reason"]
    perfect = handler.compute(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect["auc"] == 1.0 and math.isnan(perfect["ci_upper"]) and "perfectly" in perfect["reason"]


def test_report_handler_rejects_bad_settings(tmp_path):
    with pytest.raises(UserError, match="two class names"):
        EvaluationReportHandler(output_dir=tmp_path, class_names=("a", "b", "c"))
    with pytest.raises(UserError, match="operating_point_file"):
        EvaluationReportHandler(output_dir=tmp_path, choose_threshold=True)
    with pytest.raises(UserError, match="threshold method"):
        EvaluationReportHandler(output_dir=tmp_path, threshold_method="median")


def test_operating_point_file_round_trip_and_errors(tmp_path):
    point = OperatingPoint(threshold=0.37, method="youden", chosen_on="validation", n_validation=12)
    path = write_operating_point(tmp_path / "op.json", point, provenance={"fold": 2})
    read, provenance = read_operating_point(path)
    assert read == point and provenance == {"fold": 2}
    (tmp_path / "hand.json").write_text('{"threshold": 0.6}')
    hand, _ = read_operating_point(tmp_path / "hand.json")
    assert hand.threshold == 0.6 and hand.chosen_on == "given"
    (tmp_path / "bad.json").write_text('{"threshold": "high"}')
    with pytest.raises(UserError, match="bad.json"):
        read_operating_point(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        read_operating_point(tmp_path / "missing.json")


def test_evaluate_predictions_keeps_a_frozen_operating_point():
    frame = pd.DataFrame(
        {"case_id": [f"c{i}" for i in range(8)], "label": [0, 1] * 4, "probability": np.linspace(0.1, 0.8, 8)}
    )
    point = OperatingPoint(threshold=0.42, method="youden", chosen_on="validation", n_validation=30)
    report = evaluate_predictions(frame, threshold=point, n_resamples=50, roc_band_resamples=20)
    assert report.operating_point == point
    assert not any("not chosen on validation" in note for note in report.notes)


def test_run_summary_merges_splits_and_drops_another_checkpoints(tmp_path):
    frame = pd.DataFrame(
        {"case_id": [f"c{i}" for i in range(8)], "label": [0, 1] * 4, "probability": np.linspace(0.1, 0.8, 8)}
    )
    report = evaluate_predictions(frame, threshold=0.5, n_resamples=50, roc_band_resamples=20)
    summary = tmp_path / "metrics.json"
    update_run_summary(
        summary, report, split="val", report_dir=tmp_path / "eval_val", provenance={"checkpoint_sha256": "a"}
    )
    update_run_summary(
        summary, report, split="test", report_dir=tmp_path / "eval_test", provenance={"checkpoint_sha256": "a"}
    )
    data = json.loads(summary.read_text())
    assert set(data["splits"]) == {"val", "test"} and data["split"] == "test"
    assert data["auc"] == pytest.approx(report.splits["all"].auc.auc)
    update_run_summary(
        summary, report, split="val", report_dir=tmp_path / "eval_val", provenance={"checkpoint_sha256": "b"}
    )
    data = json.loads(summary.read_text())
    assert set(data["splits"]) == {"val"} and data["split"] == "val"
