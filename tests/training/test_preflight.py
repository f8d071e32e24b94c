"""Pre-flight checks: one-line errors for user mistakes, unreadable cases skipped with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.data.datalist import write_datalist
from pipeline.training.preflight import as_bool, check_cases, preflight, probe_image


def _nifti(path, label: int = 0):
    # 16 slices: the fewest the manifest builder (and so the loader's probe) accepts by default
    volume = np.full((8, 8, 16), -1000.0 + 500.0 * label, dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    return str(path)


def _datalist(tmp_path, n: int = 6, classes=("negative", "positive"), labels=None):
    labels = labels if labels is not None else [i % 2 for i in range(n)]
    training = [
        {"image": _nifti(tmp_path / f"c{i}.nii.gz", label), "label": label, "case_id": f"case-{i}", "fold": i // 2 % 3}
        for i, label in enumerate(labels)
    ]
    path = tmp_path / "cohort.datalist.json"
    write_datalist(path, classes=classes, manifest=tmp_path / "cohort.csv", seed=0, n_folds=3, training=training)
    return path


def _run(tmp_path, datalist, **overrides):
    kwargs = {
        "datalist": datalist,
        "class_names": ["negative", "positive"],
        "fold": 0,
        "output_dir": tmp_path / "run",
        "epochs": 3,
    }
    kwargs.update(overrides)
    return preflight(**kwargs)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message.startswith("aamct: error: ") and "\n" not in message
    return message


def test_good_datalist_gives_the_fold_split_and_creates_the_output(tmp_path):
    run = _run(tmp_path, _datalist(tmp_path))
    assert [e["case_id"] for e in run.val] == ["case-0", "case-1"]
    assert len(run.train) == 4 and not run.skipped and run.start_epoch == 0
    assert run.class_names == ["negative", "positive"]
    assert (tmp_path / "run" / "models").is_dir()


def test_missing_datalist_and_manifest_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit) as missing:
        _run(tmp_path, tmp_path / "absent.datalist.json")
    assert "absent.datalist.json: datalist not found" in _one_line_error(missing)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,image,label\n", encoding="utf-8")
    with pytest.raises(SystemExit) as unsplit:
        _run(tmp_path, manifest)
    assert "aamct manifest split" in _one_line_error(unsplit)
    with pytest.raises(SystemExit) as no_manifest:
        _run(tmp_path, tmp_path / "nope.csv")
    assert "nope.csv: manifest not found" in _one_line_error(no_manifest)


def test_manifest_path_resolves_to_its_datalist(tmp_path):
    datalist = _datalist(tmp_path)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id\n", encoding="utf-8")
    assert _run(tmp_path, manifest).datalist_path == datalist


def test_label_outside_the_class_list_is_a_one_line_error(tmp_path):
    path = _datalist(tmp_path)
    data = json.loads(path.read_text())
    data["training"][3]["label"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as excinfo:
        _run(tmp_path, path)
    message = _one_line_error(excinfo)
    assert "training[3]" in message and "label 5" in message


def test_datalist_classes_must_match_the_bundle(tmp_path):
    path = _datalist(tmp_path, classes=("healthy", "covid"))
    with pytest.raises(SystemExit) as excinfo:
        _run(tmp_path, path)
    assert "differ from the bundle's class_names" in _one_line_error(excinfo)


def _builder_reasons(tmp_path, nifti_glob: str, dicom_root=None) -> dict[str, str]:
    """``aamct manifest build``'s rejection reasons, by file or folder name."""
    from pipeline.contracts.manifest import read_rejections, rejections_path_for
    from pipeline.data.manifest import build_manifest

    key = tmp_path / "key"
    key.write_text("k" * 32)
    out = tmp_path / "built" / "m.csv"
    build_manifest(dicom_root=dicom_root, nifti_glob=nifti_glob, labels_csv=None, out=out, key_file=key, workers=1)
    rejections = read_rejections(rejections_path_for(out))
    return {Path(path).name: reason for path, reason in zip(rejections["path"], rejections["reason"], strict=True)}


def test_one_unreadable_case_is_skipped_with_the_builders_reason(tmp_path, caplog):
    path = _datalist(tmp_path, n=12)
    (tmp_path / "c5.nii.gz").write_bytes(b"not a nifti file")  # header cannot be read
    (tmp_path / "c7.nii.gz").unlink()  # image gone
    with caplog.at_level(logging.WARNING, logger="pipeline.training.preflight"):
        run = _run(tmp_path, path, max_bad_fraction=0.25)
    assert {s.case_id for s in run.skipped} == {"case-5", "case-7"}
    assert all(e["case_id"] not in ("case-5", "case-7") for e in run.train + run.val)
    reasons = {s.case_id: s.reason for s in run.skipped}
    builder = _builder_reasons(tmp_path, str(tmp_path / "c5.nii.gz"))
    assert reasons["case-5"] == f"{tmp_path / 'c5.nii.gz'}: {builder['c5.nii.gz']}"
    assert reasons["case-7"] == f"{tmp_path / 'c7.nii.gz'}: no such file or folder"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("case-5" in w and builder["c5.nii.gz"] in w for w in warnings)


