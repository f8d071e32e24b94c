"""Reading the datalist JSON that ``aamct manifest split`` writes: loading (also by MONAI), folds, splits, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from pipeline.contracts.datalist import class_names, datalist_beside, load_datalist, resolve_datalist, select
from pipeline.data.datalist import write_datalist
from pipeline.errors import UserError


def _entry(i: int, fold: int | None = None) -> dict:
    entry = {"image": f"images/case-{i}.nii.gz", "label": i % 2, "case_id": f"case-{i}", "patient_id": f"pt-{i}"}
    if fold is not None:
        entry["fold"] = fold
    return entry


@pytest.fixture
def datalist_file(tmp_path) -> Path:
    """Ten training entries over five folds (two each), three test and two external entries, relative images."""
    return write_datalist(
        tmp_path / "cohort.datalist.json",
        classes=["negative", "positive"],
        manifest=tmp_path / "cohort.csv",
        seed=0,
        n_folds=5,
        training=[_entry(i, fold=i % 5) for i in range(10)],
        test=[_entry(i) for i in range(10, 13)],
        external=[_entry(i) for i in range(13, 15)],
        external_site="site-c",
    )


def test_round_trip_resolves_relative_images_against_the_file(datalist_file):
    data = load_datalist(datalist_file)
    assert data["classes"] == ["negative", "positive"] and data["n_folds"] == 5 and data["external_site"] == "site-c"
    assert data["manifest"] == str((datalist_file.parent / "cohort.csv").resolve())
    for key, size in (("training", 10), ("test", 3), ("external", 2)):
        assert len(data[key]) == size
    assert data["training"][3]["image"] == str(datalist_file.parent.resolve() / "images" / "case-3.nii.gz")


def test_monai_reads_the_file(datalist_file):
    training = load_decathlon_datalist(datalist_file, data_list_key="training")
    assert [e["label"] for e in training] == [i % 2 for i in range(10)]
    assert all(Path(e["image"]).is_absolute() for e in training)
    assert len(load_decathlon_datalist(datalist_file, data_list_key="external")) == 2


@pytest.mark.parametrize("fold", range(5))
def test_train_and_val_partition_the_training_entries(datalist_file, fold):
    val = select(datalist_file, "val", fold)
    train = select(datalist_file, "train", fold)
    assert [e["case_id"] for e in val] == [f"case-{fold}", f"case-{fold + 5}"]
    assert len(train) == 8 and all(e["fold"] != fold for e in train)


def test_other_selections(datalist_file):
    assert len(select(datalist_file, "train", None)) == 10
    assert len(select(datalist_file, "train_all")) == 10
    assert [e["case_id"] for e in select(datalist_file, "test")] == ["case-10", "case-11", "case-12"]
    assert [e["case_id"] for e in select(datalist_file, "external")] == ["case-13", "case-14"]
    assert class_names(datalist_file) == ["negative", "positive"]


def test_selection_returns_copies(datalist_file):
    data = load_datalist(datalist_file)
    chosen = select(data, "val", 0)
    chosen[0]["label"] = 99
    assert data["training"][0]["label"] == 0
    assert class_names(data) == ["negative", "positive"]


def test_bad_selections_are_user_errors(datalist_file):
    with pytest.raises(UserError, match="unknown datalist selection 'validation'"):
        select(datalist_file, "validation")
    with pytest.raises(UserError, match=r"fold 5 is outside the datalist's folds 0..4"):
        select(datalist_file, "val", 5)
    with pytest.raises(UserError, match="'val' needs a fold"):
        select(datalist_file, "val", None)


def test_missing_or_malformed_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="absent.json: datalist file not found"):
        load_datalist(tmp_path / "absent.json")

    broken = tmp_path / "broken.json"
    broken.write_text('{"classes": ["a", "b"],\n "training": [}\n')
    with pytest.raises(UserError, match=r"broken.json: not valid JSON \(line 2") as caught:
        load_datalist(broken)
    assert "\n" not in str(caught.value)

    no_training = tmp_path / "no_training.json"
    no_training.write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(UserError, match="no 'training' key"):
        class_names(no_training)

    bad_label = tmp_path / "bad_label.json"
    bad_label.write_text(json.dumps({"classes": ["a", "b"], "training": [{"image": "x", "label": 2, "fold": 0}]}))
    with pytest.raises(UserError, match=r"training\[0\] has label 2; expected an integer 0..1"):
        load_datalist(bad_label)


def test_a_manifest_names_the_datalist_beside_it(tmp_path, datalist_file):
    manifest = tmp_path / "cohort.csv"
    assert datalist_beside(manifest) == datalist_file
    with pytest.raises(UserError, match="cohort.csv: manifest not found"):
        resolve_datalist(manifest)
    manifest.write_text("case_id,image\n")
    assert resolve_datalist(manifest) == datalist_file
    assert resolve_datalist(datalist_file) == datalist_file
    datalist_file.unlink()
    with pytest.raises(UserError, match=r"no datalist beside this manifest \(write it with `aamct manifest split"):
        resolve_datalist(manifest)
    with pytest.raises(UserError, match="datalist not found"):
        resolve_datalist(datalist_file)
