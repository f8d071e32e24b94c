"""``bundle/configs/evaluate.json`` (id ``evaluating``) merged over ``train.json``, run as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.contracts.datalist import select
from pipeline.contracts.operating_point import read_operating_point
from pipeline.evaluation.bundle import file_sha256
from pipeline.evaluation.checks import binary_truth
from pipeline.evaluation.operating_point import choose_threshold
from pipeline.evaluation.roc import auc_summary
from pipeline.networks import build
from pipeline.transforms import eval_transforms
from tests.bundle_process import monai_bundle

from .conftest import BUNDLE_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"
CONFIG_FILES = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
FAST = {"n_resamples": 200, "roc_band_resamples": 50}


def _cli_args(overrides: dict) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value).replace(" ", "") if not isinstance(value, str) else value]
    return args


def _run_in_process(datalist: Path, output_dir: Path, **overrides) -> None:
    from monai.bundle import run

    run(
        "evaluating",
        config_file=CONFIG_FILES,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        bundle_root=str(REPO / "bundle"),
        datalist=str(datalist),
        output_dir=str(output_dir),
        **{**BUNDLE_OVERRIDES, **FAST, **overrides},
    )


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def evaluated_run(tiny_cohort, tiny_checkpoint, tmp_path_factory):
    """``python -m monai.bundle run evaluating`` on a run folder holding only ``models/model.pt``: the stock command
    line, given to its entry point in this process (:func:`tests.bundle_process.monai_bundle`), from the repository
    root."""
    run_dir = tmp_path_factory.mktemp("evaluated_run")
    (run_dir / "models").mkdir()
    shutil.copy(tiny_checkpoint, run_dir / "models" / "model.pt")
    command = [
        "run",
        "evaluating",
        "--config_file",
        repr(CONFIG_FILES),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--bundle_root",
        str(REPO / "bundle"),
        "--datalist",
        str(tiny_cohort.datalist),
        "--output_dir",
        str(run_dir),
        *_cli_args({**BUNDLE_OVERRIDES, **FAST}),
    ]
    completed = monai_bundle(*command, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"dir": run_dir, "log": completed.stdout + completed.stderr}


def _independent_probabilities(checkpoint: Path, entries: list[dict]) -> dict[str, float]:
    """The checkpoint's positive-class probability per case, computed without MONAI's engine or the configs."""
    network = build("aam_student_small", in_channels=1, num_classes=2)
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    network.eval()
    transform = eval_transforms(roi_size=BUNDLE_OVERRIDES["roi_size"], allow_out_of_scope=True)
    out = {}
    for entry in entries:
        with torch.no_grad():
            logits = network(transform(dict(entry))["image"].as_tensor()[None])
        out[entry["case_id"]] = float(torch.softmax(logits, dim=1)[0, 1])
    return out


def _builder_reason(image: Path, work: Path) -> str:
    """What ``aamct manifest build`` says about one NIfTI file (its rejections CSV's reason)."""
    from pipeline.contracts.manifest import read_rejections, rejections_path_for
    from pipeline.data.manifest import build_manifest

    key = work / "key"
    key.write_text("k" * 32)
    out = work / "built" / "manifest.csv"
    build_manifest(dicom_root=None, nifti_glob=str(image), labels_csv=None, out=out, key_file=key, workers=1)
    [reason] = read_rejections(rejections_path_for(out))["reason"]
    return reason


@pytest.mark.slow
def test_test_split_predictions_come_from_the_checkpoint_through_the_training_transforms(
    evaluated_run, tiny_cohort, tmp_path
):
    frame = _read(evaluated_run["dir"] / "eval_test" / "predictions.csv")
    entries = select(tiny_cohort.datalist, "test")
    assert list(frame["case_id"]) == [entry["case_id"] for entry in entries]
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == len(entries) - 1  # the truncated file is an error row, with the manifest builder's reason
    [broken] = [entry for entry in entries if entry["case_id"] not in set(ok["case_id"])]
    [reason] = frame.loc[frame["status"] != "ok", "reason"]
    # the report writes "<image>" for the scan's path (a folder name may name the patient), in the builder's words too
    expected = _builder_reason(Path(broken["image"]), tmp_path).replace(broken["image"], "<image>")
    assert reason == f"<image>: {expected}", reason
    expected = _independent_probabilities(
        evaluated_run["dir"] / "models" / "model.pt", [e for e in entries if e["case_id"] in set(ok["case_id"])]
    )
    for case_id, probability in zip(ok["case_id"], ok["probability"].astype(float), strict=True):
        assert probability == pytest.approx(expected[case_id], abs=1e-4)


@pytest.mark.slow
def test_threshold_is_chosen_on_the_validation_fold_and_frozen_beside_the_checkpoint(evaluated_run, tiny_cohort):
    run_dir = evaluated_run["dir"]
    validation = _read(run_dir / "eval_val" / "predictions.csv")
    assert sorted(validation["case_id"]) == sorted(e["case_id"] for e in select(tiny_cohort.datalist, "val", 0))
    expected = choose_threshold(
        binary_truth(validation["label"], classes=["negative", "positive"]),
        validation["probability"].astype(float).to_numpy(),
    )
    frozen, provenance = read_operating_point(run_dir / "models" / "operating_point.json")
    assert frozen.threshold == pytest.approx(expected.threshold)
    assert frozen.chosen_on == "validation" and provenance["fold"] == 0
    assert provenance["checkpoint_sha256"] == file_sha256(run_dir / "models" / "model.pt")
    test = _read(run_dir / "eval_test" / "predictions.csv")
    ok = test[test["status"] == "ok"]
    called = np.where(ok["probability"].astype(float) >= frozen.threshold, "positive", "negative")
    assert list(ok["predicted"]) == list(called)


@pytest.mark.slow
def test_run_metrics_json_carries_the_test_auc_and_its_ci(evaluated_run):
    run_dir = evaluated_run["dir"]
    summary = json.loads((run_dir / "metrics.json").read_text())
    test = _read(run_dir / "eval_test" / "predictions.csv")
    ok = test[test["status"] == "ok"]
    truth = binary_truth(ok["label"], classes=["negative", "positive"])
    scores = ok["probability"].astype(float).to_numpy()
    expected = auc_summary(truth, scores, n_resamples=0)
    assert summary["split"] == "test"
    assert summary["auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert summary["auc_ci"] == (pytest.approx(list(expected.delong_ci)) if expected.delong_ci else None)
    assert set(summary["splits"]) == {"val", "test"}
    assert summary["threshold"] == pytest.approx(
        read_operating_point(run_dir / "models" / "operating_point.json")[0].threshold
    )
    for split in ("val", "test"):
        assert (run_dir / f"eval_{split}" / "report.html").is_file()
        assert (run_dir / f"eval_{split}" / "figures" / f"confusion_{split}.png").is_file()


@pytest.mark.slow
def test_a_second_evaluation_reuses_the_frozen_threshold(evaluated_run, tiny_cohort):
    run_dir = evaluated_run["dir"]
    op_file = run_dir / "models" / "operating_point.json"
    val_predictions = run_dir / "eval_val" / "predictions.csv"
    before = (op_file.read_bytes(), op_file.stat().st_mtime_ns, val_predictions.stat().st_mtime_ns)
    _run_in_process(tiny_cohort.datalist, run_dir)
    assert (op_file.read_bytes(), op_file.stat().st_mtime_ns, val_predictions.stat().st_mtime_ns) == before
    # a fixed threshold is applied as given and freezes nothing
    _run_in_process(tiny_cohort.datalist, run_dir, threshold=0.25)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["splits"]["test"]["threshold"] == 0.25
    assert summary["splits"]["test"]["threshold_chosen_on"] == "given"
    assert op_file.read_bytes() == before[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"split": "external"}, "no external cases"),
        ({"split": "holdout"}, "is not one of"),
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"checkpoint": "/nonexistent/model.pt"}, "checkpoint not found"),
        ({"network_name": "aam_student"}, "the checkpoint does not fit the configured network (size mismatch"),
    ],
)
def test_user_mistakes_end_with_one_line(tiny_cohort, tiny_checkpoint, tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run_dir / "models" / "model.pt")
    with pytest.raises(SystemExit) as caught:
        _run_in_process(tiny_cohort.datalist, run_dir, **overrides)
    text = str(caught.value.code)
    assert text.startswith("aamct: error:") and message in text and "\n" not in text
    assert not (run_dir / "metrics.json").exists()
