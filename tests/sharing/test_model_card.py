"""Model card: aggregate-only data summary, metrics with CIs from the run summary (metrics.json), frozen threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.evaluation.handlers import read_run_summary
from pipeline.sharing.model_card import (
    DEFAULT_LIMITATIONS,
    build_model_card,
    render_model_card,
    summarize_datalist,
    summarize_run,
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
    "version": "0.3.0",
    "task": "COVID-19 classification of chest CT",
    "intended_use": "Research only.",
    "class_names": ["negative", "positive"],
    "changelog": {"0.3.0": "2025-01-01: exported"},
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


def test_run_summary_keeps_the_evaluators_numbers(report_json):
    raw = json.loads(report_json.read_text())
    metrics = summarize_run(read_run_summary(report_json))
    split = raw["split"]
    assert metrics["split"] == split == "test"
    entry = raw["splits"][split]
    assert metrics["splits"][split]["auc"] == entry["auc"] == raw["auc"]
    assert metrics["splits"][split]["auc_ci"] == entry["auc_ci"] == raw["auc_ci"]
    assert metrics["splits"][split]["sensitivity"]["value"] == entry["sensitivity"] == raw["sensitivity"]
    assert metrics["splits"][split]["sensitivity"]["ci"] == entry["sensitivity_ci"]
    assert [metrics["splits"][split]["sensitivity"][k] for k in ("numerator", "denominator")] == entry[
        "sensitivity_count"
    ]
    assert metrics["splits"][split]["delong_scale"] == entry["delong_scale"] == "logit"
    assert metrics["threshold"]["value"] == raw["operating_point"]["threshold"] == raw["threshold"]
    assert metrics["threshold"]["chosen_on"] == "validation"
    assert set(metrics["splits"]) == {"val", "test"}
    assert "case-" not in json.dumps(metrics)  # no case id reaches the card


def test_rendered_card_has_every_section_and_the_numbers(report_json):
    raw = json.loads(report_json.read_text())
    card = build_model_card(
        METADATA, name="covid_ct", run_summary=read_run_summary(report_json), data_summary=summarize_datalist(DATALIST)
    )
    text = render_model_card(card)
    for heading in ("Intended use", "Training data", "Performance", "Operating threshold", "Limitations", "How to use"):
        assert f"## {heading}" in text
    test = raw["splits"]["test"]
    low, high = test["auc_ci"]
    assert f"{test['auc']:.3f} (95% CI {low:.3f}-{high:.3f})" in text
    tp, positives = test["sensitivity_count"]
    assert f"{100 * test['sensitivity']:.1f}% (95% CI {100 * test['sensitivity_ci'][0]:.1f}-" in text
    assert f"; {tp}/{positives})" in text
    assert f"{raw['operating_point']['threshold']:.6g}" in text
    assert "n/a" not in text
    assert "inference_torchscript.json" in text and "aamct bundle verify covid_ct_v0.3.0.zip" in text
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
    assert lines[0] == "bundle     covid_ct 0.3.0"


@pytest.mark.parametrize("bad", ["[1, 2]", "{not json", '{"splits": {}}'])
def test_bad_run_summary_is_a_user_error(tmp_path, bad):
    from pipeline.errors import UserError

    path = tmp_path / "metrics.json"
    path.write_text(bad)
    with pytest.raises(UserError, match="metrics.json"):
        read_run_summary(path)


def test_a_per_split_report_is_refused_with_the_file_to_pass_instead(tmp_path):
    from pipeline.errors import UserError

    path = tmp_path / "eval_test" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"primary_split": "test", "splits": {"test": {"n": 3}}}))
    with pytest.raises(UserError, match="full report of one split"):
        read_run_summary(path)


def test_model_card_names_the_default_heatmap_kind():
    # the card's limitation line about the maps names the kind the inference config writes by default
    from pipeline.inference.maps import DEFAULT_MAP_KIND
    from pipeline.sharing.model_card import DEFAULT_LIMITATIONS

    [line] = [text for text in DEFAULT_LIMITATIONS if "heatmap" in text.lower()]
    assert f"`{DEFAULT_MAP_KIND}`" in line


def test_model_card_scope_line_matches_the_configs():
    # the card says the aamct inference config checks the chest scope and the MONAI-only one does not: both true
    from pipeline.contracts.defaults import DEFAULT_SCOPE_THRESHOLDS
    from pipeline.sharing.model_card import DEFAULT_LIMITATIONS

    [line] = [text for text in DEFAULT_LIMITATIONS if text.startswith("Chest scope")]
    configs = Path(__file__).resolve().parents[2] / "bundle" / "configs"
    inference = json.loads((configs / "inference.json").read_text())
    assert "`scope_thresholds`" in line and inference["scope_thresholds"] == json.loads(
        json.dumps(dict(DEFAULT_SCOPE_THRESHOLDS))
    )
    assert inference["allow_out_of_scope"] is False
    stock = (configs / "inference_torchscript.json").read_text()
    assert "inference_torchscript.json` has no such check" in line and "scope" not in stock
