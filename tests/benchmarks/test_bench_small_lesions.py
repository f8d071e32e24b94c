"""Small-lesion benchmark: the join of predictions with the generator's truth, tertiles, Wilson CIs, Markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import bench_small_lesions as bench
from benchmarks.demo_models import demo_cohort
from pipeline.evaluation.operating_point import proportion_with_ci


@pytest.fixture(scope="module")
def hard_cohort(tmp_path_factory):
    """A real hard demo cohort (DICOM series, manifest, truth.csv from the masks), small enough to write quickly."""
    return demo_cohort("hard", cases=24, size=32, seed=3, workdir=tmp_path_factory.mktemp("demo"))


def _predictions(cohort, tmp_path, *, detect_above_ml: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A predictions.csv in the evaluation's format whose detector finds only lesions above a volume."""
    manifest = pd.read_csv(cohort.manifest)
    truth = pd.read_csv(cohort.truth_dir / "truth.csv").set_index("path")
    volumes = manifest["image"].map(lambda image: truth.loc[image.split("/")[-1], "lesion_volume_ml"])
    probability = np.clip(volumes / 20.0 + 0.2, 0.0, 1.0)
    predicted = np.where(volumes > detect_above_ml, "positive", "negative")
    frame = pd.DataFrame(
        {
            "case_id": manifest["case_id"],
            "label": manifest["label"],
            "probability": probability,
            "predicted": predicted,
            "site": manifest["site"],
            "split": manifest["split"],
            "fold": "",
            "status": "ok",
            "reason": "",
        }
    )
    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    return frame, bench.case_table(path, cohort.manifest, cohort.truth_dir / "truth.csv")


def test_every_case_meets_its_generator_truth(hard_cohort, tmp_path):
    frame, table = _predictions(hard_cohort, tmp_path, detect_above_ml=0.0)
    truth = pd.read_csv(hard_cohort.truth_dir / "truth.csv")
    assert len(table) == len(frame) == len(truth)
    # every positive has a lesion inside the hard demo's range, every negative none
    low, high = hard_cohort.settings["lesion_volume_range_ml"]
    positives = table[table["label"] == 1]
    assert len(positives) >= 3 and (table.loc[table["label"] == 0, "lesion_volume_ml"] == 0).all()
    assert (positives["lesion_volume_ml"] >= low).all()
    assert sorted(table["lesion_volume_ml"]) == sorted(truth["lesion_volume_ml"])


def test_tertile_sensitivity_follows_what_the_detector_can_see(hard_cohort, tmp_path):
    frame, table = _predictions(hard_cohort, tmp_path, detect_above_ml=0.0)
    edges = bench.tertile_edges(table.loc[table["label"] == 1, "lesion_volume_ml"])
    # a detector that sees only lesions above the upper edge: the largest third found, the others missed
    _, blind = _predictions(hard_cohort, tmp_path, detect_above_ml=edges[1])
    result = bench.detection_by_tertile(blind, edges)
    tertiles = result["tertiles"]
    smallest, middle, largest = (tertiles[name]["sensitivity"] for name in bench.TERTILES)
    assert smallest["value"] == 0.0 and middle["value"] == 0.0 and largest["value"] == 1.0
    positives = int(table["label"].sum())
    assert smallest["denominator"] + middle["denominator"] + largest["denominator"] == positives
    assert (
        max(t["denominator"] for t in (smallest, middle, largest))
        - min(t["denominator"] for t in (smallest, middle, largest))
        <= 1
    )  # thirds
    expected = proportion_with_ci(largest["numerator"], positives, method="wilson")
    assert result["sensitivity"]["value"] == pytest.approx(expected.value)
    assert result["sensitivity"]["ci"] == pytest.approx(list(expected.ci))
    assert result["specificity"]["value"] == 1.0  # negatives have no lesion, never above the edge
    assert result["auc"] == pytest.approx(roc_auc_score(table["label"], table["probability"]))
    assert tertiles[bench.TERTILES[0]]["volume_ml"][1] <= edges[0] < tertiles[bench.TERTILES[2]]["volume_ml"][0]


def test_a_prediction_without_truth_is_refused(hard_cohort, tmp_path):
    frame, _ = _predictions(hard_cohort, tmp_path, detect_above_ml=0.0)
    frame.loc[0, "case_id"] = "case-unknown"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="no truth for case"):
        bench.case_table(tmp_path / "bad.csv", hard_cohort.manifest, hard_cohort.truth_dir / "truth.csv")


def test_markdown_lists_every_network_with_its_tertiles(hard_cohort, tmp_path):
    _, table = _predictions(hard_cohort, tmp_path, detect_above_ml=1.0)
    records = [
        {"network_label": name, "key": {"train_seed": seed}, "val_auc": 0.9, "seconds": 60.0,
         "cases": table.to_dict(orient="records")}
        for name in ("aam_student_small", "resnet18(widen_factor=0.25)")
        for seed in (0, 1)
    ]  # fmt: skip
    block = bench.aggregate(records, ["aam_student_small", "resnet18(widen_factor=0.25)"])
    text = bench.render_markdown({"difficulties": {"hard": {**block, "cohort": {"cases": 24, "seed": 3}}}})
    auc = roc_auc_score(table["label"], table["probability"])
    assert f"| aam_student_small | 2 | {auc:.3f} ± 0.000 | {auc:.3f}" in text
    assert "| resnet18(widen_factor=0.25) | 2 |" in text and "## hard demo" in text
    assert "| trivial: every case called" in text
    assert all(name in text for name in bench.TERTILES)
