import json

import pytest

from pipeline.errors import UserError
from pipeline.training.run_record import read_run_record, recorded_settings, recorded_value, write_run_record


def test_record_is_found_from_the_checkpoint_its_folder_or_the_run(tmp_path):
    models = tmp_path / "run" / "models"
    write_run_record(
        models,
        network_name="aam_student",
        network_kwargs={"attention_branches": "channel"},
        roi_size=(64, 64, 32),
        spacing=(5.0, 5.0, 10.0),
        hu_window=(-1000, 400),
        class_names=("negative", "positive"),
        written_by="distilling",
        teacher="aam_resnet50",
    )
    for location in (models / "model.pt", models, tmp_path / "run"):
        assert read_run_record(location)["teacher"] == "aam_resnet50"
    assert recorded_settings(models / "model.pt") == {
        "network_name": "aam_student",
        "roi_size": [64, 64, 32],
        "spacing": [5.0, 5.0, 10.0],
        "hu_window": [-1000, 400],
        "network_def#attention_branches": "channel",
    }
    assert recorded_value(models / "model.pt", "network_name", "aam_resnet18") == "aam_student"


def test_no_record_falls_back_and_other_ranks_write_nothing(tmp_path):
    assert write_run_record(tmp_path, network_name="x", roi_size=(8, 8, 8), rank=1) is None
    assert read_run_record(tmp_path) is None and recorded_settings(tmp_path) == {}
    assert recorded_value(tmp_path / "model.pt", "network_name", "aam_resnet18") == "aam_resnet18"


def test_a_broken_record_names_its_file(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"roi_size": [8, 8, 8]}))
    with pytest.raises(UserError, match=r"run\.json: not a run record \(no network_name\)"):
        read_run_record(tmp_path / "model.pt")
