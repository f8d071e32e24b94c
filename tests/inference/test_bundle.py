"""The inference bundle config and what is read from a bundle: weights, frozen threshold, class names, zips."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.contracts.run_record import write_run_record
from pipeline.errors import UserError
from pipeline.inference import DenseClassificationInferer
from pipeline.inference.bundle import (
    PROJECT_BUNDLE,
    load_inference_config,
    load_weights,
    read_class_names,
    resolve_bundle,
)
from tests.inference.helpers import tiny_network

CONFIG = PROJECT_BUNDLE / "configs" / "inference.json"


def test_class_names_come_from_the_bundle_metadata():
    metadata = json.loads((PROJECT_BUNDLE / "configs" / "metadata.json").read_text())
    assert read_class_names(PROJECT_BUNDLE) == metadata["class_names"]


def test_inference_config_builds_its_components_without_weights():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"bundle_root": "/nonexistent", "device": "$torch.device('cpu')"})
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, DenseClassificationInferer)
    assert inferer.roi_size == tuple(parser.get_parsed_content("roi_size"))
    assert parser.get_parsed_content("preprocessing").transforms[0].__class__.__name__ == "LoadScand"  # the one loader
    assert parser.get_parsed_content("frozen_threshold").is_default
    assert parser["run"] == parser["inference"]  # "run": "%inference", expanded when read


def test_a_run_folder_takes_the_network_and_preprocessing_of_its_run_record(tmp_path):
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
    assert parser["bundle_root"] == str(tmp_path.resolve())
    # the preprocessing chain is built from them
    resize = next(t for t in parser.get_parsed_content("preprocessing").transforms if type(t).__name__ == "Resized")
    assert tuple(resize.resizer.spatial_size) == (48, 48, 24)
    # an explicit override still wins
    assert load_inference_config(tmp_path, {"roi_size": [32, 32, 32]})["roi_size"] == [32, 32, 32]


def test_a_run_folder_without_a_record_keeps_the_config_defaults(tmp_path):
    parser = load_inference_config(tmp_path, {"output_dir": "x"})
    default = ConfigParser()
    default.read_config(CONFIG)
    for key in ("network_name", "roi_size", "spacing", "hu_window"):
        assert parser.get_parsed_content(key) == default.get_parsed_content(key), key


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


def test_a_zip_that_is_not_an_exported_bundle_is_refused_by_the_gate_and_leaves_nothing(tmp_path):
    """A zip comes from outside: without the exporter's layout and checksums it is refused, nothing extracted."""
    bundle = tmp_path / "my_bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save({}, bundle / "models" / "model.pt")
    archive = tmp_path / "my_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(bundle / "models" / "model.pt", "my_bundle/models/model.pt")
    with pytest.raises(UserError, match="refused by the bundle gate: missing required member"):
        resolve_bundle(archive, extract_to=tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    assert resolve_bundle(bundle) == bundle.resolve()


def test_unsafe_or_empty_bundles_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(UserError, match="unsafe path"):
        resolve_bundle(evil, extract_to=tmp_path / "run")
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no models/model.pt"):
        resolve_bundle(tmp_path / "empty")
    with pytest.raises(UserError, match="bundle not found"):
        resolve_bundle(tmp_path / "missing")


def _bundle_run(bundle, *overrides: str):
    """``python -m monai.bundle run inference`` with the bundle's own config, as a recipient with aamct runs it: the
    same command line given to the same entry point in this process (:func:`tests.bundle_process.monai_bundle`);
    the one-line error hook is the one the config installs."""
    from tests.bundle_process import monai_bundle

    config = str(bundle / "configs" / "inference.json")
    return monai_bundle("run", "inference", "--config_file", config, "--bundle_root", str(bundle), *overrides)


@pytest.mark.slow
def test_the_bundle_run_scores_good_cases_and_reports_mistakes_in_one_line(tmp_path):
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from pipeline.data.loading import check_scan
    from tests.inference.helpers import chest_like_volume, tiny_bundle, write_nifti

    bundle = tiny_bundle(tmp_path / "bundle")
    good = write_nifti(tmp_path / "good.nii.gz", chest_like_volume())
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(chest_like_volume()[:, :, 0], np.diag([2.0, 2.0, 2.0, 1.0])), str(flat))
    manifest = tmp_path / "cohort.csv"
    pd.DataFrame({"case_id": ["case-good", "case-flat"], "image": [str(good), str(flat)]}).to_csv(manifest)
    out = tmp_path / "out"
    process = _bundle_run(bundle, "--manifest", str(manifest), "--output_dir", str(out))
    assert process.returncode == 0, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("case_id")
    assert rows.loc["case-good", "status"] == "ok"
    assert rows.loc["case-flat", "reason"] == f"case-flat: {check_scan(flat)}"  # the path named by the case id
    # a user mistake found while MONAI builds the config (here: no weights) ends with one line, not a traceback
    (bundle / "models" / "model.pt").unlink()
    process = _bundle_run(bundle, "--manifest", str(manifest), "--output_dir", str(tmp_path / "again"))
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert (
        process.stderr.strip().splitlines()[-1]
        == f"aamct: error: {bundle / 'models' / 'model.pt'}: model weights not found"
    )
