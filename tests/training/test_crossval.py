"""``aamct crossval``: real bundle training and evaluation of two tiny networks on two folds, then a resumed re-run.

The fold runner is :mod:`pipeline.training.crossval`; the report it is handed is evaluation's
:func:`~pipeline.evaluation.crossval_report.write_crossval_report`, as ``aamct crossval`` composes them.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.evaluation.crossval_report import write_crossval_report
from pipeline.evaluation.roc import delong_test
from pipeline.training.crossval import (
    CrossValSettings,
    _run_step,
    _test_train_ratio,
    bundle_command,
    run_crossval,
)
from tests.evaluation.conftest import BUNDLE_OVERRIDES, write_cohort

NETWORKS = ("aam_student_small", "unet_encoder")


@pytest.fixture(scope="module")
def crossval_run(tmp_path_factory):
    """Cross-validation over a 2-fold NIfTI cohort, in process, one epoch per fold."""
    # one case per class and fold: the smallest cohort whose folds and pooled predictions all have both classes
    cohort = write_cohort(tmp_path_factory.mktemp("cv_cohort"), n_per_fold_class=1, n_test_per_class=0)
    overrides = {key: value for key, value in BUNDLE_OVERRIDES.items() if key != "network_name"}
    settings = CrossValSettings(
        datalist=cohort.datalist,
        out_dir=tmp_path_factory.mktemp("cv_out"),
        networks=NETWORKS,
        overrides={**{k: json.dumps(v).replace(" ", "") for k, v in overrides.items()}, "epochs": "1"},
        launcher="inprocess",
        n_resamples=100,
    )
    result = run_crossval(settings, write_report=write_crossval_report)
    return {"settings": settings, "result": result, "cohort": cohort}


@pytest.mark.slow
def test_every_training_case_is_predicted_once_out_of_fold(crossval_run):
    cohort, result = crossval_run["cohort"], crossval_run["result"]
    folds = {entry["case_id"]: str(entry["fold"]) for entry in cohort.training}
    for network in NETWORKS:
        pooled = pd.read_csv(crossval_run["settings"].out_dir / network / "oof_predictions.csv", dtype=str)
        assert sorted(pooled["case_id"]) == sorted(folds)
        assert all(folds[case] == fold for case, fold in zip(pooled["case_id"], pooled["fold"], strict=True))
        assert (pooled["status"] == "ok").all()
    assert [(r.network, r.fold, r.trained, r.evaluated) for r in result.runs] == [
        (n, k, True, True) for n in NETWORKS for k in (0, 1)
    ]


@pytest.mark.slow
def test_per_fold_metrics_and_tests_match_the_out_of_fold_predictions(crossval_run):
    out = crossval_run["settings"].out_dir
    per_fold = pd.read_csv(out / "crossval_report" / "per_fold.csv")
    pooled = {n: pd.read_csv(out / n / "oof_predictions.csv") for n in NETWORKS}
    aucs = {}
    for network, frame in pooled.items():
        truth = (frame["label"] == "positive").astype(int)
        aucs[network] = [
            roc_auc_score(truth[frame["fold"] == k], frame["probability"][frame["fold"] == k]) for k in (0, 1)
        ]
        reported = per_fold[per_fold["network"] == network].sort_values("fold")["auc"].to_numpy()
        assert reported == pytest.approx(aucs[network])
    report = json.loads((out / "crossval_report" / "crossval.json").read_text())
    comparison = report["comparisons"][f"{NETWORKS[0]} vs {NETWORKS[1]}"]
    differences = np.subtract(aucs[NETWORKS[0]], aucs[NETWORKS[1]])
    paired = comparison["tests"]["paired"]
    corrected = comparison["tests"]["nadeau_bengio"]
    if np.std(differences, ddof=1) > 1e-9:
        assert paired["t"] == pytest.approx(stats.ttest_rel(aucs[NETWORKS[0]], aucs[NETWORKS[1]]).statistic)
        # two equal folds: n_test / n_train = 1
        expected_t = differences.mean() / np.sqrt((1 / 2 + 1.0) * differences.var(ddof=1))
        assert corrected["t"] == pytest.approx(expected_t)
    else:
        assert paired["t"] is None and corrected["t"] is None
    merged = pooled[NETWORKS[0]].merge(pooled[NETWORKS[1]], on="case_id", suffixes=("_a", "_b"))
    truth = (merged["label_a"] == "positive").astype(int).to_numpy()
    try:
        expected = delong_test(truth, merged["probability_a"], merged["probability_b"])
    except UserError:
        assert comparison["pooled_delong"] is None and comparison["pooled_delong_reason"]
    else:
        assert comparison["pooled_delong"]["p_value"] == pytest.approx(expected.p_value)
    assert (out / "crossval_report" / "report.html").is_file()
    assert (out / "crossval_report" / "figures" / "cv_roc_models.png").is_file()
    for network in NETWORKS:
        assert (out / network / "cv_report" / "figures" / "cv_roc.png").is_file()


@pytest.mark.slow
def test_a_rerun_skips_finished_folds_and_redoes_only_what_is_missing(crossval_run):
    settings = crossval_run["settings"]
    checkpoints = {
        (n, k): (settings.run_dir(n, k) / "models" / "model.pt").stat().st_mtime_ns for n in NETWORKS for k in (0, 1)
    }
    again = run_crossval(settings, write_report=write_crossval_report)
    assert not any(r.trained or r.evaluated for r in again.runs)
    (settings.run_dir(NETWORKS[1], 1) / "eval_val" / "predictions.csv").unlink()
    third = run_crossval(settings, write_report=write_crossval_report)
    assert [(r.network, r.fold) for r in third.runs if r.evaluated] == [(NETWORKS[1], 1)]
    assert not any(r.trained for r in third.runs)
    for (network, fold), mtime in checkpoints.items():
        assert (settings.run_dir(network, fold) / "models" / "model.pt").stat().st_mtime_ns == mtime


def test_bundle_command_is_the_stock_monai_command(tmp_path):
    settings = CrossValSettings(
        datalist=tmp_path / "d.json", out_dir=tmp_path / "cv", overrides={"epochs": "20", "roi_size": "[64,64,32]"}
    )
    train = bundle_command(settings, "training", network="densenet121", fold=3)
    assert train[1:5] == ["-m", "monai.bundle", "run", "training"]
    options = dict(zip(train[5::2], train[6::2], strict=True))
    assert options["--config_file"] == str(settings.train_config)
    assert options["--fold"] == "3" and options["--network_name"] == "densenet121"
    assert options["--output_dir"] == str(tmp_path / "cv" / "densenet121" / "fold_3")
    assert options["--epochs"] == "20" and options["--roi_size"] == "[64,64,32]"
    evaluate = bundle_command(settings, "evaluating", network="densenet121", fold=3, split="val")
    options = dict(zip(evaluate[5::2], evaluate[6::2], strict=True))
    assert options["--config_file"] == repr([str(settings.train_config), str(settings.evaluate_config)])
    assert options["--split"] == "val" and options["--roi_size"] == "[64,64,32]"


def test_a_failed_step_names_its_reason_and_log(tmp_path):
    settings = CrossValSettings(datalist=tmp_path / "d.json", out_dir=tmp_path)
    command = [sys.executable, "-c", "import sys; print('aamct: error: fold 3 has only class negative'); sys.exit(1)"]
    log = tmp_path / "fold_3" / "training.log"
    with pytest.raises(UserError, match="fold 3 has only class negative") as caught:
        _run_step(settings, command, log=log, what="x fold 3 training")
    assert str(log) in str(caught.value)
    assert "aamct: error: fold 3" in log.read_text()


def test_test_train_ratio_follows_the_fold_sizes():
    datalist = {"training": [{"fold": k % 5} for k in range(50)]}
    assert _test_train_ratio(datalist, range(5)) == pytest.approx(10 / 40)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--networks", "aam_student_small,no_such_net"], "no_such_net"),
        (["--networks", "aam_student_small,unet_encoder", "--reference", "densenet121"], "not among --networks"),
        (["--networks", "aam_student_small,unet_encoder", "--folds", "0,7"], "outside the datalist's folds"),
        (["--networks", "aam_student_small,unet_encoder", "--folds", "1"], "at least two folds"),
    ],
)
def test_bad_settings_fail_with_one_line(tmp_path, capsys, extra, message):
    cohort = write_cohort(tmp_path / "cohort", n_per_fold_class=1, n_test_per_class=0)
    status = main(["crossval", "--datalist", str(cohort.datalist), "--out", str(tmp_path / "cv"), *extra])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("aamct: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cv").exists()
