"""``models/operating_point.json``: the round trip, where it lives, and the one lookup of a frozen threshold."""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from pipeline.contracts.operating_point import (
    OPERATING_POINT_FILE,
    FrozenThreshold,
    OperatingPoint,
    frozen_threshold,
    operating_point_path,
    read_operating_point,
    write_operating_point,
)
from pipeline.errors import UserError
from tests.conftest import REPO_ROOT


def test_round_trip_keeps_every_field_and_the_provenance(tmp_path):
    point = OperatingPoint(
        threshold=0.37,
        method="target_sensitivity",
        target_sensitivity=0.9,
        chosen_on="validation",
        validation_sensitivity=0.92,
        validation_specificity=0.61,
        n_validation=40,
    )
    path = write_operating_point(tmp_path / "models" / OPERATING_POINT_FILE, point, provenance={"fold": 2})
    assert next(iter(json.loads(path.read_text()))) == "threshold"  # the key a reader looks for first
    read, provenance = read_operating_point(path)
    assert read == point and provenance == {"fold": 2}
    assert "40 validation cases" in read.describe() and "90%" in read.describe()


def test_a_hand_written_threshold_is_a_fixed_point(tmp_path):
    (tmp_path / "op.json").write_text('{"threshold": 0.25}')
    point, provenance = read_operating_point(tmp_path / "op.json")
    assert (point.threshold, point.method, point.chosen_on, provenance) == (0.25, "fixed", "given", {})
    for bad in ('{"threshold": "high"}', '{"threshold": NaN}', "[0.5]", "{"):
        (tmp_path / "op.json").write_text(bad)
        with pytest.raises(UserError, match="op.json"):
            read_operating_point(tmp_path / "op.json")


def test_the_file_lives_beside_its_checkpoint(tmp_path):
    assert (
        operating_point_path(tmp_path / "run" / "models" / "model.pt")
        == tmp_path / "run" / "models" / OPERATING_POINT_FILE
    )


def test_lookup_order_operating_point_then_metadata_then_default(tmp_path):
    assert frozen_threshold(tmp_path) == FrozenThreshold(0.5, "default") and frozen_threshold(tmp_path).is_default
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"operating_point": {"threshold": 0.3}}))
    assert frozen_threshold(tmp_path) == FrozenThreshold(0.3, "configs/metadata.json:operating_point.threshold")
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"operating_threshold": 0.35}))
    assert frozen_threshold(tmp_path).threshold == 0.35
    write_operating_point(tmp_path / "models" / OPERATING_POINT_FILE, OperatingPoint(threshold=0.42, method="youden"))
    expected = FrozenThreshold(0.42, "models/operating_point.json:threshold")
    # a bundle or run folder, and the checkpoint inside it, find the same file
    assert frozen_threshold(tmp_path) == expected == frozen_threshold(tmp_path / "models" / "model.pt")
    (tmp_path / "models" / OPERATING_POINT_FILE).write_text(json.dumps({"threshold": 1.7}))
    with pytest.raises(UserError, match=r"operating_point.json: threshold must be a number in \[0, 1\], got 1.7"):
        frozen_threshold(tmp_path)


def test_the_evaluation_and_inference_configs_use_the_same_file(tmp_path):
    write_operating_point(tmp_path / "models" / OPERATING_POINT_FILE, OperatingPoint(threshold=0.61, method="youden"))
    evaluation = ConfigParser()
    evaluation.read_config([str(REPO_ROOT / "bundle" / "configs" / n) for n in ("train.json", "evaluate.json")])
    evaluation["checkpoint"] = str(tmp_path / "models" / "model.pt")
    inference = ConfigParser()
    inference.read_config(str(REPO_ROOT / "bundle" / "configs" / "inference.json"))
    inference["bundle_root"] = str(tmp_path)
    assert evaluation.get_parsed_content("operating_point_file") == tmp_path / "models" / OPERATING_POINT_FILE
    assert inference.get_parsed_content("frozen_threshold").threshold == 0.61
