"""Model card: aggregate-only data summary, metrics with CIs from the evaluation report, frozen threshold."""

from __future__ import annotations

import json

import pytest

from pipeline.sharing.model_card import (
    DEFAULT_LIMITATIONS,
    build_model_card,
    read_report,
    render_model_card,
    summarize_datalist,
    summarize_report,
    summary_lines,
)

DATALIST = {
    "classes": ["negative", "positive"],
    "training": [
        {
            "image": "/data/DOE_JOHN/s1",
            "label": 0,
            "case_id": "case-aa01",
            "patient_id": "pt-01",
            "site": "a",
            "fold": 0,
        },
        {"image": "/data/x/s2", "label": 1, "case_id": "case-aa02", "patient_id": "pt-02", "site": "a", "fold": 1},
        {"image": "/data/x/s3", "label": 1, "case_id": "case-aa03", "patient_id": "pt-02", "site": "b", "fold": 1},
    ],
    "test": [{"image": "/data/x/s4", "label": 0, "case_id": "case-aa04", "patient_id": "pt-04", "site": "b"}],
    "external": [],
}

METADATA = {
    "version": "0.2.1",
    "task": "COVID-19 classification of chest CT",
    "intended_use": "Research only.",
    "class_names": ["negative", "positive"],
    "changelog": {"0.2.1": "2025-01-01: exported"},
    "limitations": "Adults only.",
    "network_data_format": {"inputs": {"image": {"modality": "CT", "num_channels": 1, "spatial_shape": [64, 64, 32]}}},
}


def test_datalist_summary_counts_without_identifiers():
    summary = summarize_datalist(DATALIST)
    assert summary["splits"]["training"] == {
        "cases": 3,
        "patients": 2,
        "by_site": {"a": {"negative": 1, "positive": 1}, "b": {"positive": 1}},
        "folds": 2,
    }
    assert summary["splits"]["test"]["by_site"] == {"b": {"negative": 1}}
    assert "external" not in summary["splits"]  # empty splits are left out
    text = json.dumps(summary)
    for identifier in ("case-aa01", "pt-01", "DOE_JOHN", "/data"):
        assert identifier not in text


def test_report_summary_keeps_the_evaluators_numbers(report_json):
    raw = read_report(report_json)
    metrics = summarize_report(raw)
    primary = raw["primary_split"]
    assert metrics["primary_split"] == primary
    assert metrics["splits"][primary]["auc"] == raw["splits"][primary]["auc"]["auc"]
    assert metrics["splits"][primary]["auc_ci"] == raw["splits"][primary]["auc"]["delong_ci"]
    sensitivity = raw["splits"][primary]["threshold_metrics"]["sensitivity"]
    assert metrics["splits"][primary]["sensitivity"]["ci"] == sensitivity["ci"]
    assert metrics["threshold"]["value"] == raw["operating_point"]["threshold"]
    assert {row["site"] for row in metrics["splits"][primary]["per_site"]} == {"site-a", "site-b"}
    assert "case-" not in json.dumps(metrics)  # misclassified case ids never reach the card


def test_rendered_card_has_every_section_and_the_numbers(report_json):
    raw = read_report(report_json)
    card = build_model_card(METADATA, name="covid_ct", report=raw, data_summary=summarize_datalist(DATALIST))
    text = render_model_card(card)
    for heading in ("Intended use", "Training data", "Performance", "Operating threshold", "Limitations", "How to use"):
        assert f"## {heading}" in text
    primary = raw["splits"][raw["primary_split"]]["auc"]
    low, high = primary["delong_ci"]
    assert f"{primary['auc']:.3f} (95% CI {low:.3f}-{high:.3f})" in text
    assert f"{raw['operating_point']['threshold']:.6g}" in text
    assert "inference_torchscript.json" in text and "aamct bundle verify covid_ct.zip" in text
    assert "Adults only." in card["limitations"] and card["limitations"][: len(DEFAULT_LIMITATIONS)] == list(
        DEFAULT_LIMITATIONS
    )
    assert "| training | a | 1 | 1 | 2 |" in text


def test_card_without_report_says_so():
    card = build_model_card(METADATA, name="covid_ct")
    assert card["metrics"] is None and card["operating_threshold"] is None
    text = render_model_card(card)
    assert "no measured performance" in text
    lines = summary_lines(card)
    assert any(line.startswith("metrics    none") for line in lines)
    assert lines[0] == "bundle     covid_ct 0.2.1"


@pytest.mark.parametrize("bad", ["[1, 2]", "{not json"])
def test_bad_report_file_is_a_user_error(tmp_path, bad):
    from pipeline.errors import UserError

    path = tmp_path / "metrics.json"
    path.write_text(bad)
    with pytest.raises(UserError, match="metrics.json"):
        read_report(path)
