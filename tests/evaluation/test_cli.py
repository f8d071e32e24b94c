"""``aamct stats auc``, ``aamct stats ttest`` and ``aamct report`` through ``pipeline.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.cli import main

SEED_PAPER = ["--a", "96.1", "96.5", "97.0", "96.3", "96.8", "--b", "84.0", "83.7", "84.5", "84.2", "84.8"]


def test_ttest_reproduces_the_seed_paper_inputs(capsys):
    assert main(["stats", "ttest", *SEED_PAPER, "--test-train-ratio", "1/4", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert set(result) == {"independent", "paired", "nadeau_bengio"}
    assert (round(result["independent"]["t"], 2), result["independent"]["df"]) == (48.93, 8)
    assert (round(result["paired"]["t"], 2), result["paired"]["df"]) == (81.10, 4)
    assert (round(result["nadeau_bengio"]["t"], 2), result["nadeau_bengio"]["df"]) == (54.07, 4)
    for test in result.values():
        assert test["p"]["one_sided"] == pytest.approx(test["p"]["two_sided"] / 2)
    assert "wrong test" in captured.err  # the note on the independent test, kept off stdout's JSON


def test_ttest_table_prints_all_three_tests_and_the_note(capsys):
    assert main(["stats", "ttest", *SEED_PAPER, "--test-train-ratio", "0.25"]) == 0
    out = capsys.readouterr().out
    for expected in ("independent (pooled variance)", "48.93", "81.10", "54.07", "wrong test"):
        assert expected in out


def test_ttest_bad_ratio_and_mismatched_folds(capsys):
    with pytest.raises(SystemExit):
        main(["stats", "ttest", *SEED_PAPER, "--test-train-ratio", "one quarter"])
    assert "not a ratio" in capsys.readouterr().err
    assert main(["stats", "ttest", "--a", "0.9", "0.8", "0.7", "--b", "0.8", "0.7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aamct: error:") and "one score per fold" in err and "Traceback" not in err


@pytest.fixture()
def scores_csv(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 120)
    frame = pd.DataFrame(
        {
            "truth": truth,
            "model_a": np.round(rng.normal(truth * 1.5, 1.0), 2),
            "model_b": np.round(rng.normal(truth * 0.5, 1.0), 2),
            "constant": 0.5,
        }
    )
    path = tmp_path / "scores.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_auc_json_shape_and_values(capsys, scores_csv):
    path, frame = scores_csv
    args = ["stats", "auc", "--csv", str(path), "--truth", "truth", "--score", "model_a", "--score", "model_b"]
    assert main([*args, "--n-resamples", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"scores", "delong_p", "confidence", "delong_scale"}
    assert result["delong_scale"] == "logit" and result["confidence"] == 0.95
    assert set(result["scores"]) == {"model_a", "model_b"}
    for column, entry in result["scores"].items():
        assert set(entry) == {"auc", "delong_se", "delong_ci", "bootstrap_ci"}
        assert entry["auc"] == pytest.approx(roc_auc_score(frame["truth"], frame[column]), abs=1e-9)
        assert entry["delong_ci"][0] < entry["auc"] < entry["delong_ci"][1]
        assert entry["bootstrap_ci"][0] < entry["auc"] < entry["bootstrap_ci"][1]
    assert 0.0 < result["delong_p"] < 0.05


def test_auc_delong_scale_auc_is_procs_wald_interval(capsys, scores_csv):
    """``--delong-scale auc`` prints AUC ± z·SE (R pROC's DeLong CI); the default logit interval differs from it."""
    from scipy import stats

    path, frame = scores_csv
    args = ["stats", "auc", "--csv", str(path), "--truth", "truth", "--score", "model_a", "--n-resamples", "0"]
    assert main([*args, "--json", "--delong-scale", "auc"]) == 0
    wald = json.loads(capsys.readouterr().out)
    assert main([*args, "--json"]) == 0
    logit = json.loads(capsys.readouterr().out)
    entry = wald["scores"]["model_a"]
    # SE from DeLong's placement values, written out here (not the package's midrank algorithm)
    y, s = frame["truth"].to_numpy(), frame["model_a"].to_numpy()
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    se = np.sqrt(psi.mean(axis=1).var(ddof=1) / x.size + psi.mean(axis=0).var(ddof=1) / z.size)
    half = stats.norm.ppf(0.975) * se
    assert wald["delong_scale"] == "auc" and entry["delong_se"] == pytest.approx(se, rel=1e-9)
    assert entry["delong_ci"] == pytest.approx([entry["auc"] - half, entry["auc"] + half], abs=1e-12)
    assert logit["scores"]["model_a"]["delong_ci"] != pytest.approx(entry["delong_ci"], abs=1e-4)
    assert main([*args, "--delong-scale", "auc"]) == 0
    assert "DeLong 95% CI (auc)" in capsys.readouterr().out


def test_auc_table_and_undefined_constant_score(capsys, scores_csv):
    path, _ = scores_csv
    assert (
        main(["stats", "auc", "--csv", str(path), "--truth", "truth", "--score", "constant", "--n-resamples", "50"])
        == 0
    )
    out = capsys.readouterr().out
    assert "0.5000" in out and "undefined" in out and "zero" in out
    assert main(["stats", "auc", "--csv", str(path), "--truth", "truth", "--score", "constant", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["scores"]["constant"]
    assert entry["auc"] == 0.5 and entry["delong_ci"] is None and "degenerate" in entry["reason"]


def test_auc_user_errors_are_one_line(capsys, tmp_path, scores_csv):
    path, frame = scores_csv
    frame.loc[5, "model_a"] = np.nan
    nan_csv = tmp_path / "nan.csv"
    frame.to_csv(nan_csv, index=False)
    cases = [
        (["--csv", str(tmp_path / "nope.csv"), "--truth", "truth", "--score", "model_a"], "not found"),
        (["--csv", str(path), "--truth", "truth", "--score", "missing"], "no column 'missing'"),
        (["--csv", str(nan_csv), "--truth", "truth", "--score", "model_a"], "NaN"),
        (["--csv", str(path), "--truth", "model_b", "--score", "model_a"], "not 0/1"),
    ]
    for args, message in cases:
        assert main(["stats", "auc", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("aamct: error:") and message in err and len(err.strip().splitlines()) == 1


def test_auc_class_absent_is_undefined(capsys, tmp_path):
    path = tmp_path / "one_class.csv"
    pd.DataFrame({"truth": [1, 1, 1], "score": [0.2, 0.5, 0.9]}).to_csv(path, index=False)
    assert main(["stats", "auc", "--csv", str(path), "--truth", "truth", "--score", "score", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["scores"]["score"]
    assert entry["auc"] is None and "no negative" in entry["reason"]


def test_report_command_writes_the_report(capsys, tmp_path):
    rng = np.random.default_rng(1)
    n = 60
    labels = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "case_id": [f"case-{i:04d}" for i in range(n)],
            "label": labels,
            "probability": 1 / (1 + np.exp(-rng.normal(2 * labels - 1, 1))),
            "site": "site-a",
            "split": np.where(np.arange(n) < 30, "val", "test"),
            "status": "ok",
        }
    )
    frame[frame["split"] == "test"].to_csv(tmp_path / "test.csv", index=False)
    frame[frame["split"] == "val"].to_csv(tmp_path / "val.csv", index=False)
    out = tmp_path / "report"
    args = ["report", str(tmp_path / "test.csv"), "--out", str(out), "--validation", str(tmp_path / "val.csv")]
    assert main([*args, "--n-resamples", "200", "--ci-method", "clopper-pearson"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "(validation)" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    test = frame[frame["split"] == "test"]
    assert metrics["auc"] == pytest.approx(roc_auc_score(test["label"], test["probability"]))
    assert metrics["splits"]["test"]["threshold_metrics"]["ci_method"] == "clopper-pearson"
    assert (out / "report.html").is_file() and (out / "per_site.csv").is_file()
    assert (
        main(["report", str(tmp_path / "test.csv"), "--out", str(out), "--threshold-method", "target-sensitivity"]) == 2
    )
    assert "target-sensitivity" in capsys.readouterr().err
