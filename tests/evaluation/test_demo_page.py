"""aamct demo-summary: the headline reads the run's own figures, the index links files that exist."""

from __future__ import annotations

import json
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.evaluation.demo_page import demo_summary, map_hit_rate, render_headline, write_index


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href")


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([5.0, 5.0, 10.0, 1.0])), str(path))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A demo run's files as make demo leaves them: two test positives (one map on its lesion, one far off)."""
    run = tmp_path / "demo"
    (run / "eval_test").mkdir(parents=True)
    (run / "eval_test" / "report.html").write_text("<html>report</html>")
    metrics = {"auc": 0.9632, "auc_ci": [0.871, 0.991], "threshold": 0.412, "sensitivity": 0.889,
               "specificity": 0.944, "n": 36, "report": "eval_test/report.html"}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "models").mkdir()
    (run / "models" / "run.json").write_text(
        json.dumps({"network_name": "aam_student_small", "written_by": "training"})
    )
    (run / "cohort").mkdir()
    (run / "cohort" / "gallery.html").write_text("<html>gallery</html>")
    with zipfile.ZipFile(run / "aamct_ct_classifier_v0.3.1.zip", "w") as archive:
        archive.writestr("aamct_ct_classifier/docs/README.md", "# Model card\n\nnetwork: aam_student_small\n")
    (run / "export.log").write_text("wrote runs/demo/aamct_ct_classifier_v0.3.1.zip\nverified: 7 checks passed\n")
    (run / "stage_seconds.tsv").write_text("data\t9000\ntrain\t60500\nexport\t12000\n")
    truth, rows, manifest = run / "cohort_dicom_truth", [], ["case_id,patient_id,image,label,site,split,fold"]
    predictions = ["case_id,status,heatmap"]
    for index, hit in enumerate((True, False)):
        lesion = np.zeros((16, 16, 8))
        lesion[4:7, 4:7, 2:4] = 1
        lung = np.zeros_like(lesion)
        lung[2:14, 2:14, 1:7] = 1
        heat = np.zeros_like(lesion)
        heat[(5, 5, 3) if hit else (13, 13, 6)] = 1.0
        _nifti(truth / f"lesion{index}.nii.gz", lesion)
        _nifti(truth / f"lung{index}.nii.gz", lung)
        _nifti(run / "cohort" / "heatmaps" / f"c{index}.nii.gz", heat)
        rows.append(f"scan-{index},lesion{index}.nii.gz,lung{index}.nii.gz")
        manifest.append(f"c{index},p{index},cohort_dicom/scan-{index},positive,a,test,")
        predictions.append(f"c{index},ok,heatmaps/c{index}.nii.gz")
    (truth / "truth.csv").write_text("path,lesion_mask,lung_mask\n" + "\n".join(rows) + "\n")
    (run / "manifest.csv").write_text("\n".join(manifest) + "\n")
    (run / "cohort" / "predictions.csv").write_text("\n".join(predictions) + "\n")
    return run


def test_index_links_exist_and_point_to_files_that_exist(run):
    index = write_index(demo_summary(run))
    parser = _Links()
    parser.feed(index.read_text())
    targets = [(index.parent / href).resolve() for href in parser.hrefs]
    assert len(targets) == 4  # report, gallery, model card, bundle
    missing = [str(t) for t in targets if not t.is_file()]
    assert missing == []
    names = {t.name for t in targets}
    assert {"report.html", "gallery.html", "model_card.html"} <= names
    assert "network: aam_student_small" in (run / "model_card.html").read_text()  # the card of the exported zip


def test_a_missing_gallery_is_said_not_linked(run):
    (run / "cohort" / "gallery.html").unlink()
    text = write_index(demo_summary(run)).read_text()
    assert "heatmap gallery: not written" in text and "gallery.html" not in text


def test_headline_quotes_the_runs_figures_and_the_maps_beside_the_baselines(run):
    lines = render_headline(demo_summary(run))
    text = "\n".join(lines)
    assert "test AUC 0.963 (95% CI 0.871-0.991, DeLong)" in text
    assert "sensitivity 0.89, specificity 0.94" in text and "(0.412)" in text
    assert re.search(r"pointing game, 10 mm\): 0\.50 \(1/2\) of test positives; position prior", text)
    assert "time: data 9 s, train 60 s, export 12 s; total 82 s" in text
    assert "aamct_ct_classifier_v0.3.1.zip (verified: 7 checks passed)" in text


def test_map_hit_rate_counts_only_maps_on_the_lesion(run):
    result = map_hit_rate(run)
    assert result["map"]["pointing_game"]["hits"] == 1 and result["map"]["pointing_game"]["n"] == 2
    assert set(result["baselines"]) >= {"position_prior_peak", "random_point_in_lung"}


def test_a_failed_verification_is_not_called_verified(run):
    (run / "export.log").write_text("verify: FAILED checksum mismatch for models/model.pt\n")
    text = "\n".join(render_headline(demo_summary(run)))
    assert "NOT verified (see export.log)" in text


def test_no_metrics_is_one_line_for_the_user(tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match=r"metrics\.json: missing"):
        demo_summary(tmp_path)
