"""``models/run.json``: written once, read by one function, and the configs that read it follow it."""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from pipeline.contracts.defaults import DEFAULT_HU_WINDOW, DEFAULT_NETWORK_NAME, DEFAULT_ROI_SIZE, DEFAULT_SPACING
from pipeline.contracts.run_record import RUN_RECORD, RunSettings, find_run_record, settings_for, write_run_record
from pipeline.errors import UserError
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundle" / "configs"


def _record(models, **kwargs):
    values = {
        "network_name": "aam_student",
        "network_kwargs": {"attention_branches": "channel"},
        "roi_size": (48, 40, 24),
        "spacing": (2.0, 2.5, 4.0),
        "hu_window": (-900, 300),
        "class_names": ("no covid", "covid"),
        "written_by": "distilling",
        "teacher": "aam_resnet50",
    }
    values.update(kwargs)
    return write_run_record(models, **values)


def test_the_record_is_found_from_the_checkpoint_its_folder_or_the_run(tmp_path):
    models = tmp_path / "run" / "models"
    path = _record(models)
    assert path == models / RUN_RECORD
    for location in (models / "model.pt", models, tmp_path / "run"):
        settings = settings_for(location)
        assert settings.record == path and settings.recorded
        assert settings == RunSettings(
            network_name="aam_student",
            network_kwargs={"attention_branches": "channel"},
            roi_size=(48, 40, 24),
            spacing=(2.0, 2.5, 4.0),
            hu_window=(-900.0, 300.0),
            class_names=("no covid", "covid"),
            written_by="distilling",
            teacher="aam_resnet50",
            record=path,
        )
    # what a config needs, as the bundle CLI's overrides (registry arguments as network_def#<arg>)
    assert settings.config_overrides() == {
        "network_name": "aam_student",
        "roi_size": [48, 40, 24],
        "spacing": [2.0, 2.5, 4.0],
        "hu_window": [-900.0, 300.0],
        "network_def#attention_branches": "channel",
    }
    assert json.loads(path.read_text())["class_names"] == ["no covid", "covid"]


def test_without_a_record_the_fallbacks_then_the_defaults_apply(tmp_path):
    assert find_run_record(tmp_path) is None
    settings = settings_for(tmp_path / "models" / "model.pt")
    assert not settings.recorded
    assert (settings.network_name, settings.roi_size, settings.spacing, settings.hu_window) == (
        DEFAULT_NETWORK_NAME,
        DEFAULT_ROI_SIZE,
        DEFAULT_SPACING,
        DEFAULT_HU_WINDOW,
    )
    assert settings_for(tmp_path, network_name="resnet50").network_name == "resnet50"
    # a record's own value beats the fallback; a value it lacks is filled from the fallback
    (tmp_path / RUN_RECORD).write_text(json.dumps({"network_name": "aam_student", "roi_size": [32, 32, 16]}))
    partial = settings_for(tmp_path, network_name="resnet50", hu_window=(-1200, 200))
    assert (partial.network_name, partial.roi_size, partial.hu_window) == ("aam_student", (32, 32, 16), (-1200, 200))
    assert partial.spacing == DEFAULT_SPACING


def test_a_recorded_null_spacing_means_no_resampling(tmp_path):
    _record(tmp_path, spacing=None)
    assert settings_for(tmp_path).spacing is None
    assert settings_for(tmp_path).config_overrides()["spacing"] is None


def test_only_rank_zero_writes(tmp_path):
    assert write_run_record(tmp_path, network_name="x", roi_size=(8, 8, 8), rank=1) is None
    assert find_run_record(tmp_path) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable run record"),
        (json.dumps({"roi_size": [8, 8, 8]}), r"not a run record \(no network_name\)"),
        (json.dumps({"network_name": "x", "roi_size": [8, 8]}), "roi_size must be 3 numbers"),
        (json.dumps({"network_name": "x", "hu_window": [400, -1000]}), "hu_window must be increasing"),
        (json.dumps({"network_name": "x", "spacing": [1, 0, 1]}), "spacing must be positive"),
    ],
)
def test_a_broken_record_names_its_file(tmp_path, content, message):
    (tmp_path / RUN_RECORD).write_text(content)
    with pytest.raises(UserError, match=message) as caught:
        settings_for(tmp_path / "model.pt")
    assert str(caught.value).startswith(str(tmp_path / RUN_RECORD))


def test_writing_refuses_values_of_the_wrong_kind(tmp_path):
    with pytest.raises(UserError, match="roi_size must be 3 numbers"):
        write_run_record(tmp_path, network_name="x", roi_size=(8, 8))
    with pytest.raises(UserError, match="unknown setting"):
        settings_for(tmp_path, roi=(8, 8, 8))
    assert find_run_record(tmp_path) is None


def _merged(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in names])
    parser.update(overrides)
    return parser


def test_the_evaluation_config_builds_the_recorded_network_and_preprocessing(tmp_path):
    _record(tmp_path / "models")
    parser = _merged("train.json", "evaluate.json", checkpoint=str(tmp_path / "models" / "model.pt"))
    assert parser.get_parsed_content("network_name") == "aam_student"
    assert parser.get_parsed_content("network_kwargs") == {"attention_branches": "channel"}
    assert parser.get_parsed_content("roi_size") == [48, 40, 24]
    assert parser.get_parsed_content("spacing") == [2.0, 2.5, 4.0]
    assert parser.get_parsed_content("hu_window") == [-900.0, 300.0]
    # the evaluation chain is train.json's own, so it follows too
    chain = parser.get_parsed_content("validate#preprocessing").transforms
    resize = next(t for t in chain if type(t).__name__ == "Resized")
    assert tuple(resize.resizer.spatial_size) == (48, 40, 24)
    # an explicit command-line value still wins
    assert _merged("train.json", "evaluate.json", roi_size=[16, 16, 16]).get_parsed_content("roi_size") == [16] * 3


def test_the_distillation_config_takes_the_teacher_from_its_record(tmp_path):
    _record(tmp_path / "teacher" / "models", network_name="aam_resnet50", spacing=None)
    teacher = str(tmp_path / "teacher" / "models" / "model.pt")
    parser = _merged("train.json", "distill.json", teacher_ckpt=teacher, network_name="resnet50")
    assert parser.get_parsed_content("teacher_network") == "aam_resnet50"
    assert parser.get_parsed_content("roi_size") == [48, 40, 24] and parser.get_parsed_content("spacing") is None
    # no record beside the teacher: the network named on the command line
    parser = _merged("train.json", "distill.json", teacher_ckpt=str(tmp_path / "x.pt"), network_name="resnet50")
    assert parser.get_parsed_content("teacher_network") == "resnet50"
