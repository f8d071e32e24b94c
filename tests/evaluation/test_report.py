"""The report from a predictions CSV: numbers, flow, frozen threshold, per-site table, files, privacy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.errors import UserError
from pipeline.evaluation.operating_point import choose_threshold
from pipeline.evaluation.report import evaluate_predictions, read_predictions, write_report

FAST = {"n_resamples": 200, "roc_band_resamples": 50}
PHI = "DOE^JANE"


def _predictions(seed: int = 0, n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "case_id": [f"case-{i:010x}" for i in range(n)],
            "label": np.where(labels == 1, "positive", "negative"),
            "probability": np.round(1 / (1 + np.exp(-rng.normal(2.2 * labels - 1.1, 1.0))), 4),
            "site": np.where(np.arange(n) % 3 == 0, "hospital-b", "hospital-a"),
            "split": np.array(["test", "external", "train"])[np.arange(n) // 30],
            "status": "ok",
            "reason": "",
            "PatientName": PHI,  # must never reach an output
        }
    )
    frame["fold"] = np.where(frame["split"] == "train", np.arange(n) % 5, "").astype(str)
    frame.loc[frame["split"] == "external", "site"] = "hospital-c"
    # one external case of the other class only at hospital-d: its AUC is undefined
    frame.loc[[31, 32], "site"] = "hospital-d"
    frame.loc[[31, 32], "label"] = "positive"
    frame.loc[4, ["status", "reason", "probability"]] = ["error", f"unreadable DICOM: /data/{PHI}/series1", np.nan]
    frame.loc[7, "label"] = ""
    return frame


@pytest.fixture()
def predictions_csv(tmp_path):
    path = tmp_path / "predictions.csv"
    _predictions().to_csv(path, index=False)
    return path


def test_evaluation_numbers_flow_and_frozen_threshold(tmp_path, predictions_csv):
    frame = _predictions()
    validation = _predictions(seed=1)
    validation_csv = tmp_path / "validation.csv"
    validation.to_csv(validation_csv, index=False)
    report = evaluate_predictions(predictions_csv, validation=validation_csv, **FAST)

    usable = validation[(validation["status"] == "ok") & (validation["label"] != "")]
    expected = choose_threshold((usable["label"] == "positive").astype(int), usable["probability"])
    assert report.operating_point.threshold == expected.threshold
    assert all(split.metrics.threshold == expected.threshold for split in report.splits.values())

    assert list(report.splits) == ["test", "external", "train"]
    flow = report.flow
    assert (flow.cases_in, flow.rejected, flow.unlabelled, flow.evaluated) == (90, 1, 1, 88)
    assert flow.evaluated_by_split == {"test": 28, "external": 30, "train": 30}
    assert flow.rejected_reasons == {"unreadable DICOM": 1}

    test_rows = frame[(frame["split"] == "test") & (frame["status"] == "ok") & (frame["label"] != "")]
    test_labels = (test_rows["label"] == "positive").astype(int)
    assert report.splits["test"].auc.auc == pytest.approx(roc_auc_score(test_labels, test_rows["probability"]))
    calls = (test_rows["probability"] >= expected.threshold).astype(int)
    assert report.splits["test"].metrics.counts.tp == int(((calls == 1) & (test_labels == 1)).sum())
    assert len(report.splits["test"].misclassified) == int((calls != test_labels).sum())

    per_site = report.splits["external"].per_site.set_index("site")
    assert per_site.loc["hospital-d", "n"] == 2
    assert per_site.loc["hospital-d", "auc"] is None or np.isnan(per_site.loc["hospital-d", "auc"])
    assert "no negative" in per_site.loc["hospital-d", "auc_note"]
    assert report.cross_validation is not None and list(report.cross_validation["fold"]) == [0, 1, 2, 3, 4]


def test_written_report_files(tmp_path, predictions_csv):
    report = evaluate_predictions(predictions_csv, threshold=0.5, **FAST)
    paths = write_report(report, tmp_path / "out")

    metrics = json.loads(paths["json"].read_text())
    assert metrics["primary_split"] == "test"
    assert metrics["auc"] == pytest.approx(report.splits["test"].auc.auc)
    assert metrics["auc_ci"] == pytest.approx(list(report.splits["test"].auc.delong_ci))
    assert metrics["threshold"] == 0.5 and metrics["operating_point"]["chosen_on"] == "given"
    assert metrics["splits"]["external"]["per_site"][-1]["auc"] is None

    table = pd.read_csv(paths["csv"])
    row = table[(table["split"] == "test") & (table["subgroup"] == "all") & (table["metric"] == "sensitivity")]
    assert row["value"].item() == pytest.approx(report.splits["test"].metrics.sensitivity.value)
    assert row["ci_lower"].item() == pytest.approx(report.splits["test"].metrics.sensitivity.ci[0])
    assert {"site=hospital-a", "site=hospital-b", "fold=0", "mean", "sd"} <= set(table["subgroup"])

    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 9  # ROC, CM, calibration, DCA per split + CV ROC
    assert "DeLong" in html and "Wilson" in html and "Methods" in html
    assert report.splits["test"].auc.format() in html
    assert (tmp_path / "out" / "figures" / "roc_test.png").is_file()
    misclassified = pd.read_csv(paths["misclassified"])
    assert set(misclassified["error"]) <= {"false positive", "false negative"}
    assert len(misclassified) == sum(len(s.misclassified) for s in report.splits.values())

    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert PHI not in path.read_text(), path  # neither the PHI column nor the path in the reason leaks


def test_default_threshold_is_flagged(predictions_csv):
    report = evaluate_predictions(predictions_csv, **FAST)
    assert report.operating_point.threshold == 0.5 and report.operating_point.chosen_on == "default"
    assert any("not chosen on validation" in note for note in report.notes)


def test_input_errors(tmp_path, predictions_csv):
    with pytest.raises(UserError, match="not found"):
        evaluate_predictions(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="not both"):
        evaluate_predictions(predictions_csv, threshold=0.5, validation=predictions_csv)
    with pytest.raises(UserError, match="validation predictions"):
        evaluate_predictions(predictions_csv, threshold_method="target_sensitivity", target_sensitivity=0.9)
    frame = _predictions()
    frame.drop(columns="probability").to_csv(tmp_path / "no_prob.csv", index=False)
    with pytest.raises(UserError, match="missing column"):
        read_predictions(tmp_path / "no_prob.csv")
    frame.loc[10, "probability"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(UserError, match="case-000000000a.*status ok"):
        read_predictions(tmp_path / "nan.csv")
    named = _predictions()
    named["label"] = np.where(named["label"] == "positive", "covid", "normal")
    named.to_csv(tmp_path / "named.csv", index=False)
    with pytest.raises(UserError, match="name the positive class"):
        evaluate_predictions(tmp_path / "named.csv", threshold=0.5, **FAST)
    report = evaluate_predictions(tmp_path / "named.csv", threshold=0.5, classes=["normal", "covid"], **FAST)
    assert report.class_names == ("normal", "covid")
    duplicated = pd.concat([_predictions().iloc[:3], _predictions().iloc[:1]])
    with pytest.raises(UserError, match="more than once"):
        read_predictions(duplicated)


def test_dataframe_input_for_handlers_and_single_class_split(tmp_path):
    frame = _predictions()
    frame.loc[frame["split"] == "test", "label"] = "negative"
    report = evaluate_predictions(frame, threshold=0.5, **FAST)
    test = report.splits["test"]
    assert test.auc.auc is None and "no positive" in test.auc.reason
    assert test.metrics.sensitivity.value is None and test.metrics.specificity.value is not None
    assert report.source == "predictions"
    assert report.primary_split == "test" and report.to_dict()["auc"] is None
    paths = write_report(report, tmp_path / "out")
    assert not (tmp_path / "out" / "figures" / "roc_test.png").exists()  # no ROC curve without both classes
    assert "no positive" in paths["html"].read_text()


def test_html_names_the_predictions_file_and_shows_the_confusion_matrix_wide(tmp_path, predictions_csv):
    from pipeline.evaluation.plots import CONFUSION_DISPLAY_WIDTH_PX

    report = evaluate_predictions(pd.read_csv(predictions_csv), threshold=0.5, source="predictions.csv", **FAST)
    html = write_report(report, tmp_path / "out", title="aamct evaluation: student x")["html"].read_text()
    assert "Predictions: <code>predictions.csv</code>" in html and "<title>aamct evaluation: student x</title>" in html
    figure = html[: html.index('alt="Confusion matrix"')].rsplit("<figure", 1)[1]
    assert f"max-width:{CONFUSION_DISPLAY_WIDTH_PX}px" in figure


def test_run_title_tells_teacher_and_student_apart():
    from types import SimpleNamespace

    from pipeline.evaluation.report import run_title

    teacher = SimpleNamespace(network_name="aam_student_small", network_kwargs={}, written_by="training", teacher=None)
    student = SimpleNamespace(
        network_name="aam_student_small",
        network_kwargs={"width": 0.125},
        written_by="distilling",
        teacher="aam_student_small",
    )
    assert run_title(teacher, "runs/demo") == "aamct evaluation: aam_student_small trained on labels, run demo"
    assert run_title(student, "runs/demo/distill") == (
        "aamct evaluation: student aam_student_small (width 0.125) distilled from aam_student_small, run distill"
    )