def test_too_many_unreadable_cases_end_the_run(tmp_path):
    entries = [{"image": str(tmp_path / f"gone{i}.nii.gz"), "case_id": f"case-{i}"} for i in range(3)]
    entries.append({"image": _nifti(tmp_path / "ok.nii.gz"), "case_id": "case-ok"})
    with pytest.raises(SystemExit) as excinfo:
        check_cases(entries, split="train", max_bad_fraction=0.5)
    assert "3 of 4 train cases cannot be read (first: case-0" in _one_line_error(excinfo)


def test_validation_fold_with_one_class_is_refused(tmp_path):
    path = _datalist(tmp_path, labels=[0, 0, 1, 1, 0, 1])  # fold 0 = cases 0 and 1, both negative
    with pytest.raises(SystemExit) as excinfo:
        _run(tmp_path, path)
    assert "only class negative" in _one_line_error(excinfo)


def test_probe_gives_what_the_manifest_builder_says(tmp_path):
    from pipeline.data.demo import write_demo_cohort
    from tests.data.dicom_factory import write_ct_series

    cohort = write_demo_cohort(tmp_path / "demo", cases=1, size=32, seed=1)
    assert probe_image(cohort.cases[0].series_dir) is None
    (tmp_path / "nifti").mkdir()
    assert probe_image(_nifti(tmp_path / "nifti" / "v.nii.gz")) is None
    tilted = write_ct_series(tmp_path / "dicom" / "tilted", tilt_degrees=12.0).folder
    short = write_ct_series(tmp_path / "dicom" / "short", n_slices=8).folder
    flat = tmp_path / "nifti" / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(flat))
    builder = _builder_reasons(tmp_path, str(tmp_path / "nifti" / "*.nii.gz"), dicom_root=tmp_path / "dicom")
    for image in (tilted, short, flat):
        assert probe_image(image) == f"{image}: {builder[image.name]}", image.name
    # a shorter series is accepted when the cohort was built with a lower --min-slices
    assert probe_image(short, min_slices=8) is None
    (tmp_path / "empty").mkdir()
    assert probe_image(tmp_path / "empty") == f"{tmp_path / 'empty'}: no DICOM files"


def test_resume_needs_a_last_checkpoint_with_epochs_left(tmp_path):
    path = _datalist(tmp_path)
    last = tmp_path / "run" / "models" / "checkpoint_last.pt"
    with pytest.raises(SystemExit) as missing:
        _run(tmp_path, path, resume="true", last_checkpoint=last)
    assert "no last checkpoint to resume from" in _one_line_error(missing)
    torch.save({"trainer": {"iteration": 6, "epoch_length": 2, "max_epochs": 3}}, last)
    with pytest.raises(SystemExit) as done:
        _run(tmp_path, path, resume=True, last_checkpoint=last, epochs=3)
    assert "already trained 3 epochs; set --epochs above 3" in _one_line_error(done)
    assert _run(tmp_path, path, resume=True, last_checkpoint=last, epochs=5).start_epoch == 3
    last.write_bytes(b"garbage")
    with pytest.raises(SystemExit) as garbage:
        _run(tmp_path, path, resume=True, last_checkpoint=last, epochs=5)
    assert "cannot read the last checkpoint" in _one_line_error(garbage)


def test_settings_typed_on_the_command_line_are_checked(tmp_path):
    path = _datalist(tmp_path)
    with pytest.raises(SystemExit) as network:
        _run(tmp_path, path, network_name="resnet9000")
    assert "resnet9000" in _one_line_error(network)
    with pytest.raises(SystemExit) as roi:
        _run(tmp_path, path, transform_args={"roi_size": [32, 32]})
    assert "roi_size" in _one_line_error(roi)
    with pytest.raises(SystemExit) as epochs:
        _run(tmp_path, path, epochs=0)
    assert "--epochs" in _one_line_error(epochs)


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("true", True), ("False", False), ("1", True), ("no", False)]
)
def test_as_bool_reads_command_line_spellings(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_nonsense():
    with pytest.raises(SystemExit, match="expected true or false"):
        as_bool("maybe")
