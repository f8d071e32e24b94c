"""The inference bundle config and what is read from a bundle: weights, frozen threshold, class names, zips."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.errors import UserError
from pipeline.inference import DenseClassificationInferer
from pipeline.inference.bundle import (
    PROJECT_BUNDLE,
    TRAINING_SETTINGS,
    load_inference_config,
    load_weights,
    read_class_names,
    read_frozen_threshold,
    resolve_bundle,
)
from tests.inference.helpers import tiny_network

CONFIG = PROJECT_BUNDLE / "configs" / "inference.json"


def test_inference_config_uses_the_training_settings():
    train = PROJECT_BUNDLE / "configs" / "train.json"
    if not train.is_file():
        pytest.skip(f"{train} not written yet")
    inference, training = json.loads(CONFIG.read_text()), json.loads(train.read_text())
    for key in (k for k in TRAINING_SETTINGS if k != "network_name"):
        assert inference[key] == training[key], key
    # the network is the distilled student: the last stage of distill.json's default cascade
    distill = json.loads((PROJECT_BUNDLE / "configs" / "distill.json").read_text())
    assert inference["network_name"] == distill["stages"][-1] == "aam_student"
    # class names come from the bundle metadata, as in train.json
    metadata = json.loads((PROJECT_BUNDLE / "configs" / "metadata.json").read_text())
    assert read_class_names(PROJECT_BUNDLE) == metadata["class_names"]


def test_inference_config_builds_its_components_without_weights():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"bundle_root": "/nonexistent", "device": "$torch.device('cpu')"})
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, DenseClassificationInferer)
    assert inferer.roi_size == tuple(parser["roi_size"])
    assert parser.get_parsed_content("preprocessing").transforms[0].__class__.__name__ == "LoadImaged"
    assert parser.get_parsed_content("frozen_threshold").is_default
    assert parser["run"] == parser["inference"]  # "run": "%inference", expanded when read


def test_run_folder_without_configs_takes_the_settings_of_its_train_config(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps({"roi_size": [96, 96, 48], "network_name": "resnet18"}))
    parser = load_inference_config(tmp_path, {"output_dir": "x"})
    assert parser["roi_size"] == [96, 96, 48] and parser["network_name"] == "resnet18"
    assert parser["bundle_root"] == str(tmp_path.resolve())


def test_run_record_beats_the_train_config_and_carries_registry_arguments(tmp_path):
    from pipeline.training.run_record import write_run_record

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps({"roi_size": [96, 96, 48], "network_name": "resnet18"}))
    write_run_record(
        tmp_path / "models",
        network_name="aam_student_small",
        network_kwargs={"attention_branches": "channel"},
        roi_size=(48, 48, 24),
        spacing=(2.0, 2.0, 4.0),
        hu_window=(-900, 300),
    )
    parser = load_inference_config(tmp_path, {"output_dir": "x"})
    assert parser["network_name"] == "aam_student_small" and parser["roi_size"] == [48, 48, 24]
    assert parser["spacing"] == [2.0, 2.0, 4.0] and parser["hu_window"] == [-900, 300]
    assert parser["network_def"]["attention_branches"] == "channel"


def test_frozen_threshold_lookup(tmp_path):
    assert read_frozen_threshold(tmp_path).source == "default"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"operating_point": {"threshold": 0.3}}))
    assert read_frozen_threshold(tmp_path).threshold == 0.3
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "operating_point.json").write_text(json.dumps({"threshold": 0.42, "method": "youden"}))
    frozen = read_frozen_threshold(tmp_path)
    assert (frozen.threshold, frozen.source) == (0.42, "models/operating_point.json:threshold")
    (tmp_path / "models" / "operating_point.json").write_text(json.dumps({"threshold": 1.7}))
    with pytest.raises(UserError, match=r"in \[0, 1\]"):
        read_frozen_threshold(tmp_path)


def test_class_names_from_metadata(tmp_path):
    assert read_class_names(tmp_path) == ["negative", "positive"]
    (tmp_path / "configs").mkdir()
    channel_def = {"1": "covid", "0": "no covid"}
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}}}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert read_class_names(tmp_path) == ["no covid", "covid"]


def test_weights_load_bare_or_wrapped_and_mismatches_are_user_errors(tmp_path):
    source = tiny_network(seed=5)
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    loaded = load_weights(tiny_network(seed=6), tmp_path / "wrapped.pt")
    assert all(
        torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert not loaded.training
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(UserError, match="do not match the configured network"):
        load_weights(torch.nn.Conv3d(1, 2, 1), tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_weights(source, tmp_path / "junk.pt")


def test_bundle_zip_is_extracted_once_and_descended_into(tmp_path):
    bundle = tmp_path / "my_bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save({}, bundle / "models" / "model.pt")
    archive = tmp_path / "my_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(bundle / "models" / "model.pt", "my_bundle/models/model.pt")
    root = resolve_bundle(archive, extract_to=tmp_path / "run")
    assert (root / "models" / "model.pt").is_file() and root.name == "my_bundle"
    assert resolve_bundle(archive, extract_to=tmp_path / "run") == root
    assert resolve_bundle(bundle) == bundle.resolve()


def test_unsafe_or_empty_bundles_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(UserError, match="unsafe member"):
        resolve_bundle(evil, extract_to=tmp_path / "run")
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no models/model.pt"):
        resolve_bundle(tmp_path / "empty")
    with pytest.raises(UserError, match="bundle not found"):
        resolve_bundle(tmp_path / "missing")
